"""Wire protocol v1: messages, signed msgpack framing, topics. Pure: no I/O.

A payload is a msgpack map ``{"v": 1, "b": body, "s": signature}``. ``body`` is
itself a msgpack map holding every field (common header ``v type fed node fp
epoch seq ts`` plus the fields of the message type); ``signature`` is the
64-byte Ed25519 signature over the exact body bytes, so a receiver verifies
what it received and never re-encodes (DESIGN §5).

Body fields by type (besides the header):

    delta      origin, from, to, cells {keys actions q lw n succ fail version},
               sigs {keys actions confidence visits}   (each an array map)
    birth      pk (32-byte Ed25519 public key), version (own published version)
    death      -
    heartbeat  version (own published version: the anti-entropy digest), size (cells)
    sync       origin (whose cells are asked for), since (version)
    rebirth    to (the node asked for a fresh birth), pk (the asker's own public key),
               version (the asker's published version)

On ``peerd/v1/{f}/relay/{relayer}`` travel payloads of *another* node (a delta
or birth it signed), byte for byte: the header names the origin, the topic the
relayer. Receivers verify them with the origin's key (``Verifier.relayed``).

An array map is ``{"dt": "<u8", "n": m, "c": codec, "d": data}``: explicit
little-endian dtype and length, ``d`` the raw bytes (codec ``raw``) or one
bytes per byte plane (``shuf+zlib``, ``delta+shuf+zlib``; see
``_encode_array``). Never pickle. Unknown fields anywhere are ignored.

``decode`` validates everything before it returns and raises only ``WireError``
subclasses, each with a stable ``reason`` (the metric label)::

    WireError (peerd.errors)
    ├── MalformedMessage      "malformed"       not msgpack, wrong shape or field type
    │   └── InternalDecodeError "internal"      a bug in decode (counted as a crash by the fuzzer)
    ├── PayloadTooLarge       "too_large"       payload above max_payload
    ├── UnsupportedVersion    "version"         wire version other than 1
    ├── UnknownMessageType    "unknown_type"
    ├── FederationMismatch    "federation"
    ├── TopicMismatch         "topic"           topic disagrees with the signed header
    ├── BadSignature          "bad_signature"
    ├── UnknownSender         "unknown_sender"  no pinned key (or not on a strict allowlist)
    ├── KeyMismatch           "key_mismatch"    a birth with another key than the pinned one
    ├── Replay                "replay"          (epoch, seq) not newer for that node and type
    └── InvalidDelta (peerd.errors): FingerprintMismatch "fingerprint", ShapeMismatch
        "shape", NonFiniteValue "non_finite", ValueOutOfBounds "out_of_bounds",
        BadActionIndex "unknown_action"
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol

import msgpack
import numpy as np

from peerd.delta import CELL_DTYPES, CELL_FIELDS, DEFAULT_Q_BOUND, Delta, PatternSignature
from peerd.errors import (
    BadActionIndex,
    FingerprintMismatch,
    NonFiniteValue,
    ShapeMismatch,
    ValueOutOfBounds,
    WireError,
)

if TYPE_CHECKING:
    from peerd.identity import Verifier

__all__ = [
    "CODECS", "CODEC_DELTA_SHUFFLE", "CODEC_RAW", "CODEC_SHUFFLE", "COMPRESS_MIN_CELLS",
    "KEYED_TYPES", "KINDS", "KIND_OF_TYPE", "MAX_ENTRIES", "MAX_ID_LEN", "MAX_PAYLOAD",
    "MAX_SIGNATURES", "PUBLIC_KEY_LEN", "QOS", "REASONS", "RELAYABLE_TYPES", "RETAIN", "SIGNATURE_DTYPES",
    "SIGNATURE_LEN", "TYPES", "WIRE_VERSION", "ZLIB_LEVEL", "BadSignature", "Birth", "Death",
    "DeltaMsg", "FederationMismatch", "Frame", "Header", "Heartbeat", "InternalDecodeError",
    "KeyMismatch", "MalformedMessage", "Message", "PayloadTooLarge", "Rebirth", "Replay", "Route",
    "Signer", "SyncRequest", "TopicMismatch", "UnknownMessageType", "UnknownSender",
    "UnsupportedVersion", "check_id", "decode", "encode", "is_safe_id", "parse_topic", "peek",
    "route", "subscriptions", "topic",
]

WIRE_VERSION = 1
#: Default receive limits: a payload above either is rejected before any work.
MAX_PAYLOAD = 8 * 1024 * 1024
MAX_ENTRIES = 1_000_000
#: Signatures become Python objects on decode, so they get a tighter bound than cells.
MAX_SIGNATURES = 65_536
#: Ids are single MQTT topic levels, short enough for logs and metric labels.
MAX_ID_LEN = 64
SIGNATURE_LEN = 64
PUBLIC_KEY_LEN = 32
#: Scalars must fit SQLite's signed 64-bit INTEGER, where the store keeps them.
_INT_LIMIT = 2**63

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

# msgpack limits per object (the payload size bounds the totals).
_MAX_STR = 65_536
_MAX_CONTAINER = 4_096
_FRAME_MAX_MAP = 64


# ---------------------------------------------------------------- errors

class MalformedMessage(WireError):
    """Not msgpack, or a field is missing or of the wrong type."""

    reason = "malformed"


class InternalDecodeError(MalformedMessage):
    """decode hit an unexpected exception: a bug, reported instead of crashing the node."""

    reason = "internal"


class PayloadTooLarge(WireError):
    """The payload (or a delta to encode) exceeds the size limit."""

    reason = "too_large"


class UnsupportedVersion(WireError):
    """The wire version is not one this node speaks."""

    reason = "version"


class UnknownMessageType(WireError):
    """The message type is not one of ``TYPES``."""

    reason = "unknown_type"


class FederationMismatch(WireError):
    """The message belongs to another federation."""

    reason = "federation"


class TopicMismatch(WireError):
    """The topic a message arrived on disagrees with its signed header."""

    reason = "topic"


class BadSignature(WireError):
    """The Ed25519 signature does not match the body and the sender's key."""

    reason = "bad_signature"


class UnknownSender(WireError):
    """No key is pinned for the sender, or it is not on the strict allowlist."""

    reason = "unknown_sender"


class KeyMismatch(WireError):
    """A birth announces another public key than the one pinned for that node."""

    reason = "key_mismatch"


class Replay(WireError):
    """(epoch, seq) is not newer than the last accepted from that node for that type.

    ``duplicate`` is true when it equals the last accepted one: an honest QoS 1
    redelivery or a retained birth, which a node may choose not to penalise.
    """

    reason = "replay"

    def __init__(self, message: str = "", *, duplicate: bool = False) -> None:
        super().__init__(message)
        self.duplicate = duplicate


#: Every reason ``decode`` can raise, for pre-registering metric labels.
REASONS: tuple[str, ...] = (
    "too_large", "malformed", "version", "unknown_type", "federation", "topic",
    "fingerprint", "shape", "non_finite", "out_of_bounds", "unknown_action",
    "bad_signature", "unknown_sender", "key_mismatch", "replay", "internal",
)


# ---------------------------------------------------------------- ids and topics

_FORBIDDEN_ID_CHARS = frozenset("/+#\0")


def is_safe_id(value: object) -> bool:
    """True when ``value`` can be one MQTT topic level: non-empty, ≤ 64 printable chars, no / + #."""
    return (isinstance(value, str) and 0 < len(value) <= MAX_ID_LEN and value.isprintable()
            and _FORBIDDEN_ID_CHARS.isdisjoint(value))


def _show(value: object) -> str:
    """A bounded repr for error messages: peers control these values and logs are finite."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_id(value: object, what: str = "id") -> str:
    """Return ``value`` if it is a safe topic level, else raise ``MalformedMessage``."""
    if not is_safe_id(value):
        raise MalformedMessage(f"{what} {_show(value)} must be 1..{MAX_ID_LEN} printable chars "
                               "without / + # or NUL")
    return value  # type: ignore[return-value]


#: Topic kind of each message type (births and deaths share the retained presence topic).
KIND_OF_TYPE: dict[str, str] = {
    "delta": "delta", "birth": "presence", "death": "presence",
    "heartbeat": "heartbeat", "sync": "sync", "rebirth": "rebirth",
}
#: ``relay`` carries no message type of its own: an origin's signed payloads, verbatim,
#: re-sent by another node (``peerd.relay``); the topic names the relayer.
KINDS: tuple[str, ...] = ("delta", "presence", "heartbeat", "sync", "rebirth", "relay")
QOS: dict[str, int] = {"delta": 1, "presence": 1, "heartbeat": 0, "sync": 1, "rebirth": 1,
                       "relay": 1}
RETAIN: dict[str, bool] = {"delta": False, "presence": True, "heartbeat": False, "sync": False,
                           "rebirth": False, "relay": False}
#: Message types a relay may carry: an origin's deltas, and its birth (to pin its key).
RELAYABLE_TYPES: frozenset[str] = frozenset({"delta", "birth"})
#: Message types that carry the sender's own public key (self-signed: they can pin it).
KEYED_TYPES: frozenset[str] = frozenset({"birth", "rebirth"})
_TOPIC_ROOT = f"peerd/v{WIRE_VERSION}"


def topic(fed: str, kind: str, node: str) -> str:
    """``peerd/v1/{fed}/{kind}/{node}``, refusing ids that would break the topic tree."""
    if kind not in QOS:
        raise MalformedMessage(f"unknown topic kind {kind!r}; known: {list(KINDS)}")
    return f"{_TOPIC_ROOT}/{check_id(fed, 'federation')}/{kind}/{check_id(node, 'node id')}"


def subscriptions(fed: str) -> list[str]:
    """Topic filters for a federation, one per kind in ``KINDS`` order: subscribe each at ``QOS[kind]``.

    MQTT 3.1.1 has no no-local option: a node receives its own messages and
    must skip those whose header ``node`` is its own.
    """
    check_id(fed, "federation")
    return [f"{_TOPIC_ROOT}/{fed}/{kind}/+" for kind in KINDS]


def parse_topic(name: str) -> tuple[str, str, str] | None:
    """``(fed, kind, node)`` of a peerd topic, or None for anything else."""
    if not isinstance(name, str):
        return None
    parts = name.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != _TOPIC_ROOT:
        return None
    fed, kind, node = parts[2], parts[3], parts[4]
    if kind not in QOS or not is_safe_id(fed) or not is_safe_id(node):
        return None
    return fed, kind, node


class Route(NamedTuple):
    """Where and how a message is published."""

    topic: str
    qos: int
    retain: bool


def route(msg: Message) -> Route:
    """Topic, QoS and retain flag of a message, as fixed by DESIGN §4."""
    kind = KIND_OF_TYPE[msg.type]
    return Route(topic(msg.header.fed, kind, msg.header.node), QOS[kind], RETAIN[kind])


# ---------------------------------------------------------------- messages

def _as_uint(value: object, what: str) -> int:
    """An int in [0, 2^63): booleans and floats are not counters."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise MalformedMessage(f"{what} must be an int, got {type(value).__name__}")
    v = int(value)
    if not 0 <= v < _INT_LIMIT:
        raise ValueOutOfBounds(f"{what}={v} outside [0, 2^63)")
    return v


@dataclass(frozen=True)
class Header:
    """Fields every message carries: who sent it, for which federation and task, and when."""

    fed: str
    node: str
    fp: str
    epoch: int
    seq: int
    ts: float

    def __post_init__(self) -> None:
        check_id(self.fed, "federation")
        check_id(self.node, "node id")
        if not isinstance(self.fp, str) or not 0 < len(self.fp) <= MAX_ID_LEN:
            raise MalformedMessage(f"fingerprint must be 1..{MAX_ID_LEN} chars, got {_show(self.fp)}")
        object.__setattr__(self, "epoch", _as_uint(self.epoch, "epoch"))
        object.__setattr__(self, "seq", _as_uint(self.seq, "seq"))
        if isinstance(self.ts, bool) or not isinstance(self.ts, Real):
            raise MalformedMessage(f"ts must be a float, got {type(self.ts).__name__}")
        ts = float(self.ts) if isinstance(self.ts, float) or self.ts < 2**1000 else math.inf
        if not math.isfinite(ts):
            raise NonFiniteValue(f"ts={_show(self.ts)} is not finite")
        object.__setattr__(self, "ts", ts)


@dataclass(frozen=True)
class DeltaMsg:
    """Cells of one origin's contribution (``delta.origin`` may differ from the sender when relayed)."""

    type: ClassVar[str] = "delta"
    header: Header
    delta: Delta
    signatures: tuple[PatternSignature, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.delta, Delta):
            raise MalformedMessage("DeltaMsg.delta must be a peerd.delta.Delta")
        if self.delta.fingerprint != self.header.fp:
            raise FingerprintMismatch(
                f"delta fingerprint {self.delta.fingerprint!r} != header fp {self.header.fp!r}")
        check_id(self.delta.origin, "origin")
        object.__setattr__(self, "signatures", tuple(self.signatures))


@dataclass(frozen=True)
class Birth:
    """A node came online: its public key and own published version (retained)."""

    type: ClassVar[str] = "birth"
    header: Header
    public_key: bytes
    version: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.public_key, (bytes, bytearray, memoryview)):
            raise MalformedMessage("public_key must be bytes")
        pk = bytes(self.public_key)
        if len(pk) != PUBLIC_KEY_LEN:
            raise MalformedMessage(f"public_key has {len(pk)} bytes, expected {PUBLIC_KEY_LEN}")
        object.__setattr__(self, "public_key", pk)
        object.__setattr__(self, "version", _as_uint(self.version, "version"))


@dataclass(frozen=True)
class Death:
    """A node went offline (its MQTT Will, or published on a clean stop)."""

    type: ClassVar[str] = "death"
    header: Header


@dataclass(frozen=True)
class Heartbeat:
    """Liveness plus the anti-entropy digest: own published version and table size."""

    type: ClassVar[str] = "heartbeat"
    header: Header
    version: int
    size: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "version", _as_uint(self.version, "version"))
        object.__setattr__(self, "size", _as_uint(self.size, "size"))


@dataclass(frozen=True)
class SyncRequest:
    """The sender asks ``origin`` for every cell it changed after version ``since``."""

    type: ClassVar[str] = "sync"
    header: Header
    origin: str
    since: int

    def __post_init__(self) -> None:
        check_id(self.origin, "origin")
        object.__setattr__(self, "since", _as_uint(self.since, "since"))


@dataclass(frozen=True)
class Rebirth:
    """The sender asks node ``to`` for a fresh, non-retained birth (Sparkplug B's rebirth).

    Sent to a sender whose key this node has not pinned: its retained birth
    never arrived (a broker that keeps no retained messages, or does not
    deliver them to wildcard subscriptions). It carries the asker's own key and
    published version, self-signed like a birth, so that the asked node (which
    may not know the asker either) can verify it and pin the key.
    """

    type: ClassVar[str] = "rebirth"
    header: Header
    to: str
    public_key: bytes
    version: int = 0

    def __post_init__(self) -> None:
        check_id(self.to, "to")
        if not isinstance(self.public_key, (bytes, bytearray, memoryview)):
            raise MalformedMessage("public_key must be bytes")
        pk = bytes(self.public_key)
        if len(pk) != PUBLIC_KEY_LEN:
            raise MalformedMessage(f"public_key has {len(pk)} bytes, expected {PUBLIC_KEY_LEN}")
        object.__setattr__(self, "public_key", pk)
        object.__setattr__(self, "version", _as_uint(self.version, "version"))


Message = DeltaMsg | Birth | Death | Heartbeat | SyncRequest | Rebirth
TYPES: tuple[str, ...] = ("delta", "birth", "death", "heartbeat", "sync", "rebirth")


class Signer(Protocol):
    """Anything that signs a body with Ed25519 (``peerd.identity.Identity``)."""

    def sign(self, body: bytes) -> bytes: ...


# ---------------------------------------------------------------- array codecs

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


# ---------------------------------------------------------------- encode

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


def _body_fields(msg: Message) -> dict[str, Any]:
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


def encode(msg: Message, signer: Signer, *, max_payload: int = MAX_PAYLOAD,
           max_entries: int = MAX_ENTRIES) -> bytes:
    """Sign and frame a message. Raises ``PayloadTooLarge`` when receivers would refuse it
    (split the delta), ``ShapeMismatch``/``MalformedMessage`` for a message that cannot travel.
    """
    if isinstance(msg, DeltaMsg):
        if len(msg.delta) > max_entries:
            raise PayloadTooLarge(f"delta has {len(msg.delta)} cells, limit is {max_entries}")
        if len(msg.signatures) > MAX_SIGNATURES:
            raise PayloadTooLarge(f"{len(msg.signatures)} signatures, limit is {MAX_SIGNATURES}")
    body = msgpack.packb(_body_fields(msg), use_bin_type=True)
    signature = bytes(signer.sign(body))
    if len(signature) != SIGNATURE_LEN:
        raise MalformedMessage(f"signer returned {len(signature)} bytes, expected {SIGNATURE_LEN}")
    payload = msgpack.packb({"v": WIRE_VERSION, "b": body, "s": signature}, use_bin_type=True)
    if len(payload) > max_payload:
        raise PayloadTooLarge(f"payload of {len(payload)} bytes exceeds {max_payload}")
    return payload


# ---------------------------------------------------------------- decode

class Frame(NamedTuple):
    """A payload opened but not validated: the signed body bytes, its signature, its fields."""

    body: bytes
    signature: bytes
    fields: dict[str, Any]


def _unpack(data: bytes, *, max_bin: int, max_map: int) -> Any:
    """msgpack → Python with hard limits; any msgpack complaint becomes ``MalformedMessage``."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=max_bin,
                               max_str_len=_MAX_STR, max_array_len=_MAX_CONTAINER,
                               max_map_len=max_map, max_ext_len=_MAX_STR)
    except Exception as exc:  # msgpack raises ValueError, FormatError, StackError, ...
        raise MalformedMessage(f"not msgpack: {type(exc).__name__}: {exc}") from None


def _wire_version(obj: dict[str, Any], where: str) -> None:
    v = obj.get("v")
    if type(v) is not int:
        raise MalformedMessage(f"{where} lacks an integer wire version 'v'")
    if v != WIRE_VERSION:
        raise UnsupportedVersion(f"wire version {v}, this node speaks {WIRE_VERSION}")


def peek(payload: bytes | bytearray | memoryview, *, max_payload: int = MAX_PAYLOAD) -> Frame:
    """Open the frame and the body map, checking only size, msgpack shape and wire version."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise MalformedMessage(f"payload must be bytes, got {type(payload).__name__}")
    data = bytes(payload) if isinstance(payload, memoryview) else payload
    if len(data) > max_payload:
        raise PayloadTooLarge(f"payload of {len(data)} bytes exceeds {max_payload}")
    outer = _unpack(data, max_bin=max_payload, max_map=_FRAME_MAX_MAP)
    if type(outer) is not dict:
        raise MalformedMessage("payload is not a msgpack map")
    _wire_version(outer, "frame")
    body, signature = outer.get("b"), outer.get("s")
    if type(body) is not bytes or type(signature) is not bytes:
        raise MalformedMessage("frame needs b:bytes and s:bytes")
    if len(signature) != SIGNATURE_LEN:
        raise MalformedMessage(f"signature has {len(signature)} bytes, expected {SIGNATURE_LEN}")
    fields = _unpack(body, max_bin=len(body), max_map=_MAX_CONTAINER)
    if type(fields) is not dict:
        raise MalformedMessage("body is not a msgpack map")
    _wire_version(fields, "body")
    return Frame(body, signature, fields)


def _field(fields: Mapping[str, Any], name: str, typ: type) -> Any:
    """A required field of exactly type ``typ`` (so True is not an int and 1 is not a float)."""
    if name not in fields:
        raise MalformedMessage(f"missing field {name!r}")
    value = fields[name]
    if type(value) is not typ:
        raise MalformedMessage(
            f"field {name!r} must be {typ.__name__}, got {type(value).__name__}")
    return value


def _header(fields: Mapping[str, Any]) -> Header:
    return Header(fed=_field(fields, "fed", str), node=_field(fields, "node", str),
                  fp=_field(fields, "fp", str), epoch=_field(fields, "epoch", int),
                  seq=_field(fields, "seq", int), ts=_field(fields, "ts", float))


class _Limits(NamedTuple):
    n_actions: int
    q_bound: float
    max_entries: int
    max_signatures: int


def _check_confidence(conf: np.ndarray) -> None:
    if not np.isfinite(conf).all():
        raise NonFiniteValue("a signature confidence is NaN or infinite")
    if conf.size and (float(conf.min()) < 0.0 or float(conf.max()) > 1.0):
        raise ValueOutOfBounds("a signature confidence is outside [0, 1]")


def _parse_signatures(obj: object, lim: _Limits) -> tuple[PatternSignature, ...]:
    arrays = _decode_arrays(obj, "sigs", SIGNATURE_DTYPES, lim.max_signatures)
    if arrays["actions"].size and int(arrays["actions"].max()) >= lim.n_actions:
        raise BadActionIndex(f"signature action {int(arrays['actions'].max())} "
                             f"outside 0..{lim.n_actions - 1}")
    _check_confidence(arrays["confidence"])
    cols = (arrays["keys"].tolist(), arrays["actions"].tolist(),
            arrays["confidence"].tolist(), arrays["visits"].tolist())
    return tuple(PatternSignature(k, a, c, v) for k, a, c, v in zip(*cols, strict=True))


def _parse_delta(h: Header, f: Mapping[str, Any], lim: _Limits) -> DeltaMsg:
    origin = check_id(_field(f, "origin", str), "origin")
    lo = _as_uint(_field(f, "from", int), "from")
    hi = _as_uint(_field(f, "to", int), "to")
    cells = _decode_arrays(f.get("cells"), "cells", CELL_DTYPES, lim.max_entries)
    delta = Delta(origin, h.fp, lo, hi, **cells)
    delta.validate(fingerprint=h.fp, n_actions=lim.n_actions, q_bound=lim.q_bound,
                   max_entries=lim.max_entries)
    return DeltaMsg(h, delta, _parse_signatures(f.get("sigs"), lim))


def _parse_birth(h: Header, f: Mapping[str, Any], lim: _Limits) -> Birth:
    return Birth(h, _field(f, "pk", bytes), _field(f, "version", int))


def _parse_death(h: Header, f: Mapping[str, Any], lim: _Limits) -> Death:
    return Death(h)


def _parse_heartbeat(h: Header, f: Mapping[str, Any], lim: _Limits) -> Heartbeat:
    return Heartbeat(h, _field(f, "version", int), _field(f, "size", int))


def _parse_sync(h: Header, f: Mapping[str, Any], lim: _Limits) -> SyncRequest:
    return SyncRequest(h, _field(f, "origin", str), _field(f, "since", int))


def _parse_rebirth(h: Header, f: Mapping[str, Any], lim: _Limits) -> Rebirth:
    return Rebirth(h, _field(f, "to", str), _field(f, "pk", bytes), _field(f, "version", int))


_PARSERS: dict[str, Callable[[Header, Mapping[str, Any], _Limits], Message]] = {
    "delta": _parse_delta, "birth": _parse_birth, "death": _parse_death,
    "heartbeat": _parse_heartbeat, "sync": _parse_sync, "rebirth": _parse_rebirth,
}


def _claimed_key(msg_type: str, fields: Mapping[str, Any]) -> bytes | None:
    """The public key a birth or rebirth request announces (before the signature it must verify)."""
    if msg_type not in KEYED_TYPES:
        return None
    pk = _field(fields, "pk", bytes)
    if len(pk) != PUBLIC_KEY_LEN:
        raise MalformedMessage(f"public key has {len(pk)} bytes, expected {PUBLIC_KEY_LEN}")
    return pk


def _decode(payload: bytes | bytearray | memoryview, fed: str, fingerprint: str, lim: _Limits,
            max_payload: int, verifier: Verifier | None, commit: bool,
            topic_name: str | None) -> Message:
    frame = peek(payload, max_payload=max_payload)
    f = frame.fields
    msg_type = _field(f, "type", str)
    parser = _PARSERS.get(msg_type)
    if parser is None:
        raise UnknownMessageType(f"unknown message type {msg_type[:64]!r}")
    h = _header(f)
    if h.fed != fed:
        raise FederationMismatch(f"message for federation {h.fed!r}, this node is in {fed!r}")
    if h.fp != fingerprint:
        raise FingerprintMismatch(f"task fingerprint {h.fp!r}, expected {fingerprint!r}")
    if topic_name is not None and parse_topic(topic_name) != (h.fed, KIND_OF_TYPE[msg_type], h.node):
        raise TopicMismatch(f"{msg_type} of {h.node!r} arrived on topic {topic_name[:200]!r}")
    if verifier is not None:  # authenticate before inflating anything; replays cost nothing
        verifier.check(h, msg_type, frame.body, frame.signature,
                       public_key=_claimed_key(msg_type, f))
    try:
        msg = parser(h, f, lim)
    except WireError as exc:
        exc.authenticated = verifier is not None  # the signature checked out: the sender said this
        raise
    if verifier is not None and commit:
        verifier.commit(msg)
    return msg


def decode(payload: bytes | bytearray | memoryview, *, fed: str, fingerprint: str,
           n_actions: int, q_bound: float = DEFAULT_Q_BOUND, max_payload: int = MAX_PAYLOAD,
           max_entries: int = MAX_ENTRIES, max_signatures: int = MAX_SIGNATURES,
           verifier: Verifier | None = None, commit: bool = True,
           topic: str | None = None) -> Message:
    """Validate a payload completely and return its message; raise a ``WireError`` otherwise.

    With a ``verifier`` the signature, sender key and replay are checked as soon
    as the header is known (before any array is inflated), and the verifier's
    state (pinned key, last (epoch, seq)) is updated only once everything
    validated — or not at all with ``commit=False``, for a caller that commits
    with ``verifier.commit(msg)`` after applying the message. ``topic``, when
    given, must agree with the signed header.

    Never raises anything but ``WireError``: an unexpected exception is a bug
    and surfaces as ``InternalDecodeError`` (reason "internal").
    """
    lim = _Limits(int(n_actions), float(q_bound), int(max_entries), int(max_signatures))
    try:
        return _decode(payload, fed, fingerprint, lim, max_payload, verifier, commit, topic)
    except WireError:
        raise
    except Exception as exc:
        raise InternalDecodeError(f"decode failed unexpectedly: {type(exc).__name__}: {exc}") \
            from exc
