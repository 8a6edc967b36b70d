"""``QTable``: one node's own contribution, every peer's latest contribution, and the merged view.

This is the pure core of peerd (no I/O). The merge is a state-based CRDT
(DESIGN §2): each origin's cells are stored separately and an incoming cell
replaces the stored one iff its version is greater. Nothing else changes state,
so applying deltas is idempotent, commutative and associative, and a cell's
merged visit count is the sum over origins of each origin's own latest ``n``:
experience is never counted twice, whatever path it travelled.

Each cell is recency-weighted evidence: ``q`` is the mean of the origin's TD
targets weighted by ``2^(t/H)`` and ``lw`` the base-2 log of the total weight.
The merged value ``Σ trust·2^lw·q / Σ trust·2^lw`` lets fresh evidence outvote
stale bootstrapped values, which is what makes federation pay (DESIGN §2).

The merged view is maintained incrementally: a delta recomputes only the cells
it touches, vectorised over those cells × origins; a trust change recomputes
everything.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

from peerd.cells import KeyIndex, OriginCells
from peerd.delta import CELL_FIELDS, DEFAULT_Q_BOUND, Delta, MergeStats, PatternSignature
from peerd.errors import ExcessiveEvidence, UnknownAction
from peerd.policy import Policy, make_policy
from peerd.strategies import (
    MergeStrategy,
    WeightedAverage,
    make_strategy,
    relative_weights_t,
    weighted_average_t,
)
from peerd.task import Task, state_key
from peerd.trust import TRUST_MAX, TRUST_MIN


class QTable:
    """The federated Q-table of one node (see the module docstring)."""

    def __init__(
        self,
        task: Task,
        node_id: str,
        *,
        secret: bytes | str,
        strategy: str | MergeStrategy = "weighted_average",
        half_life: float = 600.0,
        clock: Callable[[], float] = time.time,
        min_visits: int = 1,
        visit_cap: int = 1000,
        policy: str | Policy = "epsilon_greedy",
        q_bound: float = DEFAULT_Q_BOUND,
        clock_skew: float | None = None,
        q_init: float = 0.0,
        seed: int | None = None,
        policy_options: dict[str, float] | None = None,
        quarantine_below: float = 0.0,
    ) -> None:
        if half_life <= 0:
            raise ValueError(f"half_life must be > 0, got {half_life}")
        if visit_cap < 1 or min_visits < 0:
            raise ValueError("visit_cap must be >= 1 and min_visits >= 0")
        self.task = task
        self.node_id = node_id
        self.secret = secret
        self.strategy = make_strategy(strategy)
        self.half_life = float(half_life)
        self.clock = clock
        self.min_visits = int(min_visits)
        self.visit_cap = int(visit_cap)
        self.q_bound = float(q_bound)
        self.clock_skew = 0.1 * self.half_life if clock_skew is None else float(clock_skew)
        self.q_init = float(q_init)
        #: peers trusted less than this do not count in the merged view (0: off)
        self.quarantine_below = float(quarantine_below)
        self.policy = make_policy(policy, seed=seed, **(policy_options or {}))
        self.steps = 0  # decisions taken by act(): drives ε decay

        a = task.n_actions
        self._index = KeyIndex()
        self._cells = OriginCells(a)
        self._origins: list[str] = [node_id]
        self._origin_ix: dict[str, int] = {node_id: 0}
        self._trust = np.ones(self._cells.origin_cap, np.float64)
        self._with_outcomes: set[int] = set()  # origins that may hold nonzero succ/fail
        self._max_version: dict[str, int] = {node_id: 0}
        # merged view, [row_capacity, actions]
        self._mq = np.full((self._cells.row_cap, a), self.q_init, np.float64)
        self._mn = np.zeros((self._cells.row_cap, a), np.uint64)
        self._msucc = np.zeros((self._cells.row_cap, a), np.uint64)
        self._mfail = np.zeros((self._cells.row_cap, a), np.uint64)
        self._key_cache: dict[Hashable, int] = {}

    # ------------------------------------------------------------------ keys
    def key(self, state: Any) -> int:
        """The uint64 key of a state (cached for hashable states)."""
        try:
            return self._key_cache[state]
        except (KeyError, TypeError):
            pass
        k = state_key(state, self.secret)
        try:
            if len(self._key_cache) < 1_000_000:
                self._key_cache[state] = k
        except TypeError:  # unhashable (dict, list): hash each time
            pass
        return k

    # ------------------------------------------------------------- read side
    @property
    def version(self) -> int:
        """Version of this node's own contribution: bumped by every own update."""
        return self._max_version[self.node_id]

    @property
    def origins(self) -> list[str]:
        return list(self._origins)

    def max_version(self, origin: str) -> int:
        """Highest version held of ``origin``'s cells (0 if none)."""
        return self._max_version.get(origin, 0)

    def trust(self, origin: str) -> float:
        ix = self._origin_ix.get(origin)
        return 1.0 if ix is None else float(self._trust[ix])

    def values(self, state: Any) -> np.ndarray:
        """Merged Q-values of a state (``q_init`` where nothing is known)."""
        return self.values_key(self.key(state))

    def values_key(self, key: int) -> np.ndarray:
        row = self._index.find(key)
        if row < 0:
            return np.full(self.task.n_actions, self.q_init, np.float64)
        return self._mq[row].copy()

    def visits(self, state: Any) -> np.ndarray:
        """Merged visit counts of a state: Σ over origins of each origin's own n."""
        row = self._index.find(self.key(state))
        if row < 0:
            return np.zeros(self.task.n_actions, np.uint64)
        return self._mn[row].copy()

    def own_share(self, state: Any) -> np.ndarray:
        """Fraction of each action's merged visits that are this node's own."""
        row = self._index.find(self.key(state))
        a = self.task.n_actions
        if row < 0:
            return np.zeros(a)
        own = self._cells["n"][row, :, 0].astype(np.float64)
        tot = self._mn[row].astype(np.float64)
        return np.divide(own, tot, out=np.zeros(a), where=tot > 0)

    def own_cells(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """This node's own ``q[m, A]`` and ``tried[m, A]`` (own n > 0) for known keys."""
        rows = self._index.lookup(np.asarray(keys, np.uint64))
        if (rows < 0).any():
            raise KeyError("own_cells: unknown state key")
        c = self._cells.arrays
        return c["q"][rows, :, 0].astype(np.float64), c["n"][rows, :, 0] > 0

    def greedy(self, keys: np.ndarray) -> np.ndarray:
        """Greedy actions for many keys at once (lowest index on ties): for evaluation."""
        rows = self._index.lookup(np.asarray(keys, np.uint64))
        vals = np.where((rows >= 0)[:, None], self._mq[np.maximum(rows, 0)], self.q_init)
        return vals.argmax(axis=1)

    @property
    def size(self) -> int:
        """Number of (state, action) cells with merged visits."""
        return int(np.count_nonzero(self._mn[: self._index.size]))

    def total_visits(self) -> int:
        return int(self._mn[: self._index.size].sum())

    def confidence(self) -> float:
        """Mean eff/(eff+1) over cells with merged visits, eff = fresh-update equivalents now.

        For ``peerd_merge_confidence``: 0 for an empty table, towards 1 where the
        federation holds much recent evidence. Reads the whole table: call it
        at scrape time, not on a hot path.
        """
        flat = np.flatnonzero(self._mn[: self._index.size].reshape(-1))
        if flat.shape[0] == 0:
            return 0.0
        return self._recompute_values(flat, confidence=True) / flat.shape[0]

    def view(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The merged view sorted by key: ``(keys, q[m, A], n[m, A])`` — for comparisons."""
        rows = self._index.sorted_rows
        return self._index.sorted_keys.copy(), self._mq[rows].copy(), self._mn[rows].copy()

    # ------------------------------------------------------------ act, learn
    def act(self, state: Any, *, explore: bool = True) -> int:
        """Choose an action on the merged view with the node's policy."""
        row = self._index.find(self.key(state))
        self.steps += explore
        a = self.task.n_actions
        if row < 0:
            z = np.zeros(a, np.uint64)
            return self.policy.choose(np.full(a, self.q_init), z, z, z, self.steps, explore)
        return self.policy.choose(self._mq[row], self._mn[row], self._msucc[row],
                                  self._mfail[row], self.steps, explore)

    def target(self, reward: float, next_state: Any = None, done: bool = False) -> float:
        """TD target r + γ·max_a' M(s', a'); just r when done or without a next state."""
        if done or next_state is None:
            return float(reward)
        row = self._index.find(self.key(next_state))
        best = self.q_init if row < 0 else float(self._mq[row].max())
        return float(reward) + self.task.gamma * best

    def learn(self, state: Any, action: int | str, reward: float, next_state: Any = None,
              done: bool = False, success: bool | None = None) -> Delta:
        """Own update of (state, action) with the TD target; returns the 1-cell own delta.

        The returned delta is what must be made durable before the interaction
        is acknowledged.
        """
        a = self.task.action_index(action)
        if not math.isfinite(reward):
            raise ValueError(f"reward must be finite, got {reward}")
        t = self.target(reward, next_state, done)
        if abs(t) > self.q_bound:
            raise ValueError(f"TD target {t:g} exceeds q_bound={self.q_bound:g}")
        return self._update_own(self.key(state), a, t, success)

    def _update_own(self, key: int, a: int, target: float, success: bool | None) -> Delta:
        row = self._index.add(key)
        self._reserve(self._index.size, len(self._origins))
        c = self._cells.arrays
        now = self.clock() / self.half_life
        lw_old = float(c["lw"][row, a, 0])
        lw_new = float(np.logaddexp2(lw_old, now))
        q_old = float(c["q"][row, a, 0])
        q_new = q_old + (target - q_old) * math.exp2(now - lw_new)
        version = self._max_version[self.node_id] + 1
        self._max_version[self.node_id] = version
        c["q"][row, a, 0] = q_new
        c["lw"][row, a, 0] = lw_new
        c["n"][row, a, 0] += 1
        c["version"][row, a, 0] = version
        # Own evidence always counts and its counts only grow: the merged counts go up
        # by exactly what the own cell did (as in _recompute_counts, without the re-sum).
        self._mn[row, a] += 1
        if success is not None:
            self._with_outcomes.add(0)
            c["succ" if success else "fail"][row, a, 0] += 1
            (self._msucc if success else self._mfail)[row, a] += 1
        self._recompute_values(np.array([row * self.task.n_actions + a], np.int64))
        return Delta.build(self.node_id, self.task.fingerprint, version - 1, version,
                           keys=np.array([key], np.uint64), actions=np.array([a], np.uint16),
                           **{f: c[f][row, a, :1].copy() for f in _OWN_FIELDS})

    # ------------------------------------------------------------ deltas out
    def delta(self, since: int = 0, upto: int | None = None) -> Delta:
        """Own cells changed after version ``since`` (and at most ``upto``), sorted by (key, action)."""
        return self.delta_of(self.node_id, since, upto)

    def delta_of(self, origin: str, since: int = 0, upto: int | None = None) -> Delta:
        """Stored cells of any origin with ``since < version <= upto``: catch-up and relaying.

        ``upto`` (default: the highest version held) is the node's durable
        watermark for its own cells: a cell whose latest change is newer is left
        out, not sent at an older state, and goes out once that change is durable.
        """
        ix = self._origin_ix.get(origin)
        top = self._max_version.get(origin, 0)
        if upto is not None:
            top = min(top, upto)
        if ix is None or since >= top:
            return Delta.empty(origin, self.task.fingerprint, since, max(since, top))
        ver = self._cells["version"][: self._index.size, :, ix]
        mask = ver > np.uint64(since)
        if top < self._max_version.get(origin, 0):
            mask &= ver <= np.uint64(top)
        rows, acts = np.nonzero(mask)
        return self._delta_at(ix, rows, acts, since, top)

    def _delta_at(self, ix: int, rows: np.ndarray, acts: np.ndarray, since: int,
                  top: int) -> Delta:
        keys = self._index.row_keys[rows]
        order = np.lexsort((acts, keys))
        rows, acts, keys = rows[order], acts[order], keys[order]
        c = self._cells.arrays
        return Delta.build(
            self._origins[ix], self.task.fingerprint, since, top, keys=keys, actions=acts,
            **{f: c[f][rows, acts, ix] for f in CELL_FIELDS if f not in ("keys", "actions")},
        )

    # ------------------------------------------------------------- deltas in
    def check(self, delta: Delta) -> None:
        """Validate a peer's delta without applying it; raise an ``InvalidDelta``."""
        delta.validate(fingerprint=self.task.fingerprint, n_actions=self.task.n_actions,
                       q_bound=self.q_bound)
        if len(delta):
            limit = math.log2(self.visit_cap) + (self.clock() + self.clock_skew) / self.half_life
            if float(delta.lw.max()) > limit:
                raise ExcessiveEvidence(
                    f"delta from {delta.origin!r} claims log-weight {float(delta.lw.max()):.3f} "
                    f"> {limit:.3f}: more than visit_cap={self.visit_cap} fresh visits, "
                    "or evidence from the future")

    def apply(self, delta: Delta, *, guard: bool = True) -> MergeStats:
        """Merge a peer's delta: each cell replaces the stored one iff its version is greater.

        Validates everything first; a rejected delta raises and changes nothing.
        Cells of this node's own origin are never taken from outside (this node
        is the authority on its own contribution); they count as conflicts.
        ``guard=False`` skips only the clock-based evidence guard: for cells
        restored from this node's own store.
        """
        if guard:
            self.check(delta)
        else:
            delta.validate(fingerprint=self.task.fingerprint, n_actions=self.task.n_actions,
                           q_bound=self.q_bound)
        m = len(delta)
        stats = MergeStats(origin=delta.origin, cells=m)
        if m == 0:
            return stats
        if delta.origin == self.node_id:
            stats.conflicts = m
            return stats
        keys, acts = delta.keys, delta.actions.astype(np.int64)
        sel = None  # positions in the delta of the cells still considered; None: all, in order
        if not _strictly_sorted(keys, acts):  # duplicates possible: keep the newest per cell
            order = np.lexsort((delta.version, acts, keys))
            k2, a2 = keys[order], acts[order]
            last = np.ones(m, bool)
            last[:-1] = (k2[1:] != k2[:-1]) | (a2[1:] != a2[:-1])
            sel = order[last]
            keys, acts = keys[sel], acts[sel]
        ix = self._origin(delta.origin)
        rows = self._index.ensure(keys)
        self._reserve(self._index.size, len(self._origins))
        flat = rows * self.task.n_actions + acts  # merged cell = row * A + action
        if delta.succ.any() or delta.fail.any():
            self._with_outcomes.add(ix)
        # Chunks of cells stay in the CPU cache from the version check to the recompute.
        step = max(1024, _APPLY_CHUNK_SLOTS // len(self._origins))
        conf = 0.0
        for lo in range(0, flat.shape[0], step):
            pos = slice(lo, lo + step) if sel is None else sel[lo : lo + step]
            conf += self._merge_chunk(delta, pos, flat[lo : lo + step], ix, stats,
                                      outcomes=ix in self._with_outcomes)
        stats.conflicts = m - stats.changed
        if stats.changed:
            top = int(delta.version.max())
            if top > self._max_version.get(delta.origin, 0):
                self._max_version[delta.origin] = top
            stats.confidence = conf / stats.changed
        return stats

    def _merge_chunk(self, delta: Delta, pos: slice | np.ndarray, flat: np.ndarray, ix: int,
                     stats: MergeStats, *, outcomes: bool) -> float:
        """Store the cells ``delta.*[pos]`` (merged cells ``flat``) that are newer; recompute them.

        Updates ``stats`` (new, updated, total_visits) and returns the sum of the
        changed cells' confidences. ``outcomes=False``: the origin's stored and
        incoming succ/fail are all 0, so they need not be touched.
        """
        c = self._cells
        slot = flat * c.origin_cap + ix  # this origin's slot of each cell in c.field(...)
        stored = c.field("version")[slot]
        newer = delta.version[pos] > stored
        changed = int(np.count_nonzero(newer))
        if changed == 0:
            return 0.0
        if changed < newer.shape[0]:
            flat, slot, stored = flat[newer], slot[newer], stored[newer]
            pos = (np.flatnonzero(newer) + pos.start) if isinstance(pos, slice) else pos[newer]
        new = int(np.count_nonzero(stored == 0))
        stats.new += new
        stats.updated += changed - new
        # Merged counts are exact integer sums: they change by the difference between
        # this origin's new and old counted cells; the other origins need not be read.
        # An empty slot holds n = succ = fail = 0 and incoming cells have n >= 1, so
        # with min_visits <= 1 every held cell counts and the difference is plain.
        mv = self.min_visits
        if mv > 1:
            old_ok = c.field("n")[slot] >= mv
            new_ok = delta.n[pos] >= mv
        counts = (("n", self._mn), ("succ", self._msucc), ("fail", self._mfail))
        for f, merged in counts if outcomes else counts[:1]:
            cell = c.field(f)
            new_v, old_v = getattr(delta, f)[pos], cell[slot]
            cell[slot] = new_v
            if mv > 1:
                new_v, old_v = np.where(new_ok, new_v, 0), np.where(old_ok, old_v, 0)
            m_all = merged.reshape(-1).view(np.int64)  # uint64 read as int64: the same bits
            m_new = m_all[flat] + (new_v.astype(np.int64) - old_v)
            m_all[flat] = m_new
            if f == "n":
                stats.total_visits += int(m_new.sum())
        for f in ("q", "lw", "version"):
            c.field(f)[slot] = getattr(delta, f)[pos]
        return self._recompute_values(flat, confidence=True)

    def load(self, origin: str, arrays: dict[str, np.ndarray]) -> None:
        """Restore one origin's cells from the durable store (trusted; no evidence guard)."""
        d = Delta.build(origin, self.task.fingerprint, 0,
                        int(arrays["version"].max()) if len(arrays["version"]) else 0, **arrays)
        if origin == self.node_id:
            self._load_own(d)
        else:
            self.apply(d, guard=False)

    def _load_own(self, d: Delta) -> None:
        d.validate(fingerprint=self.task.fingerprint, n_actions=self.task.n_actions,
                   q_bound=self.q_bound)
        if not len(d):
            return
        rows = self._index.ensure(d.keys)
        self._reserve(self._index.size, len(self._origins))
        acts = d.actions.astype(np.int64)
        if d.succ.any() or d.fail.any():
            self._with_outcomes.add(0)
        c = self._cells.arrays
        for f in ("q", "lw", "n", "succ", "fail", "version"):
            c[f][rows, acts, 0] = getattr(d, f)
        self._max_version[self.node_id] = max(self.version, int(d.version.max()))
        self._recompute(rows * self.task.n_actions + acts)

    def forget(self, origin: str) -> int:
        """Drop an origin's contribution (``origin_ttl`` expiry); returns cells dropped."""
        ix = self._origin_ix.get(origin)
        if ix is None or origin == self.node_id:
            return 0
        c = self._cells.arrays
        n = int(np.count_nonzero(c["version"][: self._index.size, :, ix]))
        for f, fill in (("q", 0.0), ("lw", -np.inf), ("n", 0), ("succ", 0), ("fail", 0),
                        ("version", 0)):
            c[f][:, :, ix] = fill
        self._max_version[origin] = 0
        self.recompute_all()
        return n

    # ----------------------------------------------------------------- trust
    def set_trust(self, origin: str, value: float) -> None:
        """Set a peer's trust (clamped to [0.1, 2.0]) and recompute the whole view."""
        if origin == self.node_id:
            return  # own trust is 1 by definition
        ix = self._origin(origin)
        value = min(TRUST_MAX, max(TRUST_MIN, float(value)))
        if self._trust[ix] != value:
            self._trust[ix] = value
            self.recompute_all()

    # ------------------------------------------------------------ signatures
    def signatures(self, k: int = 32) -> list[PatternSignature]:
        """This node's own learned patterns: the k states it visited most.

        Confidence = n / (n + 10) × (best − second) / (best − worst), over the
        actions this node tried: it grows with visits and with how clearly the
        best action stands out. Many tasks have several equally good actions
        (Taxi's shortest paths): honest nodes then pick different ones by
        chance, and a near-tie must not read as a disagreement in the peers'
        consensus. It weights this node's vote and scales the trust it gains
        or loses (``peerd.trust``).
        """
        size = self._index.size
        if size == 0 or k <= 0:
            return []
        c = self._cells.arrays
        n = c["n"][:size, :, 0].astype(np.int64)
        per_state = n.sum(axis=1)
        cand = np.flatnonzero(per_state > 0)
        if cand.shape[0] == 0:
            return []
        top = cand[np.argsort(-per_state[cand], kind="stable")[:k]]
        vis = per_state[top]
        best, conf = signature_confidence(c["q"][top, :, 0], n[top] > 0, vis)
        keys = self._index.row_keys[top]
        return [PatternSignature(int(kk), int(b), float(cf), int(v))
                for kk, b, cf, v in zip(keys.tolist(), best.tolist(), conf.tolist(), vis.tolist(),
                                        strict=True)]

    # ------------------------------------------------------------- internals
    def _origin(self, origin: str) -> int:
        ix = self._origin_ix.get(origin)
        if ix is None:
            ix = len(self._origins)
            self._origins.append(origin)
            self._origin_ix[origin] = ix
            self._max_version.setdefault(origin, 0)
            self._reserve(self._index.size, ix + 1)
        return ix

    def _reserve(self, rows: int, origins: int) -> None:
        cells = self._cells
        old_r, old_o = cells.row_cap, cells.origin_cap
        cells.reserve(rows, origins)
        if cells.origin_cap != old_o:
            trust = np.ones(cells.origin_cap, np.float64)
            trust[:old_o] = self._trust
            self._trust = trust
        if cells.row_cap != old_r:
            a = self.task.n_actions
            for name, fill in (("_mq", self.q_init), ("_mn", 0), ("_msucc", 0), ("_mfail", 0)):
                old = getattr(self, name)
                grown = np.full((cells.row_cap, a), fill, old.dtype)
                grown[:old_r] = old
                setattr(self, name, grown)

    def _recompute(self, flat: np.ndarray) -> None:
        """Recompute merged cells ``flat = row * A + action``, vectorised over cells × origins."""
        self._recompute_counts(flat)
        self._recompute_values(flat)

    def _recompute_counts(self, flat: np.ndarray) -> None:
        """Merged visits, successes and failures: sums over the origins whose cell counts."""
        k = len(self._origins)
        cells = self._cells
        n = cells.flat("n")[flat, :k]
        valid = n >= max(self.min_visits, 1)  # an empty slot (n = 0) is no evidence
        valid[:, 0] = n[:, 0] > 0  # own evidence always counts
        self._mn.reshape(-1)[flat] = np.where(valid, n, 0).sum(axis=1, dtype=np.uint64)
        self._msucc.reshape(-1)[flat] = np.where(valid, cells.flat("succ")[flat, :k], 0).sum(
            axis=1, dtype=np.uint64)
        self._mfail.reshape(-1)[flat] = np.where(valid, cells.flat("fail")[flat, :k], 0).sum(
            axis=1, dtype=np.uint64)

    def _recompute_values(self, flat: np.ndarray, *, confidence: bool = False) -> float:
        """Merged values of cells ``flat`` with the strategy; optionally the sum of their confidences.

        Works in cache-sized chunks, each gathered origin-major (``[k, chunk]``)
        into buffers reused from chunk to chunk, so that every reduction over
        origins runs along the outer axis. The confidence of a cell is
        eff/(eff+1), eff = its counted evidence as a number of fresh updates:
        Σ 2^(lw − now/H), at most 2^30.
        """
        k = len(self._origins)
        cells = self._cells
        qf, lwf = cells.flat("q"), cells.flat("lw")
        nf = cells.flat("n") if self.min_visits > 1 else None
        trust, excluded = self._effective_trust(k)
        mq = self._mq.reshape(-1)
        default_wa = type(self.strategy) is WeightedAverage
        now = self.clock() / self.half_life if confidence else 0.0
        conf = 0.0
        step = max(1, _CHUNK_SLOTS // k)
        gather = _Gather(min(step, flat.shape[0]), cells.origin_cap, k)
        for lo in range(0, flat.shape[0], step):
            f = flat[lo : lo + step]
            lw_t = gather(lwf, f)
            if nf is None:  # n >= 1 exactly where lw is finite (peerd.cells): no need to read n
                valid_t = None
            else:
                n_t = gather(nf, f)
                valid_t = n_t >= self.min_visits
                valid_t[0] = n_t[0] > 0  # own evidence always counts
            if default_wa:  # its evidence sums give the confidence for free
                mq[f], top, evidence = weighted_average_t(gather(qf, f, np.float64), lw_t, valid_t,
                                                          trust, self.q_init, overwrite=True)
            else:
                if valid_t is None:
                    valid_t = lw_t > -np.inf
                if excluded is not None:
                    valid_t &= ~excluded[:, None]
                mq[f] = self.strategy.combine_t(gather(qf, f), lw_t, valid_t, trust, self.q_init)
                if confidence:
                    w, top = relative_weights_t(lw_t, valid_t)
                    evidence = w.sum(axis=0)
            if confidence:
                eff = np.exp2(np.minimum(top - now, 30.0)) * evidence
                conf += float((eff / (eff + 1.0)).sum())
        return conf

    def _effective_trust(self, k: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Trust as the merge uses it: quarantined peers weigh 0 (and are not valid votes).

        Trust is floored at 0.1 so that a peer can earn it back; but a liar's
        fresh evidence can outweigh honest evidence that is a few half-lives
        older by far more than 10×, so a floor alone does not stop poisoning.
        Quarantine keeps the liar's cells (the CRDT state is untouched) and
        only leaves them out of the view until consensus restores its trust.
        """
        trust = self._trust[:k]
        if self.quarantine_below <= 0.0:
            return trust, None
        excluded = trust < self.quarantine_below
        excluded[0] = False  # own evidence always counts
        if not excluded.any():
            return trust, None
        return np.where(excluded, 0.0, trust), excluded

    def recompute_all(self) -> None:
        """Recompute the whole merged view (after a trust change), in bounded chunks."""
        total = self._index.size * self.task.n_actions
        step = 1 << 18
        for lo in range(0, total, step):
            self._recompute(np.arange(lo, min(total, lo + step), dtype=np.int64))


_OWN_FIELDS = ("q", "lw", "n", "succ", "fail", "version")
#: Cells × origins per chunk of ``_recompute_values``: 512 KiB of log-weights (L2-sized).
_CHUNK_SLOTS = 1 << 16
#: Cells × origins per chunk of ``apply``: the cells' rows of every field stay in L3.
_APPLY_CHUNK_SLOTS = 1 << 17


class _Gather:
    """Gathers rows of ``[cells, origin_capacity]`` fields origin-major, ``[k, m]``, into reused buffers.

    Temporaries of a few hundred KiB cost page faults at every allocation; the
    buffers are allocated once per recompute. A returned array is valid until
    the next call with the same source and result dtypes (q, lw and n differ).
    """

    def __init__(self, m: int, origin_cap: int, k: int) -> None:
        self.m, self.cap, self.k = m, origin_cap, k
        self.bufs: dict[tuple[np.dtype, np.dtype], tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, field: np.ndarray, flat: np.ndarray, dtype: type | None = None) -> np.ndarray:
        """``field[flat, :k].T`` as a C-contiguous array (converted to ``dtype`` on the way)."""
        dtype = np.dtype(dtype or field.dtype)
        if self.m <= 64:  # a few cells (an own update): buffers are not worth setting up
            return np.ascontiguousarray(field[flat, : self.k].T, dtype=dtype)
        bufs = self.bufs.get((field.dtype, dtype))
        if bufs is None:
            bufs = self.bufs[field.dtype, dtype] = (np.empty((self.m, self.cap), field.dtype),
                                                    np.empty(self.k * self.m, dtype))
        c = flat.shape[0]
        rows = bufs[0][:c]
        np.take(field, flat, axis=0, out=rows)
        out = bufs[1][: self.k * c].reshape(self.k, c)
        np.copyto(out, rows[:, : self.k].T)
        return out


def signature_confidence(q: np.ndarray, tried: np.ndarray,
                         visits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best action and confidence per row of ``q[m, A]`` over the ``tried`` actions.

    Confidence = visits / (visits + 10) × (best − second) / (best − worst):
    0 on a tie or with a single tried action.
    """
    qt = np.where(tried, q.astype(np.float64), -np.inf)
    best = qt.argmax(axis=1)
    ordered = np.sort(qt, axis=1)  # ascending; untried actions (-inf) first
    hi = ordered[:, -1]
    second = ordered[:, -2] if qt.shape[1] > 1 else hi
    lo = np.where(tried, qt, np.inf).min(axis=1)
    spread = hi - lo
    with np.errstate(invalid="ignore"):
        margin = np.where((spread > 0) & np.isfinite(second), (hi - second) / spread, 0.0)
    return best, visits / (visits + 10.0) * margin


def _strictly_sorted(keys: np.ndarray, acts: np.ndarray) -> bool:
    """True when (key, action) pairs are strictly increasing: then there are no duplicates."""
    if keys.shape[0] < 2:
        return True
    k0, k1 = keys[:-1], keys[1:]
    return bool(((k1 > k0) | ((k1 == k0) & (acts[1:] > acts[:-1]))).all())


__all__ = ["TRUST_MAX", "TRUST_MIN", "QTable", "UnknownAction"]
