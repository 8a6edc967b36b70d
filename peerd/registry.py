"""Everything a node knows about each peer, in one entry per peer: ``PeerRegistry``.

A peer's state used to be spread over the verifier (key, replay windows), the
liveness tracker, the gossip cursors, the table's trust and the signature maps;
forgetting a peer meant finding it in six places, and missing one leaked. Here
one mutable ``Peer`` holds it all:

- identity: the learned (TOFU) public key and the replay window, the newest
  ``(epoch, seq)`` accepted per message type. The registry's ``verifier``
  (a ``Verifier`` whose pins and windows *are* these fields) is what
  ``wire.decode`` checks against;
- liveness (``PeerLife``), the anti-entropy ``Cursor``, trust (the source of
  truth: the table only receives it as a merge weight through
  ``QTable.set_trusts``), alignment and the last pattern signatures;
- a small rate-limit map for rejection logs, so that it is freed with the peer.

The pure logic stays where it was (``liveness``, ``gossip``, ``trust``), working
on the fields it is handed. Admission: a peer not in the registry is admitted
only while fewer than ``max_origins`` are held, or when allowlisted (always).
``remove`` frees an entry for good; a peer that comes back later is admitted
as new (its key pinned again on its next birth).

Persistence: ``Peer.record()`` / ``Peer.from_record()`` map an entry to the
store's ``PeerRecord`` (the replay window rides in ``extra["replay"]``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from peerd.delta import PatternSignature
from peerd.gossip import Cursor
from peerd.identity import Verifier
from peerd.liveness import PeerLife, count, restored
from peerd.peers import PEER_STATUSES, PeerRecord

#: Default bound on the peers a node holds (``[gossip] max_origins``).
MAX_ORIGINS = 1024


@dataclass(slots=True)
class Peer:
    """One peer as this node knows it (module docstring). Mutable; owned by the registry."""

    node_id: str
    public_key: bytes | None = None
    #: newest accepted (epoch, seq) per message type: the replay window
    replay: dict[str, tuple[int, int]] = field(default_factory=dict)
    life: PeerLife = field(default_factory=PeerLife)
    cursor: Cursor = field(default_factory=Cursor)
    trust: float = 1.0
    alignment: float | None = None
    #: the peer's last pattern signatures, and whether a trust round has judged them
    signatures: tuple[PatternSignature, ...] = ()
    fresh: bool = False
    #: when a rejection of this peer was last logged, per reason (rate limit)
    reject_logged: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def seq(self) -> int:
        """The newest seq accepted in the peer's current epoch (any message type)."""
        return max((s for e, s in self.replay.values() if e == self.life.epoch), default=0)

    def record(self) -> PeerRecord:
        """The entry as the store keeps it."""
        extra = dict(self.extra)
        if self.replay:
            extra["replay"] = {t: [e, s] for t, (e, s) in sorted(self.replay.items())}
        else:
            extra.pop("replay", None)
        status = self.life.status if self.life.status in PEER_STATUSES else "unknown"
        return PeerRecord(self.node_id, public_key=self.public_key, epoch=self.life.epoch,
                          seq=self.seq, status=status, last_seen=self.life.last_seen,
                          trust=self.trust, version=self.cursor.known, extra=extra)

    @classmethod
    def from_record(cls, rec: PeerRecord) -> Peer:
        """An entry rebuilt from the store (a damaged replay window is dropped, not fatal)."""
        extra = dict(rec.extra)
        replay: dict[str, tuple[int, int]] = {}
        raw = extra.pop("replay", None)
        if isinstance(raw, dict):
            for t, v in raw.items():
                if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int)
                                                                        for x in v):
                    replay[str(t)] = (int(v[0]), int(v[1]))
        return cls(rec.node_id, public_key=rec.public_key, replay=replay,
                   life=restored(status=rec.status, epoch=rec.epoch, last_seen=rec.last_seen),
                   cursor=Cursor(known=rec.version), trust=rec.trust, extra=extra)


class PeerRegistry:
    """The node's peers by id: admission, lookup, removal, and the verifier over them."""

    def __init__(self, *, allowlist: Mapping[str, bytes] | None = None, strict: bool = False,
                 max_origins: int = MAX_ORIGINS) -> None:
        self._peers: dict[str, Peer] = {}
        self.max_origins = int(max_origins)
        self.verifier: Verifier = _RegistryVerifier(self, allowlist=dict(allowlist or {}),
                                                    strict=strict)

    def configure(self, *, allowlist: Mapping[str, bytes], strict: bool, max_origins: int) -> None:
        """Apply a new allowlist, strictness and bound (a config reload); entries are kept."""
        self.verifier = _RegistryVerifier(self, allowlist=dict(allowlist), strict=strict)
        self.max_origins = int(max_origins)

    # ---------------------------------------------------------------- lookup
    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._peers

    def __iter__(self) -> Iterator[Peer]:
        return iter(list(self._peers.values()))

    def get(self, node_id: str) -> Peer | None:
        return self._peers.get(node_id)

    def ids(self) -> list[str]:
        return sorted(self._peers)

    def trusts(self) -> dict[str, float]:
        """Every entry's trust: what ``QTable.set_trusts`` receives at startup."""
        return {pid: p.trust for pid, p in self._peers.items()}

    def counts(self) -> dict[str, int]:
        """Peers per liveness status."""
        return count(p.life for p in self._peers.values())

    # ------------------------------------------------------------- admission
    def allowlisted(self, node_id: str) -> bool:
        return self.verifier.allowlisted(node_id)

    def admits(self, node_id: str) -> bool:
        """True if a message of ``node_id`` may be looked at: held, allowlisted, or room left."""
        return (node_id in self._peers or len(self._peers) < self.max_origins
                or self.allowlisted(node_id))

    def admit(self, node_id: str) -> Peer:
        """The entry of ``node_id``, created if new (the caller checked ``admits``)."""
        peer = self._peers.get(node_id)
        if peer is None:
            peer = self._peers[node_id] = Peer(node_id)
        return peer

    def remove(self, node_id: str) -> Peer | None:
        """Free the entry for good: key, replay window, liveness, cursor, trust, signatures."""
        return self._peers.pop(node_id, None)

    # ----------------------------------------------------------- persistence
    def records(self) -> list[PeerRecord]:
        return [p.record() for p in self._peers.values()]

    def load(self, records: Mapping[str, PeerRecord],
             legacy_verifier: Mapping[str, Any] | None = None) -> None:
        """Rebuild entries from stored records (and, once, a pre-registry verifier snapshot)."""
        for pid, rec in records.items():
            self._peers[pid] = Peer.from_record(rec)
        if legacy_verifier:
            old = Verifier.restore(dict(legacy_verifier))
            for pid in {pid for pid, _t in old._last} | set(old._pins):
                peer = self.admit(pid)
                if peer.public_key is None:
                    peer.public_key = old._pins.get(pid)
                for (node, t), stamp in old._last.items():
                    if node == pid and stamp > peer.replay.get(t, (-1, -1)):
                        peer.replay[t] = stamp


class _RegistryVerifier(Verifier):
    """A ``Verifier`` whose learned pins and replay windows are the registry's entries."""

    def __init__(self, registry: PeerRegistry, *, allowlist: dict[str, bytes],
                 strict: bool) -> None:
        super().__init__(allowlist=allowlist, strict=strict)
        self._registry = registry

    def _learned_pin(self, node: str) -> bytes | None:
        peer = self._registry.get(node)
        return None if peer is None else peer.public_key

    def _pin(self, node: str, key: bytes) -> None:
        self._registry.admit(node).public_key = key

    def _window(self, node: str, msg_type: str) -> tuple[int, int] | None:
        peer = self._registry.get(node)
        return None if peer is None else peer.replay.get(msg_type)

    def _advance(self, node: str, msg_type: str, stamp: tuple[int, int]) -> None:
        self._registry.admit(node).replay[msg_type] = stamp

    def _drop(self, node: str) -> None:
        peer = self._registry.get(node)
        if peer is not None:
            peer.public_key = None
            peer.replay.clear()

    def snapshot(self) -> dict[str, Any]:
        """As ``Verifier.snapshot``, read from the entries (for inspection; not persisted)."""
        snap = super().snapshot()
        snap["pinned"] = {p.node_id: p.public_key.hex() for p in self._registry
                          if p.public_key is not None}
        snap["last"] = {p.node_id: {t: list(s) for t, s in sorted(p.replay.items())}
                        for p in self._registry if p.replay}
        return snap
