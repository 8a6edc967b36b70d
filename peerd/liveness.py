"""Peer liveness as a pure state machine: online → suspect → offline (DESIGN §4).

A peer is ``online`` from its birth (or any valid message), ``suspect`` after
``missed`` heartbeat intervals without a word, and ``offline`` on its death
message or after ``peer_timeout``. Epochs order a peer's lives: a death whose
epoch is older than the peer's current birth is a stale Will from a previous
life and is ignored, so a reconnecting peer is never declared dead by its own
past. Times are passed in, never read: the caller owns the clock.
"""

from __future__ import annotations

from dataclasses import dataclass

ONLINE, SUSPECT, OFFLINE, UNKNOWN = "online", "suspect", "offline", "unknown"


@dataclass
class PeerLife:
    """Mutable liveness of one peer."""

    status: str = UNKNOWN
    epoch: int = 0
    last_seen: float = 0.0
    offline_since: float | None = None


Transition = tuple[str, str, str]  # (peer, old status, new status)


class Liveness:
    """Tracks every peer's status from births, deaths, heartbeats and silence."""

    def __init__(self, *, heartbeat_interval: float = 15.0, missed: int = 3,
                 peer_timeout: float = 300.0) -> None:
        self.heartbeat_interval = heartbeat_interval
        self.missed = missed
        self.peer_timeout = peer_timeout
        self.peers: dict[str, PeerLife] = {}

    def restore(self, peer: str, *, status: str, epoch: int, last_seen: float) -> None:
        """Load a stored peer; it stays as it was until heard from or timed out."""
        self.peers[peer] = PeerLife(status=status, epoch=epoch, last_seen=last_seen,
                                    offline_since=last_seen if status == OFFLINE else None)

    def status(self, peer: str) -> str:
        life = self.peers.get(peer)
        return life.status if life else UNKNOWN

    def _set(self, peer: str, life: PeerLife, status: str, now: float) -> Transition | None:
        old = life.status
        if old == status:
            return None
        life.status = status
        life.offline_since = now if status == OFFLINE else None
        return (peer, old, status)

    def on_birth(self, peer: str, epoch: int, now: float) -> Transition | None:
        life = self.peers.setdefault(peer, PeerLife())
        if epoch < life.epoch:
            return None  # a retained birth of an earlier life
        life.epoch = epoch
        life.last_seen = max(life.last_seen, now)
        return self._set(peer, life, ONLINE, now)

    def on_death(self, peer: str, epoch: int, now: float) -> Transition | None:
        life = self.peers.setdefault(peer, PeerLife())
        if epoch < life.epoch:
            return None  # the Will of a previous life: the peer has been born again since
        life.epoch = epoch
        return self._set(peer, life, OFFLINE, now)

    def on_heard(self, peer: str, epoch: int, now: float) -> Transition | None:
        """Any valid message (heartbeat, delta) of the peer's current or a newer life."""
        life = self.peers.setdefault(peer, PeerLife())
        if epoch < life.epoch:
            return None
        if epoch == life.epoch and life.status == OFFLINE:
            return None  # it said goodbye in this life; only a new birth revives it
        life.epoch = epoch
        life.last_seen = max(life.last_seen, now)
        return self._set(peer, life, ONLINE, now)

    def tick(self, now: float) -> list[Transition]:
        """Apply silence: suspect after ``missed`` heartbeats, offline after ``peer_timeout``."""
        out: list[Transition] = []
        for peer, life in self.peers.items():
            if life.status in (OFFLINE, UNKNOWN):
                continue
            silent = now - life.last_seen
            if silent >= self.peer_timeout:
                t = self._set(peer, life, OFFLINE, now)
            elif silent >= self.missed * self.heartbeat_interval:
                t = self._set(peer, life, SUSPECT, now)
            else:
                t = None
            if t:
                out.append(t)
        return out

    def expired(self, now: float, ttl: float) -> list[str]:
        """Peers offline for longer than ``ttl``: their knowledge may be dropped."""
        return [p for p, life in self.peers.items()
                if life.status == OFFLINE and life.offline_since is not None
                and now - life.offline_since >= ttl]

    def counts(self) -> dict[str, int]:
        out = {ONLINE: 0, SUSPECT: 0, OFFLINE: 0, UNKNOWN: 0}
        for life in self.peers.values():
            out[life.status] += 1
        return out
