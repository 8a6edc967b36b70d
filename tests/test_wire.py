"""Wire protocol v1: round trips, codecs, topics and every rejection reason."""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from peerd import decode_cmd, wire
from peerd.delta import CELL_FIELDS, Delta, PatternSignature
from peerd.errors import FingerprintMismatch, ShapeMismatch, ValueOutOfBounds, WireError
from peerd.identity import Identity
from peerd.task import Task
from peerd.wire import (
    Birth,
    Death,
    DeltaMsg,
    Header,
    Heartbeat,
    MalformedMessage,
    Message,
    SyncRequest,
    codec,
    decode,
    encode,
    parse_topic,
    peek,
    route,
    subscriptions,
    topic,
)

TASK = Task(6)
FP = TASK.fingerprint
FED = "fed"
ME = Identity.from_seed(bytes(range(32)))


def header(seq: int = 1, node: str = "n1", epoch: int = 1) -> Header:
    return Header(FED, node, FP, epoch, seq, 1.7e9 + seq)


def make_delta(m: int, *, sort: bool = True, seed: int = 0, origin: str = "n1") -> Delta:
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 2**64, m, dtype=np.uint64)
    if sort:
        keys.sort()
    n = rng.integers(1, 30, m)
    return Delta.build(origin, FP, 10, 10 + m, keys=keys, actions=rng.integers(0, 6, m),
                       q=rng.normal(0, 5, m), lw=2.8e6 + rng.random(m), n=n,
                       succ=n // 2, fail=n // 4, version=11 + rng.permutation(m))


def sample_messages() -> list[Message]:
    sigs = (PatternSignature(2**64 - 1, 5, 0.25, 7), PatternSignature(0, 0, 1.0, 2**40))
    return [DeltaMsg(header(1), make_delta(10), sigs), DeltaMsg(header(2), make_delta(500), ()),
            DeltaMsg(header(3), Delta.empty("n1", FP), ()), Birth(header(4), ME.public_key, 42),
            Death(header(5)), Heartbeat(header(6), 99, 1234), SyncRequest(header(7), "n2", 17)]


def dec(payload: bytes, **kw: Any) -> Message:
    kw = {"fed": FED, "fingerprint": FP, "n_actions": TASK.n_actions, **kw}
    return decode(payload, **kw)


def same(a: Message, b: Message) -> bool:
    """Field-wise equality, comparing delta arrays by value (Delta compares by identity);
    fields outside equality (``DeltaMsg.bounds``, the decoder's finding) are skipped."""
    if type(a) is not type(b):
        return False
    for f in dataclasses.fields(a):
        if not f.compare:
            continue
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, Delta):
            scalars = ("origin", "fingerprint", "from_version", "to_version")
            if any(getattr(x, s) != getattr(y, s) for s in scalars):
                return False
            if not all(np.array_equal(getattr(x, c), getattr(y, c)) and
                       getattr(x, c).dtype == getattr(y, c).dtype for c in CELL_FIELDS):
                return False
        elif x != y:
            return False
    return True


def reframe(payload: bytes, edit: Callable[[dict[str, Any]], None],
            signer: Identity = ME) -> bytes:
    """Edit a payload's body fields and sign it again (so only validation can object)."""
    fields = msgpack.unpackb(peek(payload).body)
    edit(fields)
    body = msgpack.packb(fields, use_bin_type=True)
    return msgpack.packb({"v": 1, "b": body, "s": signer.sign(body)}, use_bin_type=True)


def reason_of(payload: bytes, **kw: Any) -> str:
    with pytest.raises(WireError) as info:
        dec(payload, **kw)
    return info.value.reason


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("msg", sample_messages(), ids=lambda m: f"{m.type}")
def test_round_trip_every_type(msg: Message) -> None:
    """Every message type decodes to exactly what was encoded."""
    assert same(dec(encode(msg, ME)), msg)


def test_a_decoded_delta_carries_the_bounds_its_check_found() -> None:
    """The decoder checks every cell once and hands on what ``Delta.validate`` found, so
    that a node does not check the cells again (``QTable.check(delta, bounds)``)."""
    d = make_delta(300)
    got = dec(encode(DeltaMsg(header(), d, ()), ME))
    assert isinstance(got, DeltaMsg) and got.bounds is not None
    want = d.validate(fingerprint=FP, n_actions=TASK.n_actions)
    assert got.bounds.lw_max == pytest.approx(want.lw_max)
    assert got.bounds[1:] == want[1:]  # version_max, ordered, outcomes
    assert DeltaMsg(header(), d, ()).bounds is None  # a message built to send is not checked


def test_large_delta_is_compressed_and_exact() -> None:
    """Big arrays are byte-shuffled + zlib (keys delta-coded) and come back bit-exact, read-only."""
    msg = DeltaMsg(header(), make_delta(5000), ())
    payload = encode(msg, ME)
    codecs = {f: a["c"] for f, a in peek(payload).fields["cells"].items()}
    assert codecs["keys"] == wire.CODEC_DELTA_SHUFFLE
    assert codecs["q"] == wire.CODEC_SHUFFLE
    assert len(payload) / 5000 < 24
    out = dec(payload)
    assert same(out, msg)
    assert not out.delta.keys.flags.writeable and not out.delta.q.flags.writeable


def test_unsorted_keys_keep_their_order() -> None:
    """The encoder assumes nothing about sorting: unsorted keys round-trip in their order."""
    msg = DeltaMsg(header(), make_delta(300, sort=False), ())
    payload = encode(msg, ME)
    assert peek(payload).fields["cells"]["keys"]["c"] == wire.CODEC_SHUFFLE
    assert same(dec(payload), msg)


def test_small_arrays_travel_raw() -> None:
    """Below COMPRESS_MIN_CELLS arrays are raw little-endian bytes of exactly n*itemsize."""
    payload = encode(DeltaMsg(header(), make_delta(10), ()), ME)
    keys = peek(payload).fields["cells"]["keys"]
    assert keys == {"dt": "<u8", "n": 10, "c": "raw", "d": keys["d"]} and len(keys["d"]) == 80


def test_encoding_is_deterministic() -> None:
    """The same message encodes to the same bytes (Ed25519 is deterministic too)."""
    msg = DeltaMsg(header(), make_delta(200), ())
    assert encode(msg, ME) == encode(msg, ME)


u64 = st.integers(0, 2**63 - 1)
ids = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Co", "Cn"),
                            blacklist_characters="/+#"), min_size=1, max_size=64) \
    .filter(wire.is_safe_id)
headers = st.builds(Header, fed=st.just(FED), node=ids, fp=st.just(FP), epoch=u64, seq=u64,
                    ts=st.floats(allow_nan=False, allow_infinity=False))


@st.composite
def deltas(draw: st.DrawFn) -> Delta:
    m = draw(st.integers(0, 150))
    lo = draw(st.integers(0, 2**62))

    def arr(dtype: str, elements: st.SearchStrategy[Any]) -> np.ndarray:
        return draw(hnp.arrays(np.dtype(dtype), m, elements=elements))

    keys = arr("<u8", st.integers(0, 2**64 - 1))
    if draw(st.booleans()):
        keys = np.sort(keys)
    n = arr("<u4", st.integers(1, 2**32 - 1))
    return Delta.build(draw(ids), FP, lo, lo + m + 3, keys=keys,
                       actions=arr("<u2", st.integers(0, 5)),
                       q=arr("<f4", st.floats(-1e6, 1e6, width=32)),
                       lw=arr("<f8", st.floats(-1e9, 1e9)), n=n,
                       succ=n // 2, fail=n // 3,
                       version=lo + 1 + arr("<u8", st.integers(0, m + 2)))


signatures = st.lists(st.builds(PatternSignature, key=st.integers(0, 2**64 - 1),
                                action=st.integers(0, 5), confidence=st.floats(0, 1),
                                visits=st.integers(0, 2**64 - 1)), max_size=80).map(tuple)
messages = st.one_of(
    st.builds(DeltaMsg, header=headers, delta=deltas(), signatures=signatures),
    st.builds(Birth, header=headers, public_key=st.binary(min_size=32, max_size=32),
              version=u64),
    st.builds(Death, header=headers),
    st.builds(Heartbeat, header=headers, version=u64, size=u64),
    st.builds(SyncRequest, header=headers, origin=ids, since=u64),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_generated_messages_round_trip(msg: Message) -> None:
    """Any valid message (random ids, extreme ints, arrays sorted or not) round-trips exactly."""
    assert same(dec(encode(msg, ME)), msg)


# ---------------------------------------------------------------- rejections

def _cells(f: dict[str, Any]) -> dict[str, Any]:
    return f["cells"]


def _raw(a: np.ndarray) -> dict[str, Any]:
    return {"dt": a.dtype.str, "n": len(a), "c": "raw", "d": a.tobytes()}


def _set_cell(name: str, index: int, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(f: dict[str, Any]) -> None:
        arr = _cells(f)[name]
        a = np.frombuffer(arr["d"], np.dtype(arr["dt"])).copy()
        a[index] = value
        _cells(f)[name] = _raw(a)
    return edit


def _wrapping_keys(f: dict[str, Any]) -> None:
    n = _cells(f)["keys"]["n"]
    planes = np.full(n, 2**63 + 1, np.uint64).view(np.uint8).reshape(n, 8).T
    _cells(f)["keys"] = {"dt": "<u8", "n": n, "c": "delta+shuf+zlib",
                         "d": [p.tobytes() for p in planes]}  # stored planes


def _put(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda f: f.__setitem__(key, value)


BODY_EDITS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("body version", _put("v", 2), "version"),
    ("unknown type", _put("type", "gossip"), "unknown_type"),
    ("other federation", _put("fed", "other"), "federation"),
    ("other task", _put("fp", "0123456789abcdef"), "fingerprint"),
    ("missing seq", lambda f: f.pop("seq"), "malformed"),
    ("bool epoch", _put("epoch", True), "malformed"),
    ("int ts", _put("ts", 5), "malformed"),
    ("nan ts", _put("ts", float("nan")), "non_finite"),
    ("negative seq", _put("seq", -1), "out_of_bounds"),
    ("seq beyond int64", _put("seq", 2**63), "out_of_bounds"),
    ("slash in node", _put("node", "a/b"), "malformed"),
    ("wildcard origin", _put("origin", "+"), "malformed"),
    ("long node", _put("node", "x" * 65), "malformed"),
    ("cells not a map", _put("cells", [1, 2]), "malformed"),
    ("missing array", lambda f: _cells(f).pop("lw"), "malformed"),
    ("nan q", _set_cell("q", 3, np.nan), "non_finite"),
    ("inf lw", _set_cell("lw", 0, np.inf), "non_finite"),
    ("q beyond bound", _set_cell("q", 1, 2e6), "out_of_bounds"),
    ("unknown action", _set_cell("actions", 2, 6), "unknown_action"),
    ("zero visits", _set_cell("n", 2, 0), "out_of_bounds"),
    ("cell version outside range", _set_cell("version", 2, 10**9), "out_of_bounds"),
    ("reversed range", lambda f: f.update({"from": 50, "to": 40}), "out_of_bounds"),
    ("10^9 cells claimed", lambda f: [a.__setitem__("n", 10**9) for a in _cells(f).values()],
     "shape"),
    ("lengths differ", lambda f: _cells(f)["q"].__setitem__("n", 9), "shape"),
    ("wrong dtype", lambda f: _cells(f)["q"].__setitem__("dt", "<f8"), "shape"),
    ("big-endian dtype", lambda f: _cells(f)["keys"].__setitem__("dt", ">u8"), "shape"),
    ("raw bytes too short", lambda f: _cells(f)["q"].__setitem__("d", b"\0" * 39), "shape"),
    ("unknown codec", lambda f: _cells(f)["q"].__setitem__("c", "pickle"), "malformed"),
    ("delta-coded keys wrap", _wrapping_keys, "malformed"),
    ("signature confidence > 1",
     lambda f: f["sigs"].__setitem__("confidence", _raw(np.array([1.5], "<f8"))), "out_of_bounds"),
    ("signature lengths differ",
     lambda f: f["sigs"].__setitem__("visits", _raw(np.array([1, 2], "<u8"))), "shape"),
]


@pytest.mark.parametrize(("edit", "reason"), [e[1:] for e in BODY_EDITS],
                         ids=[e[0] for e in BODY_EDITS])
def test_invalid_body_is_rejected_with_reason(edit: Callable[[dict[str, Any]], None],
                                              reason: str) -> None:
    """Each kind of invalid (but correctly signed) message is rejected with its stable reason."""
    msg = DeltaMsg(header(), make_delta(10), (PatternSignature(1, 1, 0.5, 3),))
    assert reason_of(reframe(encode(msg, ME), edit)) == reason


ZN = 2000  # cells: large enough that a compressed plane is shorter than the array
BAD_PLANES = [
    ("zip bomb", zlib.compress(bytes(10**6), 9), "shape"),
    ("inflates short", zlib.compress(bytes(ZN - 1)), "shape"),
    ("garbage after stream", zlib.compress(bytes(ZN)) + b"x", "shape"),
    ("truncated stream", zlib.compress(bytes(ZN))[:-3], "shape"),
    ("not zlib", b"\x00" * 100, "malformed"),
    ("longer than the array", bytes(ZN + 1), "shape"),
]


@pytest.mark.parametrize(("plane", "reason"), [b[1:] for b in BAD_PLANES],
                         ids=[b[0] for b in BAD_PLANES])
def test_planes_must_inflate_to_exactly_n_bytes(plane: bytes, reason: str) -> None:
    """Decompression is bounded: a plane must inflate to exactly n bytes, never more memory."""
    assert len(plane) < ZN or reason == "shape"

    def edit(f: dict[str, Any]) -> None:
        _cells(f)["q"].update(c="shuf+zlib", d=[plane] + [bytes(ZN)] * 3)
    msg = DeltaMsg(header(), make_delta(ZN), ())
    assert reason_of(reframe(encode(msg, ME), edit)) == reason


def test_inflate_stops_at_the_expected_size() -> None:
    """_inflate reads at most size + 1 bytes of a 100 MB zip bomb before refusing it."""
    bomb = zlib.compress(bytes(10**8), 9)
    with pytest.raises(ShapeMismatch):
        codec._inflate(bomb, 1000)


def test_birth_key_of_wrong_length_is_malformed() -> None:
    """A birth must announce exactly 32 bytes of public key."""
    payload = reframe(encode(Birth(header(), ME.public_key), ME), _put("pk", b"\x01" * 31))
    assert reason_of(payload) == "malformed"


def test_frame_version_and_shape() -> None:
    """An unknown frame version is "version"; a broken frame or signature length is "malformed"."""
    body = peek(encode(Death(header()), ME)).body
    def framed(**kw: Any) -> bytes:
        return msgpack.packb({"v": 1, "b": body, "s": ME.sign(body), **kw})
    assert reason_of(framed(v=2)) == "version"
    assert reason_of(framed(s=b"\0" * 63)) == "malformed"
    assert reason_of(framed(b="not bytes")) == "malformed"
    assert reason_of(msgpack.packb([1, body])) == "malformed"
    assert reason_of(b"\xc1") == "malformed"
    assert reason_of(b"\x91" * 5000) == "malformed"  # nested arrays deeper than msgpack allows


def test_oversized_payload_is_rejected_before_parsing() -> None:
    """A payload above max_payload is refused as "too_large" whatever it holds."""
    assert reason_of(b"\0" * 101, max_payload=100) == "too_large"


def test_entry_limit_applies_before_inflating() -> None:
    """A delta above max_entries is rejected as "shape"."""
    assert reason_of(encode(DeltaMsg(header(), make_delta(100), ()), ME), max_entries=99) \
        == "shape"


def test_unknown_fields_are_ignored() -> None:
    """Forward compatibility: extra fields in frame, body and array maps are ignored."""
    payload = encode(DeltaMsg(header(), make_delta(100), ()), ME)

    def extend(f: dict[str, Any]) -> None:
        f["future"] = {"anything": [1, 2.5, b"x"]}
        _cells(f)["keys"]["future"] = 1
        _cells(f)["new_array"] = _raw(np.arange(3))
    payload = reframe(payload, extend)
    outer = msgpack.unpackb(payload)
    outer["x"] = "future frame field"
    assert isinstance(dec(msgpack.packb(outer)), DeltaMsg)


def test_decode_rejects_non_bytes_input() -> None:
    """decode raises WireError, not TypeError, for input that is not bytes at all."""
    with pytest.raises(MalformedMessage):
        dec("a string")  # type: ignore[arg-type]


def test_topic_must_match_header() -> None:
    """A signed message republished on another node's topic is rejected as "topic"."""
    payload = encode(Heartbeat(header(), 1, 1), ME)
    assert isinstance(dec(payload, topic="peerd/v1/fed/heartbeat/n1"), Heartbeat)
    assert reason_of(payload, topic="peerd/v1/fed/heartbeat/n2") == "topic"
    assert reason_of(payload, topic="peerd/v1/fed/delta/n1") == "topic"


# ---------------------------------------------------------------- encode side

def test_encode_refuses_what_receivers_would_reject() -> None:
    """encode raises PayloadTooLarge for oversized deltas, so the node can split them."""
    msg = DeltaMsg(header(), make_delta(100), ())
    with pytest.raises(wire.PayloadTooLarge):
        encode(msg, ME, max_entries=50)
    with pytest.raises(wire.PayloadTooLarge):
        encode(msg, ME, max_payload=1000)


def test_messages_check_themselves() -> None:
    """Headers and messages validate on construction, with WireError subclasses."""
    with pytest.raises(MalformedMessage):
        Header(FED, "a/b", FP, 1, 1, 0.0)
    with pytest.raises(ValueOutOfBounds):
        Header(FED, "n", FP, -1, 1, 0.0)
    with pytest.raises(MalformedMessage):
        Birth(header(), b"short")
    with pytest.raises(FingerprintMismatch):
        DeltaMsg(header(), Delta.empty("n1", "other"))
    with pytest.raises(MalformedMessage):
        encode(DeltaMsg(header(), make_delta(2), (PatternSignature(-1, 0, 0.5, 1),)), ME)
    assert Header(FED, "n", FP, np.int64(3), 4, 1).epoch == 3  # numpy ints are normalised


# ---------------------------------------------------------------- topics

def test_topics_follow_design() -> None:
    """Topic names, subscriptions, QoS and retain flags are those of DESIGN §4."""
    assert topic("f", "delta", "n1") == "peerd/v1/f/delta/n1"
    assert subscriptions("f") == ["peerd/v1/f/delta/+", "peerd/v1/f/presence/+",
                                  "peerd/v1/f/heartbeat/+", "peerd/v1/f/sync/+",
                                  "peerd/v1/f/rebirth/+", "peerd/v1/f/relay/+"]
    assert parse_topic("peerd/v1/f/presence/n1") == ("f", "presence", "n1")
    h = header()
    assert route(Birth(h, ME.public_key)) == ("peerd/v1/fed/presence/n1", 1, True)
    assert route(Death(h)) == ("peerd/v1/fed/presence/n1", 1, True)
    assert route(Heartbeat(h, 0, 0)) == ("peerd/v1/fed/heartbeat/n1", 0, False)
    assert route(DeltaMsg(h, Delta.empty("n1", FP))).qos == 1
    assert route(SyncRequest(h, "n2", 0)) == ("peerd/v1/fed/sync/n1", 1, False)


@pytest.mark.parametrize("bad", ["", "a/b", "a+", "#", "x\0", "x" * 65, "tab\tid"])
def test_unsafe_ids_are_refused(bad: str) -> None:
    """Ids that would break or widen the topic tree are refused everywhere."""
    assert not wire.is_safe_id(bad)
    with pytest.raises(MalformedMessage):
        topic(bad, "delta", "n")
    with pytest.raises(MalformedMessage):
        topic("f", "delta", bad)
    assert parse_topic(f"peerd/v1/{bad}/delta/n") is None


def test_parse_topic_rejects_foreign_topics() -> None:
    """Anything that is not a peerd v1 topic of a known kind parses to None."""
    for t in ["peerd/v2/f/delta/n", "other/v1/f/delta/n", "peerd/v1/f/inbox/n",
              "peerd/v1/f/delta", "peerd/v1/f/delta/n/x"]:
        assert parse_topic(t) is None


# ---------------------------------------------------------------- surface

def test_public_surface() -> None:
    """__all__ names exist, and every reason decode can raise is listed in REASONS."""
    assert all(hasattr(wire, name) for name in wire.__all__)
    classes = [getattr(wire, n) for n in wire.__all__ if isinstance(getattr(wire, n), type)]
    reasons = {c.reason for c in classes if issubclass(c, WireError)}
    assert reasons <= set(wire.REASONS)
    assert {"fingerprint", "shape", "non_finite", "out_of_bounds", "unknown_action"} \
        <= set(wire.REASONS)


# ---------------------------------------------------------------- peerd decode

def test_decode_command_verdicts(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """`peerd decode` exits 0 with "valid", 1 with the rejection reason, 2 on usage errors."""
    path = tmp_path / "payload.bin"
    path.write_bytes(encode(DeltaMsg(header(), make_delta(300), ()), ME))
    assert decode_cmd.main([str(path), "--pubkey", ME.public_key.hex(), "--actions", "6"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"] == "valid" and report["message"]["cells"] == 300
    assert len(report["message"]["first_cells"]) == 5
    other = Identity.generate().public_key.hex()
    assert decode_cmd.main([str(path), "--pubkey", other]) == 1
    assert json.loads(capsys.readouterr().out)["verdict"].startswith("rejected: bad_signature")
    assert decode_cmd.main([str(path), "--actions", "2"]) == 1
    assert json.loads(capsys.readouterr().out)["verdict"].startswith("rejected: unknown_action")
    path.write_bytes(b"\xc1garbage")
    assert decode_cmd.main([str(path)]) == 1
    assert json.loads(capsys.readouterr().out)["verdict"].startswith("rejected: malformed")
    assert decode_cmd.main([str(tmp_path / "missing.bin")]) == 2
    assert decode_cmd.main([str(path), "--pubkey", "xyz"]) == 2
