"""``QTable``: own updates, deltas out and in, guards, forget, trust, restore (DESIGN §2–3).

The algebraic claims (order, duplicates, relays, no double counting) are
Hypothesis properties in ``test_merge_properties.py``; this module checks the
single behaviours on hand-computed cases.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from peerd.delta import CELL_DTYPES, Delta, MergeStats
from peerd.errors import (
    BadActionIndex,
    ExcessiveEvidence,
    FingerprintMismatch,
    InvalidDelta,
    NonFiniteValue,
    ShapeMismatch,
    UnknownAction,
    ValueOutOfBounds,
)
from peerd.qtable import QTable
from peerd.task import Task, state_key

TASK = Task(["a0", "a1", "a2"], gamma=0.5, name="qtable-tests")
FP = TASK.fingerprint
SECRET = "s3cret"


class VirtualClock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def table(node: str = "me", clock: VirtualClock | None = None, **kwargs: object) -> QTable:
    kwargs.setdefault("half_life", 1.0)
    return QTable(TASK, node, secret=SECRET, clock=clock or VirtualClock(), seed=1, **kwargs)


def cells(origin: str, rows: list[tuple[int, int, float, float, int, int]], *,
          from_version: int = 0, to_version: int | None = None, fp: str = FP) -> Delta:
    """A delta from ``(key, action, q, lw, n, version)`` rows (succ = fail = 0)."""
    k, a, q, lw, n, v = (list(x) for x in zip(*rows, strict=True)) if rows else ([],) * 6
    top = max(v, default=from_version) if to_version is None else to_version
    z = [0] * len(rows)
    return Delta.build(origin, fp, from_version, top, keys=k, actions=a, q=q, lw=lw, n=n,
                       succ=z, fail=z, version=v)


def snapshot(t: QTable) -> tuple:
    k, q, n = t.view()
    return (k.tolist(), q.tolist(), n.tolist(), t.origins,
            {o: t.max_version(o) for o in [*t.origins, "evil"]}, t.version)


# ----------------------------------------------------------------------------- own updates


def test_own_update_is_the_recency_weighted_mean_of_targets() -> None:
    """lw' = log2(2^lw + 2^(t/H)), q' = q + (T − q)·2^(t/H − lw'): the newer target weighs double after H."""
    clock = VirtualClock(0.0)
    t = table(clock=clock)
    t.learn("s", "a0", 1.0, done=True)
    clock.t = 1.0  # one half-life later: the new target weighs 2, the old one 1
    d = t.learn("s", 0, 3.0, done=True)
    assert (len(d), d.from_version, d.to_version) == (1, 1, 2)
    assert d.q[0] == pytest.approx(7.0 / 3.0, rel=1e-6)  # float32 storage
    assert d.lw[0] == pytest.approx(math.log2(3.0), abs=1e-12)
    assert d.n[0] == 2 and d.version[0] == 2 and t.version == 2
    assert t.values("s")[0] == pytest.approx(7.0 / 3.0, rel=1e-6)
    assert t.values("s")[1:].tolist() == [0.0, 0.0]
    assert t.visits("s").tolist() == [2, 0, 0]


def test_td_target_bootstraps_on_the_merged_view() -> None:
    """T = r + γ·max_a' M(s', a'); just r when done or without a next state (bandit)."""
    t = table()
    t.learn("s1", 2, 4.0)  # bandit-style: no next state → target 4
    assert t.target(1.0, "s1") == 1.0 + 0.5 * 4.0
    assert t.target(1.0, "s1", done=True) == 1.0
    assert t.target(1.0, "unknown") == 1.0  # q_init = 0 where nothing is known
    t.learn("s0", 1, 1.0, next_state="s1")
    assert t.values("s0")[1] == pytest.approx(3.0)


def test_learn_rejects_bad_input() -> None:
    """Unknown actions, non-finite rewards and targets beyond q_bound raise before anything changes."""
    t = table(q_bound=10.0)
    with pytest.raises(UnknownAction):
        t.learn("s", 3, 1.0)
    with pytest.raises(UnknownAction):
        t.learn("s", "jump", 1.0)
    with pytest.raises(ValueError):
        t.learn("s", 0, float("nan"))
    with pytest.raises(ValueError):
        t.learn("s", 0, 11.0)
    assert t.version == 0 and t.size == 0


def test_success_counts_feed_the_merged_view() -> None:
    """success=True/False counts as succ/fail of the cell and in the merged row."""
    t = table()
    for ok in (True, True, False):
        t.learn("ctx", 1, 1.0 if ok else 0.0, success=ok)
    d = t.delta(0)
    assert (int(d.succ[0]), int(d.fail[0]), int(d.n[0])) == (2, 1, 3)


# ----------------------------------------------------------------------------- deltas out


def test_delta_since_holds_exactly_the_cells_changed_after_since_sorted() -> None:
    """delta(since) = own cells with version > since, sorted by (key, action), range (since, version]."""
    t = table()
    for i, (s, a) in enumerate([("x", 2), ("y", 0), ("x", 0), ("z", 1), ("y", 0)]):
        t.learn(s, a, float(i))
    d = t.delta(2)
    assert (d.origin, d.fingerprint, d.from_version, d.to_version) == ("me", FP, 2, 5)
    got = sorted(zip(d.keys.tolist(), d.actions.tolist(), strict=True))
    assert list(zip(d.keys.tolist(), d.actions.tolist(), strict=True)) == got
    assert set(got) == {(t.key("x"), 0), (t.key("z"), 1), (t.key("y"), 0)}
    assert d.version.min() > 2
    for f, dtype in CELL_DTYPES.items():
        assert getattr(d, f).dtype == dtype
    empty = t.delta(5)
    assert len(empty) == 0 and (empty.from_version, empty.to_version) == (5, 5)
    assert len(t.delta(0)) == 4


def test_key_is_the_keyed_state_hash_and_accepts_unhashable_states() -> None:
    """key(state) = state_key(state, secret); dict states (unhashable) work too."""
    t = table()
    assert t.key(("pos", 3)) == state_key(["pos", 3], SECRET)
    assert t.key({"b": 1, "a": 2}) == t.key({"a": 2, "b": 1})
    t.learn({"room": 1}, 0, 1.0)
    assert t.values({"room": 1})[0] == 1.0


# ----------------------------------------------------------------------------- deltas in


@pytest.fixture
def populated() -> QTable:
    """A node that learned a little and merged one peer."""
    clock = VirtualClock(10.0)
    t = table(clock=clock, half_life=2.0)
    for s in range(4):
        t.learn(s, s % 3, float(s), next_state=(s + 1) % 4)
    t.apply(cells("peer", [(7, 0, 1.5, 4.0, 3, 1), (t.key(0), 0, -2.0, 5.0, 2, 2)]))
    return t


def _good_rows(t: QTable) -> list[tuple[int, int, float, float, int, int]]:
    now = t.clock() / t.half_life
    return [(1001, 0, 1.0, now, 1, 1), (1002, 1, 2.0, now, 2, 2), (t.key(1), 2, 3.0, now, 1, 3)]


def _bad(kind: str, t: QTable) -> Delta:
    d = cells("evil", _good_rows(t))
    a = {f: x.copy() for f, x in d.arrays().items()}
    now = t.clock() / t.half_life
    fp = FP
    if kind == "lengths":
        a["q"] = np.append(a["q"], np.float32(0.0))
    elif kind == "dtype":
        a["q"] = a["q"].astype(np.float64)
    elif kind == "two_dim":
        a["n"] = a["n"].reshape(3, 1)
    elif kind == "nan_q":
        a["q"][-1] = np.nan
    elif kind == "inf_lw":
        a["lw"][-1] = np.inf
    elif kind == "q_bound":
        a["q"][-1] = 2e6  # default q_bound is 1e6
    elif kind == "action":
        a["actions"][-1] = TASK.n_actions
    elif kind == "visit_cap":  # 2000 fresh visits claimed, visit_cap is 1000
        a["lw"][-1] = math.log2(2000) + now
    elif kind == "future":  # one visit 20 half-lives from now
        a["lw"][-1] = now + 20.0
    elif kind == "fingerprint":
        fp = Task(["a0", "a1", "a2"], gamma=0.9).fingerprint
    elif kind == "version_range":
        a["version"][-1] = d.to_version + 1
    elif kind == "n_zero":
        a["n"][-1] = 0
    elif kind == "succ_fail":
        a["succ"][-1], a["fail"][-1] = 1, 1
    else:
        raise AssertionError(kind)
    return Delta(d.origin, fp, d.from_version, d.to_version, **a)


BAD = {
    "lengths": ShapeMismatch,
    "dtype": ShapeMismatch,
    "two_dim": ShapeMismatch,
    "nan_q": NonFiniteValue,
    "inf_lw": NonFiniteValue,
    "q_bound": ValueOutOfBounds,
    "action": BadActionIndex,
    "visit_cap": ExcessiveEvidence,
    "future": ExcessiveEvidence,
    "fingerprint": FingerprintMismatch,
    "version_range": ValueOutOfBounds,
    "n_zero": ValueOutOfBounds,
    "succ_fail": ValueOutOfBounds,
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_invalid_delta_is_rejected_with_its_error_and_changes_nothing(populated: QTable, kind: str) -> None:
    """Each malformed or absurd delta raises its own InvalidDelta subclass; the table is untouched."""
    before = snapshot(populated)
    with pytest.raises(BAD[kind]) as err:
        populated.apply(_bad(kind, populated))
    assert isinstance(err.value, InvalidDelta)
    assert err.value.reason == BAD[kind].reason
    assert snapshot(populated) == before
    # the same cells without the defect are accepted
    assert populated.apply(cells("evil", _good_rows(populated))).new == 3


def test_error_reasons_are_distinct_metric_labels() -> None:
    """Every rejection class has its own stable reason label."""
    reasons = {cls.reason for cls in BAD.values()}
    assert reasons == {"shape", "non_finite", "out_of_bounds", "unknown_action", "excessive_evidence",
                       "fingerprint"}


def test_evidence_guard_boundary_is_visit_cap_fresh_visits_plus_clock_skew() -> None:
    """lw is accepted up to log2(visit_cap) + (now + skew)/H and rejected just above."""
    clock = VirtualClock(100.0)
    t = table(clock=clock, half_life=10.0, visit_cap=1000)  # skew defaults to 0.1·H = 1
    limit = math.log2(1000) + (100.0 + 1.0) / 10.0
    t.apply(cells("p", [(1, 0, 0.0, limit - 1e-9, 1, 1)]))
    with pytest.raises(ExcessiveEvidence):
        t.apply(cells("p", [(1, 0, 0.0, limit + 1e-9, 1, 2)]))
    clock.t += 10.0  # as time passes, the same claim becomes acceptable
    assert t.apply(cells("p", [(1, 0, 0.0, limit + 1e-9, 1, 2)])).updated == 1
    assert t.apply(cells("p", [(1, 0, 0.0, 1e6, 1, 3)]), guard=False).updated == 1


def test_a_cell_replaces_the_stored_one_only_if_its_version_is_greater() -> None:
    """Newer versions win, equal or older ones are conflicts; MergeStats counts each case."""
    t = table()
    s1 = t.apply(cells("p", [(1, 0, 1.0, 0.0, 1, 1), (2, 0, 2.0, 0.0, 1, 2), (3, 1, 3.0, 0.0, 4, 3)]))
    assert (s1.cells, s1.new, s1.updated, s1.conflicts, s1.total_visits) == (3, 3, 0, 0, 6)
    assert 0.0 <= s1.confidence <= 1.0
    s2 = t.apply(cells("p", [(1, 0, 9.0, 0.0, 1, 1), (2, 0, 9.0, 0.0, 1, 1), (3, 1, 5.0, 0.0, 5, 4)],
                       from_version=0, to_version=4))
    assert (s2.new, s2.updated, s2.conflicts, s2.changed) == (0, 1, 2, 1)
    assert [t.values_key(k)[a] for k, a in ((1, 0), (2, 0), (3, 1))] == [1.0, 2.0, 5.0]
    assert t.max_version("p") == 4


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]])
def test_duplicates_inside_one_delta_keep_the_newest_version(order: list[int]) -> None:
    """A delta listing one cell several times (in any order) stores its highest version."""
    rows = [(10, 0, 2.0, 0.0, 1, 2), (10, 0, 5.0, 0.0, 3, 5), (3, 1, 4.0, 0.0, 1, 4), (10, 0, 3.0, 0.0, 2, 3)]
    t = table()
    stats = t.apply(cells("p", [rows[i] for i in order]))
    assert (stats.new, stats.conflicts) == (2, 2)
    assert t.values_key(10)[0] == 5.0
    keys, _, n = t.view()
    assert dict(zip(keys.tolist(), n.tolist(), strict=True)) == {3: [0, 1, 0], 10: [3, 0, 0]}
    stored = t.delta_of("p", 0)
    assert stored.version.tolist() == [4, 5]


def test_own_origin_cells_from_outside_are_ignored(populated: QTable) -> None:
    """A delta claiming to be this node's own contribution changes nothing (conflicts only)."""
    before = snapshot(populated)
    forged = cells("me", [(populated.key(0), 0, 99.0, 0.0, 50, 1000)])
    stats = populated.apply(forged)
    assert (stats.changed, stats.conflicts) == (0, 1)
    assert snapshot(populated) == before


def test_merge_weights_evidence_by_recency_and_visits_count_once_per_origin() -> None:
    """M = Σ 2^lw·q / Σ 2^lw over own and peers; merged visits add each origin's n once."""
    clock = VirtualClock(3.0)
    t = table(clock=clock)
    t.learn("s", 0, 1.0)  # own: q = 1, lw = 3
    k = t.key("s")
    t.apply(cells("p", [(k, 0, 4.0, 4.0, 5, 1)]))  # twice the weight of own
    t.apply(cells("r", [(k, 0, 7.0, 2.0, 2, 1)]))  # half the weight of own
    assert t.values("s")[0] == pytest.approx((1 * 1 + 2 * 4 + 0.5 * 7) / 3.5, rel=1e-12)
    assert t.visits("s").tolist() == [8, 0, 0]
    assert t.own_share("s")[0] == pytest.approx(1 / 8)
    t.apply(cells("r", [(k, 0, 7.0, 2.0, 2, 1)]))  # the same again: nothing changes
    assert t.visits("s").tolist() == [8, 0, 0]


def test_peers_below_min_visits_do_not_count_but_own_evidence_does() -> None:
    """Cells of origins with n < min_visits are left out of the view; the node's own always count."""
    t = table(min_visits=3)
    t.learn("s", 0, 1.0)
    k = t.key("s")
    t.apply(cells("p", [(k, 0, 9.0, 0.0, 2, 1), (k, 1, 5.0, 0.0, 3, 2)]))
    assert t.values("s").tolist() == [1.0, 5.0, 0.0]
    assert t.visits("s").tolist() == [1, 3, 0]


def test_min_visits_zero_does_not_turn_empty_slots_into_evidence() -> None:
    """With min_visits=0 an origin holding nothing for a cell still does not vote (max strategy)."""
    t = table(min_visits=0, strategy="max")
    t.apply(cells("p", [(5, 0, -5.0, 0.0, 1, 1)]))
    t.apply(cells("r", [(5, 1, -7.0, 0.0, 1, 1)]))
    assert t.values_key(5).tolist() == [-5.0, -7.0, 0.0]  # was [-5, 0, 0]: r's empty slot voted 0


def test_a_fresh_node_acts_on_the_federations_view_from_its_first_step() -> None:
    """Warm start: a node that only merged a peer's delta acts greedily on the peer's knowledge."""
    peer = table("peer")
    for _ in range(3):
        peer.learn("s", "a2", 5.0)
        peer.learn("s", "a0", 1.0)
    fresh = table("fresh")
    fresh.apply(peer.delta(0))
    assert fresh.act("s", explore=False) == 2
    assert fresh.target(0.0, "s") == pytest.approx(0.5 * 5.0)


def test_greedy_evaluates_many_keys_with_lowest_index_ties() -> None:
    """greedy(keys) is the argmax of the merged rows; unknown keys and ties give the lowest action."""
    t = table()
    t.learn("s", 1, 2.0)
    t.learn("u", 0, -1.0)
    keys = np.array([t.key("s"), t.key("u"), 12345], np.uint64)
    assert t.greedy(keys).tolist() == [1, 1, 0]


def test_signatures_summarise_the_most_visited_own_states() -> None:
    """signatures(k): own top-k states by visits, best own action, confidence n/(n+10) × margin."""
    t = table()
    for _ in range(5):
        t.learn("busy", 2, 1.0)
    t.learn("busy", 0, 0.5)
    t.learn("tied", 0, 1.0)
    t.learn("tied", 1, 1.0)
    t.learn("rare", 0, 1.0)
    t.apply(cells("p", [(t.key("rare"), 1, 9.0, 0.0, 100, 1)]))  # peers' cells are not ours to sign
    sigs = t.signatures(2)
    assert [(s.key, s.action, s.visits) for s in sigs] == [(t.key("busy"), 2, 6), (t.key("tied"), 0, 2)]
    # busy: tried actions 2 (q=1) and 0 (q=0.5): margin (1 − 0.5)/(1 − 0.5) = 1
    assert sigs[0].confidence == pytest.approx(6 / 16)
    assert sigs[1].confidence == 0.0  # a tie says nothing about which action is best
    t.learn("busy", 1, 0.75)  # now best 1, second 0.75, worst 0.5: margin 0.5
    assert t.signatures(1)[0].confidence == pytest.approx(7 / 17 * 0.5)
    assert t.signatures(0) == [] and table().signatures() == []


def test_signatures_upto_leave_out_states_updated_past_the_published_version() -> None:
    """A state learned past ``upto`` is not signed: its argmax may not be what was published."""
    t = table()
    for _ in range(3):
        t.learn("a", 0, 1.0)  # versions 1-3
    t.learn("b", 1, 1.0)  # version 4
    published = t.version
    t.learn("b", 0, 5.0)  # version 5, not published yet: b's best action is now 0
    assert {s.key for s in t.signatures(4)} == {t.key("a"), t.key("b")}
    assert [s.key for s in t.signatures(4, upto=published)] == [t.key("a")]
    assert len(t.signatures(4, upto=t.version)) == 2


# ----------------------------------------------------------------------------- forget, trust, load


def test_forget_drops_an_origins_contribution_and_it_can_come_back() -> None:
    """forget(origin) removes exactly that origin's cells; re-delivery restores the same view."""
    t, only_r = table(), table()
    for x in (t, only_r):
        x.learn("s", 0, 1.0)
    dp = cells("p", [(t.key("s"), 0, 5.0, 0.0, 2, 1), (77, 2, 3.0, 0.0, 1, 2)])
    dr = cells("r", [(t.key("s"), 1, -1.0, 0.0, 4, 1)])
    t.apply(dp)
    t.apply(dr)
    only_r.apply(dr)
    full = t.view()
    assert t.forget("p") == 2
    assert t.max_version("p") == 0
    assert t.values("s").tolist() == only_r.values("s").tolist()
    assert t.visits("s").tolist() == only_r.visits("s").tolist()
    assert t.values_key(77).tolist() == [0.0, 0.0, 0.0] and t.total_visits() == only_r.total_visits()
    assert t.forget("me") == 0 and t.forget("nobody") == 0
    t.apply(dp)
    for x, y in zip(full, t.view(), strict=True):
        np.testing.assert_array_equal(x, y)


def test_set_trust_reweights_the_view_and_is_clamped() -> None:
    """Trust multiplies a peer's weight, is clamped to [0.1, 2.0], and own trust stays 1."""
    t = table()
    t.learn("s", 0, 1.0)  # own q = 1, lw = 0
    t.apply(cells("p", [(t.key("s"), 0, 3.0, 0.0, 1, 1)]))  # peer q = 3, same weight
    assert t.values("s")[0] == pytest.approx(2.0)
    t.set_trust("p", 5.0)
    assert t.trust("p") == 2.0
    assert t.values("s")[0] == pytest.approx((1 + 2 * 3) / 3, rel=1e-12)
    t.set_trust("p", 0.0)
    assert t.trust("p") == 0.1
    assert t.values("s")[0] == pytest.approx((1 + 0.1 * 3) / 1.1, rel=1e-12)
    t.set_trust("p", -3.0)
    assert t.trust("p") == 0.1
    t.set_trust("me", 0.5)
    assert t.trust("me") == 1.0
    assert t.visits("s").tolist() == [2, 0, 0]  # trust weighs values, never counts
    # trust set before the cells arrive gives the same view
    u = table()
    u.set_trust("p", 0.1)
    u.learn("s", 0, 1.0)
    u.apply(cells("p", [(t.key("s"), 0, 3.0, 0.0, 1, 1)]))
    assert u.values("s").tolist() == t.values("s").tolist()


def test_load_restores_the_same_view_and_resumes_the_version() -> None:
    """Restoring every origin's stored cells rebuilds the same view; own versions continue."""
    clock = VirtualClock(50.0)
    src = table(clock=clock, half_life=20.0)
    for i in range(12):
        src.learn(i % 5, i % 3, float(i), next_state=(i + 1) % 5)
    src.apply(cells("p", [(src.key(0), 1, 2.0, 2.5, 3, 4), (99, 0, -1.0, 2.0, 1, 5)]))
    src.apply(cells("r", [(src.key(3), 2, 8.0, 1.0, 2, 1)]))
    src.set_trust("r", 1.5)

    restored = table(clock=VirtualClock(0.0), half_life=20.0)  # a restart: clock far behind
    for o in src.origins:
        restored.load(o, src.delta_of(o, 0).arrays())
    restored.set_trust("r", 1.5)
    for x, y in zip(src.view(), restored.view(), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-12)
    assert restored.version == src.version == 12
    assert {o: restored.max_version(o) for o in src.origins} == {o: src.max_version(o) for o in src.origins}
    assert restored.learn(0, 0, 1.0).to_version == 13


def test_invalid_constructor_settings_raise() -> None:
    """half_life must be positive, visit_cap >= 1, min_visits >= 0, strategies and policies known."""
    for kwargs in ({"half_life": 0.0}, {"visit_cap": 0}, {"min_visits": -1},
                   {"strategy": "mean"}, {"policy": "softmax"}):
        with pytest.raises(ValueError):
            table(**kwargs)


def test_confidence_grows_with_fresh_evidence_and_decays_with_time() -> None:
    """QTable.confidence is 0 when empty, rises with updates, decays as evidence ages; the view does not."""
    clk = [0.0]
    t = QTable(Task(["a", "b"]), "n", secret="s", clock=lambda: clk[0], half_life=10.0)
    assert t.confidence() == 0.0
    for i in range(40):
        t.learn(i % 4, i % 2, 1.0, done=True)
        clk[0] += 1.0
    fresh = t.confidence()
    view = t.view()
    clk[0] += 100.0
    assert 0.0 < t.confidence() < fresh < 1.0
    assert all(np.array_equal(a, b) for a, b in zip(view, t.view(), strict=True))


# ----------------------------------------------------------------------------- a fleet's core


def test_set_trusts_is_one_batch_of_set_trust_and_clamps_each_value() -> None:
    """set_trusts({...}) gives the same view as the same set_trust calls; values are clamped."""
    a, b = table(), table()
    for t in (a, b):
        t.learn("s", 0, 1.0)
        t.apply(cells("p", [(t.key("s"), 0, 3.0, 0.0, 1, 1)]))
        t.apply(cells("r", [(t.key("s"), 0, -2.0, 0.5, 2, 1), (5, 1, 4.0, 0.0, 1, 2)]))
    a.set_trusts({"p": 1.7, "r": 9.0, "me": 0.2})
    b.set_trust("p", 1.7)
    b.set_trust("r", 9.0)
    assert (a.trust("p"), a.trust("r"), a.trust("me")) == (1.7, 2.0, 1.0)
    np.testing.assert_allclose(a.values("s"), b.values("s"), rtol=1e-12)
    expected = (1 * 1 + 1.7 * 3 + 2.0 * 2 ** 0.5 * -2.0) / (1 + 1.7 + 2.0 * 2 ** 0.5)
    assert a.values("s")[0] == pytest.approx(expected, rel=1e-12)
    assert a.values_key(5)[1] == pytest.approx(4.0)


def test_quarantine_is_weight_zero_and_lifting_it_restores_the_view() -> None:
    """A peer below quarantine_below leaves the values (not the visits); trust back restores them."""
    t = table(quarantine_below=0.3)
    t.learn("s", 0, 1.0)
    t.apply(cells("liar", [(t.key("s"), 0, 100.0, 0.0, 1, 1), (9, 0, 50.0, 0.0, 1, 2)]))
    before = t.values("s")[0]
    t.set_trusts({"liar": 0.2})
    assert t.values("s")[0] == pytest.approx(1.0, rel=1e-12)
    assert t.values_key(9)[0] == 0.0  # only the liar held it: q_init
    assert t.visits("s")[0] == 2
    t.set_trusts({"liar": 1.0})
    assert t.values("s")[0] == pytest.approx(before, rel=1e-12)


def test_forget_frees_the_origin_and_a_later_delta_recreates_it_cleanly() -> None:
    """forget removes the origin from origins, its cells from the view, and reuses its slot."""
    t = table()
    t.learn("s", 0, 2.0)
    t.apply(cells("p", [(t.key("s"), 0, 8.0, 0.0, 3, 7), (42, 1, 1.0, 0.0, 1, 8)]))
    t.set_trust("p", 2.0)
    assert t.origin_cells("p") == 2 and "p" in t.origins
    pairs = t.memory()["pairs"]
    assert t.forget("p") == 2
    assert "p" not in t.origins and t.origin_cells("p") == 0
    assert t.memory()["pairs"] == pairs - 2
    assert t.values("s")[0] == pytest.approx(2.0) and t.visits("s")[0] == 1
    assert t.trust("p") == 1.0 and t.max_version("p") == 0
    assert t.forget("p") == 0  # once only
    # back from scratch: versions restart, trust is fresh, the freed entries are reused
    t.apply(cells("p", [(42, 1, 5.0, 0.0, 2, 1)]))
    assert t.origin_cells("p") == 1 and t.max_version("p") == 1
    assert t.values_key(42)[1] == pytest.approx(5.0) and t.visits_key(42)[1] == 2
    assert len(t.delta_of("p", 0)) == 1


def test_a_dominant_origin_leaving_does_not_leave_rounding_behind() -> None:
    """When the term that made almost all of a cell's weight goes, the rest is exact again."""
    t = table(clock=VirtualClock(60.0))  # H = 1: lw 60 is one fresh visit
    k = 1234
    t.apply(cells("small", [(k, 0, 0.25, 0.0, 1, 1)]))
    t.apply(cells("huge", [(k, 0, 1e5, 60.0, 1, 1)]))  # 2^60 times the weight
    t.forget("huge")
    assert t.values_key(k)[0] == pytest.approx(0.25, rel=1e-12)


def test_memory_is_per_pair_and_per_cell_not_per_origin() -> None:
    """Bytes per stored pair and per merged cell stay under 64 with many origins."""
    t = table()
    rng = np.random.default_rng(0)
    for p in range(40):
        keys = np.sort(rng.choice(2000, 200, replace=False)).astype(np.uint64)
        m = keys.shape[0]
        t.apply(Delta.build(f"p{p}", FP, 0, m, keys=keys, actions=np.zeros(m, np.uint16),
                            q=np.ones(m, np.float32), lw=np.zeros(m), n=np.ones(m, np.uint32),
                            succ=np.zeros(m, np.uint32), fail=np.zeros(m, np.uint32),
                            version=np.arange(1, m + 1, dtype=np.uint64)))
    mem = t.memory()
    assert mem["pairs"] == 40 * 200
    assert mem["bytes_per_pair"] <= 64.0
    assert mem["bytes_per_cell_allocated"] <= 64.0


def test_rejection_stats_count_every_cell() -> None:
    """A rejected delta's stats reject all its cells (apply never rejects part of a delta)."""
    d = cells("p", [(1, 0, 1.0, 0.0, 1, 1), (2, 0, 1.0, 0.0, 1, 2)])
    s = MergeStats.rejection(d)
    assert (s.origin, s.cells, s.rejected, s.changed) == ("p", 2, 2, 0)


def test_shared_cells_counts_cells_with_two_or_more_holders() -> None:
    """``shared_cells`` counts the cells two origins hold, and follows forget: the deviation
    round skips itself when it is 0."""
    t = table()
    t.apply(cells("a", [(1, 0, 1.0, 0.0, 1, 1), (2, 0, 1.0, 0.0, 1, 2)]))
    t.apply(cells("b", [(3, 0, 1.0, 0.0, 1, 1)]))
    assert t.shared_cells() == 0
    t.apply(cells("c", [(1, 0, 2.0, 0.0, 1, 1), (3, 0, 2.0, 0.0, 1, 2), (9, 1, 2.0, 0.0, 1, 3)]))
    assert t.shared_cells() == 2
    k = t.key("s")
    t.apply(cells("d", [(k, 1, 2.0, 0.0, 1, 1)]))
    t.learn("s", 1, 1.0)  # own evidence counts as a holder too
    assert t.shared_cells() == 3
    t.forget("c")
    assert t.shared_cells() == 1  # ("s", 1): d and this node
    t.forget("d")
    assert t.shared_cells() == 0
