"""The federation simulation: N ``peerd.Node``s on real RL tasks, over a real MQTT broker.

Modes, run side by side on the same environment seeds:

- ``federated``: N nodes gossiping through the broker — the daemon's code path
  (``Node`` + ``MqttTransport`` + wire + ``QTable.apply``), no in-memory shortcut;
- ``isolated``: the same nodes with no broker: the baseline every speedup is against;
- ``centralized``: one table fed by all N environments: the physical limit;
- ``naive``: the seed designs' merge (fold peers' tables, sum visits), to show
  why peerd does not do that.

Time is virtual: the clock advances one tick after every node has taken one
step, so the evidence half-life means the same at any machine speed. The
network is real, so a delta may arrive a few ticks after it was published;
``max_lag`` bounds that, counted from the tick the publish was due and checked
every tick (the simulation waits for the broker rather than outrunning it), so
peers' cells are at most ``publish_every + max_lag`` ticks old. The result says
how long it waited, and ``RunResult.trace`` how old peers' cells really were.

``max_lag`` defaults to 0: a delta is applied before the tick after its
publish was due, as in a fleet whose nodes interact about once a second and
receive a delta milliseconds after it is sent. A simulated tick costs
microseconds, so any lag allowed is used in full; until 2026-11-30 the
default was ``publish_every`` (10 ticks), which no deployment has, and it
alone put the federation at 0.80–0.84 of centralized learning at N = 16–64
(README, "At fleet sizes"). ``None`` still means ``publish_every``; the
poisoner matrix (``scripts/prove_poisoners.py``) keeps 10, its measured
conditions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from peerd.config import NodeConfig
from peerd.errors import SimulationError
from peerd.node import Node
from peerd.qtable import QTable
from peerd.sim.attacks import AttackSpec
from peerd.sim.envs import EnvBatch, EnvSpec, evaluate, load_env
from peerd.sim.liars import LyingTable
from peerd.task import Task

MODES = ("federated", "isolated", "centralized", "naive")
DEFAULT_MODES = ("federated", "isolated", "centralized")


class VirtualClock:
    """Ticks of the simulation: one per step of every node."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@dataclass
class SimSettings:
    """What one simulation run does (the CLI fills it)."""

    env: str = "taxi"
    nodes: int = 8
    seeds: int = 1
    modes: Sequence[str] = DEFAULT_MODES
    broker_url: str | None = None  # None: start the embedded broker
    broker_kind: str = "amqtt"
    publish_every: int = 10
    max_lag: int | None = 0  # ticks a delta may be late (module docstring); None = publish_every
    half_life: float | None = None  # None: the env's recommended H
    step_cap: int | None = None
    eval_every: int | None = None
    strategy: str = "weighted_average"
    seed: int = 2024
    #: extra federated nodes publishing validly signed lies (``--attack KIND:COUNT``, repeatable)
    attacks: Sequence[AttackSpec] = ()
    attackers: int = 0  # shorthand for attacks=(AttackSpec(attack, attackers),)
    attack: str = "invert"  # a kind of peerd.sim.attacks.ATTACKS ("visits" = "inflate")
    trust_every: int = 100  # ticks between signature exchanges + trust rounds (federated)
    peer_timeout: float = 30.0  # seconds for every node to connect and hear every other's birth
    #: the defences of issue 11 (evidence budget, deviation quarantine); off: the build before
    defences: bool = True
    #: ``NodeConfig`` fields to override on every node (diagnosis: one variable at a time,
    #: e.g. ``{"probation_rounds": 0}``)
    node_options: Mapping[str, Any] = field(default_factory=dict)

    def attack_plan(self) -> list[str]:
        """The kind of every attacker node, in order."""
        specs = list(self.attacks)
        if self.attackers and not specs:
            specs = [AttackSpec("inflate" if self.attack == "visits" else self.attack, self.attackers)]
        return [s.kind for s in specs for _ in range(s.count)]


@dataclass
class RunResult:
    """One mode on one seed."""

    mode: str
    seed: int
    steps_to_target: int | None  # median over nodes of steps per node; None = not reached
    node_steps: list[int | None]
    curve_steps: list[int] = field(default_factory=list)
    curve_metric: list[list[float]] = field(default_factory=list)  # per eval: per node
    messages_per_node: float = 0.0
    bytes_per_node: float = 0.0
    policy_agreement: float | None = None
    convergence: float | None = None
    visits_total: int = 0
    interactions: int = 0
    lag_wait_s: float = 0.0
    wall_s: float = 0.0
    #: with attackers: tick → mean trust honest nodes give the attackers
    attacker_trust: list[tuple[int, float]] = field(default_factory=list)
    #: with attackers: tick → share of (honest node, attacker) pairs where the attacker is out
    #: of the honest node's view (quarantined or distrusted)
    attacker_excluded: list[tuple[int, float]] = field(default_factory=list)
    #: with attackers: tick → share of (honest node, attacker) pairs where the attacker is judged
    #: out (quarantined or distrusted; probation alone does not count)
    attacker_quarantined: list[tuple[int, float]] = field(default_factory=list)
    #: trust rounds until every honest node judged every attacker out (None: never)
    rounds_to_quarantine: int | None = None
    #: the longest run of consecutive rounds any honest node spent quarantined by another
    honest_quarantine_rounds: int = 0
    #: identities the sybils used (0 without sybils)
    sybil_identities: int = 0
    #: federated: how peers' knowledge reached each honest node (``_FleetTrace.summary``)
    trace: dict[str, Any] = field(default_factory=dict)


Progress = Callable[[str, int, float, int], None]  # mode, ticks, best metric, step cap


class _NaiveTable:
    """The seed designs' merge, for comparison: fold a peer's table into ours, sum visits.

    q ← (q_l·n_l + q_p·n_p)/(n_l + n_p), n ← n_l + n_p, own updates with a
    constant step size. Re-gossiping merged tables counts experience again and
    again: ``visits_total`` shows by how much.
    """

    def __init__(self, spec: EnvSpec, alpha: float, eps: Callable[[int], float],
                 rng: np.random.Generator) -> None:
        self.q = np.zeros((spec.n_states, spec.n_actions))
        self.n = np.zeros((spec.n_states, spec.n_actions))
        self.alpha, self.gamma, self.eps, self.rng = alpha, spec.gamma, eps, rng
        self.steps = 0

    def act(self, s: int) -> int:
        self.steps += 1
        if self.rng.random() < self.eps(self.steps):
            return int(self.rng.integers(self.q.shape[1]))
        row = self.q[s]
        return int(self.rng.choice(np.flatnonzero(row == row.max())))

    def learn(self, s: int, a: int, r: float, s2: int, done: bool) -> None:
        t = r if done else r + self.gamma * self.q[s2].max()
        self.q[s, a] += self.alpha * (t - self.q[s, a])
        self.n[s, a] += 1

    def fold(self, other: _NaiveTable) -> None:
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            tot = self.n + other.n
            merged = (self.q * self.n + other.q * other.n) / tot
        # Once the summed counts overflow to inf the formula is NaN: keep the old value
        # (the seed designs had no answer for this; their counts grow without bound).
        self.q = np.where((tot > 0) & np.isfinite(merged), merged, self.q)
        self.n = tot


class _FleetTrace:
    """How peers' knowledge reached the honest nodes of a federated run: what the gap to
    centralized is made of.

    Sampled once per publish period, at a phase that moves by one tick each
    period (a fixed phase would see the same point of every publish cycle),
    before any delivery wait, over every (honest node, honest peer) pair:

    - **staleness**: the peer's own version (= ticks) minus the version up to which
      the node holds its cells: how old the freshest word of that peer is;
    - **counted**: the peer's cells are in the node's merged view (held, and not on
      probation, quarantined or distrusted); the share on probation and quarantined;
    - per node, the first tick at which one peer, and every peer, counted.
    """

    def __init__(self, honest: Sequence[Node]) -> None:
        self.honest = list(honest)
        self.stale_hist = np.zeros(1, np.int64)  # ticks → pair samples
        self.ticks: list[int] = []
        self.probation: list[float] = []
        self.quarantined: list[float] = []
        self.counted: list[float] = []
        self.trust: list[float] = []  # mean trust honest nodes give honest peers
        self.trust_min = 1.0
        n = len(self.honest)
        self.first_peer: list[int | None] = [None] * n
        self.all_peers: list[int | None] = [None] * n

    def sample(self, tick: int) -> None:
        nodes, pairs = self.honest, max(1, len(self.honest) * (len(self.honest) - 1))
        stale: list[int] = []
        prob = quar = total = 0
        trust = 0.0
        for i, nd in enumerate(nodes):
            counted = 0
            for o in nodes:
                if o is nd:
                    continue
                known = nd.known_version(o.id)
                stale.append(max(0, o.table.version - known))
                on_prob, in_quar = o.id in nd.probation, o.id in nd.quarantine
                prob += on_prob
                quar += in_quar
                counted += known > 0 and not nd.excluded(o.id)
                t = nd.trust_of(o.id)
                trust += t
                self.trust_min = min(self.trust_min, t)
            total += counted
            if counted and self.first_peer[i] is None:
                self.first_peer[i] = tick
            if counted == len(nodes) - 1 and self.all_peers[i] is None:
                self.all_peers[i] = tick
        h = np.bincount(np.asarray(stale, np.int64)) if stale else np.zeros(1, np.int64)
        if len(h) > len(self.stale_hist):
            h[: len(self.stale_hist)] += self.stale_hist
            self.stale_hist = h
        else:
            self.stale_hist[: len(h)] += h
        self.ticks.append(tick)
        self.probation.append(prob / pairs)
        self.quarantined.append(quar / pairs)
        self.counted.append(total / pairs)
        self.trust.append(trust / pairs)

    def summary(self) -> dict[str, Any]:
        """Percentiles of staleness (ticks), shares over the run, and the bootstrap ticks."""
        out: dict[str, Any] = {"samples": len(self.ticks)}
        c = np.cumsum(self.stale_hist)
        if c[-1]:
            for q in (50, 90, 99):
                out[f"staleness_p{q}"] = int(np.searchsorted(c, q / 100 * c[-1]))
            out["staleness_max"] = int(len(c) - 1)
            out["staleness_mean"] = round(float(
                (np.arange(len(c)) * self.stale_hist).sum() / c[-1]), 2)
        if self.ticks:
            out["counted_mean"] = round(float(np.mean(self.counted)), 3)
            out["probation_mean"] = round(float(np.mean(self.probation)), 3)
            out["quarantined_mean"] = round(float(np.mean(self.quarantined)), 3)
            out["trust_mean"] = round(float(np.mean(self.trust)), 3)
            out["trust_min"] = round(self.trust_min, 3)
            at = {}
            for t in (50, 100, 200, 500, 1000, 2000):
                k = int(np.searchsorted(self.ticks, t, side="right")) - 1  # the last sample by t
                if k >= 0 and t <= self.ticks[-1]:
                    at[str(t)] = round(self.probation[k], 3)
            out["probation_at"] = at
            peak = int(np.argmax(self.probation))  # cleared: the first empty sample after the peak
            out["probation_clear_tick"] = None if not self.probation[peak] else next(
                (t for t, p in zip(self.ticks[peak:], self.probation[peak:], strict=True)
                 if p == 0.0), None)
        for name, xs in (("first_peer_tick", self.first_peer), ("all_peers_tick", self.all_peers)):
            got = [x for x in xs if x is not None]
            out[name] = {"median": float(np.median(got)) if got else None,
                         "max": max(got) if len(got) == len(xs) and got else None}
        return out


def task_of(spec: EnvSpec) -> Task:
    """The learning task of an environment: its actions, discount and name (so its fingerprint)
    — what every simulated node and table of ``spec`` is built with."""
    return Task(spec.action_names, gamma=spec.gamma, name=spec.name)


def _node_config(spec: EnvSpec, s: SimSettings, i: int, seed: int, broker: str | None,
                 half_life: float, fed: str) -> NodeConfig:
    return NodeConfig(
        federation=fed, node_id=f"node{i:02d}",
        secret="peerd-sim", actions=list(spec.action_names), gamma=spec.gamma,
        task_name=spec.name, broker_url=broker or "", half_life=half_life,
        eps_start=spec.eps_start, eps_end=spec.eps_end, eps_decay_steps=spec.eps_decay_steps,
        # Heartbeats run on the wall clock, so a slower run (more nodes) sends more of
        # them per tick: at 5 s, N=32 spent a third of its time on N² heartbeat
        # deliveries and wall-clock trust rounds. The simulation advertises and judges
        # on its own virtual cadence (backpressure, trust_every), so they stay rare.
        publish_every=s.publish_every, publish_interval=3600.0, heartbeat_interval=60.0,
        peer_timeout=600.0, strategy=s.strategy, seed=seed * 1000 + i, api_listen="",
        q_bound=q_bound_of(spec),
        **({} if s.defences else {"deviation_ratio": 0.0, "evidence_budget": False}),
    ).replace(**s.node_options)


def q_bound_of(spec: EnvSpec) -> float:
    """The largest |Q| the task allows: max |r| / (1 − γ) — what an operator would configure.

    A tight bound is a cheap defence: cells claiming values the task cannot
    produce are rejected as absurd, instead of dragging the view for many
    half-lives (the ``extreme`` poisoner publishes exactly ±q_bound).
    """
    r_max = float(np.abs(spec.reward).max()) if spec.reward.size else 1.0
    if spec.gamma >= 1.0:
        return 1e6
    return max(1.0, r_max / (1.0 - spec.gamma)) * (1.0 + 1e-9)


class Simulation:
    """Runs the modes of ``SimSettings`` and collects ``RunResult``s."""

    def __init__(self, settings: SimSettings, *, progress: Progress | None = None) -> None:
        self.s = settings
        self.spec = load_env(settings.env)
        self.progress = progress
        self.half_life = settings.half_life or self.spec.half_life
        self.step_cap = settings.step_cap or self.spec.step_cap
        self.eval_every = settings.eval_every or self.spec.eval_every
        self.max_lag = settings.publish_every if settings.max_lag is None else settings.max_lag
        if settings.trust_every < settings.publish_every + self.max_lag:
            raise ValueError("trust_every must leave time for signatures to arrive: "
                             f">= publish_every + max_lag = {settings.publish_every + self.max_lag}")
        for m in settings.modes:
            if m not in MODES:
                raise ValueError(f"unknown mode {m!r}; known: {', '.join(MODES)}")

    # ---------------------------------------------------------------- helpers
    def _keys(self, table: QTable) -> np.ndarray:
        return np.array([table.key(s) for s in range(self.spec.n_states)], np.uint64)

    def _batch(self, seed: int, n: int) -> EnvBatch:
        if self.spec.kind == "bandit":
            from peerd.sim.bandit import BanditBatch
            seeds = np.random.SeedSequence(seed).generate_state(n, np.uint32)
            return BanditBatch(self.spec, seeds)
        return EnvBatch.from_seed(self.spec, n, seed)

    def _eval(self, policies: np.ndarray) -> np.ndarray:
        return np.atleast_1d(evaluate(self.spec, policies))

    async def _loop(self, mode: str, seed: int, act: Callable[[int, int], int],
                    learn: Callable[[int, int, int, float, int, bool], Any],
                    greedy: Callable[[], np.ndarray], clock: VirtualClock,
                    after_tick: Callable[[int], Any] | None = None,
                    actors: int | None = None) -> RunResult:
        """Step every node's env once per tick; evaluate every ``eval_every`` ticks.

        ``actors`` nodes act (default: ``nodes``); ``greedy()`` returns the
        policies of the first ``nodes`` (the honest ones), which are judged.
        """
        n = self.s.nodes
        na = actors or n
        batch = self._batch(seed, na)
        batch.reset()
        reached: list[int | None] = [None] * n
        res = RunResult(mode, seed, None, reached)
        target, t0 = self.spec.target, time.perf_counter()
        best = -np.inf
        for tick in range(1, self.step_cap + 1):
            states = batch.states
            actions = np.fromiter((act(i, int(states[i])) for i in range(na)), np.int64, na)
            s2, r, term, _trunc = batch.step(actions)
            for i in range(na):
                out = learn(i, int(states[i]), int(actions[i]), float(r[i]), int(s2[i]), bool(term[i]))
                if out is not None:
                    await out
            clock.t = float(tick)
            if after_tick is not None:
                w = after_tick(tick)
                if w is not None:
                    await w
            if tick % self.eval_every == 0:
                metrics = self._eval(greedy())
                res.curve_steps.append(tick)
                res.curve_metric.append([float(x) for x in metrics])
                best = max(best, float(np.median(metrics)))
                for i in range(n):
                    if reached[i] is None and metrics[i] >= target:
                        reached[i] = tick
                if self.progress:
                    self.progress(mode, tick, best, self.step_cap)
                if all(x is not None for x in reached):
                    break
        res.wall_s = time.perf_counter() - t0
        res.interactions = tick * na
        done = sorted(x if x is not None else np.inf for x in reached)
        med = float(np.median(done))
        res.steps_to_target = int(med) if np.isfinite(med) else None
        pis = greedy()
        res.policy_agreement = float((pis == pis[0]).all(axis=0).mean())
        return res

    # ------------------------------------------------------------------ modes
    async def run_federated(self, seed: int, broker_url: str, *, isolated: bool = False) -> RunResult:
        spec, n = self.spec, self.s.nodes
        kinds = [] if isolated else self.s.attack_plan()
        n_att = len(kinds)
        clock = VirtualClock()
        # A federation of its own: a broker shared by several runs keeps retained presence.
        fed = f"sim-{re.sub(r'[^A-Za-z0-9_.-]', '-', spec.name)[:32]}-{uuid.uuid4().hex[:8]}"
        nodes = [Node(_node_config(spec, self.s, i, seed, None if isolated else broker_url,
                                   self.half_life, fed), clock=clock) for i in range(n + n_att)]
        for nd in nodes:
            nd.auto_trust_rounds = False  # rounds every trust_every ticks, below
            # probation's extra rounds inline: the virtual clock must not move while they score
            # (trust rounds, awaited by the driver, still score off the loop)
            nd.extra_rounds_off_loop = False
        for k, nd in enumerate(nodes[n:]):
            nd.table = LyingTable(nd.table, kinds[k], nd,  # type: ignore[assignment]
                                  np.random.default_rng(seed + k))
        honest, attackers = nodes[:n], nodes[n:]
        mode = "isolated" if isolated else "federated"
        lag_wait = 0.0
        trust_log: list[tuple[int, float]] = []
        excluded_log: list[tuple[int, float]] = []
        judged_log: list[tuple[int, float]] = []
        honest_run: dict[tuple[str, str], int] = {}
        honest_worst = 0
        sybils = {"identities": sum(k == "sybil" for k in kinds), "next": 0}

        async def replace_sybils() -> None:
            """A sybil quarantined by most honest nodes comes back under a new identity (strict = false).

            Probation alone does not send it away: a patient sybil waits to be judged.
            """
            for j, a in enumerate(list(attackers)):
                if kinds[j] != "sybil":
                    continue
                if sum(h.excluded(a.id) and a.id not in h.probation for h in honest) * 2 \
                        <= len(honest):
                    continue
                sybils["next"] += 1
                sybils["identities"] += 1
                cfg = _node_config(spec, self.s, n + j, seed, broker_url, self.half_life, fed)
                cfg = cfg.replace(node_id=f"sybil{n + j:02d}x{sybils['next']}")
                fresh = Node(cfg, clock=clock)
                fresh.auto_trust_rounds = False
                fresh.extra_rounds_off_loop = False
                fresh.table = LyingTable(fresh.table, "sybil", fresh,  # type: ignore[assignment]
                                         np.random.default_rng(seed + 7919 * sybils["next"]))
                await fresh.start()
                await fresh.transport.wait_connected(30)
                await a.stop()
                attackers[j] = fresh
                nodes[n + j] = fresh
        try:
            for node in nodes:
                await node.start()
            if not isolated:
                await wait_for_federation(nodes, broker_url, self.s.peer_timeout)
            keys = self._keys(nodes[0].table)

            async def backpressure() -> None:
                nonlocal lag_wait
                t = time.perf_counter()
                # a hang guard (seconds without progress), not a deadline: a fleet's first
                # rounds queue behind the births every node answers (~N² deliveries, each verified)
                await _wait_delivered(nodes, self.max_lag, senders=honest,
                                      timeout=max(60.0, 0.05 * len(nodes) ** 2))
                lag_wait += time.perf_counter() - t

            async def trust_round(tick: int) -> None:
                nonlocal honest_worst
                await backpressure()
                for nd in nodes:
                    await nd.trust_round()
                if attackers:
                    trust_log.append((tick, float(np.mean(
                        [h.trust_of(a.id) for h in honest for a in attackers]))))
                    excluded_log.append((tick, float(np.mean(
                        [h.excluded(a.id) for h in honest for a in attackers]))))
                    judged_log.append((tick, float(np.mean(
                        [h.excluded(a.id) and a.id not in h.probation
                         for h in honest for a in attackers]))))
                for h in honest:
                    for p in honest:
                        if p is not h:
                            run = honest_run.get((h.id, p.id), 0) + 1 if p.id in h.quarantine else 0
                            honest_run[(h.id, p.id)] = run
                            honest_worst = max(honest_worst, run)
                if sybils["identities"]:
                    await replace_sybils()

            async def trust_cycle(tick: int) -> None:
                if tick > self.s.trust_every:  # judge the signatures asked for last cycle ...
                    await trust_round(tick)
                for nd in nodes:  # ... and ask for fresh ones with the next deltas
                    nd.request_signatures()

            trace = _FleetTrace(honest)
            every = self.s.publish_every
            #: sender id → the version every node was last seen to hold (saves the O(N²) check)
            verified: dict[str, int] = {}

            def late() -> bool:
                """Whether some node lacks an honest sender's owed cells by more than ``max_lag``.

                Checked every tick, so a delta is never more than ``max_lag`` ticks
                late: checked only at multiples of ``publish_every``, a publish the
                trigger fired two ticks past one (the publisher runs when the loop
                yields) was first checked 18 ticks later, and peers' cells were a
                median 28 ticks old where ``max_lag`` 10 promised at most 20.
                O(N) per tick, O(N) more per sender per publish.
                """
                for o in honest:
                    need = owed_version(o) - self.max_lag
                    if need <= verified.get(o.id, 0):
                        continue
                    if any(nd.known_version(o.id) < need for nd in nodes if nd is not o):
                        return True
                    verified[o.id] = need
                return False

            def after(tick: int) -> Any:
                if isolated:
                    return None
                if tick % every == (tick // every) % every:  # every phase of the publish period
                    trace.sample(tick)
                if tick % self.s.trust_every == 0:
                    verified.clear()  # a fresh sybil may have joined: check everyone again
                    return trust_cycle(tick)
                if late():
                    return backpressure()
                return asyncio.sleep(0) if tick % 2 == 0 else None

            res = await self._loop(
                mode, seed, lambda i, s: nodes[i].act(s),
                lambda i, s, a, r, s2, d: nodes[i].learn(s, a, r, s2, done=d),
                lambda: np.stack([nd.table.greedy(keys) for nd in honest]), clock, after,
                actors=len(nodes))
            res.lag_wait_s = lag_wait
            if not isolated:
                res.trace = trace.summary()
                rejected: dict[str, int] = {}  # honest nodes' rejections, by reason
                for nd in honest:
                    for why, k in nd.counters.rejected.items():
                        rejected[why] = rejected.get(why, 0) + k
                res.trace["rejected"] = rejected
            res.attacker_trust = trust_log
            res.attacker_excluded = excluded_log
            res.attacker_quarantined = judged_log
            res.rounds_to_quarantine = next(
                (i for i, (_, x) in enumerate(judged_log, start=1) if x >= 1.0), None)
            res.honest_quarantine_rounds = honest_worst
            res.sybil_identities = sybils["identities"]
            if not isolated:
                for nd in nodes:
                    await nd.flush()
                await _wait_delivered(nodes, 0, timeout=30.0, senders=honest)
                for nd in nodes:
                    await nd.trust_round()
                scores = [nd.convergence for nd in honest if nd.convergence is not None]
                res.convergence = float(np.mean(scores)) if scores else None
                res.messages_per_node = float(np.mean([nd.transport.messages_out for nd in honest]))
                res.bytes_per_node = float(np.mean([nd.transport.bytes_out for nd in honest]))
            res.visits_total = int(np.median([nd.table.total_visits() for nd in honest]))
            return res
        finally:
            for node in nodes:
                with contextlib.suppress(Exception):
                    await node.stop()

    async def run_centralized(self, seed: int) -> RunResult:
        spec = self.spec
        clock = VirtualClock()
        table = QTable(task_of(spec), "central", secret="peerd-sim", half_life=self.half_life,
                       clock=clock, seed=seed, strategy=self.s.strategy,
                       policy_options={"start": spec.eps_start, "end": spec.eps_end,
                                       "decay_steps": spec.eps_decay_steps})
        keys = self._keys(table)

        def act(i: int, s: int) -> int:
            table.steps = int(clock.t)  # ε decays with steps per node, as for every node
            return table.act(s)

        def learn(i: int, s: int, a: int, r: float, s2: int, d: bool) -> None:
            table.learn(s, a, r, s2, done=d)

        res = await self._loop(
            "centralized", seed, act, learn,
            lambda: np.repeat(table.greedy(keys)[None, :], self.s.nodes, axis=0), clock)
        res.visits_total = table.total_visits()
        return res

    async def run_naive(self, seed: int) -> RunResult:
        spec, n = self.spec, self.s.nodes
        rng = np.random.default_rng(seed)
        tables = [_NaiveTable(spec, 0.5 if spec.name == "taxi" else 0.1, spec.epsilon, rng)
                  for _ in range(n)]
        clock = VirtualClock()

        def after(tick: int) -> None:
            if tick % self.s.publish_every == 0:
                snap = [(t.q.copy(), t.n.copy()) for t in tables]
                for i, t in enumerate(tables):
                    for j, (q, cnt) in enumerate(snap):
                        if i != j:
                            other = _NaiveTable.__new__(_NaiveTable)
                            other.q, other.n = q, cnt
                            t.fold(other)

        res = await self._loop(
            "naive", seed, lambda i, s: tables[i].act(s),
            lambda i, s, a, r, s2, d: tables[i].learn(s, a, r, s2, d),
            lambda: np.stack([t.q.argmax(axis=1) for t in tables]), clock, after)
        with np.errstate(over="ignore"):
            total = float(np.median([t.n.sum() for t in tables]))
        res.visits_total = int(min(total, 2**62))  # saturates: the real count is unbounded
        return res

    # ------------------------------------------------------------------- all
    async def run(self) -> dict[str, list[RunResult]]:
        """Every mode on every seed; starts (and stops) the embedded broker if needed."""
        out: dict[str, list[RunResult]] = {m: [] for m in self.s.modes}
        broker = None
        url = self.s.broker_url
        if "federated" in self.s.modes and not url:
            from peerd.testing.broker import Broker
            broker = Broker(self.s.broker_kind)
            broker.start()
            url = broker.url
        try:
            for k in range(self.s.seeds):
                seed = self.s.seed + 101 * k
                for mode in self.s.modes:
                    if mode == "federated":
                        r = await self.run_federated(seed, url or "")
                    elif mode == "isolated":
                        r = await self.run_federated(seed, "", isolated=True)
                    elif mode == "centralized":
                        r = await self.run_centralized(seed)
                    else:
                        r = await self.run_naive(seed)
                    out[mode].append(r)
        finally:
            if broker is not None:
                broker.stop()
        return out


async def wait_for_federation(nodes: Sequence[Node], broker_url: str, timeout: float) -> None:
    """Return once every node is connected and has seen every other node's birth; else raise
    ``SimulationError`` with one line naming the probable cause (``federation_problem``)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(nd.transport.wait_connected(timeout) for nd in nodes
                                   if nd.transport is not None))
            while any(nd.peer_count() < len(nodes) - 1 for nd in nodes):
                await asyncio.sleep(0.01)
    problem = federation_problem(nodes, broker_url, timeout)
    if problem is not None:
        raise SimulationError(problem)


def federation_problem(nodes: Sequence[Node], broker_url: str, waited: float) -> str | None:
    """Why the nodes have not all met, in one line, or None when they have."""
    where = _public_url(broker_url)
    connected = sum(1 for nd in nodes if nd.transport is not None and nd.transport.connected)
    if connected < len(nodes):
        return (f"{len(nodes) - connected} of {len(nodes)} nodes could not connect to the broker "
                f"at {where} within {waited:g} s: broker unreachable (wrong --broker URL, "
                "not running, or refusing the connection)")
    want = len(nodes) * (len(nodes) - 1)
    seen = sum(min(nd.peer_count(), len(nodes) - 1) for nd in nodes)
    if seen >= want:
        return None
    return (f"the nodes connected to {where} but saw only {seen} of {want} peer births within "
            f"{waited:g} s: the broker probably does not deliver retained presence messages "
            "to later subscribers (or the nodes are not in one federation)")


def _public_url(url: str) -> str:
    """``url`` without credentials: error lines end up in terminals and CI logs."""
    parts = urlsplit(url)
    if parts.hostname is None:
        return url or "(no broker)"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


def owed_version(node: Node) -> int:
    """The newest own version ``node`` owes its peers: what its publish trigger already covers.

    ``max_lag`` counts lateness from here, not from ``published_version``:
    that one moves only once the publisher task has run and the broker has
    acknowledged, so when the simulation loop outran the publisher (always,
    on a loaded machine) a delta could be late by the publish it was still
    waiting for, plus ``max_lag``, plus the next period: peers' cells were a
    median 28 ticks old at publish time (N = 16, ``max_lag`` 10), not the ≤ 20
    the setting promises.
    """
    published, mark = node.published_version, node.watermark
    return mark if mark - published >= node.config.publish_every else published


async def _wait_delivered(nodes: list[Node], max_lag: int, timeout: float = 60.0,
                          senders: list[Node] | None = None, nudge: float = 5.0) -> None:
    """Wait until every node holds every other node's owed cells (``owed_version``) but ``max_lag``.

    ``senders``: only their cells are waited for (the honest nodes: a liar's
    deltas may be rightly rejected, and then never arrive). ``timeout`` is a
    hang guard: ``TimeoutError`` after that many seconds *without progress*
    (no node learning a newer version of anyone). A fixed deadline stopped an
    N = 64 run whose round was still arriving, slowly, on a machine at load 40.

    ``nudge``: after that many seconds without progress, a sender some node
    still lacks is asked again (``Node.resync``), and again after twice as long,
    and so on up to ``6 * nudge`` (reset by progress). A tail the broker dropped (mosquitto drops
    what passes a client's ``max_queued_messages``; QoS 0 may be lost) shows no
    gap, and the gossip asks for it only on the origin's next heartbeat. Each
    sender is asked by one node, the one furthest behind, among those that
    have read all their inbound messages (``nudge_plan``): a sync request goes
    to every node, and the origin answers everybody with one delta from the
    lowest ``since`` asked. Every node behind asking every sender it lacked,
    every 5 s, is what stalled N = 64 at its first publish: 4,032 requests per
    nudge, each delivered to 63 nodes, more than the process could read before
    the next nudge, so the deltas waited behind them forever.
    """
    loop = asyncio.get_running_loop()
    watched = nodes if senders is None else senders

    def progress() -> int:
        return sum(nd.known_version(o.id) for nd in nodes for o in watched if o is not nd)

    def ask_again() -> None:
        for asker, origin in nudge_plan(nodes, watched, max_lag):
            asker.resync(origin.id)

    seen, idle_since, checked = progress(), loop.time(), loop.time()
    nudged, every = idle_since, nudge
    dumped = False
    while True:
        behind = False
        for nd in nodes:
            for other in watched:
                if other is nd:
                    continue
                if nd.known_version(other.id) < owed_version(other) - max_lag:
                    behind = True
                    break
            if behind:
                break
        if not behind:
            return
        now = loop.time()
        if now - checked >= 1.0:  # O(N²): once a second, not per wake
            checked, p = now, progress()
            if p > seen:
                seen, idle_since, every = p, now, nudge
            elif now - idle_since >= timeout:
                _dump_stall(nodes, watched, max_lag, "timeout")
                raise TimeoutError(f"no delivery progress for {timeout:g} s")
            elif now - max(idle_since, nudged) >= every:
                nudged, every = now, min(2 * every, 6 * nudge)  # 5, 10, 20, 30, 30 ... s
                ask_again()
            if now - idle_since >= 20.0 and not dumped:
                dumped = True
                _dump_stall(nodes, watched, max_lag, "idle20")
        nd.applied_event.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.05):
                await nd.applied_event.wait()


def nudge_plan(nodes: Sequence[Node], senders: Sequence[Node], max_lag: int,
               ) -> list[tuple[Node, Node]]:
    """``(asker, sender)``: for each sender some node lacks published cells of (but ``max_lag``),
    the node holding least of it among those with no unread inbound message.

    A node with a backlog may hold the answer in it already; one ask per sender
    suffices, since the sender answers every node at once from the lowest
    ``since`` (``GossipState.on_sync_request``).
    """
    plan = []
    for o in senders:
        need = o.published_version - max_lag
        behind = [nd for nd in nodes if nd is not o and nd.known_version(o.id) < need
                  and not (nd.transport is not None and nd.transport.backlog)]
        if behind:
            plan.append((min(behind, key=lambda nd: nd.known_version(o.id)), o))
    return plan


def _dump_stall(nodes: list[Node], watched: list[Node], max_lag: int, why: str) -> None:
    """Debug aid: append one JSON line to the file ``$PEERD_SIM_DIAG`` names (unset: nothing).

    Written when a delivery wait has seen no progress for 20 s and at the hang
    guard: per (node, sender) pair still behind, the versions owed and held and
    the node's cursor of the sender (last ask, deferred ask); per node, its
    rejections by reason, unread inbound messages (``backlog``), unconfirmed
    publishes, relay plans and pending sync answer. How the N = 64 stall was found
    (docs/presence.md). Reads private state: a diagnosis, not an interface.
    """
    path = os.environ.get("PEERD_SIM_DIAG")
    if not path:
        return
    rows = []
    for nd in nodes:
        for o in watched:
            if o is nd:
                continue
            need = owed_version(o) - max_lag
            known = nd.known_version(o.id)
            if known >= need:
                continue
            e = nd._registry.get(o.id)
            cur = e.cursor if e else None
            rows.append({
                "node": nd.id, "origin": o.id, "known": known, "need": need,
                "owed": owed_version(o), "published": o.published_version,
                "watermark": o.watermark, "version": o.table.version,
                "held_max": int(nd.table.max_version(o.id)),
                "cursor": None if cur is None else {
                    "last_sync": cur.last_sync, "deferred": cur.deferred,
                    "not_before": cur.not_before},
                "origin_pending_answer": o._gossip.pending_answer,
                "probation": o.id in nd.probation, "quarantine": o.id in nd.quarantine,
                "trust": nd.trust_of(o.id), "status": nd.liveness_status(o.id),
            })
    per_node = {}
    for nd in nodes:
        c = nd.counters
        per_node[nd.id] = {
            "rejected": dict(c.rejected), "backlog": None if nd.transport is None else nd.transport.backlog,
            "connected": getattr(nd.transport, "connected", None),
            "pending_pub": len(getattr(nd.transport, "_pending", ())),
            "relay_pending": nd.relay_plan.pending(), "sync_sent": c.sync_requests_sent,
            "answers": c.sync_answers_sent, "deltas_sent": c.deltas_sent,
            "deltas_applied": c.deltas_applied, "relays_sent": c.relays_sent,
            "relayed_applied": c.relayed_deltas_applied, "clock": nd.clock(),
            "version": nd.table.version, "published": nd.published_version,
            "watermark": nd.watermark, "pending_answer": nd._gossip.pending_answer,
            "msgs_in": c.messages_received,
        }
    with open(path, "a") as f:
        f.write(json.dumps({"why": why, "t": time.time(), "behind": rows,
                            "nodes": per_node}, default=str) + "\n")


def summarize(results: dict[str, list[RunResult]]) -> dict[str, Any]:
    """Per mode: median steps to target over seeds, speedup vs isolated, traffic."""
    modes: dict[str, Any] = {}
    for mode, runs in results.items():
        steps = [r.steps_to_target for r in runs]
        finite = [s if s is not None else np.inf for s in steps]
        med = float(np.median(finite)) if finite else np.inf
        modes[mode] = {
            "steps_to_target": int(med) if np.isfinite(med) else None,
            "steps_per_seed": steps,
            "messages_per_node": float(np.mean([r.messages_per_node for r in runs])),
            "bytes_per_node": float(np.mean([r.bytes_per_node for r in runs])),
            "convergence": _mean_or_none([r.convergence for r in runs]),
            "policy_agreement": _mean_or_none([r.policy_agreement for r in runs]),
            "visits_total": int(np.median([r.visits_total for r in runs])),
            "interactions_per_node": int(np.median([r.interactions for r in runs])) // max(
                1, len(runs[0].node_steps)) if runs else 0,
            "lag_wait_s": float(np.sum([r.lag_wait_s for r in runs])),
            "wall_s": float(np.sum([r.wall_s for r in runs])),
        }
        if any(r.trace for r in runs):
            modes[mode]["trace_per_seed"] = [r.trace for r in runs]
        # per seed, per evaluation: [tick, median metric over nodes] (where the modes part)
        modes[mode]["curve_per_seed"] = [
            [[t, round(float(np.median(m)), 3)] for t, m in zip(r.curve_steps, r.curve_metric,
                                                                  strict=True)] for r in runs]
        if any(r.attacker_excluded for r in runs):
            rq = [r.rounds_to_quarantine for r in runs]
            modes[mode]["rounds_to_quarantine_per_seed"] = rq
            modes[mode]["honest_quarantine_rounds"] = max(r.honest_quarantine_rounds for r in runs)
    base = modes.get("isolated", {}).get("steps_to_target")
    for m in modes.values():
        s = m["steps_to_target"]
        m["speedup"] = (base / s) if (base and s) else None
    return {"modes": modes}


def _mean_or_none(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return float(np.mean(vals)) if vals else None
