"""Node identity (Ed25519 key file) and the Verifier: pinning, signatures, replay, persistence."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerd.delta import Delta
from peerd.errors import StoreError, WireError
from peerd.identity import Identity, Verifier, verify_signature
from peerd.task import Task
from peerd.wire import (
    Birth,
    Death,
    DeltaMsg,
    Header,
    Heartbeat,
    Message,
    Replay,
    SyncRequest,
    decode,
    encode,
    peek,
)

TASK = Task(4)
FED = "fed"
A = Identity.from_seed(b"a" * 32)
B = Identity.from_seed(b"b" * 32)


def hdr(seq: int, *, node: str = "a", epoch: int = 1) -> Header:
    return Header(FED, node, TASK.fingerprint, epoch, seq, 1.0 + seq)


def delta_msg(seq: int, *, node: str = "a", epoch: int = 1) -> DeltaMsg:
    d = Delta.build(node, TASK.fingerprint, 0, 1, keys=[7], actions=[1], q=[0.5], lw=[1.0],
                    n=[1], succ=[0], fail=[0], version=[1])
    return DeltaMsg(hdr(seq, node=node, epoch=epoch), d)


def feed(v: Verifier, payload: bytes, **kw: object) -> Message:
    return decode(payload, fed=FED, fingerprint=TASK.fingerprint, n_actions=TASK.n_actions,
                  verifier=v, **kw)  # type: ignore[arg-type]


def reason(v: Verifier, payload: bytes) -> str:
    with pytest.raises(WireError) as info:
        feed(v, payload)
    return info.value.reason


def birth(seq: int = 1, *, key: Identity = A, signer: Identity | None = None,
          node: str = "a") -> bytes:
    return encode(Birth(hdr(seq, node=node), key.public_key), signer or key)


# ---------------------------------------------------------------- Identity

def test_sign_and_verify() -> None:
    """A signature verifies under its key only, and only for the exact body."""
    sig = A.sign(b"body")
    assert len(sig) == 64 and verify_signature(A.public_key, b"body", sig)
    assert not verify_signature(A.public_key, b"bodY", sig)
    assert not verify_signature(B.public_key, b"body", sig)
    assert Identity.generate().public_key != Identity.generate().public_key


def test_key_file_is_created_private_and_reloaded(tmp_path: Path) -> None:
    """load_or_create makes a 0600 key file once and returns the same key afterwards."""
    path = tmp_path / "state" / "node.key"
    first = Identity.load_or_create(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Identity.load_or_create(path).public_key == first.public_key
    assert [p.name for p in path.parent.iterdir()] == ["node.key"]  # no temp file left


@pytest.mark.parametrize("content", [b"", b"zz" * 32, b"ab" * 31, b"\xff\xfe", b"ab" * 33])
def test_corrupt_key_file_is_a_store_error(tmp_path: Path, content: bytes) -> None:
    """A truncated or garbled key file raises StoreError naming the file, never a new key."""
    path = tmp_path / "node.key"
    path.write_bytes(content)
    with pytest.raises(StoreError, match=r"node\.key"):
        Identity.load_or_create(path)
    assert path.read_bytes() == content


def test_unreadable_key_path_is_a_store_error(tmp_path: Path) -> None:
    """A key path that cannot be read (here: a directory) raises StoreError."""
    (tmp_path / "node.key").mkdir()
    with pytest.raises(StoreError):
        Identity.load_or_create(tmp_path / "node.key")


def test_repr_does_not_leak_the_secret() -> None:
    """repr shows part of the public key and nothing of the seed."""
    assert A.seed.hex()[:16] not in repr(A) and A.public_key.hex()[:16] in repr(A)


# ---------------------------------------------------------------- Verifier

def test_key_is_pinned_from_first_birth() -> None:
    """Messages before a birth are "unknown_sender"; after it they verify against the pin."""
    v = Verifier()
    assert reason(v, encode(Heartbeat(hdr(1), 0, 0), A)) == "unknown_sender"
    assert isinstance(feed(v, birth(2)), Birth)
    assert v.pinned("a") == A.public_key
    assert isinstance(feed(v, encode(Heartbeat(hdr(3), 0, 0), A)), Heartbeat)


def test_forgeries_are_rejected() -> None:
    """Another key's signature is "bad_signature"; a birth with another key is "key_mismatch"."""
    v = Verifier()
    feed(v, birth(1))
    assert reason(v, encode(Heartbeat(hdr(2), 0, 0), B)) == "bad_signature"
    assert reason(v, birth(3, key=B)) == "key_mismatch"
    assert reason(v, birth(4, key=A, signer=B)) == "bad_signature"
    assert v.pinned("a") == A.public_key


def test_tampered_body_fails_signature() -> None:
    """Changing one byte of a signed body (keeping its shape) breaks the signature."""
    v = Verifier(allowlist={"a": A.public_key})
    payload = encode(Heartbeat(hdr(1), 5, 6), A)
    frame = peek(payload)
    body = frame.body.replace(msgpack.packb("size") + b"\x06", msgpack.packb("size") + b"\x07")
    assert body != frame.body
    forged = msgpack.packb({"v": 1, "b": body, "s": frame.signature})
    assert reason(v, forged) == "bad_signature"


def test_replay_is_tracked_per_node_and_type() -> None:
    """(epoch, seq) must grow per (node, type): heartbeats and deltas may interleave freely."""
    v = Verifier(allowlist={"a": A.public_key})
    feed(v, encode(Heartbeat(hdr(5), 0, 0), A))
    feed(v, encode(delta_msg(3), A))  # older seq, other type: an honest reordering
    assert reason(v, encode(Heartbeat(hdr(4), 0, 0), A)) == "replay"
    with pytest.raises(Replay) as info:
        feed(v, encode(Heartbeat(hdr(5), 0, 0), A))
    assert info.value.duplicate
    feed(v, encode(Heartbeat(hdr(1, epoch=2), 0, 0), A))  # restart: new epoch, seq from 1
    assert v.last_accepted("a", "heartbeat") == (2, 1)
    assert v.last_accepted("a", "delta") == (1, 3)


def test_will_signed_before_birth_is_accepted() -> None:
    """A death (the MQTT Will) signed before the birth is still accepted after it."""
    v = Verifier()
    will = encode(Death(hdr(1)), A)
    feed(v, birth(2))
    assert isinstance(feed(v, will), Death)


def test_strict_allowlist() -> None:
    """Strict mode accepts only allowlisted nodes, from their first message, with their key."""
    v = Verifier(allowlist={"a": A.public_key}, strict=True)
    assert isinstance(feed(v, encode(Heartbeat(hdr(1), 0, 0), A)), Heartbeat)
    assert reason(v, birth(1, key=B, node="b")) == "unknown_sender"
    assert reason(v, birth(2, key=B)) == "key_mismatch"
    loose = Verifier(allowlist={"a": A.public_key})
    assert isinstance(feed(loose, birth(1, key=B, node="b")), Birth)


def test_rejected_message_changes_nothing() -> None:
    """Signed and fresh but invalid (NaN q): the verifier's state is untouched by the rejection."""
    v = Verifier()
    feed(v, birth(1))
    before = v.snapshot()
    d = delta_msg(2).delta
    bad = Delta.build("a", TASK.fingerprint, 0, 1, **{**d.arrays(), "q": np.array([np.nan])})
    assert reason(v, encode(DeltaMsg(hdr(2), bad), A)) == "non_finite"
    assert reason(v, birth(3, key=B, node="b", signer=A)) == "bad_signature"
    assert v.snapshot() == before
    assert isinstance(feed(v, encode(delta_msg(2), A)), DeltaMsg)  # same seq, now valid


def test_check_then_commit() -> None:
    """decode(commit=False) verifies without recording; commit(msg) records afterwards."""
    v = Verifier()
    payload = birth(1)
    msg = feed(v, payload, commit=False)
    assert v.pinned("a") is None and v.last_accepted("a", "birth") is None
    v.commit(msg)
    assert v.pinned("a") == A.public_key
    assert reason(v, payload) == "replay"


def test_snapshot_restores_through_json() -> None:
    """snapshot() survives JSON; restore() gives a verifier with the same pins and counters."""
    v = Verifier(allowlist={"z": B.public_key})
    feed(v, birth(1))
    feed(v, encode(Heartbeat(hdr(7), 0, 0), A))
    w = Verifier.restore(json.loads(json.dumps(v.snapshot())))
    assert w.snapshot() == v.snapshot()
    assert w.pinned("a") == A.public_key and w.pinned("z") == B.public_key
    assert reason(w, encode(Heartbeat(hdr(7), 0, 0), A)) == "replay"
    override = Verifier.restore(v.snapshot(), allowlist={"a": B.public_key}, strict=True)
    assert override.pinned("a") == B.public_key and override.strict


@pytest.mark.parametrize("snap", [{}, {"format": 2}, {"format": 1, "strict": False,
                                                       "allowlist": {}, "pinned": {"a": "zz"},
                                                       "last": {}}])
def test_damaged_snapshot_is_a_store_error(snap: dict[str, object]) -> None:
    """restore() refuses a snapshot of another format or with damaged fields."""
    with pytest.raises(StoreError):
        Verifier.restore(snap)


def test_unpin_forgets_a_node() -> None:
    """After unpin, the node is re-learned from its next birth (an operator re-keyed it)."""
    v = Verifier()
    feed(v, birth(1))
    v.unpin("a")
    assert v.pinned("a") is None and v.last_accepted("a", "birth") is None
    assert isinstance(feed(v, birth(1, key=B)), Birth)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["heartbeat", "sync"]), st.integers(0, 2),
                          st.integers(0, 5)), max_size=15))
def test_acceptance_matches_per_type_model(stream: list[tuple[str, int, int]]) -> None:
    """Any interleaving: a message is accepted iff its (epoch, seq) beats the last of its type."""
    v = Verifier(allowlist={"a": A.public_key})
    last: dict[str, tuple[int, int]] = {}
    for msg_type, epoch, seq in stream:
        h = hdr(seq, epoch=epoch)
        msg = Heartbeat(h, 0, 0) if msg_type == "heartbeat" else SyncRequest(h, "b", 0)
        expected = msg_type not in last or (epoch, seq) > last[msg_type]
        try:
            feed(v, encode(msg, A))
            accepted = True
        except Replay:
            accepted = False
        assert accepted == expected
        if accepted:
            last[msg_type] = (epoch, seq)
    assert all(v.last_accepted("a", t) == stamp for t, stamp in last.items())
