"""decode under attack: it returns a valid message or raises WireError, nothing else, ever."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerd.delta import Delta, PatternSignature
from peerd.errors import WireError
from peerd.identity import Identity, Verifier
from peerd.task import Task
from peerd.wire import DeltaMsg, Header, Heartbeat, decode, encode, peek


def _load_fuzzer() -> ModuleType:
    """The fuzzer lives in scripts/ (it is also a CLI); load it from there, once."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "fuzz_wire.py"
    spec = importlib.util.spec_from_file_location("fuzz_wire", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_wire"] = module
    spec.loader.exec_module(module)
    return module


fuzz_wire = _load_fuzzer()

TASK = Task(6)
FED = "fed"
KEY = Identity.from_seed(b"k" * 32)
FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


HEADER = Header(FED, "n1", TASK.fingerprint, 1, 5, 1.7e9)


def _original(m: int, *, sort: bool = True) -> bytes:
    rng = np.random.default_rng(m)
    keys = rng.integers(0, 2**64, m, dtype=np.uint64)
    if sort:
        keys.sort()
    delta = Delta.build("n1", TASK.fingerprint, 0, m, keys=keys, actions=rng.integers(0, 6, m),
                        q=rng.normal(0, 5, m), lw=rng.random(m), n=np.ones(m), succ=np.zeros(m),
                        fail=np.ones(m), version=1 + rng.permutation(m))
    return encode(DeltaMsg(HEADER, delta, (PatternSignature(3, 2, 0.5, 9),)), KEY)


#: Signed originals covering raw and compressed arrays, sorted and unsorted keys.
ORIGINALS = [_original(0), _original(7), _original(100), _original(100, sort=False),
             encode(Heartbeat(HEADER, 10, 20), KEY)]


def _decode(payload: bytes) -> object:
    """decode with a fresh verifier pinned to the true key; raises only WireError."""
    verifier = Verifier(allowlist={"n1": KEY.public_key})
    return decode(payload, fed=FED, fingerprint=TASK.fingerprint, n_actions=TASK.n_actions,
                  verifier=verifier, max_payload=64 * 1024)


def _accepted_only_if_original(mutated: bytes, original: bytes) -> None:
    try:
        _decode(mutated)
    except WireError as exc:
        assert exc.reason != "internal", exc
        return
    got, want = peek(mutated), peek(original)
    assert (got.body, got.signature) == (want.body, want.signature)


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_only_raise_wire_error(data: bytes) -> None:
    """Arbitrary bytes never crash decode: they are rejected with a WireError."""
    with pytest.raises(WireError) as info:
        _decode(data)
    assert info.value.reason != "internal"


@FUZZ
@given(st.sampled_from(ORIGINALS), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)),
                                            min_size=1, max_size=8))
def test_bit_flips_of_signed_messages(original: bytes, flips: list[tuple[int, int]]) -> None:
    """Any bit flips of a signed message are rejected, or leave its signed content intact."""
    b = bytearray(original)
    for pos, bit in flips:
        b[pos % len(b)] ^= 1 << bit
    _accepted_only_if_original(bytes(b), original)


@FUZZ
@given(st.sampled_from(ORIGINALS), st.data())
def test_truncations_and_extensions(original: bytes, data: st.DataObject) -> None:
    """Every strict prefix, and any trailing junk, is rejected with a WireError."""
    cut = data.draw(st.integers(0, len(original) - 1))
    _accepted_only_if_original(original[:cut], original)
    _accepted_only_if_original(original + data.draw(st.binary(min_size=1, max_size=9)), original)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() |
    st.text(max_size=20) | st.binary(max_size=70),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
        st.sampled_from(["v", "b", "s", "type", "fed", "node", "fp", "epoch", "seq", "ts",
                         "cells", "sigs", "keys", "dt", "n", "c", "d", "pk", "version"]),
        inner, max_size=8),
    max_leaves=30)


@FUZZ
@given(msgpack_values)
def test_valid_msgpack_of_wrong_shape(value: object) -> None:
    """Well-formed msgpack that is not a v1 message (as payload or signed body) is rejected."""
    packed = msgpack.packb(value, use_bin_type=True)
    for payload in (packed, msgpack.packb({"v": 1, "b": packed, "s": KEY.sign(packed)})):
        with pytest.raises(WireError) as info:
            _decode(payload)
        assert info.value.reason != "internal"


def test_fuzzer_run_finds_nothing() -> None:
    """A short run of scripts/fuzz_wire.py: no crash, no mutant accepted, every original accepted."""
    stats = fuzz_wire.Fuzzer(seed=20240501).run(4000)
    assert stats.crashes == 0, stats.examples
    assert stats.accepted_not_original == 0, stats.examples
    assert stats.originals_rejected == 0, stats.examples
    reasons = set(stats.rejected_by_reason)
    assert {"malformed", "too_large", "version", "unknown_type", "federation", "fingerprint",
            "shape", "non_finite", "out_of_bounds", "unknown_action", "bad_signature",
            "unknown_sender", "key_mismatch", "replay"} <= reasons


def test_replayed_and_forged_messages() -> None:
    """A replay of an accepted message and a copy signed by another key are both rejected."""
    verifier = Verifier(allowlist={"n1": KEY.public_key})
    kw = {"fed": FED, "fingerprint": TASK.fingerprint, "n_actions": TASK.n_actions,
          "verifier": verifier}
    decode(ORIGINALS[0], **kw)  # type: ignore[arg-type]
    with pytest.raises(WireError, match="not newer"):
        decode(ORIGINALS[0], **kw)  # type: ignore[arg-type]
    body = peek(ORIGINALS[1]).body
    forged = msgpack.packb({"v": 1, "b": body, "s": Identity.generate().sign(body)})
    with pytest.raises(WireError) as info:
        decode(forged, **kw)  # type: ignore[arg-type]
    assert info.value.reason == "bad_signature"
