"""What this node remembers about its peers: ``PeerRecord`` and ``TrustEvent``.

Pure value objects, no I/O: the liveness and trust logic produce them, the
store (``peerd.store``) persists them, and a restarted node reloads them so
that a peer's key, epoch, seq, trust and status survive restarts (DESIGN §7).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

#: Every status a peer can have. ``unknown`` is a peer we have heard of (from a
#: stored record or a delta's origin) but not yet seen alive in this run.
PEER_STATUSES: tuple[str, ...] = ("online", "suspect", "offline", "unknown")


@dataclass(frozen=True)
class PeerRecord:
    """One peer as last seen: identity, liveness, trust and how much of it we hold.

    ``version`` is the highest version of the peer's contribution this node
    holds (the anti-entropy cursor); ``extra`` is free-form JSON-able data that
    does not deserve a column yet. ``extra`` is left out of the hash (a dict is
    not hashable) but not out of equality.
    """

    node_id: str
    public_key: bytes | None = None
    epoch: int = 0
    seq: int = 0
    status: str = "unknown"
    last_seen: float = 0.0
    trust: float = 1.0
    version: int = 0
    extra: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.node_id:
            raise ValueError("a peer needs a non-empty node_id")
        if self.status not in PEER_STATUSES:
            raise ValueError(f"peer status {self.status!r} is not one of {PEER_STATUSES}")
        if self.public_key is not None and not isinstance(self.public_key, bytes):
            raise TypeError("public_key must be bytes or None")
        if min(self.epoch, self.seq, self.version) < 0:
            raise ValueError("epoch, seq and version cannot be negative")
        if not (math.isfinite(self.trust) and math.isfinite(self.last_seen)):
            raise ValueError("trust and last_seen must be finite")

    def replace(self, **changes: Any) -> PeerRecord:
        """A copy with ``changes`` applied (and checked again), like ``dataclasses.replace``."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TrustEvent:
    """One change of a peer's trust, from ``old`` to ``new``, and why (DESIGN §6)."""

    peer: str
    ts: float
    old: float
    new: float
    reason: str

    @property
    def delta(self) -> float:
        return self.new - self.old
