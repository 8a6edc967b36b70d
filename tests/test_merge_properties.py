"""The merge is a state-based CRDT (DESIGN §2), shown with Hypothesis.

Deltas are made the way peerd makes them: several ``QTable`` origins learn
random interactions on a virtual clock (and sometimes sync with each other),
and ``delta(since)`` slices are taken at random versions. They are delivered to
fresh receivers in random order, with duplicates, and through relays
(``delta_of`` on an intermediate table). Every receiver must hold the same
merged view, and that view must equal a brute-force model of the contract:
per (origin, key, action) the cell with the highest version wins; merged visits
are the sum of the winners' ``n``; merged values are Σ 2^lw·q / Σ 2^lw.

Views are compared exactly for keys and visits, and to 1e-12 (relative to the
largest |q|) for values: two receivers that met the origins in a different
order hold them in different slots, so their floating-point sums run in a
different order.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerd import kernels
from peerd.delta import Delta
from peerd.qtable import QTable
from peerd.task import Task

TASK = Task(["left", "right", "stay"], gamma=0.9, name="props")
SECRET = "props-secret"
H = 5.0  # evidence half-life in ticks: small, so recency matters within a scenario
N_STATES = 5

PROPS = settings(max_examples=120, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class VirtualClock:
    """A clock the test advances by hand."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_table(node: str, clock: VirtualClock, **kwargs: object) -> QTable:
    return QTable(TASK, node, secret=SECRET, half_life=H, clock=clock, seed=0, **kwargs)


@dataclass
class Scenario:
    clock: VirtualClock
    origins: list[QTable]
    deltas: list[Delta]  # everything that may be delivered (slices and relays)

    def __repr__(self) -> str:  # what Hypothesis prints for a failing example
        return (f"Scenario(t={self.clock.t}, origins={[o.node_id for o in self.origins]}, "
                f"deltas={[(d.origin, d.from_version, d.to_version, len(d)) for d in self.deltas]})")


_event = st.one_of(
    st.tuples(st.just("learn"), st.integers(0, 3), st.integers(0, N_STATES - 1),
              st.integers(0, 2), st.integers(-5, 5), st.one_of(st.none(), st.integers(0, N_STATES - 1)),
              st.booleans(), st.sampled_from([None, True, False])),
    st.tuples(st.just("tick"), st.sampled_from([1, 2, 7, 30])),
    st.tuples(st.just("slice"), st.integers(0, 3), st.floats(0, 1)),
    st.tuples(st.just("sync"), st.integers(0, 3), st.integers(0, 3), st.floats(0, 1)),
)


@st.composite
def scenarios(draw: st.DrawFn, *, complete: bool | None = None) -> Scenario:
    """Origins learning on a virtual clock; the pool of deltas they emitted and relayed."""
    # t0 = 1.5e7 ticks with H = 5 gives absolute log-weights of about 3e6
    clock = VirtualClock(draw(st.sampled_from([0.0, 1.5e7])))
    n = draw(st.integers(2, 4))
    origins = [make_table(f"o{i}", clock) for i in range(n)]
    pool: list[Delta] = []
    for ev in draw(st.lists(_event, min_size=1, max_size=40)):
        if ev[0] == "learn":
            _, i, s, a, r, s2, done, success = ev
            origins[i % n].learn(s, a, float(r), s2, done, success)
        elif ev[0] == "tick":
            clock.t += ev[1]
        elif ev[0] == "slice":
            o = origins[ev[1] % n]
            pool.append(o.delta(since=int(ev[2] * o.version)))
        else:  # an origin merges another one's slice: it learns on it and can relay it
            dst, src = origins[ev[1] % n], origins[ev[2] % n]
            dst.apply(src.delta(since=int(ev[3] * src.version)))
    if complete is None:
        complete = draw(st.booleans())
    if complete:
        pool.extend(o.delta(0) for o in origins)  # every origin's latest state, somewhere
    for o in origins:  # relays: what an origin holds of the others
        for other in origins:
            if other is not o and o.max_version(other.node_id) and draw(st.booleans()):
                since = int(draw(st.floats(0, 1)) * o.max_version(other.node_id))
                pool.append(o.delta_of(other.node_id, since))
    if not pool:
        pool.append(origins[0].delta(0))
    order = draw(st.permutations(range(len(pool))))
    return Scenario(clock, origins, [pool[i] for i in order])


# ------------------------------------------------------------------------------ helpers


def receive(node: str, clock: VirtualClock, deltas: list[Delta], **kwargs: object) -> QTable:
    t = make_table(node, clock, **kwargs)
    for d in deltas:
        t.apply(d)
    return t


def versions(t: QTable, origins: list[str]) -> dict[str, int]:
    return {o: t.max_version(o) for o in origins}


def assert_same_view(a: QTable, b: QTable, *, exact: bool = False) -> None:
    ka, qa, na = a.view()
    kb, qb, nb = b.view()
    np.testing.assert_array_equal(ka, kb)
    np.testing.assert_array_equal(na, nb)
    if exact:
        np.testing.assert_array_equal(qa, qb)
    else:
        scale = max(1.0, float(np.abs(qa).max(initial=0.0)))
        np.testing.assert_allclose(qa, qb, rtol=1e-12, atol=1e-12 * scale)


def model(deltas: list[Delta], node: str = "", min_visits: int = 1) -> tuple[np.ndarray, ...]:
    """Brute-force merged view of the contract, in plain Python: ``(keys, q, n)`` sorted by key.

    Per (origin, key, action) the highest version wins; cells with n < min_visits
    do not count; values are Σ 2^lw·q / Σ 2^lw (0 where nothing counts).
    """
    best: dict[tuple[str, int, int], tuple[int, float, float, int]] = {}
    keys: set[int] = set()
    for d in deltas:
        if d.origin == node or not len(d):
            continue
        keys.update(d.keys.tolist())
        for k, a, q, lw, n, v in zip(d.keys.tolist(), d.actions.tolist(), d.q.tolist(),
                                     d.lw.tolist(), d.n.tolist(), d.version.tolist(), strict=True):
            cur = best.get((d.origin, k, a))
            if cur is None or v > cur[0]:
                best[(d.origin, k, a)] = (v, q, lw, n)
    per_cell: dict[tuple[int, int], list[tuple[float, float, int]]] = defaultdict(list)
    for (_, k, a), (_, q, lw, n) in best.items():
        if n >= min_visits:
            per_cell[(k, a)].append((q, lw, n))
    ks = sorted(keys)
    A = TASK.n_actions
    q_out = np.zeros((len(ks), A))
    n_out = np.zeros((len(ks), A), np.uint64)
    for i, k in enumerate(ks):
        for a in range(A):
            cells = per_cell.get((k, a))
            if not cells:
                continue
            top = max(lw for _, lw, _ in cells)
            w = [math.exp2(lw - top) for _, lw, _ in cells]
            q_out[i, a] = sum(wi * q for wi, (q, _, _) in zip(w, cells, strict=True)) / sum(w)
            n_out[i, a] = sum(n for _, _, n in cells)
    return np.array(ks, np.uint64), q_out, n_out


def assert_view_is(t: QTable, expected: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    keys, q, n = t.view()
    ek, eq, en = expected
    np.testing.assert_array_equal(keys, ek)
    np.testing.assert_array_equal(n, en)
    scale = max(1.0, float(np.abs(eq).max(initial=0.0)))
    np.testing.assert_allclose(q, eq, rtol=1e-12, atol=1e-12 * scale)


# ------------------------------------------------------------------------------ properties


@PROPS
@given(scn=scenarios(), data=st.data())
def test_any_order_duplicates_and_relays_give_the_same_view(scn: Scenario, data: st.DataObject) -> None:
    """Commutative, associative, idempotent: order, duplicates and relays do not change the view."""
    D = scn.deltas
    names = [o.node_id for o in scn.origins]
    r1 = receive("r1", scn.clock, D)

    dups = data.draw(st.lists(st.sampled_from(D), max_size=len(D)), label="duplicates")
    r2 = receive("r2", scn.clock, data.draw(st.permutations(D + dups), label="order2"))

    # associativity: an intermediate merges a subset, the receiver gets the rest plus its relays
    in_relay = data.draw(st.lists(st.booleans(), min_size=len(D), max_size=len(D)), label="subset")
    relay = receive("relay", scn.clock,
                    data.draw(st.permutations([d for d, x in zip(D, in_relay, strict=True) if x])))
    relayed = [relay.delta_of(o, 0) for o in relay.origins]
    relayed += [relay.delta_of(o, int(f * relay.max_version(o))) for o, f in
                data.draw(st.lists(st.tuples(st.sampled_from(names), st.floats(0, 1)), max_size=4))]
    rest = [d for d, x in zip(D, in_relay, strict=True) if not x]
    r3 = receive("r3", scn.clock, data.draw(st.permutations(rest + relayed), label="order3"))

    for r in (r2, r3):
        assert_same_view(r1, r)
        assert versions(r, names) == versions(r1, names)
    assert_view_is(r1, model(D))


@PROPS
@given(scn=scenarios(complete=True), data=st.data())
def test_merged_visits_are_the_sum_of_each_origins_own_latest_visits(
        scn: Scenario, data: st.DataObject) -> None:
    """No double counting: merged n = Σ over origins of that origin's own latest n, however delivered."""
    D = scn.deltas + data.draw(st.lists(st.sampled_from(scn.deltas), max_size=10), label="dups")
    r = receive("r", scn.clock, data.draw(st.permutations(D)))
    truth: dict[tuple[int, int], int] = defaultdict(int)
    for o in scn.origins:  # ground truth from each origin's own table
        own = o.delta(0)
        for k, a, n in zip(own.keys.tolist(), own.actions.tolist(), own.n.tolist(), strict=True):
            truth[(k, a)] += n
    keys, _, n = r.view()
    got = {(k, a): int(n[i, a]) for i, k in enumerate(keys.tolist()) for a in range(TASK.n_actions)
           if n[i, a]}
    assert got == dict(truth)
    assert r.total_visits() == sum(o.delta(0).n.sum(dtype=np.int64) for o in scn.origins)
    for o in scn.origins:
        assert r.max_version(o.node_id) == o.version


@PROPS
@given(scn=scenarios())
def test_applying_everything_again_changes_nothing(scn: Scenario) -> None:
    """Idempotent: a second delivery of every delta changes neither the view nor any version."""
    names = [o.node_id for o in scn.origins]
    r = receive("r", scn.clock, scn.deltas)
    before, vers = r.view(), versions(r, names)
    for d in scn.deltas:
        assert r.apply(d).changed == 0
    after = r.view()
    for x, y in zip(before, after, strict=True):
        np.testing.assert_array_equal(x, y)
    assert versions(r, names) == vers


@PROPS
@given(scn=scenarios(), dt=st.sampled_from([1.0, 1e3, 1e6]))
def test_the_merged_view_does_not_depend_on_when_it_is_read(scn: Scenario, dt: float) -> None:
    """No time dependence: a later read, a later full recompute and a later receiver see the same view."""
    r = receive("r", scn.clock, scn.deltas)
    before = r.view()
    scn.clock.t += dt * H
    after = r.view()
    for x, y in zip(before, after, strict=True):
        np.testing.assert_array_equal(x, y)
    late = receive("late", scn.clock, scn.deltas)  # same deliveries, much later
    assert_same_view(r, late, exact=True)
    r.recompute_all()  # recomputed from the stored cells at the new time
    assert_same_view(late, r)


@PROPS
@given(scn=scenarios(), data=st.data())
def test_an_origin_never_takes_its_own_cells_from_outside(scn: Scenario, data: st.DataObject) -> None:
    """An origin's own contribution is only changed by its own learning, whatever it receives."""
    me = scn.origins[0]
    own_before = me.delta(0)
    for d in data.draw(st.permutations(scn.deltas)):
        stats = me.apply(d)
        if d.origin == me.node_id:
            assert stats.changed == 0 and stats.conflicts == len(d)
    own_after = me.delta(0)
    for f, a in own_before.arrays().items():
        np.testing.assert_array_equal(a, getattr(own_after, f))
    assert own_after.to_version == own_before.to_version


SETTINGS = [{"strategy": "median"}, {"strategy": "trimmed_mean:0.25"}, {"strategy": "max"},
            {"strategy": "min"}, {"min_visits": 2}, {"min_visits": 0, "strategy": "min"}]


@PROPS
@given(scn=scenarios(), data=st.data(), kwargs=st.sampled_from(SETTINGS))
def test_every_strategy_and_min_visits_merge_order_independently(
        scn: Scenario, data: st.DataObject, kwargs: dict[str, object]) -> None:
    """Robust strategies and min_visits keep the CRDT properties; min_visits drops thin peers' cells."""
    D = scn.deltas
    r1 = receive("r1", scn.clock, D, **kwargs)
    dups = data.draw(st.lists(st.sampled_from(D), max_size=len(D)), label="duplicates")
    r2 = receive("r2", scn.clock, data.draw(st.permutations(D + dups), label="order"), **kwargs)
    assert_same_view(r1, r2)
    if kwargs.get("min_visits") == 2:
        # the view's values and visits follow the contract with thin cells left out
        keys, q, n = r1.view()
        ek, eq, en = model(D, min_visits=2)
        np.testing.assert_array_equal(keys, ek)
        np.testing.assert_array_equal(n, en)
        np.testing.assert_allclose(q, eq, rtol=1e-12, atol=1e-12 * max(1.0, float(np.abs(eq).max(initial=0))))


# ------------------------------------------- the incremental view against an exact recompute

PEERS = ["p0", "p1", "p2", "p3"]
T0 = 1e4  # the clock starts here (H = 1): absolute log-weights ≈ 1e4, 2^lw would overflow
_op = st.one_of(
    st.tuples(st.just("cells"), st.sampled_from(PEERS),
              st.lists(st.tuples(st.integers(0, N_STATES - 1), st.integers(0, 2),
                                 st.floats(-10, 10, allow_nan=False),
                                 st.sampled_from([-3000.0, -1100.0, -70.0, -5.0, -1.0, 0.0, 2.0]),
                                 st.floats(0, 1), st.integers(1, 4), st.booleans()),
                       min_size=1, max_size=8)),
    st.tuples(st.just("learn"), st.integers(0, N_STATES - 1), st.integers(0, 2),
              st.integers(-5, 5), st.sampled_from([None, True, False])),
    st.tuples(st.just("tick"), st.sampled_from([1.0, 30.0, 80.0])),
    st.tuples(st.just("trust"), st.dictionaries(st.sampled_from(PEERS),
                                                st.sampled_from([0.0, 0.15, 0.5, 1.0, 2.0, 3.0]),
                                                max_size=3)),
    st.tuples(st.just("forget"), st.sampled_from(PEERS)),
    st.tuples(st.just("resend"), st.sampled_from(PEERS)),
)


def _run_ops(t: QTable, clock: VirtualClock, ops: list[tuple]) -> None:
    """Random deltas (new cells, newer versions, stale resends), own learning, trust, forget."""
    sent: dict[str, list[Delta]] = defaultdict(list)
    version: dict[str, int] = defaultdict(int)
    for op in ops:
        kind = op[0]
        if kind == "cells":
            _, origin, rows = op
            uniq = {(s, a): r for s, a, *r in rows}  # one cell per (state, action) in a delta
            v0 = version[origin]
            keys = [t.key(s) for s, _ in uniq]
            acts = [a for _, a in uniq]
            q = [r[0] for r in uniq.values()]
            lw = [clock.t + r[1] + r[2] for r in uniq.values()]
            n = [r[3] for r in uniq.values()]
            succ = [int(r[4]) for r in uniq.values()]
            m = len(uniq)
            d = Delta.build(origin, TASK.fingerprint, v0, v0 + m, keys=keys, actions=acts, q=q,
                            lw=lw, n=n, succ=succ, fail=[0] * m,
                            version=list(range(v0 + 1, v0 + m + 1)))
            version[origin] = v0 + m
            sent[origin].append(d)
            t.apply(d)
        elif kind == "learn":
            _, s, a, r, success = op
            t.learn(s, a, float(r), (s + 1) % N_STATES, False, success)
        elif kind == "tick":
            clock.t += op[1]
        elif kind == "trust":
            t.set_trusts(op[1])
        elif kind == "forget":
            t.forget(op[1])
            sent.pop(op[1], None)
            version.pop(op[1], None)
        elif sent.get(op[1]):  # a stale re-delivery: changes nothing
            assert t.apply(sent[op[1]][0]).changed == 0


def _snapshot(t: QTable) -> tuple[np.ndarray, ...]:
    keys, q, n = t.view()
    succ = np.array([t.outcomes(s)[0] for s in range(N_STATES)])
    fail = np.array([t.outcomes(s)[1] for s in range(N_STATES)])
    return keys, q, n, succ, fail


INCREMENTAL_SETTINGS = [{}, {"min_visits": 2}, {"quarantine_below": 0.3},
                        {"strategy": "median", "quarantine_below": 0.3},
                        {"strategy": "trimmed_mean:0.25"}, {"strategy": "max", "min_visits": 2}]


#: merge paths: the numpy reference, and the compiled kernels where numba is installed
KERNELS = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(
    not kernels.available(), reason="numba not installed (the [fast] extra) or PEERD_NO_NUMBA set"))]


def _probe(t: QTable, clock: VirtualClock) -> None:
    """A last peer adds a cell everywhere, so that no cell's sums can hide a broken state
    behind the default value."""
    keys = sorted(t.key(s) for s in range(N_STATES))
    m = len(keys) * TASK.n_actions
    t.apply(Delta.build("probe", TASK.fingerprint, 0, m,
                        keys=np.repeat(np.array(keys, np.uint64), TASK.n_actions),
                        actions=np.tile(np.arange(TASK.n_actions), len(keys)),
                        q=np.full(m, 0.5), lw=np.full(m, clock.t - 3.0), n=np.full(m, 2),
                        succ=np.zeros(m), fail=np.zeros(m), version=np.arange(1, m + 1)))


@pytest.mark.filterwarnings("error::RuntimeWarning")  # a NaN or overflow in the sums is a bug
@pytest.mark.parametrize("kernel", KERNELS)
@PROPS
@given(ops=st.lists(_op, min_size=1, max_size=30), kwargs=st.sampled_from(INCREMENTAL_SETTINGS),
       probe=st.booleans())
def test_the_incremental_view_equals_an_exact_recompute(kernel: str, ops: list[tuple],
                                                        kwargs: dict[str, object], probe: bool) -> None:
    """After any sequence of deltas, own updates, trust changes and forgets, the view that was
    maintained term by term equals one recomputed from the stored cells: values within 1e-9
    relative, visits, successes and failures exactly; on either merge path. ``probe``: see
    ``_probe``."""
    clock = VirtualClock(T0)
    t = QTable(TASK, "me", secret=SECRET, half_life=1.0, clock=clock, seed=0, kernel=kernel, **kwargs)
    _run_ops(t, clock, ops)
    if probe:
        _probe(t, clock)
    assert t.last_kernel in (kernel, None)  # None: no delta was merged
    keys, q, n, succ, fail = _snapshot(t)
    t.recompute_all()
    ek, eq, en, esucc, efail = _snapshot(t)
    np.testing.assert_array_equal(keys, ek)
    np.testing.assert_array_equal(n, en)
    np.testing.assert_array_equal(succ, esucc)
    np.testing.assert_array_equal(fail, efail)
    np.testing.assert_allclose(q, eq, rtol=1e-9, atol=1e-9 * 10.0)  # |q| ≤ 10 here
    assert sum(t.origin_cells(o) for o in t.origins) == t.memory()["pairs"]


@pytest.mark.skipif(not kernels.available(),
                    reason="numba not installed (the [fast] extra) or PEERD_NO_NUMBA set")
@PROPS
@given(ops=st.lists(_op, min_size=1, max_size=40), kwargs=st.sampled_from(INCREMENTAL_SETTINGS),
       probe=st.booleans())
def test_the_compiled_kernels_give_the_numpy_paths_view(ops: list[tuple], kwargs: dict[str, object],
                                                         probe: bool) -> None:
    """The same random deltas (duplicates, stale versions, rebases, cancellations, outcomes),
    own updates, trust changes and forgets, on a table merging with the numba kernels and one
    merging with numpy: values within 1e-9 relative, visits, successes, failures, stored pairs
    and each origin's stored cells exactly equal."""
    views = []
    for kernel in ("numpy", "numba"):
        clock = VirtualClock(T0)
        t = QTable(TASK, "me", secret=SECRET, half_life=1.0, clock=clock, seed=0, kernel=kernel,
                   **kwargs)
        _run_ops(t, clock, ops)
        if probe:
            _probe(t, clock)
        views.append((_snapshot(t), {o: t.delta_of(o, 0) for o in t.origins}))
    (keys, q, n, succ, fail), held = views[0]
    (k2, q2, n2, succ2, fail2), held2 = views[1]
    np.testing.assert_array_equal(keys, k2)
    np.testing.assert_array_equal(n, n2)
    np.testing.assert_array_equal(succ, succ2)
    np.testing.assert_array_equal(fail, fail2)
    np.testing.assert_allclose(q2, q, rtol=1e-9, atol=1e-9 * 10.0)  # |q| ≤ 10 here
    assert held.keys() == held2.keys()
    for o, d in held.items():
        for f in ("keys", "actions", "q", "lw", "n", "succ", "fail", "version"):
            np.testing.assert_array_equal(getattr(d, f), getattr(held2[o], f))


@PROPS
@given(ops=st.lists(_op, min_size=1, max_size=30), who=st.sampled_from(["me", *PEERS]))
def test_leave_one_out_is_the_view_of_everyone_else(ops: list[tuple], who: str) -> None:
    """leave_one_out(o) gives, over the cells o holds, o's own cells and the merged value of a
    table that never received o (NaN exactly where nobody else's evidence counts)."""
    clock = VirtualClock(T0)
    t = QTable(TASK, "me", secret=SECRET, half_life=1.0, clock=clock, seed=0)
    _run_ops(t, clock, ops)
    loo = t.leave_one_out(who)
    held = t.delta_of(who, 0)
    assert len(loo.keys) == len(held) == t.origin_cells(who)
    order = np.lexsort((loo.actions, loo.keys))
    np.testing.assert_array_equal(loo.keys[order], held.keys)
    np.testing.assert_array_equal(loo.q[order], held.q.astype(np.float64))
    np.testing.assert_array_equal(loo.n[order], held.n)
    # the others' view: a table that holds every origin but ``who``
    others = QTable(TASK, "me" if who != "me" else "x", secret=SECRET, half_life=1.0, clock=clock)
    for o in t.origins:
        if o != who:
            others.load(o, t.delta_of(o, 0).arrays())
    others.set_trusts({o: t.trust(o) for o in t.origins if o not in (who, "me")})
    for k, a, q_loo, w_loo in zip(loo.keys.tolist(), loo.actions.tolist(), loo.q_loo.tolist(),
                                  loo.w_loo.tolist(), strict=True):
        if others.visits_key(k)[a] == 0:
            assert math.isnan(q_loo) and w_loo == 0.0
        else:
            assert q_loo == pytest.approx(others.values_key(k)[a], rel=1e-9, abs=1e-8)
            assert w_loo >= 0.0  # 0 only where the others' evidence is > 1000 half-lives older
    assert (loo.w >= 0).all() and np.isfinite(loo.w).all()
