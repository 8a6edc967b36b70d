"""The messages of the wire protocol, as frozen dataclasses that check themselves. Pure.

Every message has a ``Header`` (who, for which federation and task, when) and a
``type`` (``TYPES``); ``__post_init__`` refuses values that could not travel or
that the receiver must not believe (ids that break topics, counters outside
SQLite's INTEGER, non-finite timestamps, a delta of another task).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import ClassVar

from peerd.delta import Bounds, Delta, PatternSignature
from peerd.errors import FingerprintMismatch, MalformedMessage, NonFiniteValue, ValueOutOfBounds
from peerd.wire.topics import MAX_ID_LEN, _show, check_id

__all__ = [
    "KEYED_TYPES", "PUBLIC_KEY_LEN", "RELAYABLE_TYPES", "TYPES", "Birth", "Death", "DeltaMsg",
    "Header", "Heartbeat", "Message", "Rebirth", "SyncRequest",
]

PUBLIC_KEY_LEN = 32
#: Scalars must fit SQLite's signed 64-bit INTEGER, where the store keeps them.
_INT_LIMIT = 2**63


def _public_key(value: object) -> bytes:
    """A signer's Ed25519 public key as carried by births and rebirth requests."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise MalformedMessage("public_key must be bytes")
    pk = bytes(value)
    if len(pk) != PUBLIC_KEY_LEN:
        raise MalformedMessage(f"public_key has {len(pk)} bytes, expected {PUBLIC_KEY_LEN}")
    return pk


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
    """Cells of one origin's contribution (``delta.origin`` may differ from the sender when relayed).

    ``bounds``: what ``Delta.validate`` returned when the decoder checked the
    delta (task fingerprint, action count and ``q_bound`` of the decoder), so
    that a node whose table has the same task and bound does not check every
    cell a second time; None for a message not decoded (one built to send).
    """

    type: ClassVar[str] = "delta"
    header: Header
    delta: Delta
    signatures: tuple[PatternSignature, ...] = ()
    bounds: Bounds | None = field(default=None, compare=False, repr=False)

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
        object.__setattr__(self, "public_key", _public_key(self.public_key))
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
        object.__setattr__(self, "public_key", _public_key(self.public_key))
        object.__setattr__(self, "version", _as_uint(self.version, "version"))


Message = DeltaMsg | Birth | Death | Heartbeat | SyncRequest | Rebirth
TYPES: tuple[str, ...] = ("delta", "birth", "death", "heartbeat", "sync", "rebirth")
#: Message types that carry the sender's own public key (self-signed: they can pin it).
KEYED_TYPES: frozenset[str] = frozenset({"birth", "rebirth"})
#: Message types a relay may carry: an origin's deltas, and its birth (to pin its key).
RELAYABLE_TYPES: frozenset[str] = frozenset({"delta", "birth"})
