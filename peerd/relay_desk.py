"""``RelayDesk``: a node's side of relayed catch-up: what it keeps, when it relays, what it accepts.

``peerd.relay`` is the pure bookkeeping: ``RelayStore`` (which of an origin's
signed payloads are still worth keeping) and ``RelayPlanner`` (when a relay
falls due). This module is where a node meets it (DESIGN §4, "relayed
catch-up"):

- ``keep``: an accepted birth or delta of an origin is kept, byte for byte,
  in memory and in the node's store (``load`` reads it back after a restart);
- ``on_sync_request`` / ``offer``: a sync request for a silent origin, or a
  newcomer, plans a relay of what is kept;
- ``relay_due`` / ``relay``: a due plan re-sends the kept payloads verbatim on
  ``peerd/v1/{f}/relay/{relayer}``;
- ``verify``: a relayed payload is decoded as its origin's own and checked
  before the node applies it.

The decisions are pure functions at the bottom (``to_keep``, ``check_relayed``,
``judged_out``, ``sync_wait``, ``relay_payloads``), tested without I/O. The
I/O (the node's store, transport, counters, logger) goes through the node,
seen as a ``RelayHost``: a few of its public members, no private ones.

Applying a relayed delta stays in the node (``Node._on_relayed``): it is the
same merge, evidence budget and store write as a delta the origin sent
itself, so it lives beside that one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from peerd import wire
from peerd.errors import OriginLimit, OriginMismatch, StoreError, WireError
from peerd.liveness import ONLINE
from peerd.relay import RelayPlanner, RelayStore, Stamp

if TYPE_CHECKING:
    from peerd.identity import Verifier
    from peerd.registry import PeerRegistry
    from peerd.transport_api import Transport

__all__ = ["Keep", "RelayDesk", "RelayHost", "check_relayed", "judged_out", "relay_payloads",
           "sync_wait", "to_keep"]

Kept = Sequence[tuple[str, Stamp, bytes | None]]  # ``RelayStore.kept``: (kind, stamp, payload)


class RelayArchive(Protocol):
    """Where kept payloads survive a restart (``peerd.store.Store``)."""

    def keep_relay_payload_soon(self, origin: str, kind: str, stamp: Stamp, payload: bytes, *,
                                drop: Sequence[Stamp] = ()) -> None: ...

    def drop_relay_payloads_soon(self, origin: str, kind: str, stamps: Sequence[Stamp]) -> None: ...

    async def relay_payloads(self, origin: str, kind: str,
                             stamps: Sequence[Stamp]) -> dict[Stamp, bytes]: ...

    async def load_relay_payloads(self) -> list[tuple[str, str, Stamp, bytes]]: ...


class RelayCounters(Protocol):
    """The node's counters the desk moves (``NodeCounters``; the metrics read them)."""

    relays_sent: int
    relayed_payloads_sent: int
    bytes_sent: int


class RelayHost(Protocol):
    """The node as the desk sees it (``peerd.node.Node`` is one): public members only.

    Read at each use, not copied: the node's store, transport, logger and
    configuration change over its life (open, connect, new epoch, SIGHUP).
    """

    id: str
    fed: str
    config: Any  # ``NodeConfig``: ``relay`` switches keeping on or off
    counters: RelayCounters
    store: RelayArchive | None
    transport: Transport | None
    decoder: wire.Decoder
    quarantine: Container[str]
    table: Any  # ``QTable``: ``quarantine_below``

    @property
    def verifier(self) -> Verifier: ...

    @property
    def log(self) -> Any: ...

    def monotonic(self) -> float: ...

    def liveness_status(self, peer: str) -> str: ...

    def trust_of(self, peer: str) -> float: ...


class RelayDesk:
    """A node's relayed catch-up: the kept payloads (``relays``), the plans (``plan``), the rules."""

    def __init__(self, host: RelayHost, *, keep_payloads: bool = True, delay: float = 1.0) -> None:
        self.host = host
        #: origins' own signed payloads, re-sent verbatim for them when they are silent
        #: (``keep_payloads=False``, a node with a store: only their index; the store has them)
        self.relays = RelayStore(keep_payloads=keep_payloads)
        self.plan = RelayPlanner(delay=delay)

    # ------------------------------------------------------------ keeping
    def keep(self, msg: Any, payload: bytes, *, persist: bool = True) -> None:
        """Keep an origin's own signed birth and deltas, to re-send for it when it is silent.

        Also in the store, so that a restarted node can still relay; written
        without waiting and without a commit of its own (it joins the next
        one): losing the last few on a crash only makes a relay smaller, never
        wrong.
        """
        if not self.host.config.relay:
            return
        k = to_keep(msg)
        if k is None:
            return
        dropped: list[Stamp] = []
        if k.kind == "birth":
            kept = self.relays.add_birth(k.origin, k.stamp, payload)
        else:
            assert k.cells is not None
            kept, dropped = self.relays.add_delta(k.origin, k.stamp, payload, k.to_version, k.cells)
        store = self.host.store
        if persist and store is not None and (kept or dropped):
            with contextlib.suppress(StoreError):  # closing: a relay after a restart is smaller
                if kept:
                    store.keep_relay_payload_soon(k.origin, k.kind, k.stamp, payload, drop=dropped)
                else:
                    store.drop_relay_payloads_soon(k.origin, k.kind, dropped)

    async def load(self) -> None:
        """Rebuild the kept payloads from the ones on disk (verified when received)."""
        h = self.host
        assert h.store is not None
        rows = await h.store.load_relay_payloads()
        h.decoder.verifier = None
        try:
            for origin, _kind, _stamp, payload in rows:
                try:
                    msg = h.decoder.decode(payload, commit=False)
                except WireError as exc:  # another task, a damaged row: not relayable
                    h.log.warning("relay_payload_unreadable", peer=origin, error=str(exc))
                    continue
                if msg.header.node == origin:
                    self.keep(msg, payload, persist=False)
        finally:
            h.decoder.verifier = h.verifier

    def forget(self, origin: str) -> None:
        """An origin expired: nothing of it is kept or planned any more."""
        self.relays.forget(origin)
        self.plan.forget(origin)

    # ------------------------------------------------------------ receiving
    def verify(self, payload: bytes, registry: PeerRegistry) -> Any:
        """Decode a relayed payload as its origin's own and check it may be relayed.

        The relayer cannot forge it: the origin's signature covers every byte
        (``Verifier.relayed``). Raises ``WireError``; the node applies what passes.
        """
        h = self.host
        try:
            h.decoder.verifier = registry.verifier.relayed(own=h.id)
            msg = h.decoder.decode(payload, commit=False)
            check_relayed(msg, own=h.id, admits=registry.admits,
                          max_origins=registry.max_origins)
        finally:
            h.decoder.verifier = registry.verifier
        return msg

    def on_relayed_birth(self, msg: wire.Birth, relayer: str) -> None:
        """A relay starts with the origin's birth: someone else is relaying it, ours is moot.

        A newcomer pins the origin's key from it (trust on first use, as for any birth).
        """
        origin = msg.header.node
        self.plan.covered(origin, 0)
        if self.host.verifier.pin_first(origin, msg.public_key):
            self.host.log.info("peer_key_pinned_from_relay", peer=origin, relayer=relayer)

    def covered(self, origin: str, from_version: int) -> None:
        """``origin``'s cells from ``from_version`` on went out (by itself or a relayer)."""
        self.plan.covered(origin, from_version)

    # ------------------------------------------------------------ planning
    def silent(self, origin: str) -> bool:
        """Not heard from lately (suspect, offline, or never seen live by this node)."""
        return self.host.liveness_status(origin) != ONLINE

    def judged_out(self, origin: str) -> bool:
        """Quarantined or distrusted here: this node does not pass the origin's payloads on
        (``judged_out`` below says why)."""
        h = self.host
        return judged_out(origin in h.quarantine, h.trust_of(origin), h.table.quarantine_below)

    def on_sync_request(self, origin: str, since: int, *, sync_interval: float) -> None:
        """Another node asked ``origin`` for its cells after ``since``: plan to answer for it
        if a kept delta reaches past that (``sync_wait`` says when)."""
        if self.relays.reaches_past(origin, since):
            wait = sync_wait(self.silent(origin), sync_interval)
            self.plan.want(origin, since, self.host.monotonic(), wait=wait)

    def offer(self, newcomer: str) -> None:
        """A new node, or a new life of one, appeared: it may lack silent origins' knowledge.

        Nobody advertises a silent origin's version any more, so the newcomer
        would never ask for it: relay it (each origin at most once per
        ``RelayPlanner.min_interval``, usually by one holder).
        """
        now = self.host.monotonic()
        for origin in self.relays.origins():
            if origin != newcomer and self.silent(origin) and not self.judged_out(origin):
                self.plan.want(origin, 0, now)

    # ------------------------------------------------------------ sending
    async def relay_due(self, *, hold: bool) -> None:
        """Relay every origin whose plan fell due (``hold``: unread messages, ``RelayPlanner.due``)."""
        for origin, since in self.plan.due(self.host.monotonic(), hold=hold):
            await self.relay(origin, since)

    async def relay(self, origin: str, since: int) -> None:
        """Re-send ``origin``'s kept payloads after ``since``, verbatim, on our relay topic."""
        h = self.host
        if h.transport is None or origin == h.id or self.judged_out(origin):
            return
        topic = wire.topic(h.fed, "relay", h.id)
        kept = self.relays.kept(origin, since)
        if all(kind != "delta" for kind, _stamp, _p in kept):
            return  # its deltas were superseded meanwhile: a birth alone brings nobody anything
        stored: dict[Stamp, bytes] = {}
        missing = [stamp for kind, stamp, p in kept if p is None and kind == "delta"]
        if missing and h.store is not None:
            try:
                stored = await h.store.relay_payloads(origin, "delta", missing)
            except StoreError as exc:  # a relay is a courtesy: send what is in memory
                h.log.warning("relay_payloads_unreadable", peer=origin, error=str(exc))
        sent = 0
        for payload in relay_payloads(kept, stored):
            if not await h.transport.publish(topic, payload, qos=1):
                break
            sent += 1
            h.counters.bytes_sent += len(payload)
        if sent:
            h.counters.relays_sent += 1
            h.counters.relayed_payloads_sent += sent
            h.log.info("origin_relayed", peer=origin, since=since, payloads=sent)


# ---------------------------------------------------------------- pure decisions
@dataclass(frozen=True, slots=True)
class Keep:
    """What of an accepted message is kept for relaying: its kind, origin, stamp, cells."""

    kind: str  # "birth" | "delta"
    origin: str
    stamp: Stamp
    to_version: int = 0
    cells: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # keys, actions, versions


def to_keep(msg: Any) -> Keep | None:
    """A birth, or a non-empty delta of the sender's own cells; anything else is not kept.

    Only what the origin itself signed can be re-sent for it: a delta whose
    cells are another origin's would fail that origin's check at every receiver.
    """
    h: wire.Header = msg.header
    stamp = (h.epoch, h.seq)
    if isinstance(msg, wire.Birth):
        return Keep("birth", h.node, stamp)
    if isinstance(msg, wire.DeltaMsg) and msg.delta.origin == h.node and len(msg.delta):
        d = msg.delta
        return Keep("delta", h.node, stamp, d.to_version, (d.keys, d.actions, d.version))
    return None


def check_relayed(msg: Any, *, own: str, admits: Callable[[str], bool], max_origins: int) -> None:
    """Raise ``WireError`` unless ``msg`` (signature already verified) may arrive by relay.

    Only relayable types (births, deltas), a delta only of its signer's own
    cells, and an origin this node would admit (a relayer must not fill the
    registry past ``max_origins``). The node's own payloads pass: it ignores them.
    """
    origin = msg.header.node
    if msg.type not in wire.RELAYABLE_TYPES:
        raise wire.MalformedMessage(f"{msg.type} of {origin!r} cannot be relayed")
    if isinstance(msg, wire.DeltaMsg) and msg.delta.origin != origin:
        raise OriginMismatch(f"relayed delta of {origin!r} holds cells of "
                             f"{msg.delta.origin!r}")
    if origin != own and not admits(origin):
        raise OriginLimit(f"relayed origin {origin!r} would be past max_origins = {max_origins}")


def judged_out(quarantined: bool, trust: float, quarantine_below: float) -> bool:
    """Quarantined, or trusted below ``quarantine_below``: not relayed by this node.

    A relay is a courtesy to newcomers, with the cells this node itself
    counts; a liar it judged out is not one of them (the newcomer still
    hears the liar itself while it is live, and judges it). Without this,
    every holder relayed every quarantined sybil identity, gone silent, to
    each fresh one: hundreds of payloads per identity, broadcast to every
    node, which queued ~1,200 messages at each and stalled the simulation.
    Newcomers on probation are not judged yet: still relayed.
    """
    return quarantined or (quarantine_below > 0 and trust < quarantine_below)


def sync_wait(silent: bool, sync_interval: float) -> float:
    """How long a holder leaves an asked origin to answer itself before relaying for it.

    A silent origin will not answer: relay now (the planner adds a jitter, so
    that of many holders usually one speaks). A live one gets a few sync
    intervals first: its own answer cancels the plan.
    """
    return 0.0 if silent else 3 * sync_interval


def relay_payloads(kept: Kept, stored: dict[Stamp, bytes]) -> list[bytes]:
    """The payloads a relay sends, in ``kept``'s order (birth first, then deltas, oldest first).

    Each from memory, else as read back from the store (``stored``, by stamp);
    one whose write has not committed (yet) is left out: the relay is smaller,
    not wrong.
    """
    out = []
    for _kind, stamp, held in kept:
        payload = held if held is not None else stored.get(stamp)
        if payload is not None:
            out.append(payload)
    return out
