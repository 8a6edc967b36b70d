"""msgpack body fields ↔ messages, and the packing of arrays inside them. Pure.

Body fields by type (besides the header ``v type fed node fp epoch seq ts``):

    delta      origin, from, to, cells {keys actions q lw n succ fail version},
               sigs {keys actions confidence visits}   (each an array map)
    birth      pk (32-byte Ed25519 public key), version (own published version)
    death      -
    heartbeat  version (own published version: the anti-entropy digest), size (cells)
    sync       origin (whose cells are asked for), since (version)
    rebirth    to (the node asked for a fresh birth), pk (the asker's own public key),
               version (the asker's published version)

An array map is ``{"dt": "<u8", "n": m, "c": codec, "d": data}``: explicit
little-endian dtype and length, ``d`` the raw bytes (codec ``raw``) or one
bytes per byte plane (``shuf+zlib``, ``delta+shuf+zlib``; see
``_encode_array``). Never pickle. Unknown fields anywhere are ignored.

Parsing checks types exactly (``True`` is not an int, ``1`` is not a float),
lengths and limits before inflating anything, and raises only ``WireError``
subclasses. Framing and signatures are ``peerd.wire.framing``'s job.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from peerd.delta import CELL_DTYPES, CELL_FIELDS, Delta, PatternSignature
from peerd.errors import (
    BadActionIndex,
    MalformedMessage,
    NonFiniteValue,
    ShapeMismatch,
    UnknownMessageType,
    ValueOutOfBounds,
)
from peerd.wire.messages import (
    KEYED_TYPES,
    PUBLIC_KEY_LEN,
    Birth,
    Death,
    DeltaMsg,
    Header,
    Heartbeat,
    Message,
    Rebirth,
    SyncRequest,
    _as_uint,
)
from peerd.wire.topics import WIRE_VERSION, check_id

__all__ = [
    "CODECS", "CODEC_DELTA_SHUFFLE", "CODEC_RAW", "CODEC_SHUFFLE", "COMPRESS_MIN_CELLS",
    "MAX_SIGNATURES", "PARSERS", "SIGNATURE_DTYPES", "ZLIB_LEVEL", "Limits", "body_fields",
    "claimed_key", "parse_header", "required_field",
]

#: Signatures become Python objects on decode, so they get a tighter bound than cells.
MAX_SIGNATURES = 65_536

# Array codecs. Small arrays travel raw: compressing a few cells costs more than it saves.
CODEC_RAW = "raw"
CODEC_SHUFFLE = "shuf+zlib"
CODEC_DELTA_SHUFFLE = "delta+shuf+zlib"
CODECS = (CODEC_RAW, CODEC_SHUFFLE, CODEC_DELTA_SHUFFLE)
COMPRESS_MIN_CELLS = 64
#: A byte plane whose first 4 KiB shrink by less than 10 % is stored without zlib.
_PLANE_SAMPLE = 4096
_PLANE_RAW_RATIO = 0.9
#: zlib level 1: most of the gain of byte shuffling at a fraction of the time of level 6.
ZLIB_LEVEL = 1

#: Pattern signatures as parallel arrays; f8/u8 so that decode(encode(m)) == m exactly.
SIGNATURE_DTYPES: dict[str, np.dtype] = {
    "keys": np.dtype("<u8"),
    "actions": np.dtype("<u2"),
    "confidence": np.dtype("<f8"),
    "visits": np.dtype("<u8"),
}


def _planes(a: np.ndarray) -> np.ndarray:
    """Byte planes, shape (itemsize, n): all first bytes, then all second bytes...

    The high bytes of small ints, of sorted-key gaps and of floats of one
    magnitude are (nearly) constant, so zlib compresses their planes to almost
    nothing, while the random low planes are stored as they are.
    """
    return a.view(np.uint8).reshape(a.shape[0], a.dtype.itemsize).T


def _pack_plane(plane: np.ndarray) -> bytes:
    """zlib a plane, or keep it raw when it does not shrink (decided on a sample first:
    compressing random bytes costs most of the encode time and saves nothing)."""
    raw = plane.tobytes()
    sample = raw[:_PLANE_SAMPLE]
    if len(zlib.compress(sample, ZLIB_LEVEL)) > _PLANE_RAW_RATIO * len(sample):
        return raw
    packed = zlib.compress(raw, ZLIB_LEVEL)
    return packed if len(packed) < len(raw) else raw


def _non_decreasing(a: np.ndarray) -> bool:
    return a.shape[0] < 2 or bool((a[1:] >= a[:-1]).all())


def _delta_code(a: np.ndarray) -> np.ndarray:
    """First value, then gaps: sorted random keys keep ~log2(range/n) bits instead of 64."""
    d = np.empty_like(a)
    d[:1] = a[:1]
    np.subtract(a[1:], a[:-1], out=d[1:])
    return d


def _undelta(d: np.ndarray) -> np.ndarray:
    out = np.cumsum(d, dtype=d.dtype)  # wraps modulo 2^k on overflow...
    if not _non_decreasing(out):  # ...which shows up as a decrease: reject it
        raise MalformedMessage("delta-coded array overflows")
    return out


def _encode_array(a: np.ndarray) -> dict[str, Any]:
    """One 1-d little-endian array as ``{"dt", "n", "c", "d"}``.

    Codecs: ``raw`` (``d`` = the bytes; arrays under ``COMPRESS_MIN_CELLS``),
    ``shuf+zlib`` (``d`` = one bytes per byte plane: exactly ``n`` bytes = stored,
    fewer = a zlib stream of exactly ``n`` bytes) and ``delta+shuf+zlib`` (the
    same over first value + gaps, for non-decreasing unsigned arrays; the
    order is kept, so nothing is assumed about the caller's sorting).
    """
    n = int(a.shape[0])
    if n < COMPRESS_MIN_CELLS:
        return {"dt": a.dtype.str, "n": n, "c": CODEC_RAW, "d": a.tobytes()}
    codec, src = CODEC_SHUFFLE, a
    if a.dtype.kind == "u" and _non_decreasing(a):
        codec, src = CODEC_DELTA_SHUFFLE, _delta_code(a)
    return {"dt": a.dtype.str, "n": n, "c": codec, "d": [_pack_plane(p) for p in _planes(src)]}


def _inflate(data: bytes, size: int) -> bytes:
    """Decompress exactly ``size`` bytes: never more memory, reject any other length."""
    z = zlib.decompressobj()
    try:
        out = z.decompress(data, size + 1)
    except zlib.error as exc:
        raise MalformedMessage(f"bad zlib stream: {exc}") from None
    if len(out) != size or not z.eof or z.unused_data:
        raise ShapeMismatch(f"compressed plane does not inflate to exactly {size} bytes")
    return out


def _unpack_planes(planes: list[Any], name: str, dtype: np.dtype, n: int) -> np.ndarray:
    """Byte planes (stored or zlib) → array; the loop runs over ≤ 8 planes, not cells."""
    if len(planes) != dtype.itemsize:
        raise ShapeMismatch(f"array {name!r} has {len(planes)} byte planes, "
                            f"expected {dtype.itemsize}")
    out = np.empty((dtype.itemsize, n), np.uint8)
    for i, plane in enumerate(planes):
        if type(plane) is not bytes:
            raise MalformedMessage(f"array {name!r}: byte plane {i} is not bytes")
        if len(plane) > n:
            raise ShapeMismatch(f"array {name!r}: byte plane {i} is longer than {n}")
        out[i] = np.frombuffer(plane if len(plane) == n else _inflate(plane, n), np.uint8)
    return np.ascontiguousarray(out.T).view(dtype).reshape(n)


class _ArrayMeta(NamedTuple):
    n: int
    codec: str
    data: bytes | list[Any]


def _array_meta(obj: object, name: str, dtype: np.dtype) -> _ArrayMeta:
    """Check an array map's fields and types without touching its data."""
    if type(obj) is not dict:
        raise MalformedMessage(f"array {name!r} must be a map")
    dt, n, codec, data = obj.get("dt"), obj.get("n"), obj.get("c"), obj.get("d")
    if type(dt) is not str or type(n) is not int or type(codec) is not str:
        raise MalformedMessage(f"array {name!r} needs dt:str, n:int, c:str")
    if codec not in CODECS:
        raise MalformedMessage(f"array {name!r} has unknown codec {codec[:32]!r}")
    if type(data) is not (bytes if codec == CODEC_RAW else list):
        raise MalformedMessage(f"array {name!r}: codec {codec!r} needs d as "
                               + ("bytes" if codec == CODEC_RAW else "a list of byte planes"))
    if dt != dtype.str:
        raise ShapeMismatch(f"array {name!r} has dtype {dt[:16]!r}, expected {dtype.str!r}")
    if n < 0:
        raise ShapeMismatch(f"array {name!r} has negative length {n}")
    return _ArrayMeta(n, codec, data)


def _array_data(meta: _ArrayMeta, name: str, dtype: np.dtype) -> np.ndarray:
    """Encoded data → read-only array of ``meta.n`` cells (``n`` already checked against limits)."""
    if meta.codec == CODEC_RAW:
        size = meta.n * dtype.itemsize
        if len(meta.data) != size:
            raise ShapeMismatch(f"array {name!r} has {len(meta.data)} bytes, expected {size}")
        return np.frombuffer(meta.data, dtype)  # read-only: it views immutable bytes
    a = _unpack_planes(meta.data, name, dtype, meta.n)  # type: ignore[arg-type]
    if meta.codec == CODEC_DELTA_SHUFFLE:
        if dtype.kind != "u":
            raise MalformedMessage(f"codec {meta.codec!r} applies to unsigned arrays only")
        a = _undelta(a)
    a.flags.writeable = False
    return a


def _decode_arrays(obj: object, what: str, dtypes: Mapping[str, np.dtype],
                   limit: int) -> dict[str, np.ndarray]:
    """Parallel arrays: all present, one length within ``limit``, checked before inflating any."""
    if type(obj) is not dict:
        raise MalformedMessage(f"{what} must be a map of arrays")
    missing = [f for f in dtypes if f not in obj]
    if missing:
        raise MalformedMessage(f"{what} lacks arrays {missing}")
    metas = {f: _array_meta(obj[f], f, dt) for f, dt in dtypes.items()}
    lengths = {m.n for m in metas.values()}
    if len(lengths) != 1:
        raise ShapeMismatch(f"{what} arrays have different lengths {sorted(lengths)}")
    (n,) = lengths
    if n > limit:
        raise ShapeMismatch(f"{what} claims {n} entries, limit is {limit}")
    return {f: _array_data(m, f, dtypes[f]) for f, m in metas.items()}


# ---------------------------------------------------------------- message → body

def _signature_arrays(sigs: tuple[PatternSignature, ...]) -> dict[str, np.ndarray]:
    try:
        arrays = {
            "keys": np.array([s.key for s in sigs], dtype=SIGNATURE_DTYPES["keys"]),
            "actions": np.array([s.action for s in sigs], dtype=SIGNATURE_DTYPES["actions"]),
            "confidence": np.array([s.confidence for s in sigs],
                                   dtype=SIGNATURE_DTYPES["confidence"]),
            "visits": np.array([s.visits for s in sigs], dtype=SIGNATURE_DTYPES["visits"]),
        }
    except (AttributeError, TypeError, ValueError, OverflowError) as exc:
        raise MalformedMessage(f"cannot encode signatures: {exc}") from None
    _check_confidence(arrays["confidence"])
    return arrays


def body_fields(msg: Message) -> dict[str, Any]:
    h = msg.header
    fields: dict[str, Any] = {"v": WIRE_VERSION, "type": msg.type, "fed": h.fed, "node": h.node,
                              "fp": h.fp, "epoch": h.epoch, "seq": h.seq, "ts": h.ts}
    if isinstance(msg, DeltaMsg):
        d = msg.delta
        for f in CELL_FIELDS:
            a = getattr(d, f)
            if not isinstance(a, np.ndarray) or a.dtype != CELL_DTYPES[f] or a.ndim != 1 \
                    or a.shape[0] != len(d):
                raise ShapeMismatch(f"delta array {f!r} must be 1-d {CELL_DTYPES[f]} of {len(d)}")
        fields.update(origin=d.origin, **{"from": d.from_version, "to": d.to_version})
        fields["cells"] = {f: _encode_array(np.ascontiguousarray(getattr(d, f)))
                           for f in CELL_FIELDS}
        fields["sigs"] = {f: _encode_array(a) for f, a in _signature_arrays(msg.signatures).items()}
    elif isinstance(msg, Birth):
        fields.update(pk=msg.public_key, version=msg.version)
    elif isinstance(msg, Heartbeat):
        fields.update(version=msg.version, size=msg.size)
    elif isinstance(msg, SyncRequest):
        fields.update(origin=msg.origin, since=msg.since)
    elif isinstance(msg, Rebirth):
        fields.update(to=msg.to, pk=msg.public_key, version=msg.version)
    elif not isinstance(msg, Death):
        raise UnknownMessageType(f"cannot encode {type(msg).__name__}")
    return fields


# ---------------------------------------------------------------- body → message

def required_field(fields: Mapping[str, Any], name: str, typ: type) -> Any:
    """A required field of exactly type ``typ`` (so True is not an int and 1 is not a float)."""
    if name not in fields:
        raise MalformedMessage(f"missing field {name!r}")
    value = fields[name]
    if type(value) is not typ:
        raise MalformedMessage(
            f"field {name!r} must be {typ.__name__}, got {type(value).__name__}")
    return value


def parse_header(fields: Mapping[str, Any]) -> Header:
    return Header(fed=required_field(fields, "fed", str), node=required_field(fields, "node", str),
                  fp=required_field(fields, "fp", str), epoch=required_field(fields, "epoch", int),
                  seq=required_field(fields, "seq", int), ts=required_field(fields, "ts", float))


class Limits(NamedTuple):
    n_actions: int
    q_bound: float
    max_entries: int
    max_signatures: int


def _check_confidence(conf: np.ndarray) -> None:
    if not np.isfinite(conf).all():
        raise NonFiniteValue("a signature confidence is NaN or infinite")
    if conf.size and (float(conf.min()) < 0.0 or float(conf.max()) > 1.0):
        raise ValueOutOfBounds("a signature confidence is outside [0, 1]")


def _parse_signatures(obj: object, lim: Limits) -> tuple[PatternSignature, ...]:
    arrays = _decode_arrays(obj, "sigs", SIGNATURE_DTYPES, lim.max_signatures)
    if arrays["actions"].size and int(arrays["actions"].max()) >= lim.n_actions:
        raise BadActionIndex(f"signature action {int(arrays['actions'].max())} "
                             f"outside 0..{lim.n_actions - 1}")
    _check_confidence(arrays["confidence"])
    cols = (arrays["keys"].tolist(), arrays["actions"].tolist(),
            arrays["confidence"].tolist(), arrays["visits"].tolist())
    return tuple(PatternSignature(k, a, c, v) for k, a, c, v in zip(*cols, strict=True))


def _parse_delta(h: Header, f: Mapping[str, Any], lim: Limits) -> DeltaMsg:
    origin = check_id(required_field(f, "origin", str), "origin")
    lo = _as_uint(required_field(f, "from", int), "from")
    hi = _as_uint(required_field(f, "to", int), "to")
    cells = _decode_arrays(f.get("cells"), "cells", CELL_DTYPES, lim.max_entries)
    delta = Delta(origin, h.fp, lo, hi, **cells)
    # Every cell is checked here, once: a node hands these bounds to ``QTable.check``,
    # which then adds only the clock-based evidence guard (the count limit is
    # ``_decode_arrays``'s, checked before inflating).
    bounds = delta.validate(fingerprint=h.fp, n_actions=lim.n_actions, q_bound=lim.q_bound)
    return DeltaMsg(h, delta, _parse_signatures(f.get("sigs"), lim), bounds)


def _parse_birth(h: Header, f: Mapping[str, Any], lim: Limits) -> Birth:
    return Birth(h, required_field(f, "pk", bytes), required_field(f, "version", int))


def _parse_death(h: Header, f: Mapping[str, Any], lim: Limits) -> Death:
    return Death(h)


def _parse_heartbeat(h: Header, f: Mapping[str, Any], lim: Limits) -> Heartbeat:
    return Heartbeat(h, required_field(f, "version", int), required_field(f, "size", int))


def _parse_sync(h: Header, f: Mapping[str, Any], lim: Limits) -> SyncRequest:
    return SyncRequest(h, required_field(f, "origin", str), required_field(f, "since", int))


def _parse_rebirth(h: Header, f: Mapping[str, Any], lim: Limits) -> Rebirth:
    return Rebirth(h, required_field(f, "to", str), required_field(f, "pk", bytes),
                   required_field(f, "version", int))


PARSERS: dict[str, Callable[[Header, Mapping[str, Any], Limits], Message]] = {
    "delta": _parse_delta, "birth": _parse_birth, "death": _parse_death,
    "heartbeat": _parse_heartbeat, "sync": _parse_sync, "rebirth": _parse_rebirth,
}


def claimed_key(msg_type: str, fields: Mapping[str, Any]) -> bytes | None:
    """The public key a birth or rebirth request announces (before the signature it must verify)."""
    if msg_type not in KEYED_TYPES:
        return None
    pk = required_field(fields, "pk", bytes)
    if len(pk) != PUBLIC_KEY_LEN:
        raise MalformedMessage(f"public key has {len(pk)} bytes, expected {PUBLIC_KEY_LEN}")
    return pk
