"""Peer liveness as a pure state machine: online → suspect → offline (DESIGN §4).

A peer is ``online`` from its birth (or any valid message), ``suspect`` after
``missed`` heartbeat intervals without a word, and ``offline`` on its death
message or after ``peer_timeout``. Epochs order a peer's lives: a death whose
epoch is older than the peer's current birth is a stale Will from a previous
life and is ignored, so a reconnecting peer is never declared dead by its own
past. Times are passed in, never read: the caller owns the clock.

The functions work on one ``PeerLife`` they are handed: the node keeps each
peer's ``PeerLife`` in its registry entry (``peerd.registry.Peer.life``), so
that everything known about a peer lives in one place and is freed at once.
``Liveness`` is a small keyed container over the same functions, for callers
that track lives by id without a registry (tests, tools).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

ONLINE, SUSPECT, OFFLINE, UNKNOWN = "online", "suspect", "offline", "unknown"

Change = tuple[str, str]  # (old status, new status)
Transition = tuple[str, str, str]  # (peer, old status, new status)


@dataclass(slots=True)
class PeerLife:
    """Mutable liveness of one peer."""

    status: str = UNKNOWN
    epoch: int = 0
    last_seen: float = 0.0
    offline_since: float | None = None


@dataclass(frozen=True)
class LivenessPolicy:
    """How long silence may last: ``missed`` heartbeats to suspect, ``peer_timeout`` to offline."""

    heartbeat_interval: float = 15.0
    missed: int = 3
    peer_timeout: float = 300.0


def restored(*, status: str, epoch: int, last_seen: float) -> PeerLife:
    """A stored peer's life; it stays as it was until heard from or timed out."""
    return PeerLife(status=status, epoch=epoch, last_seen=last_seen,
                    offline_since=last_seen if status == OFFLINE else None)


def _set(life: PeerLife, status: str, now: float) -> Change | None:
    old = life.status
    if old == status:
        return None
    life.status = status
    life.offline_since = now if status == OFFLINE else None
    return (old, status)


def on_birth(life: PeerLife, epoch: int, now: float) -> Change | None:
    if epoch < life.epoch:
        return None  # a retained birth of an earlier life
    life.epoch = epoch
    life.last_seen = max(life.last_seen, now)
    return _set(life, ONLINE, now)


def on_death(life: PeerLife, epoch: int, now: float) -> Change | None:
    if epoch < life.epoch:
        return None  # the Will of a previous life: the peer has been born again since
    life.epoch = epoch
    return _set(life, OFFLINE, now)


def on_heard(life: PeerLife, epoch: int, now: float) -> Change | None:
    """Any valid message (heartbeat, delta) of the peer's current or a newer life."""
    if epoch < life.epoch:
        return None
    if epoch == life.epoch and life.status == OFFLINE:
        return None  # it said goodbye in this life; only a new birth revives it
    life.epoch = epoch
    life.last_seen = max(life.last_seen, now)
    return _set(life, ONLINE, now)


def on_silence(life: PeerLife, now: float, policy: LivenessPolicy) -> Change | None:
    """Apply silence: suspect after ``missed`` heartbeats, offline after ``peer_timeout``."""
    if life.status in (OFFLINE, UNKNOWN):
        return None
    silent = now - life.last_seen
    if silent >= policy.peer_timeout:
        return _set(life, OFFLINE, now)
    if silent >= policy.missed * policy.heartbeat_interval:
        return _set(life, SUSPECT, now)
    return None


def is_expired(life: PeerLife, now: float, ttl: float) -> bool:
    """Offline for longer than ``ttl``: the peer's knowledge may be dropped."""
    return (life.status == OFFLINE and life.offline_since is not None
            and now - life.offline_since >= ttl)


def count(lives: Iterable[PeerLife]) -> dict[str, int]:
    """How many lives are in each status."""
    out = {ONLINE: 0, SUSPECT: 0, OFFLINE: 0, UNKNOWN: 0}
    for life in lives:
        out[life.status] += 1
    return out


class Liveness:
    """Lives keyed by peer id, over the functions above (for callers without a registry)."""

    def __init__(self, *, heartbeat_interval: float = 15.0, missed: int = 3,
                 peer_timeout: float = 300.0) -> None:
        self.policy = LivenessPolicy(heartbeat_interval, missed, peer_timeout)
        self.peers: dict[str, PeerLife] = {}

    def restore(self, peer: str, *, status: str, epoch: int, last_seen: float) -> None:
        self.peers[peer] = restored(status=status, epoch=epoch, last_seen=last_seen)

    def status(self, peer: str) -> str:
        life = self.peers.get(peer)
        return life.status if life else UNKNOWN

    @staticmethod
    def _tag(peer: str, change: Change | None) -> Transition | None:
        return None if change is None else (peer, *change)

    def on_birth(self, peer: str, epoch: int, now: float) -> Transition | None:
        return self._tag(peer, on_birth(self.peers.setdefault(peer, PeerLife()), epoch, now))

    def on_death(self, peer: str, epoch: int, now: float) -> Transition | None:
        return self._tag(peer, on_death(self.peers.setdefault(peer, PeerLife()), epoch, now))

    def on_heard(self, peer: str, epoch: int, now: float) -> Transition | None:
        return self._tag(peer, on_heard(self.peers.setdefault(peer, PeerLife()), epoch, now))

    def tick(self, now: float) -> list[Transition]:
        out = []
        for peer, life in self.peers.items():
            t = self._tag(peer, on_silence(life, now, self.policy))
            if t:
                out.append(t)
        return out

    def expired(self, now: float, ttl: float) -> list[str]:
        """Peers offline for longer than ``ttl`` (the caller removes them once handled)."""
        return [p for p, life in self.peers.items() if is_expired(life, now, ttl)]

    def forget(self, peer: str) -> None:
        self.peers.pop(peer, None)

    def counts(self) -> dict[str, int]:
        return count(self.peers.values())
