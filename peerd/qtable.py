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

``QTable`` is a facade over four pieces with one job each:

- ``peerd.keyindex.KeyIndex`` — state keys → rows (flat cell id ``row·A + action``);
- ``peerd.contribution.Contribution`` — the own TD update and version counter;
- ``peerd.cells.CellStore`` — every origin's stored cells, sparse, with a
  ``(cell, origin)`` hash, holder chains and per-origin lists;
- ``peerd.view.MergedView`` — per-cell numerator/denominator/counts, updated
  term by term: a delta, an own update, a trust change or ``forget`` costs
  O(cells it changes), whatever the number of origins.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Mapping
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from peerd import kernels
from peerd.cells import MAX_SLOTS, REC, CellStore, MergeScratch, ScratchArrays
from peerd.contribution import OWN, Contribution
from peerd.delta import DEFAULT_Q_BOUND, Bounds, Delta, MergeStats, PatternSignature
from peerd.errors import ExcessiveEvidence, UnknownAction
from peerd.keyindex import KeyIndex
from peerd.policy import Policy, make_policy
from peerd.strategies import MergeStrategy, WeightedAverage, make_strategy
from peerd.task import Task, state_key
from peerd.trust import TRUST_MAX, TRUST_MIN
from peerd.view import MergedView, evidence_of

#: Cells per chunk of a full recompute: bounds the padded [cells, holders] matrices.
_RECOMPUTE_CHUNK = 1 << 13


class LeaveOneOut(NamedTuple):
    """One origin's cells next to the merged view without that origin (``QTable.leave_one_out``).

    ``w`` and ``w_loo`` are the origin's trusted evidence weight and everyone
    else's, both relative to the cell's own reference (``2^(lw − ref)``): only
    their ratio within a cell means something. ``q_loo`` is NaN (and
    ``w_loo`` 0) where no other counted origin holds the cell.
    """

    keys: np.ndarray  # uint64[m]
    actions: np.ndarray  # uint16[m]
    q: np.ndarray  # float64[m]: the origin's q
    w: np.ndarray  # float64[m]: its trust × 2^(lw − ref) (0 if it does not count)
    n: np.ndarray  # uint32[m]: its visits
    q_loo: np.ndarray  # float64[m]: merged value of the other origins
    w_loo: np.ndarray  # float64[m]: their weight, same reference


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
        kernel: str = "auto",
    ) -> None:
        if half_life <= 0:
            raise ValueError(f"half_life must be > 0, got {half_life}")
        if visit_cap < 1 or min_visits < 0:
            raise ValueError("visit_cap must be >= 1 and min_visits >= 0")
        if kernel not in kernels.KERNELS:
            raise ValueError(f"kernel must be one of {kernels.KERNELS}, got {kernel!r}")
        if kernel == "numba" and kernels.load() is None:
            raise ValueError(f"kernel='numba' but the kernels cannot load: {kernels.status()['error']}")
        #: merge path: "auto" (the compiled kernels once a delta of ``kernels.MIN_CELLS``
        #: cells loads them, if numba is installed), "numba", or "numpy" (the reference)
        self.kernel_mode = kernel
        #: the path the last merged delta took: "numba", "numpy", or None before any
        self.last_kernel: str | None = None
        self._restoring = False  # in ``load``: a restore does not load the kernels by itself
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

        self._a = task.n_actions
        self._index = KeyIndex()
        self._store = CellStore()
        self._scratch = MergeScratch()  # the compiled merge's, kept across deltas
        self._own = Contribution(self._store)
        self._robust = type(self.strategy) is not WeightedAverage
        # each cell's reference log-weight is stored relative to the clock at start-up (float32)
        self._view = MergedView(self.q_init, robust=self._robust, base=self._start_base())
        self._slots: dict[str, int] = {node_id: OWN}  # insertion order = ``origins``
        self._names: list[str | None] = [node_id]  # slot → origin (None: free)
        self._free_slots: list[int] = []
        self._trust = np.ones(8, np.float64)  # per slot
        self._max_version: dict[str, int] = {}
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
        return self._own.version

    @property
    def origins(self) -> list[str]:
        """Origins held (this node first), in order of first appearance."""
        return list(self._slots)

    def max_version(self, origin: str) -> int:
        """Highest version held of ``origin``'s cells (0 if none)."""
        if origin == self.node_id:
            return self._own.version
        return self._max_version.get(origin, 0)

    def trust(self, origin: str) -> float:
        s = self._slots.get(origin)
        return 1.0 if s is None else float(self._trust[s])

    def origin_cells(self, origin: str) -> int:
        """Number of cells stored for ``origin`` (0 if unknown)."""
        s = self._slots.get(origin)
        return 0 if s is None else self._store.count(s)

    def _row_cells(self, row: int) -> slice:
        return slice(row * self._a, (row + 1) * self._a)

    def values(self, state: Any) -> np.ndarray:
        """Merged Q-values of a state (``q_init`` where nothing is known)."""
        return self.values_key(self.key(state))

    def values_key(self, key: int) -> np.ndarray:
        row = self._index.find(key)
        if row < 0:
            return np.full(self._a, self.q_init, np.float64)
        return self._view.values(self._row_cells(row))

    def visits(self, state: Any) -> np.ndarray:
        """Merged visit counts of a state: Σ over origins of each origin's own n."""
        return self.visits_key(self.key(state))

    def visits_key(self, key: int) -> np.ndarray:
        row = self._index.find(key)
        if row < 0:
            return np.zeros(self._a, np.uint64)
        return self._view.n[self._row_cells(row)].copy()

    def outcomes(self, state: Any) -> tuple[np.ndarray, np.ndarray]:
        """Merged successes and failures of a state's actions (Σ over counted origins)."""
        row = self._index.find(self.key(state))
        if row < 0:
            z = np.zeros(self._a, np.uint64)
            return z, z.copy()
        c = self._row_cells(row)
        return self._view.counts("succ", c), self._view.counts("fail", c)

    def _own_entries(self, rows: np.ndarray) -> np.ndarray:
        """Own entry id of every (row, action), -1 where none: ``[m, A]``."""
        cells = (rows[:, None] * self._a + np.arange(self._a)).reshape(-1)
        return self._store.find(cells, OWN).reshape(rows.shape[0], self._a)

    def own_share(self, state: Any) -> np.ndarray:
        """Fraction of each action's merged visits that are this node's own."""
        row = self._index.find(self.key(state))
        a = self._a
        if row < 0:
            return np.zeros(a)
        e = self._own_entries(np.array([row], np.int64))[0]
        own = np.where(e >= 0, self._store.fields["n"][np.maximum(e, 0)], 0).astype(np.float64)
        tot = self._view.n[self._row_cells(row)].astype(np.float64)
        return np.divide(own, tot, out=np.zeros(a), where=tot > 0)

    def own_cells(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """This node's own ``q[m, A]`` and ``tried[m, A]`` (own n > 0) for known keys."""
        rows = self._index.lookup(np.asarray(keys, np.uint64))
        if (rows < 0).any():
            raise KeyError("own_cells: unknown state key")
        e = self._own_entries(rows)
        held = e >= 0
        q = np.where(held, self._store.fields["q"][np.maximum(e, 0)], 0.0).astype(np.float64)
        return q, held

    def shared_cells(self) -> int:
        """How many cells at least two origins hold (the head of the cell's holder chain has a
        successor). The deviation round compares origins only there: with none it has nothing
        to judge and skips rebuilding every origin's contribution. O(cells), no per-origin work."""
        st = self._store
        h = st.head[: self._index.size * self._a]
        held = h >= 0
        return int(np.count_nonzero(st.next[h[held]] >= 0))

    def held_cells(self, origin: str, keys: np.ndarray, actions: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """What is held of ``origin``'s cells ``(keys, actions)``: ``(n, lw, version, q)``.

        ``n = 0``, ``lw = -inf``, ``version = 0``, ``q = 0`` where nothing is
        held: the evidence budget (``peerd.evidence``) compares a delta with
        these, signatures are checked against them. O(cells asked).
        """
        m = np.asarray(keys).shape[0]
        s = self._slots.get(origin)
        if s is None or m == 0:
            return (np.zeros(m, np.int64), np.full(m, -np.inf), np.zeros(m, np.uint64),
                    np.zeros(m))
        rows = self._index.lookup(np.asarray(keys, np.uint64))
        cells = np.maximum(rows, 0) * self._a + np.asarray(actions, np.int64)
        e = np.where(rows >= 0, self._store.find(cells, s), -1)
        hit = e >= 0
        ec = np.maximum(e, 0)
        f = self._store.fields
        return (np.where(hit, f["n"][ec], 0).astype(np.int64),
                np.where(hit, f["lw"][ec], -np.inf),
                np.where(hit, f["version"][ec], 0).astype(np.uint64),
                np.where(hit, f["q"][ec], 0.0).astype(np.float64))

    def greedy(self, keys: np.ndarray) -> np.ndarray:
        """Greedy actions for many keys at once (lowest index on ties): for evaluation."""
        rows = self._index.lookup(np.asarray(keys, np.uint64))
        cells = (np.maximum(rows, 0)[:, None] * self._a + np.arange(self._a)).reshape(-1)
        vals = self._view.values(cells).reshape(rows.shape[0], self._a)
        vals = np.where((rows >= 0)[:, None], vals, self.q_init)
        return vals.argmax(axis=1)

    @property
    def size(self) -> int:
        """Number of (state, action) cells with merged visits."""
        return int(np.count_nonzero(self._view.n[: self._index.size * self._a]))

    def total_visits(self) -> int:
        return int(self._view.n[: self._index.size * self._a].sum())

    def confidence(self) -> float:
        """Mean eff/(eff+1) over cells with merged visits, eff = fresh-update equivalents now.

        eff is the cell's trusted evidence (Σ t·2^lw, quarantined peers left
        out) as a number of fresh updates, ``2^(−now/H)·Σ t·2^lw``. For
        ``peerd_merge_confidence``: 0 for an empty table, towards 1 where the
        federation holds much recent evidence. Reads the whole table: call it
        at scrape time, not on a hot path.
        """
        cells = np.flatnonzero(self._view.n[: self._index.size * self._a])
        if cells.shape[0] == 0:
            return 0.0
        eff = self._view.evidence(cells, self.clock() / self.half_life)
        return float((eff / (eff + 1.0)).sum()) / cells.shape[0]

    def view(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The merged view sorted by key: ``(keys, q[m, A], n[m, A])`` — for comparisons."""
        rows = self._index.sorted_rows
        cells = (rows[:, None] * self._a + np.arange(self._a)).reshape(-1)
        m = rows.shape[0]
        return (self._index.sorted_keys.copy(), self._view.values(cells).reshape(m, self._a),
                self._view.n[cells].reshape(m, self._a))

    def memory(self) -> dict[str, float]:
        """Bytes of the core's arrays: per stored (origin, cell) pair and per merged cell."""
        st, pairs = self._store, self._store.pairs
        cells = max(1, self._index.size * self._a)
        merged = self._view.nbytes + st.head.nbytes + self._index.nbytes
        return {"pairs": pairs, "cells": self._index.size * self._a,
                "store_bytes": st.nbytes, "view_bytes": merged,
                "bytes_per_pair": st.nbytes / max(1, pairs),
                "bytes_per_cell": merged / cells,
                "bytes_per_cell_allocated": merged / max(1, self._view.cap)}

    # ------------------------------------------------------------ act, learn
    def act(self, state: Any, *, explore: bool = True) -> int:
        """Choose an action on the merged view with the node's policy."""
        row = self._index.find(self.key(state))
        self.steps += explore
        a = self._a
        if row < 0:
            z = np.zeros(a, np.uint64)
            return self.policy.choose(np.full(a, self.q_init), z, z, z, self.steps, explore)
        c, v = self._row_cells(row), self._view
        return self.policy.choose(v.values(c), v.n[c], v.counts("succ", c), v.counts("fail", c),
                                  self.steps, explore)

    def target(self, reward: float, next_state: Any = None, done: bool = False) -> float:
        """TD target r + γ·max_a' M(s', a'); just r when done or without a next state."""
        if done or next_state is None:
            return float(reward)
        row = self._index.find(self.key(next_state))
        best = self.q_init if row < 0 else float(self._view.values(self._row_cells(row)).max())
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
        self._reserve()
        cell = row * self._a + a
        ch = self._own.update(cell, target, self.clock() / self.half_life, success)
        # Own evidence always counts (trust 1): the same term swap as a peer's cell.
        v = self._view
        exact = v.replace_one(cell, float(ch.n_old > 0), ch.q_old, ch.lw_old, 1.0, ch.q_new, ch.lw_new)
        v.n[cell] += 1
        if success is not None:
            v.enable_outcomes()
            counts = v.succ if success else v.fail
            assert counts is not None
            counts[cell] += 1
        if exact or self._robust:
            c = np.array([cell], np.int64)
            self._refresh(c, c if exact else c[:0])
        f, e = self._store.fields, ch.entry
        zero = np.zeros(1, np.uint32)
        out = {k: f[k][e : e + 1] if k in f else zero for k in ("q", "lw", "n", "succ", "fail", "version")}
        return Delta.build(self.node_id, self.task.fingerprint, self.version - 1,
                           self.version, keys=np.array([key], np.uint64),
                           actions=np.array([a], np.uint16), **out)

    # ------------------------------------------------------------ deltas out
    def delta(self, since: int = 0, upto: int | None = None) -> Delta:
        """Own cells changed after version ``since`` (and at most ``upto``), sorted by (key, action)."""
        return self.delta_of(self.node_id, since, upto)

    def delta_of(self, origin: str, since: int = 0, upto: int | None = None) -> Delta:
        """Stored cells of any origin with ``since < version <= upto``: catch-up and relaying.

        ``upto`` (default: the highest version held) is the node's durable
        watermark for its own cells: a cell whose latest change is newer is left
        out, not sent at an older state, and goes out once that change is durable.

        Reads only that origin's entries: O(its cells).
        """
        s = self._slots.get(origin)
        held = self.max_version(origin)
        top = held if upto is None else min(held, upto)
        if s is None or since >= top:
            return Delta.empty(origin, self.task.fingerprint, since, max(since, top))
        st = self._store
        ids = st.entries(s)
        ver = st.fields["version"][ids]
        keep = ver > np.uint64(since)
        if top < held:
            keep &= ver <= np.uint64(top)
        ids = ids[keep]
        cells = st.cell[ids].astype(np.int64)
        rows, acts = np.divmod(cells, self._a)
        keys = self._index.row_keys[rows]
        order = np.lexsort((acts, keys))
        ids = ids[order]
        zeros = np.zeros(ids.shape[0], np.uint32)
        f = st.fields
        return Delta.build(origin, self.task.fingerprint, since, top, keys=keys[order],
                           actions=acts[order], q=f["q"][ids], lw=f["lw"][ids], n=f["n"][ids],
                           succ=f["succ"][ids] if "succ" in f else zeros,
                           fail=f["fail"][ids] if "fail" in f else zeros,
                           version=f["version"][ids])

    @property
    def stored_entries(self) -> int:
        """Entries of the cell store a ``snapshot_cells`` copies (freed ones included)."""
        return self._store.used

    def snapshot_cells(self, origins: list[str], *, room: CellsRoom | None = None) -> CellsSnapshot:
        """A copy of every stored cell of ``origins``, to read away from the table (another thread).

        Only copies here: the store's records and slots and the row keys, a
        memcpy where ``delta_of`` for 256 origins of 4 k cells took ~0.1 s.
        Selecting and decoding the entries is ``CellsSnapshot.arrays``, which
        touches nothing the table owns. Same cells as ``delta_of(o)`` for each
        origin. ``room`` (``cells_room``, if large enough): memory to copy
        into, already touched, so that the copy costs no page faults.
        """
        st = self._store
        used = st.used
        if room is not None and room.rec.shape[0] >= used:
            rec, slot = room.rec[:used], room.slot[:used]
            np.copyto(rec, st.rec[:used])
            np.copyto(slot, st.slot[:used])
        else:
            rec, slot = st.rec[:used].copy(), st.slot[:used].copy()
        return CellsSnapshot(origins=tuple(origins),
                             slots=tuple(self._slots.get(o, -1) for o in origins), rec=rec,
                             slot=slot, row_keys=self._index.row_keys[: self._index.size].copy(),
                             n_actions=self._a)

    # ------------------------------------------------------------- deltas in
    def check(self, delta: Delta, bounds: Bounds | None = None) -> Bounds:
        """Validate a peer's delta without applying it; raise an ``InvalidDelta``.

        ``bounds``: what ``Delta.validate`` returned for this delta with this
        table's task fingerprint, action count and ``q_bound`` (a node's wire
        decoder validates with exactly those: ``DeltaMsg.bounds``); only the
        clock-based evidence guard is then left to check. Returns
        ``Delta.validate``'s bounds (largest ``lw`` and ``version``)."""
        if bounds is None:
            bounds = delta.validate(fingerprint=self.task.fingerprint, n_actions=self._a,
                                    q_bound=self.q_bound)
        if len(delta):
            limit = math.log2(self.visit_cap) + (self.clock() + self.clock_skew) / self.half_life
            if bounds.lw_max > limit:
                raise ExcessiveEvidence(
                    f"delta from {delta.origin!r} claims log-weight {bounds.lw_max:.3f} "
                    f"> {limit:.3f}: more than visit_cap={self.visit_cap} fresh visits, "
                    "or evidence from the future")
        return bounds

    def apply(self, delta: Delta, *, guard: bool = True, checked: bool = False,
              bounds: Bounds | None = None) -> MergeStats:
        """Merge a peer's delta: each cell replaces the stored one iff its version is greater.

        Validates everything first; a rejected delta raises and changes nothing
        (the caller counts it: ``MergeStats.rejection``). Cells of this node's
        own origin are never taken from outside (this node is the authority on
        its own contribution); they count as conflicts. ``guard=False`` skips
        only the clock-based evidence guard: for cells restored from this
        node's own store. ``checked=True``: the caller has just run ``check``
        on this delta (the node's evidence budget does), so it is not run twice.
        ``bounds``: ``Delta.validate``'s result for this table's task and
        ``q_bound``, if the caller has it (``check`` returned it, or the wire
        decoder did: ``DeltaMsg.bounds``); the cells are then not checked again.
        Costs O(cells in the delta), whatever the number of origins.
        """
        if checked:
            pass
        elif guard:
            bounds = self.check(delta, bounds)
        elif bounds is None:
            bounds = delta.validate(fingerprint=self.task.fingerprint, n_actions=self._a,
                                    q_bound=self.q_bound)
        m = len(delta)
        stats = MergeStats(origin=delta.origin, cells=m)
        if m == 0:
            return stats
        if delta.origin == self.node_id:
            stats.conflicts = m
            return stats
        s = self._slot(delta.origin)
        self._merge(s, delta, stats, bounds)
        stats.conflicts = m - stats.changed
        if stats.changed:
            top = int(delta.version.max()) if bounds is None else bounds.version_max
            if top > self._max_version.get(delta.origin, 0):
                self._max_version[delta.origin] = top
        return stats

    def _outcomes_before(self, e: np.ndarray, src: dict[str, np.ndarray],
                         outcomes: bool | None) -> dict[str, np.ndarray]:
        """Outcome columns switched on when a delta first carries outcomes (``outcomes``:
        known already, or None to look), and entries ``e``'s succ/fail before the merge
        (0 at the sentinel); empty while no origin reports outcomes. The numpy path's
        (the compiled one's is ``_outcomes_after``)."""
        st = self._store
        if outcomes is None:
            outcomes = bool(src["succ"].any() or src["fail"].any())
        if outcomes:
            st.enable_outcomes()
            self._view.enable_outcomes()
        if not st.has_outcomes:
            return {}
        return {o: st.fields[o][e].astype(np.int64) for o in ("succ", "fail")}

    def _merge(self, s: int, delta: Delta, stats: MergeStats, bounds: Bounds | None = None) -> int:
        """Store the delta's newer cells under slot ``s`` and swap their terms in the view.

        Returns how many cells changed. Vectorised throughout:
        dedup, key rows, hash look-up, version test, store, view update.
        ``bounds``: the validation's, if it ran here (its compiled scan may
        have found whether the cells are in order and carry outcomes).
        """
        keys, acts = delta.keys, delta.actions
        src = {f: getattr(delta, f) for f in ("q", "lw", "n", "succ", "fail", "version")}
        kern = self._kernels(keys.shape[0])
        self.last_kernel = "numpy" if kern is None else "numba"
        outcomes: bool | None = None  # whether some cell reports succ/fail (None: not known yet)
        if kern is None or keys.shape[0] < 2:
            ordered = _strictly_sorted(keys, acts)
        elif bounds is not None and bounds.ordered is not None:  # delta_scan found out
            ordered, outcomes = bounds.ordered, bounds.outcomes
        else:
            ordered, outcomes = kern.scan_order(keys, acts, delta.succ, delta.fail)
        if not ordered:  # duplicates possible: keep the newest per cell
            m = keys.shape[0]
            order = np.lexsort((delta.version, acts, keys))
            k2, a2 = keys[order], acts[order]
            last = np.ones(m, bool)
            last[:-1] = (k2[1:] != k2[:-1]) | (a2[1:] != a2[:-1])
            sel = order[last]
            keys, acts = keys[sel], acts[sel]
            src = {f: v[sel] for f, v in src.items()}
            outcomes = None  # a dropped duplicate may have been the one with outcomes
        if kern is not None:
            return self._merge_compiled(s, keys, acts, src, stats, kern, outcomes)
        rows = self._index.ensure(keys)
        self._reserve()
        cells = rows * self._a
        cells += acts
        st = self._store
        e, gaps = st.lookup(cells, s)  # entry 0 (the sentinel: version 0, n 0, lw -inf) = absent
        old = st.rec.take(e)  # each cell's record, one gather: what every later step reads
        newer = src["version"] > old["version"]  # incoming versions are >= 1
        if not newer.all():
            cells, e, old = cells[newer], e[newer], old[newer]
            gaps = None if gaps is None else gaps[newer]
            src = {k: v[newer] for k, v in src.items()}
        k = cells.shape[0]
        if k == 0:
            return 0
        have = e != 0
        n_new = k - int(np.count_nonzero(have))
        stats.new += n_new
        stats.updated += k - n_new
        # An absent cell's old term has weight 0 (ok_old is False), so its q and lw never count.
        q_old, lw_old, n_old = old["q"], old["lw"], old["n"]
        old_of = self._outcomes_before(e, src, None)
        if n_new:
            absent = np.flatnonzero(~have)  # indices: cheaper than mask passes
            e[absent] = st.insert(s, cells[absent], None if gaps is None else gaps[absent])
        for name in ("q", "lw", "n", "version", *(("succ", "fail") if st.has_outcomes else ())):
            st.fields[name][e] = src[name]
        floor = 1 if s == OWN else max(self.min_visits, 1)
        n_in = src["n"]
        dn = n_in.astype(np.int64)
        if floor == 1:  # validated n >= 1: every new term counts, and every old one held
            ok_old, ok_new = have, None
            dn -= n_old  # 0 at the sentinel
        else:
            ok_old, ok_new = n_old >= floor, n_in >= floor
            dn *= ok_new
            dn -= np.where(ok_old, n_old, 0)
        bad, n_after, den, ref = self._view.swap(cells, self._eff_trust(s), ok_old, q_old, lw_old,
                                                 ok_new, src["q"], src["lw"], dn)
        if st.has_outcomes and self._view.succ is not None:
            ok_in = True if ok_new is None else ok_new
            for o in ("succ", "fail"):
                self._view.add_counts(o, cells, np.where(ok_in, src[o].astype(np.int64), 0)
                                      - np.where(ok_old, old_of[o], 0))
        stats.total_visits = int(n_after.sum())
        now = self.clock() / self.half_life
        eff = evidence_of(den, ref, now) if bad.shape[0] == 0 else None
        self._refresh(cells, bad)
        if eff is None:  # some sums were recomputed exactly: read them back
            eff = self._view.evidence(cells, now)
        stats.confidence = float((eff / (eff + 1.0)).sum()) / k
        return k

    def _merge_compiled(self, s: int, keys: np.ndarray, acts: np.ndarray, src: dict[str, np.ndarray],
                        stats: MergeStats, kern: ModuleType, outcomes: bool | None) -> int:
        """``_merge`` with the compiled kernels (``peerd.kernels``): the same steps and
        arithmetic in one compiled call (``kernels_numba.merge_delta``), after room for the
        delta's entries is made here; the key index and the view grow when the call says so.
        ``outcomes``: whether some cell reports succ/fail, if ``scan_order`` found out.

        Lean on purpose: between two deltas the caches hold other work (a daemon's, the
        benchmark's dict loop), and each Python step here costs cache misses, ~1–3 µs cold."""
        m = keys.shape[0]
        idx, st, view, sc = self._index, self._store, self._view, self._scratch
        scratch = sc.arrays if m <= sc.cap else sc.get(m)
        st.reserve_entries(m)
        h = st.hashes.get(s) or st.origin_hash(s, m)
        floor = 1 if s == OWN else max(self.min_visits, 1)
        now = self.clock() / self.half_life
        t = self._eff_trust(s)
        q, lw, n, version = src["q"], src["lw"], src["n"], src["version"]
        kat = 0
        while True:
            (status, ksize, kat, k, n_new, reuse, used, nbad, total, conf, table) = kern.merge_delta(
                *idx.kernel_args, keys, acts, self._a, idx.row_keys, idx.size, idx.limit(), kat,
                min(view.cap, st.head.shape[0]), h.table, h.n, *st.hash_loads, *st.kernel_cols,
                st.head, st.free, st.used, s, *view.kernel_rows, q, lw, n, version, t, floor, now,
                *scratch)
            if status == 0:  # kern.DONE
                break
            idx.grew_to(ksize)
            if status == kern.KEYS_FULL:  # grow the key index as ``ensure`` would, go on
                idx.make_room(kern)
            else:  # VIEW_FULL
                self._reserve()
        if ksize != idx.size:
            idx.grew_to(ksize)
        st.inserted(s, table, n_new, reuse, used)
        if k == 0:
            return 0
        stats.new += n_new
        stats.updated += k - n_new
        stats.total_visits = int(total)
        cells = scratch.cells[:k]
        if outcomes is None:
            outcomes = bool(src["succ"].any() or src["fail"].any())
        if outcomes or st.has_outcomes:
            self._outcomes_after(cells, scratch, k, m, n_new, src, floor, outcomes)
        if nbad and not self._robust:  # the cancelled sums, exactly, in one compiled call
            f8, f4, _, base = view.kernel_rows
            conf += kern.recompute_exact(f8, f4, base, cells, scratch.bad[:nbad], st.head, st.next,
                                         st.slot, *st.kernel_cols[3:6], self._eff_trusts(),
                                         max(self.min_visits, 1), now)
        elif nbad or self._robust:
            bad = cells[scratch.bad[:nbad]]
            self._refresh(cells, bad)
            if nbad:  # recomputed exactly: their evidence (``conf`` left them out) read back
                eff = view.evidence(bad, now)
                conf += float((eff / (eff + 1.0)).sum())
        stats.confidence = conf / k
        return k

    def _outcomes_after(self, cells: np.ndarray, scratch: ScratchArrays, k: int, m: int,
                        n_new: int, src: dict[str, np.ndarray], floor: int, outcomes: bool) -> None:
        """The compiled merge's succ/fail: stored for the changed entries, the view's counts moved
        by (new − old) where each counts; outcome columns switched on the first time."""
        st, view, f = self._store, self._view, self._store.fields
        if outcomes:
            st.enable_outcomes()
            view.enable_outcomes()
        e, at = scratch.e[:k], scratch.at[:k]
        for o in ("succ", "fail"):
            before = f[o][e].astype(np.int64)  # the stored counts before; 0 for a new entry
            before[scratch.absent[:n_new]] = 0
            src_o = src[o] if k == m else src[o][at]
            f[o][e] = src_o
            if view.succ is not None:
                n_in, n_old = src["n"] if k == m else src["n"][at], scratch.n_old[:k]
                view.add_counts(o, cells, np.where(n_in >= floor, src_o.astype(np.int64), 0)
                                - np.where(n_old >= floor, before, 0))

    def load(self, origin: str, arrays: dict[str, np.ndarray]) -> None:
        """Restore one origin's cells from the durable store (trusted; no evidence guard).

        A restore never loads the compiled kernels by itself (it happens once,
        at start: not worth numba's ~100 MB of RSS for the rest of the
        process's life); it uses them if they are loaded already.
        """
        self._restoring = True
        try:
            d = Delta.build(origin, self.task.fingerprint, 0,
                            int(arrays["version"].max()) if len(arrays["version"]) else 0, **arrays)
            if origin != self.node_id:
                self.apply(d, guard=False)
                return
            d.validate(fingerprint=self.task.fingerprint, n_actions=self._a, q_bound=self.q_bound)
            if len(d):
                self._merge(OWN, d, MergeStats(origin=origin, cells=len(d)))
                self._own.version = max(self._own.version, int(d.version.max()))
        finally:
            self._restoring = False

    def forget(self, origin: str) -> int:
        """Free an origin's cells and slot for good (``origin_ttl`` expiry); returns cells dropped.

        The merged view loses exactly that origin's terms, in O(its cells); the
        origin leaves ``origins``. A later delta from it re-creates it afresh.
        """
        s = self._slots.get(origin)
        if s is None or s == OWN:
            return 0
        st = self._store
        ids = st.entries(s).astype(np.int64)
        k = ids.shape[0]
        if k:
            cells = st.cell[ids].astype(np.int64)
            f = st.fields
            n = f["n"][ids].astype(np.int64)
            ok = n >= max(self.min_visits, 1)
            t = self._eff_trust(s)
            bad = self._view.replace(cells, t * ok, f["q"][ids].astype(np.float64), f["lw"][ids],
                                     0.0, np.zeros(k), np.full(k, -np.inf))
            self._view.add_counts("n", cells, -np.where(ok, n, 0))
            if st.has_outcomes and self._view.succ is not None:
                for o in ("succ", "fail"):
                    self._view.add_counts(o, cells, -np.where(ok, f[o][ids].astype(np.int64), 0))
            st.drop(s)
            self._refresh(cells, bad)
        del self._slots[origin]
        self._names[s] = None
        self._free_slots.append(s)
        self._trust[s] = 1.0
        self._max_version.pop(origin, None)
        return k

    # ----------------------------------------------------------------- trust
    def set_trust(self, origin: str, value: float) -> None:
        """Set one peer's trust: ``set_trusts({origin: value})``."""
        self.set_trusts({origin: value})

    def set_trusts(self, mapping: Mapping[str, float]) -> None:
        """Set peers' trust (each clamped to [0.1, 2.0]); O(cells of the changed origins).

        Each changed origin's terms are reweighted in place in the view. A peer
        below ``quarantine_below`` weighs 0 (its cells are kept). Own trust is
        1 by definition and is ignored here.
        """
        touched: list[np.ndarray] = []
        for origin, value in mapping.items():
            if origin == self.node_id:
                continue
            s = self._slot(origin)
            value = min(TRUST_MAX, max(TRUST_MIN, float(value)))
            if self._trust[s] == value:
                continue
            t_old = self._eff_trust(s)
            self._trust[s] = value
            t_new = self._eff_trust(s)
            st = self._store
            ids = st.entries(s).astype(np.int64)
            if ids.shape[0] == 0:
                continue
            cells = st.cell[ids].astype(np.int64)
            if t_old != t_new:
                f = st.fields
                ok = f["n"][ids] >= max(self.min_visits, 1)
                q, lw = f["q"][ids].astype(np.float64), f["lw"][ids]
                bad = self._view.replace(cells, t_old * ok, q, lw, t_new * ok, q, lw)
                if bad.shape[0]:
                    self._recompute_exact(bad)
            touched.append(cells)
        if self._robust and touched:
            self._recompute_robust(np.unique(np.concatenate(touched)))

    # ------------------------------------------------------- leave-one-out
    def leave_one_out(self, origin: str) -> LeaveOneOut:
        """The cells ``origin`` holds, next to the merged view without it: O(its cells).

        For the deviation score of issue #11: ``q_loo = (num − w·q)/(den − w)``
        with the origin's term taken out of the weighted-average sums. Where
        that subtraction would cancel (the origin's term was most of the
        cell's weight), the cell is recomputed exactly from its other holders;
        there ``w_loo`` may underflow to 0 next to ``w`` while ``q_loo`` is
        still exact. Uses the trust-weighted average whatever the merge
        strategy; quarantined peers count as weight 0.
        """
        s = self._slots.get(origin)
        st = self._store
        ids = st.entries(s).astype(np.int64) if s is not None else np.empty(0, np.int64)
        cells = st.cell[ids].astype(np.int64)
        f, v = st.fields, self._view
        q = f["q"][ids].astype(np.float64)
        lw, n = f["lw"][ids], f["n"][ids].copy()
        floor = 1 if s == OWN else max(self.min_visits, 1)
        t = (self._eff_trust(s) if s is not None else 0.0) * (n >= floor)
        ref = v.refs(cells)
        base = np.where(np.isfinite(ref), ref, 0.0)
        with np.errstate(over="ignore", invalid="ignore"):
            w = np.where(t > 0, t * np.exp2(np.minimum(lw - base, 1000.0)), 0.0)
        den = v.den[cells] - w
        num = v.num[cells] - w * q
        q_loo = np.full(cells.shape[0], np.nan)
        ok = den > v.den[cells] * 2.0 ** -8  # else the subtraction cancelled: recompute
        q_loo[ok] = num[ok] / den[ok]
        w_loo = np.where(ok, den, 0.0)
        if not ok.all():
            shaky = ~ok
            q_loo[shaky], w_loo[shaky] = self._loo_exact(cells[shaky], base[shaky], s)
        rows, acts = np.divmod(cells, self._a)
        return LeaveOneOut(self._index.row_keys[rows], acts.astype(np.uint16), q, w, n, q_loo,
                           w_loo)

    def _loo_exact(self, cells: np.ndarray, base: np.ndarray,
                   slot: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Merged value and weight (relative to ``base``) of cells over the holders but ``slot``."""
        hold, t, q, lw = self._holders(cells)
        if slot is not None:
            t = np.where(self._store.slot[np.maximum(hold, 0)] == slot, 0.0, t)
        lwm = np.where(t > 0, lw, -np.inf)
        top = lwm.max(axis=1) if lwm.shape[1] else np.full(cells.shape[0], -np.inf)
        counted = np.isfinite(top)
        own_base = np.where(counted, top, 0.0)
        with np.errstate(over="ignore", invalid="ignore"):
            w = np.where(t > 0, t * np.exp2(np.minimum(lw - own_base[:, None], 1000.0)), 0.0)
            den = w.sum(axis=1)
            value = np.where(counted, (w * q).sum(axis=1) / np.where(counted, den, 1.0), np.nan)
            rel = np.where(counted, den * np.exp2(np.minimum(own_base - base, 1000.0)), 0.0)
        return value, rel

    # ------------------------------------------------------------ signatures
    def signatures(self, k: int = 32, upto: int | None = None) -> list[PatternSignature]:
        """This node's own learned patterns: the k states it visited most.

        ``upto``: sign only states whose own cells are all at versions ≤ ``upto``
        (what the delta they ride with publishes). A state updated past it holds
        values the receivers have not seen, and its argmax may contradict the
        published cells (``Node._check_signatures`` would charge an honest node).

        Confidence = n / (n + 10) × (best − second) / (best − worst), over the
        actions this node tried: it grows with visits and with how clearly the
        best action stands out. Many tasks have several equally good actions
        (Taxi's shortest paths): honest nodes then pick different ones by
        chance, and a near-tie must not read as a disagreement in the peers'
        consensus. It weights this node's vote and scales the trust it gains
        or loses (``peerd.trust``).
        """
        st = self._store
        ids = st.entries(OWN).astype(np.int64)
        if ids.shape[0] == 0 or k <= 0:
            return []
        rows, acts = np.divmod(st.cell[ids].astype(np.int64), self._a)
        n = st.fields["n"][ids].astype(np.int64)
        urows, inv = np.unique(rows, return_inverse=True)
        per_state = np.bincount(inv, weights=n, minlength=urows.shape[0]).astype(np.int64)
        if upto is not None:
            per_state[inv[st.fields["version"][ids] > upto]] = 0  # not published yet: unsigned
        cand = np.flatnonzero(per_state > 0)
        if cand.shape[0] == 0:
            return []
        top = cand[np.argsort(-per_state[cand], kind="stable")[:k]]
        at = np.full(urows.shape[0], -1, np.int64)
        at[top] = np.arange(top.shape[0])
        p = at[inv]
        sel = p >= 0
        q = np.zeros((top.shape[0], self._a))
        tried = np.zeros((top.shape[0], self._a), bool)
        q[p[sel], acts[sel]] = st.fields["q"][ids[sel]]
        tried[p[sel], acts[sel]] = n[sel] > 0
        vis = per_state[top]
        best, conf = signature_confidence(q, tried, vis)
        keys = self._index.row_keys[urows[top]]
        return [PatternSignature(int(kk), int(b), float(cf), int(vv))
                for kk, b, cf, vv in zip(keys.tolist(), best.tolist(), conf.tolist(), vis.tolist(),
                                         strict=True)]

    # ------------------------------------------------------------- internals
    def _kernels(self, m: int) -> ModuleType | None:
        """The compiled kernels for a batch of ``m`` cells, or None for the numpy path.

        ``auto`` imports numba only for a batch of ``kernels.MIN_CELLS`` cells
        or more that is not a restore (``load``): its import costs ~100 MB of
        RSS. Once loaded, every batch uses it.
        """
        mode = self.kernel_mode
        if mode == "numpy":
            return None
        if mode == "numba" or (m >= kernels.MIN_CELLS and not self._restoring):
            return kernels.load()
        return kernels.loaded()

    def _slot(self, origin: str) -> int:
        """The slot of ``origin``, allocating one (reusing a forgotten origin's) if new."""
        s = self._slots.get(origin)
        if s is not None:
            return s
        if self._free_slots:
            s = self._free_slots.pop()
            self._names[s] = origin
        else:
            s = len(self._names)
            if s >= MAX_SLOTS:
                raise ValueError(f"a table holds at most {MAX_SLOTS - 1} origins")
            self._names.append(origin)
            if s >= self._trust.shape[0]:
                self._trust = np.concatenate([self._trust, np.ones(self._trust.shape[0])])
        self._trust[s] = 1.0
        self._slots[origin] = s
        return s

    def _eff_trust(self, s: int) -> float:
        """Trust as the merge uses it: own 1, quarantined peers 0.

        Trust is floored at 0.1 so that a peer can earn it back; but a liar's
        fresh evidence can outweigh honest evidence that is a few half-lives
        older by far more than 10×, so a floor alone does not stop poisoning.
        Quarantine keeps the liar's cells (the CRDT state is untouched) and
        only leaves them out of the view until consensus restores its trust.
        """
        if s == OWN:
            return 1.0
        t = float(self._trust[s])
        return 0.0 if t < self.quarantine_below else t

    def _eff_trusts(self) -> np.ndarray:
        """``_eff_trust`` of every slot, as an array indexed by slot."""
        eff = self._trust.copy()
        if self.quarantine_below > 0.0:
            eff[eff < self.quarantine_below] = 0.0
        eff[OWN] = 1.0
        return eff

    def _start_base(self) -> float:
        """The view's ``base``: the clock at start-up in half-lives (0 if it is not a number yet)."""
        b = float(self.clock()) / self.half_life
        return b if math.isfinite(b) else 0.0

    def _reserve(self) -> None:
        n = self._index.size * self._a
        if n >= 2**31:
            raise ValueError("table too large: flat cell ids must fit in int32")
        self._view.reserve(n)
        self._store.reserve_cells(n)

    def _holders(self, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Padded holders of cells: entry ids, counted weight t (0 = no vote), q, lw: ``[m, k]``."""
        st = self._store
        hold = st.holders(cells)
        e = np.maximum(hold, 0)
        slot = st.slot[e]
        n = st.fields["n"][e]
        floor = np.where(slot == OWN, 1, max(self.min_visits, 1))
        eff = self._eff_trusts()  # every live slot is < len(eff); a padding -1 reads entry 0
        t = np.where((hold >= 0) & (n >= floor), eff[np.minimum(slot, eff.shape[0] - 1)], 0.0)
        return hold, t, st.fields["q"][e].astype(np.float64), st.fields["lw"][e]

    def _recompute_exact(self, cells: np.ndarray) -> None:
        """Weighted-average sums of cells, exactly, from the origins that hold them."""
        for lo in range(0, cells.shape[0], _RECOMPUTE_CHUNK):
            c = cells[lo : lo + _RECOMPUTE_CHUNK]
            _, t, q, lw = self._holders(c)
            lwm = np.where(t > 0, lw, -np.inf)
            top = lwm.max(axis=1) if lwm.shape[1] else np.full(c.shape[0], -np.inf)
            ref_rel = self._view.quantize(top)  # the reference as stored: ≤ top, within 1
            ref = ref_rel.astype(np.float64) + self._view.base
            base = np.where(np.isfinite(ref), ref, 0.0)
            with np.errstate(over="ignore", invalid="ignore"):
                w = np.where(t > 0, t * np.exp2(np.minimum(lw - base[:, None], 1000.0)), 0.0)
            self._view.set_exact(c, (w * q).sum(axis=1), w.sum(axis=1), ref_rel)

    def _recompute_robust(self, cells: np.ndarray) -> None:
        """A robust strategy's values of cells, over the origins that hold them."""
        view = self._view
        assert view.robust is not None
        for lo in range(0, cells.shape[0], _RECOMPUTE_CHUNK):
            c = cells[lo : lo + _RECOMPUTE_CHUNK]
            _, t, q, lw = self._holders(c)  # t: each holder's trust, 0 where it does not count
            view.robust[c] = self.strategy.combine(q, lw, t > 0, t, self.q_init)

    def _refresh(self, cells: np.ndarray, bad: np.ndarray) -> None:
        """After terms changed: exact sums where they cancelled; robust values of the cells."""
        if bad.shape[0]:
            self._recompute_exact(bad)
        if self._robust:
            self._recompute_robust(cells)

    def _recompute_counts(self, cells: np.ndarray) -> None:
        st, v = self._store, self._view
        hold = st.holders(cells)
        e = np.maximum(hold, 0)
        slot = st.slot[e]
        n = st.fields["n"][e].astype(np.uint64)
        floor = np.where(slot == OWN, 1, max(self.min_visits, 1))
        ok = (hold >= 0) & (n >= floor)
        v.n[cells] = np.where(ok, n, 0).sum(axis=1, dtype=np.uint64)
        if st.has_outcomes:
            v.enable_outcomes()
            assert v.succ is not None and v.fail is not None
            v.succ[cells] = np.where(ok, st.fields["succ"][e], 0).sum(axis=1, dtype=np.uint64)
            v.fail[cells] = np.where(ok, st.fields["fail"][e], 0).sum(axis=1, dtype=np.uint64)

    def recompute_all(self) -> None:
        """Recompute the whole merged view exactly from the stored cells, in bounded chunks.

        Not on any hot path: the view is maintained incrementally. This is the
        reference the incremental view is checked against (tests), and a
        repair tool.
        """
        total = self._index.size * self._a
        for lo in range(0, total, _RECOMPUTE_CHUNK):
            c = np.arange(lo, min(total, lo + _RECOMPUTE_CHUNK), dtype=np.int64)
            self._recompute_counts(c)
            self._recompute_exact(c)
            if self._robust:
                self._recompute_robust(c)


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
    if (k1 > k0).all():  # one cell per key (a peer's sparse delta): two passes decide
        return True
    return bool(((k1 > k0) | ((k1 == k0) & (acts[1:] > acts[:-1]))).all())


class CellsRoom(NamedTuple):
    """Touched memory for ``QTable.snapshot_cells`` to copy into (``cells_room``)."""

    rec: np.ndarray
    slot: np.ndarray


def cells_room(entries: int) -> CellsRoom:
    """Room for a snapshot of up to ``entries`` entries, every page touched (no table needed:
    a worker thread can pay the page faults)."""
    rec = np.empty(entries, REC)
    slot = np.empty(entries, np.uint16)
    for a in (rec, slot):
        a.view(np.uint8)[::4096] = 0
    return CellsRoom(rec, slot)


class CellsSnapshot(NamedTuple):
    """Copies of a table's stored cells (``QTable.snapshot_cells``): nothing in it is shared."""

    origins: tuple[str, ...]
    slots: tuple[int, ...]  # each origin's slot, -1 if the table holds none of its cells
    rec: np.ndarray  # the store's records [:used]
    slot: np.ndarray  # uint16 slot of each record (FREE: freed, or the sentinel)
    row_keys: np.ndarray  # uint64 key of each row
    n_actions: int

    def arrays(self) -> tuple[np.ndarray, ...]:
        """``(col, keys, actions, q, lw, n)`` of every cell of the origins, ``col`` indexing ``origins``.

        In no particular order; the same cells and values as the origins'
        ``delta_of`` (entries of version 0 are not cells). O(entries), vectorised.
        """
        of_slot = np.full(MAX_SLOTS + 1, -1, np.int64)
        for j, s in enumerate(self.slots):
            if s >= 0:
                of_slot[s] = j
        col = of_slot[self.slot]
        ids = np.flatnonzero((col >= 0) & (self.rec["version"] > 0))
        rec = self.rec[ids]
        rows, acts = np.divmod(rec["cell"].astype(np.int64), self.n_actions)
        return (col[ids], self.row_keys[rows], acts, rec["q"].astype(np.float64),
                rec["lw"].astype(np.float64), rec["n"].astype(np.int64))


__all__ = ["TRUST_MAX", "TRUST_MIN", "CellsRoom", "CellsSnapshot", "LeaveOneOut", "QTable",
           "UnknownAction", "cells_room"]
