"""``Node``: one peer of a federation — the daemon, the simulation and the tests all use it.

A node owns a ``QTable`` (what it knows), a ``Store`` (what survives a crash),
a transport (how it talks), a ``PeerRegistry`` (one entry per peer: key,
replay window, liveness, gossip cursor, trust, signatures; its verifier decides
whom it believes) and a ``RelayDesk`` (relayed catch-up: origins' signed payloads
kept to re-send for them, ``peerd.relay_desk``). Its background work runs in one
``TaskGroup``:

- the transport loop: connect forever, deliver messages to ``_on_message``;
- the publisher: own delta after ``publish_every`` interactions or
  ``publish_interval`` seconds with changes, and answers to sync requests;
- the heartbeat: every ``heartbeat_interval``, ``tick()``: advertise the own
  version, age peers (online → suspect → offline), free the peers offline for
  ``origin_ttl`` (once: their entry goes), run a trust round over the signatures.

``await node.learn(...)`` returns only when the interaction is durable;
``node.act(...)`` never waits for anything. Shutdown publishes a final delta
and the death message, flushes and closes.

Time comes from the injected ``clock`` (wall time: headers, liveness, store) and
``monotonic`` (publish cadence, the rate limits of sync asks, relays and births);
both default to the ``time`` module, and a
benchmark can drive a virtual fleet through them and ``receive``/``tick``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import json
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from peerd import gossip, liveness, wire
from peerd.config import NodeConfig
from peerd.delta import Bounds, Delta, MergeStats, PatternSignature
from peerd.durable import DurableWatermark
from peerd.errors import (
    ContradictingSignatures,
    OriginLimit,
    OriginMismatch,
    WireError,
)
from peerd.evidence import VersionRate, check_budget
from peerd.gossip import GossipState
from peerd.identity import Identity, Verifier
from peerd.liveness import OFFLINE, UNKNOWN, LivenessPolicy
from peerd.logs import get_logger
from peerd.peers import PeerRecord, TrustEvent
from peerd.presence import PresenceState
from peerd.probation import MIN_PEERS, Probation
from peerd.qtable import CellsRoom, CellsSnapshot, QTable, cells_room
from peerd.quarantine import (
    MAX_MATRIX_ENTRIES,
    Quarantine,
    Verdict,
    gather_cells,
    judge_round,
    signature_mismatches,
)
from peerd.registry import Peer, PeerRegistry
from peerd.relay import RelayPlanner, RelayStore
from peerd.relay_desk import RelayDesk
from peerd.store import Store
from peerd.transport_api import Transport
from peerd.trust import (
    INVALID,
    TRUST_MIN,
    Judgement,
    clamp_trust,
    consensus_round,
    convergence_score,
)

#: Bytes per cell a delta may need on the wire, uncompressed (42 raw + framing):
#: used to cut deltas so that every message fits ``max_payload``.
WORST_BYTES_PER_CELL = 48

TransportFactory = Callable[..., Transport]


#: Seconds between two logs of the same rejection (per peer, or per reason for strangers).
REJECT_LOG_INTERVAL = 60.0
#: Rejection-log rate-limit slots kept for senders that hold no registry entry.
STRANGER_LOG_SLOTS = 256
#: Cells (Σ over the judged origins) from which a deviation round builds and scores its matrix
#: in a worker thread. Below, the whole round costs ~1-3 ms and runs on the event loop; a thread
#: hop costs ~40 µs, but also lets the loop run between the copy and the verdicts (docs/trust.md).
OFF_LOOP_CELLS = 2048


@dataclass
class NodeCounters:
    """Plain counters; the metrics endpoint reads them."""

    interactions: int = 0
    deltas_sent: int = 0
    deltas_applied: int = 0
    cells_sent: int = 0
    cells_applied: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    messages_received: int = 0
    sync_requests_sent: int = 0
    sync_answers_sent: int = 0
    rebirths_requested: int = 0
    births_answered: int = 0
    relays_sent: int = 0
    relayed_payloads_sent: int = 0
    relayed_deltas_applied: int = 0
    trust_rounds: int = 0
    quarantined: int = 0  # peers sent into quarantine by the deviation check
    restored: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


class Node:
    """One peer: learns locally, gossips, merges, remembers (module docstring)."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        transport_factory: TransportFactory | None = None,
        identity: Identity | None = None,
    ) -> None:
        self.config = config
        self.id = config.node
        self.fed = config.federation
        self.task = config.task
        self.clock = clock
        self.monotonic = monotonic
        self.table = QTable(
            self.task, self.id, secret=config.secret or config.federation,
            strategy=config.strategy, half_life=config.half_life, clock=clock,
            min_visits=config.min_visits, visit_cap=config.visit_cap, policy=config.policy,
            q_bound=config.q_bound, seed=None if config.seed < 0 else config.seed,
            policy_options=_policy_options(config), quarantine_below=config.quarantine_below,
        )
        self.counters = NodeCounters()
        self._gossip = GossipState(publish_every=config.publish_every,
                                   publish_interval=config.publish_interval,
                                   sync_interval=config.sync_interval)
        self._life_policy = _life_policy(config)
        self.identity = identity
        self._registry = PeerRegistry(allowlist=self.verifier_allowlist(), strict=config.strict,
                                      max_origins=config.max_origins)
        #: Validates every incoming payload; built once per node (the registry's verifier is
        #: handed to it per message, since reconfiguring replaces that verifier). Its task and
        #: ``q_bound`` are the table's: a decoded delta's cells are checked here only
        #: (``DeltaMsg.bounds``), the table adds the clock-based guard.
        self.decoder = wire.Decoder(fed=self.fed, fingerprint=self.task.fingerprint,
                                    n_actions=self.task.n_actions, q_bound=config.q_bound,
                                    max_payload=config.max_payload, max_entries=config.max_entries)
        self.store: Store | None = None
        #: peers whose cursor holds a deferred ask (``_ask`` notes them, the publisher visits them)
        self._deferred_asks: set[str] = set()
        #: the peer records as last written to the store: ``_save_peers`` writes only changes
        self._saved_peers: dict[str, PeerRecord] = {}
        #: own versions whose commit has not returned: nothing beyond goes out (DESIGN §4)
        self.durable = DurableWatermark()
        #: rebirth requests out and births in answer (presence without retained messages)
        self.presence = PresenceState(ask_interval=max(1.0, 4 * config.sync_interval))
        #: relayed catch-up (``peerd.relay_desk``): origins' own signed payloads, kept to re-send
        #: verbatim for them when they are silent (with a store, only their index: the payloads
        #: are read back from it to relay), and the plans of when to
        self.relay_desk = RelayDesk(self, keep_payloads=not config.state_dir,
                                    delay=max(0.5, config.sync_interval))
        self.transport: Transport | None = None
        self._transport_factory = transport_factory
        self.epoch = 0
        self.seq = 0
        self.convergence: float | None = None
        #: the deviation quarantine (``peerd.quarantine``) and its last verdicts
        self.quarantine = Quarantine(enter_ratio=config.deviation_ratio or 1.0,
                                     leave_ratio=min(config.deviation_leave,
                                                     config.deviation_ratio or 1.0))
        self.deviation: dict[str, Verdict] = {}
        #: newcomers whose cells do not count until judged (``peerd.probation``)
        self.probation = Probation(rounds=config.probation_rounds if config.deviation_ratio else 0)
        #: a deviation round over at least this many cells is scored in a worker thread
        self.off_loop_cells: int = OFF_LOOP_CELLS
        #: the extra rounds probation asks for on receipt (``_merge``) finish in the background,
        #: off the loop; a simulation on a virtual clock, whose time moves on while a thread
        #: works, sets False: they then run inline, their verdicts at the time their cells were read
        self.extra_rounds_off_loop = True
        #: the deviation round in flight off the loop (one at a time), and the peers forgotten
        #: (``_expire``) while it runs: its verdicts must not bring them back
        self._round: asyncio.Task[dict[str, Verdict]] | None = None
        self._round_forgotten: set[str] | None = None
        self._rounds_waiting = 0  # periodic rounds waiting for the one in flight
        #: per-peer version rates (``peerd.evidence``), on the node's clock
        self.version_rate = VersionRate(cap=config.version_rate_cap,
                                        multiple=config.version_rate_multiple,
                                        burst=config.version_burst)
        #: Σ n over the held cells of each origin (the evidence budget's running total)
        self._visits_held: dict[str, int] = {}
        self._pending_gain = 0
        #: the heartbeat runs trust rounds; a simulation on a virtual clock runs its own
        self.auto_trust_rounds = True
        self._log = get_logger(node=self.id, fed=self.fed)
        #: rejection-log rate limit of senders without an entry, by (sender, reason), LRU-bounded:
        #: their ids are chosen by whoever publishes, so this must not grow with them
        self._stranger_logged: collections.OrderedDict[tuple[str, str], float] = \
            collections.OrderedDict()
        self._signatures_sent = -1e18
        self._wake = asyncio.Event()
        self._publish_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._connections = 0  # broker connections so far (each after the first: a new epoch)
        self.applied_event = asyncio.Event()  # set on every applied delta (tests wait on it)
        #: called with (header, stats) after each applied delta: benchmarks, simulations
        self.on_merge: Callable[[wire.Header, MergeStats], None] | None = None

    # ------------------------------------------------------------ lifecycle
    async def open(self) -> None:
        """Open the store and load state: identity, epoch, own and peers' cells, peers."""
        cfg = self.config
        if cfg.state_dir:
            state = Path(cfg.state_dir)
            state.mkdir(parents=True, exist_ok=True)
            if self.identity is None:
                self.identity = Identity.load_or_create(state / "node.key")
            self.store = await Store.open(state / "peerd.db", federation=self.fed, node_id=self.id,
                                          fingerprint=self.task.fingerprint,
                                          synchronous=cfg.synchronous.upper())
            await self._load()
        if self.identity is None:
            self.identity = Identity.generate()
        self.epoch += 1
        self._gossip.last_publish = self.monotonic()
        if self.store:
            await self.store.set_meta("epoch", self.epoch)
        self._log = self._log.bind(epoch=self.epoch)

    async def _load(self) -> None:
        assert self.store is not None
        self.epoch = int(await self.store.get_meta("epoch", 0))
        cells = await self.store.load_cells()
        for origin, arrays in cells.items():
            self.table.load(origin, arrays)
        # Pins and replay windows used to live in a "verifier" snapshot: fold it in once.
        snap = await self.store.get_meta("verifier", None)
        stored = await self.store.load_peers()
        self._registry.load(stored, json.loads(snap) if snap else None)
        self._saved_peers = stored
        self.table.set_trusts(self._registry.trusts())  # one recompute, not one per peer
        await self.relay_desk.load()
        published = int(await self.store.get_meta("published_version", 0))
        self._gossip.published_version = min(published, self.table.version)
        self._log.info("state_loaded", cells=self.table.size, origins=len(cells),
                       version=self.table.version, peers=len(self._registry))

    @property
    def relays(self) -> RelayStore:
        """The origins' payloads this node keeps to relay (``RelayDesk.relays``)."""
        return self.relay_desk.relays

    @property
    def relay_plan(self) -> RelayPlanner:
        """When this node relays which origin (``RelayDesk.plan``)."""
        return self.relay_desk.plan

    @property
    def log(self) -> Any:
        """The node's logger, bound to its id, federation and epoch (rebound on a new epoch)."""
        return self._log

    @property
    def verifier(self) -> Verifier:
        """Whom this node believes: the registry's verifier (pins and replay windows are entry fields)."""
        return self._registry.verifier

    def verifier_allowlist(self) -> dict[str, bytes]:
        return {k: bytes.fromhex(v) for k, v in self.config.allowlist.items()}

    def reconfigure(self, config: NodeConfig) -> None:
        """Apply a reloaded configuration's cadence, ageing, allowlist and bounds (SIGHUP).

        Peers' entries (keys, windows, trust) are kept; a new allowlist and
        ``strict`` apply to the next message.
        """
        self.config = config
        self._gossip.publish_every = config.publish_every
        self._gossip.publish_interval = config.publish_interval
        self._gossip.sync_interval = config.sync_interval
        self._life_policy = _life_policy(config)
        self._registry.configure(allowlist=self.verifier_allowlist(), strict=config.strict,
                                 max_origins=config.max_origins)

    def rebind_logger(self) -> None:
        """Recreate the node's logger (structlog fixes the level filter when a logger is made)."""
        self._log = get_logger(node=self.id, fed=self.fed, epoch=self.epoch)

    async def run(self, shutdown_trigger: Callable[[], Awaitable[Any]] | None = None) -> None:
        """Run until ``shutdown_trigger`` returns (default: ``stop()`` is called)."""
        if self.identity is None:
            await self.open()
        trigger = shutdown_trigger or self._stop.wait
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._publisher(), name="publisher"),
                         tg.create_task(self._heartbeat(), name="heartbeat")]
                if self.config.broker_members or self._transport_factory:
                    self.transport = self._make_transport()
                    tasks.append(tg.create_task(
                        self.transport.run(self._on_message, self._on_connect), name="transport"))
                self._ready.set()
                await trigger()
                await self._shutdown()
                for t in tasks:
                    t.cancel()
        finally:
            await self._close_store()

    async def start(self) -> None:
        """Open and run in the background; ``await stop()`` ends it."""
        if self.identity is None:
            await self.open()
        self._runner = asyncio.create_task(self.run(), name=f"node-{self.id}")
        await self._ready.wait()

    async def stop(self) -> None:
        self._stop.set()
        if self._runner is not None:
            await self._runner

    async def _shutdown(self) -> None:
        """Final delta, death, disconnect: bounded so that a dead broker cannot hang us."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                if self.transport is not None and self.transport.connected:
                    await self._publish_delta(force=True)
                    await self._publish(wire.Death(self._header()), "presence", qos=1,
                                        retain=self.config.retain)
                    await self.transport.disconnect()
        self._log.info("node_stopped", version=self.table.version)

    async def close(self) -> None:
        """Save the peers and close the store (``run`` does it on exit; for callers without ``run``)."""
        await self._close_store()

    async def _close_store(self) -> None:
        if self._round is not None:  # a round in flight: its verdicts are not written any more
            self._round.cancel()
            await asyncio.wait([self._round])
        if self.store is not None:
            await self._save_peers()
            await self.store.set_meta("published_version", self._gossip.published_version)
            await self.store.close()
            self.store = None

    def _will(self, epoch: int | None = None) -> tuple[str, bytes, int, bool]:
        """The death the broker publishes if this connection drops (of ``epoch``); retained
        unless ``[broker] retain = false``."""
        header = self._header()
        if epoch is not None:
            header = dataclasses.replace(header, epoch=epoch)
        death = wire.encode(wire.Death(header), self.identity)
        return (wire.topic(self.fed, "presence", self.id), death, 1, self.config.retain)

    def _make_transport(self) -> Transport:
        will = self._will()
        subs = [(f, self.config.subscribe_qos) for f in wire.subscriptions(self.fed)]
        if self._transport_factory is not None:
            return self._transport_factory(client_id=f"peerd-{self.fed}-{self.id}",
                                           subscriptions=subs, will=will)
        from peerd.transport import MqttTransport
        cfg = self.config
        members = cfg.broker_members
        tls = None
        if any(u.startswith("mqtts://") for u in members) or cfg.ca_certs:
            from peerd.transport import TLSConfig
            tls = TLSConfig(ca_certs=cfg.ca_certs or None, certfile=cfg.certfile or None,
                            keyfile=cfg.keyfile or None)
        return MqttTransport(members, client_id=f"peerd-{self.fed}-{self.id}",
                             subscriptions=subs, will=will, username=cfg.username or None,
                             password=cfg.broker_password() or None, tls=tls,
                             keepalive=cfg.keepalive, retain=cfg.retain,
                             # a restarted broker is found within ~10 s, not the 30 s default cap
                             backoff=(0.2, 10.0),
                             # a member that accepts TCP but cannot admit us yet must not hold
                             # the failover long (doubled after each failed round of members)
                             connect_timeout=2.0,
                             )

    # ---------------------------------------------------------- local API
    def act(self, state: Any, *, explore: bool = True) -> int:
        """Choose an action on the merged view. Never waits."""
        return self.table.act(state, explore=explore)

    async def learn(self, state: Any, action: int | str, reward: float, next_state: Any = None,
                    done: bool = False, success: bool | None = None) -> int:
        """Learn from one interaction; returns the own version once it is durable."""
        delta = self.table.learn(state, action, reward, next_state, done, success)
        self.counters.interactions += 1
        if self.store is not None:
            version = delta.to_version
            self.durable.begin(version)  # before any await: the publisher must not pass it
            try:
                await self.store.write_cells(self.id, delta.arrays())
            except BaseException:  # failed or abandoned: not durable until a repair rewrites it
                self.durable.failed(version)
                self._wake.set()
                raise
            self.durable.committed(version)
        if self._gossip.should_publish(self.watermark, self.monotonic()):
            self._wake.set()
        return delta.to_version

    @property
    def watermark(self) -> int:
        """Highest own version such that every version up to it is durable (DESIGN §4).

        A node without a store has nothing to wait for: its table version.
        """
        return self.durable.value(self.table.version)

    async def _repair_durability(self) -> None:
        """Rewrite own cells changed after the watermark, so that failed commits stop holding it.

        The rewrite takes each cell at its current state, which includes the
        update whose commit failed; if the disk is still broken, the next
        publisher tick tries again and nothing newer is published meanwhile.
        """
        if self.store is None or not self.durable.needs_repair:
            return
        upto = self.table.version
        cells = self.table.delta(since=self.watermark)
        try:
            await self.store.write_cells(self.id, cells.arrays())
        except Exception as exc:
            self._log.warning("own_cells_not_durable", watermark=self.watermark,
                              version=upto, error=str(exc))
            return
        self.durable.repaired(upto)
        self._log.info("own_cells_repaired", cells=len(cells), watermark=self.watermark)

    # ------------------------------------------------------------ outgoing
    def _header(self) -> wire.Header:
        self.seq += 1
        return wire.Header(fed=self.fed, node=self.id, fp=self.task.fingerprint, epoch=self.epoch,
                           seq=self.seq, ts=self.clock())

    async def _publish(self, msg: Any, kind: str, *, qos: int, retain: bool = False,
                       on_unconfirmed: Callable[[], None] | None = None) -> bool:
        """Encode and hand to the transport. ``on_unconfirmed`` runs if the broker never
        acknowledges the message (its connection ended first; transports that can tell)."""
        if self.transport is None:
            return False
        payload = wire.encode(msg, self.identity, max_payload=self.config.max_payload,
                              max_entries=self.config.max_entries)
        topic = wire.topic(self.fed, kind, self.id)
        tracked = getattr(self.transport, "publish_tracked", None)
        if on_unconfirmed is not None and tracked is not None:
            ack = await tracked(topic, payload, qos=qos, retain=retain)
            ok = ack is not None
            if ack is not None:
                ack.add_done_callback(
                    lambda f: None if not f.cancelled() and f.result() else on_unconfirmed())
        else:
            ok = await self.transport.publish(topic, payload, qos=qos, retain=retain)
        if ok:
            self.counters.bytes_sent += len(payload)
        return ok

    def request_signatures(self) -> None:
        """Send signatures with the next delta, whatever the heartbeat cadence (simulations)."""
        self._signatures_sent = -1e18

    async def flush(self) -> bool:
        """Publish every unpublished own change now (tests, shutdown, operators)."""
        return await self._publish_delta(force=True)

    async def _publish_delta(self, *, force: bool = False, since: int | None = None) -> bool:
        """Publish own cells after ``since`` (default: after the last published version).

        Serialised by a lock: ``flush`` and the publisher task must not both
        compute a delta from the same ``published_version`` and send it twice.
        """
        async with self._publish_lock:
            return await self._publish_delta_locked(force=force, since=since)

    async def _publish_delta_locked(self, *, force: bool, since: int | None) -> bool:
        answering = since is not None
        start = self._gossip.published_version if since is None else since
        version = self.watermark  # never a version whose commit has not returned
        if not force and not answering and not self._gossip.should_publish(version, self.monotonic()):
            return False
        if version <= start:
            # Nothing after ``start``: an empty answer would only cost every peer a verification
            # (a fleet starting together asks every origin at version 0). Asked and done.
            return answering
        delta = self.table.delta(since=start, upto=version)
        # Signatures feed the trust round, which runs once per heartbeat: sending
        # them with every delta would only cost bytes and verification time.
        now = self.monotonic()
        sigs: tuple[PatternSignature, ...] = ()
        if now - self._signatures_sent >= self.config.heartbeat_interval:
            sigs = tuple(self.table.signatures(self.config.signatures, upto=version))
        max_cells = min(self.config.max_entries, self.config.max_payload // WORST_BYTES_PER_CELL)
        pending = delta.split(max_cells)  # pieces with contiguous version ranges, in order
        while pending:
            piece = pending.pop(0)
            # signatures ride on the last piece: by then the receiver holds every cell they
            # were computed from, and can check them against those cells (_check_signatures)
            msg = wire.DeltaMsg(self._header(), delta=piece, signatures=() if pending else sigs)
            try:
                ok = await self._publish(msg, "delta", qos=1,
                                         on_unconfirmed=functools.partial(self._unconfirmed, piece))
            except wire.PayloadTooLarge as exc:  # signatures or framing pushed it over: halve
                if len(piece) <= 1:
                    self._log.error("delta_too_large", cells=len(piece), error=str(exc))
                    return False
                pending[:0] = piece.split((len(piece) + 1) // 2)
                continue
            if not ok:
                return False
            if sigs and not pending:
                self._signatures_sent = now
                sigs = ()
            self.counters.deltas_sent += 1
            self.counters.cells_sent += len(piece)
            if start <= self._gossip.published_version:
                self._gossip.mark_published(piece.to_version, self.monotonic())
        if answering:
            self.counters.sync_answers_sent += 1
        self._log.debug("delta_published", cells=len(delta), since=start, version=delta.to_version)
        return True

    def _unconfirmed(self, piece: Delta) -> None:
        """A delta the broker never acknowledged (the connection died first): send it again.

        ``published_version`` goes back to where the piece started, so the
        publisher recomputes everything after it from versions once reconnected;
        pieces that did arrive are sent twice, which the CRDT merge absorbs.
        """
        if piece.from_version < self._gossip.published_version:
            self._gossip.published_version = piece.from_version
            self._log.info("delta_unconfirmed", since=piece.from_version, to=piece.to_version)
            self._wake.set()

    async def _publisher(self) -> None:
        """Publish own deltas on trigger; answer sync requests, coalesced."""
        tick = min(1.0, self.config.publish_interval)
        while True:
            at = self.presence.answer_at()  # a coalesced birth answer falls due before the tick
            wait = tick if at is None else min(tick, max(0.05, at - self.monotonic()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            self._wake.clear()
            await self._repair_durability()
            if self.transport is None or not self.transport.connected:
                continue
            now = self.monotonic()  # the asks' rate limits: monotonic (``_handle``)
            for pid in list(self._deferred_asks):  # the peers with an ask deferred, not all
                peer = self._registry.get(pid)
                if peer is None or not peer.cursor.deferred:
                    self._deferred_asks.discard(pid)
                    continue
                self._ask(pid, gossip.due_ask(peer.cursor, now, self._gossip.sync_interval))
            if self.presence.take_answer(self.monotonic()):
                await self._answer_birth()
            # a node behind on its inbound messages cannot tell yet whether a relay is needed
            backlog = self.transport.backlog
            await self.relay_desk.relay_due(hold=backlog > 0)
            since = self._gossip.take_answer()
            if since is not None and not await self._publish_delta(since=since):
                self._gossip.on_sync_request(since)  # not sent: try again next time
            await self._publish_delta()

    def _birth(self) -> wire.Birth:
        return wire.Birth(self._header(), public_key=self.identity.public_key,
                          version=self._gossip.published_version)

    async def _answer_birth(self) -> None:
        """A fresh, non-retained birth: for a peer that asked, or a new peer that was born."""
        if await self._publish(self._birth(), "presence", qos=1, retain=False):
            self.counters.births_answered += 1
            self._log.debug("birth_answered")
        else:
            self.presence.retry_answer()

    async def _on_connect(self) -> None:
        """(Re)connected: birth, then everything unpublished (computed from versions).

        Each connection after the first is a new presence epoch (docs/presence.md,
        losing the broker): the Will of the lost connection, which a surviving broker member may
        publish after our new birth, then carries an older epoch and is ignored.
        """
        if self._connections:
            self.epoch += 1
            self._log = self._log.bind(epoch=self.epoch)
            if self.store is not None:
                await self.store.set_meta("epoch", self.epoch)
        self._connections += 1
        await self._publish(self._birth(), "presence", qos=1, retain=self.config.retain)
        self.presence.answered(self.monotonic())
        # The Will of the *next* connection, in the epoch that connection will have.
        if self.transport is not None:
            self.transport.will = self._will(self.epoch + 1)
        self._log.info("broker_connected", member=getattr(self.transport, "member", None),
                       version=self.table.version, published_version=self._gossip.published_version)
        self._wake.set()

    async def _heartbeat(self) -> None:
        interval = self.config.heartbeat_interval
        while True:
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))
            await self.tick()

    async def tick(self) -> None:
        """One heartbeat round: advertise, age peers, free expired origins, judge, save."""
        now = self.clock()
        if self.transport is not None and self.transport.connected:
            hb = wire.Heartbeat(self._header(), version=self._gossip.published_version,
                                size=self.table.size)
            await self._publish(hb, "heartbeat", qos=0)
        ttl = self.config.origin_ttl
        expired = []
        for peer in self._registry:
            change = liveness.on_silence(peer.life, now, self._life_policy)
            if change:
                self._log.info(f"peer_{change[1]}", peer=peer.node_id, was=change[0])
            if liveness.is_expired(peer.life, now, ttl):
                expired.append(peer.node_id)
        for pid in expired:
            await self._expire(pid)
        if self.auto_trust_rounds:
            await self.trust_round()
        await self._save_peers()

    async def _expire(self, pid: str) -> None:
        """Free an origin offline for ``origin_ttl``: entry, pins, cells, store rows. Once.

        Its entry goes, so no later round finds it again. Should it come back, its
        next birth admits it as a new peer (key pinned anew, everything re-synced).
        """
        entry = self._registry.remove(pid)
        self.relay_desk.forget(pid)
        if entry is not None and entry.trust != 1.0:
            self.table.set_trusts({pid: 1.0})  # a returning peer starts afresh, in the table too
        dropped = self.table.forget(pid)
        self.quarantine.forget(pid)
        if self._round_forgotten is not None:
            self._round_forgotten.add(pid)
        self.probation.forget(pid)
        self.version_rate.forget(pid)
        self._visits_held.pop(pid, None)
        self._saved_peers.pop(pid, None)
        if self.store:
            await self.store.forget_peer(pid)
        self._log.info("origin_expired", peer=pid, cells=dropped)

    # ------------------------------------------------------------ incoming
    async def receive(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Handle one message from the network (what the transport calls; benchmarks too)."""
        await self._on_message(topic, payload, retain)

    async def _on_message(self, topic: str, payload: bytes, retain: bool) -> None:
        parsed = wire.parse_topic(topic)
        if parsed is None:
            return
        fed, kind, sender = parsed
        if sender == self.id or fed != self.fed:
            return
        self.counters.messages_received += 1
        self.counters.bytes_received += len(payload)
        if kind == "relay":
            await self._on_relayed(sender, payload)
            return
        if not self._registry.admits(sender):  # before decoding: a full node spends nothing
            await self._reject(sender, OriginLimit(
                f"{sender!r} would be peer {len(self._registry) + 1}, past max_origins = "
                f"{self._registry.max_origins}"), retain)
            return
        verifier = self._registry.verifier
        try:
            self.decoder.verifier = verifier
            msg = self.decoder.decode(payload, topic=topic, commit=False)
        except WireError as exc:
            await self._reject(sender, exc, retain)
            if exc.reason == "unknown_sender" and not retain:
                self._ask_rebirth(sender)
            return
        try:
            await self._handle(msg, retain)
        except WireError as exc:  # e.g. the evidence guard: the (verified) sender said this
            exc.authenticated = True
            await self._reject(sender, exc, retain)
            return
        verifier.commit(msg)  # only an accepted message moves the replay window
        self.relay_desk.keep(msg, payload)

    async def _on_relayed(self, relayer: str, payload: bytes) -> None:
        """A payload another node signed, relayed: verify it as the origin's own, apply it.

        The relayer cannot forge it (``RelayDesk.verify``) and is not who
        speaks, so a bad relay costs nobody trust: it is counted.
        """
        try:
            msg = self.relay_desk.verify(payload, self._registry)
        except WireError as exc:
            exc.authenticated = False  # the relayer is not the author: nobody loses trust
            await self._reject(relayer, exc, False)
            return
        origin = msg.header.node
        if origin == self.id:
            return
        if isinstance(msg, wire.Birth):
            self.relay_desk.on_relayed_birth(msg, relayer)
        else:
            delta: Delta = msg.delta
            try:
                stats = await self._merge(origin, delta, self.clock(), relayed=True,
                                          bounds=msg.bounds)
            except WireError as exc:
                exc.authenticated = False
                await self._reject(relayer, exc, False)
                return
            self.counters.relayed_deltas_applied += 1
            self.relay_desk.covered(origin, delta.from_version)
            cursor = self._registry.admit(origin).cursor
            if delta.from_version <= cursor.known:  # contiguous: the cursor moves; a gap asks nobody
                cursor.known = max(cursor.known, delta.to_version)
            self._log.debug("relayed_delta_applied", peer=origin, relayer=relayer,
                            cells=stats.cells, new=stats.new)
            if self.on_merge:
                self.on_merge(msg.header, stats)
            self.applied_event.set()
        self.relay_desk.keep(msg, payload)

    async def _handle(self, msg: Any, retain: bool = False) -> None:
        now = self.clock()
        h: wire.Header = msg.header
        pid = h.node
        # (before admit: a first birth or rebirth request of a peer pins its key on commit)
        newcomer = not retain and self._registry.verifier.pinned(pid) is None
        peer = self._registry.admit(pid)  # admission was checked before decoding
        sync = self._gossip.sync_interval
        # The asks' rate limits run on the monotonic clock, not on ``clock``: they bound
        # network load, and a simulation's virtual clock stands still while it waits for
        # delivery, so a deferred ask never fell due there (gossip.due_ask).
        mono = self.monotonic()
        if isinstance(msg, wire.Birth):
            if liveness.on_birth(peer.life, h.epoch, now):
                self._log.info("peer_online", peer=pid, epoch=h.epoch)
            self.presence.known(pid)
            # A live birth of a new peer (life) is answered with ours, once (DESIGN §4):
            # on a broker that keeps no retained messages, or a cluster member that has
            # not replicated our retained birth yet, the newcomer would never see it.
            # Not when its retained birth of that life came first: it then has ours live.
            if retain:
                self.presence.on_retained_birth(pid, h.epoch)
            elif self.presence.on_live_birth(pid, h.epoch, self.monotonic()):
                self._wake.set()
                self.relay_desk.offer(pid)
            # A node asks every origin it hears of and holds nothing of: a retained
            # birth may advertise an old version (0 included: asked one heartbeat later
            # unless a delta came, gossip.on_retained_birth). A live birth's version is
            # current: 0 means nothing to ask (a fleet starting together would otherwise
            # ask N² times, each request verified by all N nodes).
            if retain:
                self._ask(pid, gossip.on_retained_birth(peer.cursor, msg.version, mono, sync,
                                                        wait=self.config.heartbeat_interval))
            else:
                self._ask(pid, gossip.on_advert(peer.cursor, msg.version, mono, sync))
        elif isinstance(msg, wire.Death):
            if liveness.on_death(peer.life, h.epoch, now):
                self._log.info("peer_offline", peer=pid, epoch=h.epoch, reason="death")
        elif isinstance(msg, wire.Heartbeat):
            self._heard(peer, h.epoch, now)
            # QoS 0: it overtakes the QoS 1 delta it advertises; give that one a heartbeat to land
            self._ask(pid, gossip.on_advert(peer.cursor, msg.version, mono, sync,
                                            wait=self.config.heartbeat_interval))
        elif isinstance(msg, wire.Rebirth):
            if newcomer:
                self.relay_desk.offer(pid)
            self._heard(peer, h.epoch, now)
            self.presence.known(pid)
            if msg.to == self.id:
                self.presence.on_rebirth_request(self.monotonic())
                self._wake.set()
            self._ask(pid, gossip.on_advert(peer.cursor, msg.version, mono, sync))
        elif isinstance(msg, wire.SyncRequest):
            self._heard(peer, h.epoch, now)
            if msg.origin == self.id:
                self._gossip.on_sync_request(msg.since)
                self._wake.set()
            else:
                # its answer is broadcast: it may cover what we lack of that origin too
                asked = self._registry.get(msg.origin)
                if asked is not None:
                    gossip.on_overheard(asked.cursor, msg.since, mono, sync)
                # relayed catch-up: answer for a silent origin now (after a jitter), for
                # a live one only if it has not answered within a few sync intervals
                self.relay_desk.on_sync_request(msg.origin, msg.since, sync_interval=sync)
        elif isinstance(msg, wire.DeltaMsg):
            self._heard(peer, h.epoch, now)
            await self._apply(peer, msg, now)
        else:  # pragma: no cover - decode returns only the types above
            raise AssertionError(type(msg))

    async def _merge(self, origin: str, delta: Delta, now: float, *,
                     relayed: bool = False, bounds: Bounds | None = None) -> MergeStats:
        """Apply an origin's cells (its own or relayed for it) and persist what changed.

        The evidence budget is checked first, whoever carried the cells. A
        relayed delta never starts the origin's version-rate track (its version
        is the origin's past: ``VersionRate.observe``). ``bounds``: the
        decoder's ``DeltaMsg.bounds`` (its cells are checked already: the
        decoder and the table share task and ``q_bound``, see ``__init__``).
        """
        self._pending_gain = 0
        # validates everything first (the cells themselves only unless the decoder did);
        # raises InvalidDelta, and nothing has changed
        if self.config.evidence_budget:
            bounds = self.check_evidence(delta, bounds)  # runs QTable.check first
        else:
            bounds = self.table.check(delta, bounds)
        # A newcomer goes on probation with its first cells that pass the checks, not with its
        # first attempt: an origin whose every delta is rejected (``inflate``) was admitted by
        # the first, released after ``max_rounds`` unjudged, and admitted again by the next,
        # for ever (it counted nowhere meanwhile: its rejections had cost it its trust)
        if (self.probation.enabled and len(delta) and origin != self.id
                and len(self._registry) >= MIN_PEERS and self.table.max_version(origin) == 0
                and self.probation.admit(origin)):
            self.table.set_trusts(self.probation.weigh({origin: self.trust_of(origin)}))
        stats = self.table.apply(delta, checked=True, bounds=bounds)
        if origin in self._visits_held:
            self._visits_held[origin] += self._pending_gain
        self.version_rate.observe(origin, delta.to_version, self.clock(), anchor=not relayed)
        if stats.changed and self.store is not None:
            # one group commit; relaxed: safe from SIGKILL, no fsync of its own (peers' cells
            # lost to a power cut are asked for again; own cells are always fully durable)
            await asyncio.gather(self.store.write_cells(origin, delta.arrays(), relaxed=True),
                                 self.store.log_merge(now, stats))
        self.counters.deltas_applied += 1
        self.counters.cells_applied += stats.changed
        self.probation.note_delta(origin)
        if self.probation.due():  # newcomers wait for a verdict a few publishes, not trust rounds
            # (and the messages queued behind this one do not wait for a round off the loop)
            await self.deviation_round(periodic=False, wait=False,
                                       off_loop=self.extra_rounds_off_loop)
        return stats

    async def _apply(self, entry: Peer, msg: Any, now: float) -> None:
        delta: Delta = msg.delta
        peer = entry.node_id
        if delta.origin != peer:
            raise OriginMismatch(f"{peer!r} sent cells of origin {delta.origin!r}")
        stats = await self._merge(peer, delta, now, bounds=msg.bounds)
        self.relay_desk.covered(peer, delta.from_version)  # the origin answered itself
        if msg.signatures and (not self.config.deviation_ratio
                               or await self._check_signatures(peer, tuple(msg.signatures))):
            entry.signatures = tuple(msg.signatures)
            entry.fresh = True
        self._ask(peer, gossip.on_delta(entry.cursor, delta.from_version, delta.to_version,
                                        self.monotonic(), self._gossip.sync_interval))
        # since/version: scripts/cluster.py measures propagation across processes from these lines
        self._log.debug("delta_applied", peer=peer, since=delta.from_version,
                        version=delta.to_version, cells=stats.cells, new=stats.new,
                        updated=stats.updated, conflicts=stats.conflicts)
        if self.on_merge:
            self.on_merge(msg.header, stats)
        self.applied_event.set()

    def check_evidence(self, delta: Delta, bounds: Bounds | None = None) -> Bounds:
        """The evidence budget of DESIGN §2 (``peerd.evidence``); raises ``InvalidDelta``.

        Compares the delta with what this node holds of the origin's cells:
        visits added vs. the version range, each cell's weight vs. its new
        visits, and the origin's version rate. O(cells in the delta).
        ``bounds``: as for ``QTable.check``. Returns ``QTable.check``'s bounds.
        """
        origin, t = delta.origin, self.table
        now = self.clock()
        self.version_rate.observe(self.id, t.version, now)
        self.version_rate.check(origin, delta.to_version, now)
        # shape, bounds (unless the decoder checked them) and the visit_cap guard first:
        # their reasons are more precise
        bounds = t.check(delta, bounds)
        if not len(delta):
            return bounds
        n_held, lw_held, v_held, _ = t.held_cells(origin, delta.keys, delta.actions)
        held_total = self._visits_held.get(origin)
        if held_total is None:  # first sight (or after a restart): O(its cells) once
            held_total = self._visits_held[origin] = int(t.delta_of(origin).n.sum())
        self._pending_gain = check_budget(
            origin, delta.from_version, delta.to_version, self.known_version(origin),
            n_new=delta.n, lw_new=delta.lw, n_held=n_held, lw_held=lw_held,
            replaces=delta.version > v_held, now_over_h=(now + t.clock_skew) / t.half_life,
            v_new=delta.version, v_held=v_held, held_total=held_total,
            top_version=t.max_version(origin))
        return bounds

    def _heard(self, peer: Peer, epoch: int, now: float) -> None:
        if liveness.on_heard(peer.life, epoch, now):
            self._log.info("peer_online", peer=peer.node_id, epoch=epoch)

    def _ask(self, origin: str, since: int | None) -> None:
        """Send a sync request (already rate-limited by the gossip state).

        Every gossip decision passes here, so this is also where an ask the
        gossip deferred is noted: the publisher then visits only those peers,
        not the whole registry on every wake-up (a cost per delta × peers).
        """
        entry = self._registry.get(origin)
        if entry is not None and entry.cursor.deferred:
            self._deferred_asks.add(origin)
        if since is None or self.transport is None:
            return
        req = wire.SyncRequest(self._header(), origin=origin, since=since)
        self.counters.sync_requests_sent += 1
        self._log.debug("sync_requested", peer=origin, since=since)
        task = asyncio.ensure_future(self._publish(req, "sync", qos=1))
        task.add_done_callback(_ignore_result)

    def _ask_rebirth(self, sender: str) -> None:
        """An unknown sender spoke live: ask it for a fresh birth (rate-limited per sender).

        Not under a strict allowlist (an unlisted sender is refused anyway), and
        not for a sender whose key is pinned (its birth is not what is missing).
        """
        if self.transport is None or self.config.strict or self.pinned_key(sender):
            return
        if not self.presence.may_ask(sender, self.monotonic()):
            return
        req = wire.Rebirth(self._header(), to=sender, public_key=self.identity.public_key,
                           version=self._gossip.published_version)
        self.counters.rebirths_requested += 1
        self._log.debug("rebirth_requested", peer=sender)
        task = asyncio.ensure_future(self._publish(req, "rebirth", qos=1))
        task.add_done_callback(_ignore_result)

    async def _reject(self, sender: str, exc: WireError, retain: bool) -> None:
        reason = exc.reason
        self.counters.rejected[reason] = self.counters.rejected.get(reason, 0) + 1
        now = self.clock()
        entry = self._registry.get(sender)
        if self._should_log_reject(entry, sender, reason, now):
            # Retained presence of a node we never met (its death from an earlier run,
            # a birth already superseded) is normal on a shared broker: not a warning.
            # Duplicates (QoS 1 redelivery, a bridge re-sending retained births) are
            # routine: counted in the metrics, not worth a warning.
            quiet = reason == "replay" or (retain and reason == "unknown_sender")
            log = self._log.debug if quiet else self._log.warning
            log("message_rejected", peer=sender, reason=reason, error=str(exc), retained=retain)
        # Only what the verified sender itself said costs it trust: anyone can publish
        # garbage or forgeries on its topic, and replays are anyone's to make.
        if not exc.authenticated or reason == "replay" or retain or entry is None:
            return
        old = entry.trust
        new = clamp_trust(old + INVALID)
        if new != old:
            entry.trust = new
            self.table.set_trusts(self.probation.weigh({sender: new}))
            if self.store:
                await self.store.add_trust_events([TrustEvent(sender, now, old, new, f"invalid:{reason}")])

    def _should_log_reject(self, entry: Peer | None, sender: str, reason: str, now: float) -> bool:
        """Rate-limit rejection logs: per entry for peers, in a bounded LRU for strangers.

        A stranger past ``max_origins`` is logged at most once per interval per
        reason, whatever ids it invents.
        """
        if entry is not None:
            if now - entry.reject_logged.get(reason, -1e18) < REJECT_LOG_INTERVAL:
                return False
            entry.reject_logged[reason] = now
            return True
        key = ("", reason) if reason == OriginLimit.reason else (sender, reason)
        last = self._stranger_logged.get(key)
        if last is not None and now - last < REJECT_LOG_INTERVAL:
            return False
        self._stranger_logged[key] = now
        self._stranger_logged.move_to_end(key)
        while len(self._stranger_logged) > STRANGER_LOG_SLOTS:
            self._stranger_logged.popitem(last=False)
        return True

    # --------------------------------------------------------------- trust
    async def trust_round(self) -> dict[str, Judgement]:
        """Values first (the deviation quarantine), then signatures against the leave-one-out consensus.

        The registry holds the trust; the table receives every change of the
        round in one ``set_trusts`` call (one recompute, not one per peer).
        """
        await self.deviation_round()
        fresh = [p for p in self._registry if p.fresh]
        if not fresh:
            return {}
        sigs = {p.node_id: p.signatures for p in self._registry if p.signatures}
        sigs[self.id] = tuple(self.table.signatures(self.config.signatures))
        trust = {p.node_id: p.trust for p in self._registry if p.signatures}
        judged = consensus_round(sigs, trust)
        self.convergence = convergence_score(judged)
        events = []
        changes: dict[str, float] = {}
        now = self.clock()
        for peer in fresh:
            peer.fresh = False
            j = judged.get(peer.node_id)
            if j is None:
                continue
            if j.alignment is not None:
                peer.alignment = j.alignment
            if peer.node_id in self.quarantine:  # agreeing signatures buy a liar nothing
                continue
            old = peer.trust
            new = clamp_trust(old + j.change)
            if new != old:
                events.append(TrustEvent(peer.node_id, now, old, new,
                                         f"consensus:+{j.agree}/-{j.disagree}"))
                peer.trust = changes[peer.node_id] = new
        if changes:
            self.table.set_trusts(self.probation.weigh(changes))
        self.counters.trust_rounds += 1
        if events and self.store:
            await self.store.add_trust_events(events)
        return judged

    async def _check_signatures(self, peer: str, sigs: tuple[PatternSignature, ...]) -> bool:
        """False (and trust lost) when signatures contradict the signer's own published cells.

        An honest node signs what it publishes; a copycat signs what others
        publish. Its signatures then neither vote nor earn it trust.
        """
        a = self.task.n_actions
        keys = np.repeat(np.array([s.key for s in sigs], np.uint64), a)
        acts = np.tile(np.arange(a, dtype=np.int64), len(sigs))
        n, _, _, q = self.table.held_cells(peer, keys, acts)
        held = n > 0
        checked, bad = signature_mismatches(keys[:: a], np.array([s.action for s in sigs]),
                                            keys[held], acts[held], q[held])
        if not bad:
            return True
        exc = ContradictingSignatures(f"{bad} of {checked} checked signatures of {peer!r} "
                                      "contradict its own published cells")
        exc.authenticated = True
        await self._reject(peer, exc, False)
        return False

    def excluded(self, peer: str) -> bool:
        """True when ``peer``'s cells are left out of the merged view (quarantined or distrusted)."""
        q = self.table.quarantine_below
        return (peer in self.quarantine or peer in self.probation
                or (q > 0 and self.trust_of(peer) < q))

    async def deviation_round(self, *, periodic: bool = True, wait: bool = True,
                              off_loop: bool = True) -> dict[str, Verdict]:
        """Score every origin by how far its values deviate from the others'; (un)quarantine.

        Quarantine sets a peer's trust to the floor (below ``quarantine_below``:
        out of the view, its cells kept); leaving it restores trust to at least 1.
        Newcomers on probation (``peerd.probation``) are judged here and released
        or failed; ``periodic=False`` is an extra round for them between trust rounds.

        Over ``off_loop_cells`` cells or more (and ``off_loop``), only a copy
        of the table is made on the event loop; the matrix is built and scored
        in a worker thread, on a copy of the quarantine that is swapped in on
        the loop when it returns: the node keeps receiving and beating
        meanwhile (seconds at 256 origins, docs/trust.md). Such a round reads
        the table as it was when copied and concludes as if it had run then:
        whatever happened meanwhile comes after it (a peer forgotten meanwhile
        stays forgotten). One round at a time: an extra round asked for while
        one is in flight, or while a periodic one waits, is not run (those
        judge the probationers); a periodic one waits for the round in flight
        to end. ``wait=False``: return the last verdicts at once and let a
        round off the loop finish in the background.
        """
        if not periodic and (self._round is not None or self._rounds_waiting):
            return self.deviation
        if self._round is not None:  # counted: extra rounds must not keep a waiting one out
            self._rounds_waiting += 1
            try:
                while self._round is not None:
                    await asyncio.wait([self._round])
            finally:
                self._rounds_waiting -= 1
        t = self.table
        if (not off_loop or not self.config.deviation_ratio
                or sum(t.origin_cells(o) for o in t.origins
                       if o == self.id or o in self._registry) < self.off_loop_cells):
            return await self._deviation_round(periodic, None)
        self._round = asyncio.ensure_future(self._round_off_loop(periodic))
        self._round.add_done_callback(self._round_ended)
        return await self._round if wait else self.deviation

    async def _round_off_loop(self, periodic: bool) -> dict[str, Verdict]:
        # the copy's memory is taken and touched in the thread: first-touch page faults of a
        # fresh copy cost the loop 0.08-0.17 s at 1 M stored cells, a memcpy into touched pages
        # 5-25 ms (scripts/bench_trust.py)
        n = self.table.stored_entries
        room = await asyncio.to_thread(cells_room, n + n // 4 + 1024)
        return await self._deviation_round(periodic, room)

    async def _deviation_round(self, periodic: bool, room: CellsRoom | None) -> dict[str, Verdict]:
        """The round itself: inline (``room`` None) or off the loop (the copy goes into ``room``)."""
        t = self.table
        origins = [o for o in t.origins
                   if o == self.id or (o in self._registry and t.max_version(o) > 0)]
        if len(self.probation) and (not self.config.deviation_ratio
                                    or len(self._registry) < MIN_PEERS):
            # nobody judged, or too few to judge by a median: probation would only hold honest out
            self._release(self.probation.release_all())
        if not self.config.deviation_ratio or len(self._registry) < 2:
            return {}
        # gone offline: judged, but no say in the median, never restored or released (quarantine.py)
        silent = frozenset(o for o in origins if (e := self._registry.get(o)) is not None
                           and e.life.status == OFFLINE)
        if len(origins) < 3 or not t.shared_cells():
            self._release(self.probation.judge({}, periodic=periodic, silent=silent)[0])
            return {}  # (no cell held by two origins: no value to compare, verdicts stand)
        judge = functools.partial(_judge_cells, t.snapshot_cells(origins, room=room),
                                  {o: self.trust_of(o) for o in origins}, own=self.id,
                                  now_over_h=self.clock() / t.half_life, silent=silent)
        conclude: dict[str, Any] = dict(periodic=periodic, silent=silent, seen=self.probation.deltas_since,
                                        among=frozenset(self.probation.pending))
        if room is None:
            verdicts, entered, left = judge(self.quarantine)
            return await self._conclude_round(verdicts, entered, left, **conclude)
        state = dataclasses.replace(self.quarantine, held=dict(self.quarantine.held))
        self._round_forgotten = set()
        try:
            verdicts, entered, left = await asyncio.to_thread(judge, state)
        finally:
            gone, self._round_forgotten = self._round_forgotten or set(), None
        # swap the judged copy in, without the peers forgotten (``_expire``) while it was judged
        for pid in gone:
            state.forget(pid)
        self.quarantine.held = state.held
        if gone:
            verdicts = {p: v for p, v in verdicts.items() if p not in gone}
            entered = [p for p in entered if p not in gone]
            left = [p for p in left if p not in gone]
            conclude["among"] -= gone
        return await self._conclude_round(verdicts, entered, left, **conclude)

    def _round_ended(self, task: asyncio.Task[dict[str, Verdict]]) -> None:
        if self._round is task:
            self._round = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._log.warning("deviation_round_failed", error=repr(exc))

    async def _conclude_round(self, verdicts: dict[str, Verdict], entered: list[str],
                              left: list[str], *, periodic: bool, silent: frozenset[str],
                              among: frozenset[str], seen: int) -> dict[str, Verdict]:
        """Act on a round's verdicts: probation, trust, logs, events (``among``, ``seen``: see
        ``Probation.judge``)."""
        self.deviation = verdicts
        released, failed = self.probation.judge(verdicts, periodic=periodic,  # failed: quarantined
                                                silent=silent, among=among, seen=seen)
        for pid in released + failed:
            v = verdicts.get(pid)
            self._log.info("probation_passed" if pid in released else "probation_failed", peer=pid,
                           ratio=None if v is None or v.ratio is None else round(v.ratio, 2),
                           relative=None if v is None or v.relative is None else round(v.relative, 3),
                           cells=None if v is None else v.cells)
        now = self.clock()
        events = []
        changes: dict[str, float] = {p: self.trust_of(p) for p in released
                                     if p not in self.quarantine and p in self._registry}
        for pid, why in [(p, "quarantine") for p in entered] + [(p, "restored") for p in left]:
            entry = self._registry.get(pid)
            if entry is None:
                continue
            old = entry.trust
            new = TRUST_MIN if why == "quarantine" else max(1.0, old)
            v = verdicts.get(pid)
            ratio = v.ratio if v is not None and v.ratio is not None else float("nan")
            self._log.info("peer_quarantined" if why == "quarantine" else "peer_restored",
                           peer=pid, ratio=round(ratio, 2))
            if new != old:
                entry.trust = changes[pid] = new
                events.append(TrustEvent(pid, now, old, new, f"{why}:deviation x{ratio:.1f}"))
        if changes:
            self.table.set_trusts(self.probation.weigh(changes))
        self.counters.quarantined += len(entered)
        self.counters.restored += len(left)
        if events and self.store:
            await self.store.add_trust_events(events)
        return verdicts

    def _release(self, peers: list[str]) -> None:
        """Released from probation: their cells count with their trust."""
        back = {p: self.trust_of(p) for p in peers if p in self._registry}
        if back:
            self.table.set_trusts(back)

    # ---------------------------------------------------------------- peers
    async def _save_peers(self) -> None:
        """Persist the entries that changed since the last save, as ``PeerRecord``s, in one batch.

        Every heartbeat saves: writing all of a thousand peers' rows (JSON, SQLite) each
        time would cost per peer of the fleet; a record equal to the one last written is
        skipped, so the cost follows the peers that spoke, not the fleet's size.
        """
        if self.store is None:
            return
        saved = self._saved_peers
        changed = [rec for rec in self._registry.records() if saved.get(rec.node_id) != rec]
        await self.store.upsert_peers(changed)
        saved.update((rec.node_id, rec) for rec in changed)
        if await self.store.get_meta("verifier", None):
            await self.store.set_meta("verifier", "")  # folded into the records (see _load)

    def peer_ids(self) -> list[str]:
        """Ids of the peers this node holds an entry for (heard, or stored), sorted."""
        return self._registry.ids()

    def peer_count(self) -> int:
        return len(self._registry)

    def liveness_status(self, peer: str) -> str:
        """``online`` | ``suspect`` | ``offline`` | ``unknown`` (no entry)."""
        entry = self._registry.get(peer)
        return entry.life.status if entry else UNKNOWN

    def liveness_counts(self) -> dict[str, int]:
        """Peers per liveness status."""
        return self._registry.counts()

    def trust_of(self, peer: str) -> float:
        """The trust this node has in ``peer`` (1.0 for a peer without an entry)."""
        entry = self._registry.get(peer)
        return entry.trust if entry else 1.0

    def trusts(self) -> dict[str, float]:
        return self._registry.trusts()

    def alignments(self) -> dict[str, float]:
        """Each judged peer's share of signatures that agreed with the consensus."""
        return {p.node_id: p.alignment for p in self._registry if p.alignment is not None}

    def peer_signatures(self) -> dict[str, tuple[PatternSignature, ...]]:
        """Every peer's last pattern signatures (peers that sent none are left out)."""
        return {p.node_id: p.signatures for p in self._registry if p.signatures}

    def signatures_of(self, peer: str) -> tuple[PatternSignature, ...]:
        entry = self._registry.get(peer)
        return entry.signatures if entry else ()

    def known_version(self, peer: str) -> int:
        """The version up to which this node holds everything of ``peer`` (0: nothing)."""
        entry = self._registry.get(peer)
        return entry.cursor.known if entry else 0

    def resync(self, peer: str) -> None:
        """Ask ``peer`` now for every version after the ones held, past the gossip's rate limit.

        A tail the broker dropped (mosquitto drops a flooded client's messages)
        shows no gap: the gossip asks for it on the origin's next heartbeat, plus
        the heartbeat's grace. A simulation waiting for delivery calls this
        instead, for one node per sender (``peerd.sim.runner.nudge_plan``).
        """
        self._ask(peer, self.known_version(peer))

    def pinned_key(self, peer: str) -> bytes | None:
        """The public key this node believes for ``peer`` (allowlist first), or None."""
        return self._registry.verifier.pinned(peer)

    @property
    def published_version(self) -> int:
        """The own version every peer can have had: everything up to it was published."""
        return self._gossip.published_version

    # --------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        t = self.transport
        return {
            "node": self.id, "federation": self.fed, "fingerprint": self.task.fingerprint,
            "epoch": self.epoch, "version": self.table.version, "durable_version": self.watermark,
            "published_version": self._gossip.published_version,
            "cells": self.table.size, "origins": len(self.table.origins),
            "connected": bool(t and t.connected),
            "broker": getattr(t, "member", None),
            "broker_members": list(getattr(t, "member_urls", self.config.broker_members)),
            "broker_reconnects": getattr(t, "reconnects", 0),
            "peers": self._registry.counts(), "convergence": self.convergence,
            "counters": {k: v for k, v in vars(self.counters).items()},
            "probation": {"peers": sorted(self.probation.pending), "admitted": self.probation.admitted,
                          "released": self.probation.released, "failed": self.probation.failed},
            "pid": os.getpid(),
        }

    def peer_table(self) -> list[dict[str, Any]]:
        out = []
        for pid in self._registry.ids():
            p = self._registry.get(pid)
            assert p is not None
            key = self.pinned_key(pid)
            out.append({"node": pid, "status": p.life.status, "epoch": p.life.epoch,
                        "last_seen": p.life.last_seen, "trust": p.trust,
                        "alignment": p.alignment, "known_version": p.cursor.known,
                        "held_version": self.table.max_version(pid),
                        "probation": pid in self.probation,
                        "public_key": key.hex() if key else None})
        return out


def _life_policy(cfg: NodeConfig) -> LivenessPolicy:
    return LivenessPolicy(heartbeat_interval=cfg.heartbeat_interval, missed=cfg.suspect_after,
                          peer_timeout=cfg.peer_timeout)


def _policy_options(cfg: NodeConfig) -> dict[str, float]:
    if cfg.policy == "epsilon_greedy":
        return {"start": cfg.eps_start, "end": cfg.eps_end, "decay_steps": cfg.eps_decay_steps}
    return {}


def _judge_cells(cells: CellsSnapshot, trust: dict[str, float], state: Quarantine, *, own: str,
                 now_over_h: float, silent: frozenset[str]
                 ) -> tuple[dict[str, Verdict], list[str], list[str]]:
    """The heavy part of a deviation round, on copies only (it may run in a worker thread)."""
    # Shared cells only, and at most MAX_MATRIX_ENTRIES of them × origins: the round's
    # cost stays bounded however large the fleet (docs/trust.md).
    matrix = gather_cells(cells.origins, *cells.arrays(), shared_only=True,
                          max_entries=MAX_MATRIX_ENTRIES)
    return judge_round(matrix, trust, state, own=own, now_over_h=now_over_h, silent=silent)


def _ignore_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()

