"""Deviation quarantine: liars stand out against the leave-one-out median, with hysteresis."""

from __future__ import annotations

import numpy as np
import pytest

from peerd.delta import Delta
from peerd.quarantine import (
    Quarantine,
    deviation_scores,
    gather_origins,
    judge_round,
    pairwise_scores,
    signature_mismatches,
    weighted_median_rows,
)

FP = "fp"


def _delta(origin, keys, acts, q, lw=0.0, n=3):
    m = len(keys)
    return Delta.build(origin, FP, 0, m, keys=np.array(keys, np.uint64),
                       actions=np.array(acts, np.uint16), q=np.array(q, np.float32),
                       lw=np.full(m, lw), n=np.full(m, n, np.uint32), succ=np.zeros(m, np.uint32),
                       fail=np.zeros(m, np.uint32), version=np.arange(1, m + 1, dtype=np.uint64))


def _federation(honest=8, liars=2, cells=200, lie=lambda mu: -mu, seed=0):
    rng = np.random.default_rng(seed)
    mu = rng.uniform(-10, 10, cells)
    keys = np.arange(cells) // 4
    acts = np.arange(cells) % 4
    ds = [_delta(f"h{i}", keys, acts, mu + rng.normal(0, 0.3, cells)) for i in range(honest)]
    ds += [_delta(f"x{i}", keys, acts, lie(mu)) for i in range(liars)]
    return gather_origins(ds)


def test_gather_origins_aligns_cells_of_different_origins():
    a = _delta("a", [1, 1, 2], [0, 1, 0], [1.0, 2.0, 3.0])
    b = _delta("b", [2, 5], [0, 0], [30.0, 50.0])
    m = gather_origins([a, b])
    assert m.origins == ("a", "b")
    assert m.keys.tolist() == [1, 1, 2, 5] and m.actions.tolist() == [0, 1, 0, 0]
    assert m.q[2].tolist() == [3.0, 30.0]
    assert m.valid.tolist() == [[True, False], [True, False], [True, True], [False, True]]


def test_gather_origins_bounded_keeps_only_shared_cells_with_most_holders():
    """The node's deviation matrix drops cells with one holder (no reference to deviate from)
    and, past ``max_entries``, keeps the cells with the most holders: its size does not grow
    with cells × origins."""
    a = _delta("a", [1, 2, 3, 4], [0, 0, 0, 0], [1.0, 2.0, 3.0, 4.0])
    b = _delta("b", [2, 3, 9], [0, 0, 0], [20.0, 30.0, 90.0])
    c = _delta("c", [3], [0], [300.0])
    m = gather_origins([a, b, c], shared_only=True)
    assert m.keys.tolist() == [2, 3]  # 1, 4 (only a) and 9 (only b) are gone
    assert m.q[1].tolist() == [3.0, 30.0, 300.0] and m.valid[0].tolist() == [True, True, False]
    small = gather_origins([a, b, c], shared_only=True, max_entries=3)  # one row of 3 origins
    assert small.keys.tolist() == [3] and small.q.shape == (1, 3)
    assert gather_origins([a, b, c], shared_only=True, max_entries=2).q.shape == (0, 3)
    disjoint = gather_origins([_delta("x", [1], [0], [1.0]), _delta("y", [2], [0], [2.0])],
                              shared_only=True)
    assert disjoint.q.shape == (0, 2)


def test_weighted_median_rows_ignores_zero_weights():
    q = np.array([[5.0, 1.0, 2.0, 100.0]])
    w = np.array([[1.0, 1.0, 1.0, 0.0]])
    assert weighted_median_rows(q, w)[0] == pytest.approx(2.0)


@pytest.mark.parametrize("liars", [2, 3])
def test_inverters_score_far_above_the_honest_median(liars):
    m = _federation(liars=liars)
    w = np.where(m.valid, 1.0, 0.0)
    score, cells, _, _ = deviation_scores(m.q, w, np.ones(len(m.origins)), np.ones(len(m.origins), bool))
    honest, lying = score[:8], score[8:]
    assert (cells >= 200).all()
    assert lying.min() > 3 * np.median(score)
    assert honest.max() < 3 * np.median(score)


def test_the_mean_reference_cannot_separate_three_inverters():
    """Why the reference is a median: with a mean, 3 liars of 11 drag every honest reference."""
    m = _federation(liars=3)
    w = np.where(m.valid, 1.0, 0.0)
    score, _, _, _ = deviation_scores(m.q, w, np.ones(11), np.ones(11, bool), reference="mean")
    assert score[8:].min() < 3 * np.median(score)


def test_judge_round_quarantines_liars_and_never_the_honest():
    m = _federation(liars=3, lie=lambda mu: mu + np.where(np.arange(mu.size) % 4 == 0, 100.0, 0.0))
    q = Quarantine()
    _, entered, _ = judge_round(m, {}, q, own="h0", now_over_h=0.0)
    assert sorted(entered) == ["x0", "x1", "x2"]
    assert all(p in q for p in ("x0", "x1", "x2")) and not any(f"h{i}" in q for i in range(8))


def test_all_honest_nobody_is_quarantined():
    m = _federation(liars=0)
    q = Quarantine()
    for _ in range(3):
        _, entered, _ = judge_round(m, {}, q, own="h0", now_over_h=0.0)
        assert entered == []


def test_hysteresis_restores_a_peer_back_in_consensus_and_counts_rounds():
    q = Quarantine(enter_ratio=3.0, leave_ratio=1.5)
    scales = {p: 10.0 for p in "abcd"}
    _, entered, _ = q.judge({"a": 1.0, "b": 1.0, "c": 1.0, "d": 5.0}, scales)
    assert entered == ["d"] and q.held["d"] == 0
    _, entered, left = q.judge({"a": 1.0, "b": 1.0, "c": 1.0, "d": 2.0}, scales)  # between: stays
    assert not entered and not left and q.held["d"] == 1
    _, _, left = q.judge({"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.2}, scales)
    assert left == ["d"] and "d" not in q


def test_offline_origins_do_not_set_the_median_and_are_not_restored():
    """A returning liar's dead identities: judged, but no say in the median, never restored."""
    q = Quarantine(enter_ratio=3.0, leave_ratio=2.0)
    scales = {p: 10.0 for p in "abcdefgh"}
    honest = {p: 1.0 for p in "abc"}
    _, entered, _ = q.judge({**honest, "d": 6.0}, scales)
    assert entered == ["d"]
    # five dead identities with a liar's scores: counted, they would be the median (5.0) and
    # make the live liar "e" typical (ratio 1.2) and the quarantined "d" restorable (1.2 < 2)
    dead = {p: 5.0 for p in "dfgh"} | {"x": 5.0}
    silent = frozenset(dead)
    v, entered, left = q.judge({**honest, **dead, "e": 6.0}, scales | {"e": 10.0, "x": 10.0})
    assert left == ["d"] and not v["e"].quarantined  # what happened without the rule
    q = Quarantine(enter_ratio=3.0, leave_ratio=2.0)
    q.judge({**honest, "d": 6.0}, scales)
    v, entered, left = q.judge({**honest, **dead, "e": 6.0}, scales | {"e": 10.0, "x": 10.0},
                               silent=silent)
    assert left == [] and "d" in q  # silent: not restored
    assert v["e"].ratio == pytest.approx(6.0) and "e" in entered  # the median is the live ones'


def test_a_peer_too_thin_to_judge_keeps_its_state_and_the_floor_protects_agreement():
    q = Quarantine(min_relative=0.05)
    scales = {p: 100.0 for p in "abcd"}
    # everybody agrees to within 1 % of the values: 5x the median is still noise
    _, entered, _ = q.judge({"a": 0.1, "b": 0.1, "c": 0.1, "d": 0.5}, scales)
    assert entered == []
    v, entered, _ = q.judge({"a": 1.0, "b": None, "c": 1.0, "d": 1.0}, scales)
    assert v["b"].score is None and not v["b"].quarantined


def test_signatures_that_contradict_the_signers_cells_are_found():
    keys = np.array([1, 1, 1, 2, 2, 3], np.uint64)
    acts = np.array([0, 1, 2, 0, 1, 0])
    q = np.array([0.0, 5.0, 1.0, 2.0, 2.0, 9.0])
    # state 1: best is action 1; state 2: a tie (0 and 1 both fine); state 3: one action, unchecked
    assert signature_mismatches(np.array([1, 2, 3], np.uint64), np.array([1, 0, 2]), keys, acts, q) == (2, 0)
    assert signature_mismatches(np.array([1, 2], np.uint64), np.array([2, 1]), keys, acts, q) == (2, 1)
    assert signature_mismatches(np.array([9], np.uint64), np.array([0]), keys, acts, q) == (0, 0)


def _bloc_on_sparse_cells(seed=0):
    """8 honest + 3 ``extreme`` liars. Busy cells: everyone holds them; liars add +100 on one
    action per state. Sparse cells: one or two honest holders each, plus the whole bloc."""
    rng = np.random.default_rng(seed)
    busy, sparse = 120, 240
    mu = rng.uniform(-10, 10, busy + sparse)
    keys = np.arange(busy + sparse) // 4
    acts = np.arange(busy + sparse) % 4
    lie = mu + np.where(acts == 0, 100.0, 0.0)
    owners = [list(range(busy)) for _ in range(8)]
    for c in range(busy, busy + sparse):
        for h in rng.choice(8, size=rng.integers(1, 3), replace=False):
            owners[h].append(c)
    ds = [_delta(f"h{i}", keys[o], acts[o], mu[o] + rng.normal(0, 0.3, len(o)))
          for i, o in enumerate(owners)]
    ds += [_delta(f"x{i}", keys, acts, lie) for i in range(3)]
    return gather_origins(ds, shared_only=True)


def test_a_bloc_on_sparse_cells_is_the_per_cell_median_but_not_the_pairwise_one():
    """Why the default reference is pairwise (docs/prove.md §5, sixth pass): where three liars
    outnumber the one or two honest holders of a cell, the per-cell median *is* the lie, so the
    honest holders deviate and the liars look typical; the median of an origin's distances to
    each other origin is a majority of origins, which the bloc is not."""
    m = _bloc_on_sparse_cells()
    w = np.where(m.valid, 1.0, 0.0)
    ones, act = np.ones(11), np.ones(11, bool)
    med, _, _, _ = deviation_scores(m.q, w, ones, act, reference="median", min_others=2)
    pair, cells, _, tail = deviation_scores(m.q, w, ones, act, reference="pairwise", min_others=2)
    # the per-cell median: some liar is not above the quarantine's 3× the median origin
    assert med[8:].min() < 3 * np.median(med)
    # pairwise: every liar far above, every honest node at most 1.5× (probation's pass bar)
    assert pair[8:].min() > 10 * np.median(pair)
    assert pair[:8].max() < 1.5 * np.median(pair)
    assert tail[8:].min() > 3 * np.median(tail)
    assert (cells >= 120).all()


def test_pairwise_judge_round_quarantines_the_bloc_and_no_honest_node():
    m = _bloc_on_sparse_cells(seed=1)
    q = Quarantine()
    _, entered, _ = judge_round(m, {}, q, own="h0", now_over_h=0.0)
    assert sorted(entered) == ["x0", "x1", "x2"]
    assert not any(f"h{i}" in q for i in range(8))


def test_pairwise_scores_need_enough_comparable_origins_and_shared_cells():
    """An origin compared with fewer than ``min_pairs`` others (each over ≥ ``min_shared`` cells
    both hold) gets no score: the median of one other's distance is that other's word."""
    m = _federation(honest=2, liars=1, cells=60)
    w = np.where(m.valid, 1.0, 0.0)
    score, _, _, _ = pairwise_scores(m.q, w, np.ones(3), np.ones(3, bool), min_pairs=2)
    assert np.isfinite(score).all()
    score, _, _, _ = pairwise_scores(m.q, w, np.ones(3), np.array([True, True, False]), min_pairs=2)
    assert np.isnan(score[:2]).all() and np.isfinite(score[2])  # a silenced origin is no comparison
    score, _, _, _ = pairwise_scores(m.q, w, np.ones(3), np.ones(3, bool), min_shared=61)
    assert np.isnan(score).all()


def test_pairwise_with_sampled_partners_still_separates_liars():
    """Past ``max_partners`` others, each origin is compared with a random sample of them (a
    cost that does not grow with the fleet); liars still stand out, the honest do not."""
    m = _federation(honest=24, liars=4, cells=120)
    k = len(m.origins)
    w = np.where(m.valid, 1.0, 0.0)
    full, _, _, _ = pairwise_scores(m.q, w, np.ones(k), np.ones(k, bool))
    few, cells, _, _ = pairwise_scores(m.q, w, np.ones(k), np.ones(k, bool), max_partners=6, seed=3)
    again, _, _, _ = pairwise_scores(m.q, w, np.ones(k), np.ones(k, bool), max_partners=6, seed=3)
    assert np.allclose(few, again)  # reproducible for a seed
    assert not np.allclose(few, full)  # a sample, not every pair
    for s in (full, few):
        assert s[24:].min() > 3 * np.median(s) and s[:24].max() < 1.5 * np.median(s)
    assert (cells == 120).all()
