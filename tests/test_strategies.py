"""Merge strategies on hand-computed cells, plus properties against plain-Python references."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from peerd.strategies import (
    STRATEGIES,
    Max,
    Median,
    MergeStrategy,
    Min,
    TrimmedMean,
    WeightedAverage,
    make_strategy,
    relative_weights_t,
    weighted_average_t,
)

ALL = [WeightedAverage(), Max(), Min(), Median(), TrimmedMean(0.2), TrimmedMean(0.34)]
ONES = np.ones(3)

# Four cells × three origins:
#   0: all valid, weights 2^lw = 1, 2, 1        1: nothing valid (→ default)
#   2: only origin 1 valid                        3: origins 0 and 1 valid, equal weights
Q = np.array([[1.0, 3.0, 8.0], [5.0, 5.0, 5.0], [100.0, 2.0, -100.0], [4.0, 2.0, 6.0]], np.float32)
LW = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [7.0, -3.0, 7.0], [0.0, 0.0, 9.0]])
VALID = np.array([[True, True, True], [False, False, False], [False, True, False], [True, True, False]])
EXPECTED = {
    "weighted_average": [(1 * 1 + 2 * 3 + 1 * 8) / 4, -1.5, 2.0, 3.0],
    "max": [8.0, -1.5, 2.0, 4.0],
    "min": [1.0, -1.5, 2.0, 2.0],
    "median": [3.0, -1.5, 2.0, 3.0],
    "TrimmedMean(beta=0.2)": [4.0, -1.5, 2.0, 3.0],  # ⌊0.2·3⌋ = 0: nothing cut
    "TrimmedMean(beta=0.34)": [3.0, -1.5, 2.0, 3.0],  # ⌊0.34·3⌋ = 1 cut from each tail of 3
}


def _label(s: MergeStrategy) -> str:
    return repr(s) if isinstance(s, TrimmedMean) else s.name


@pytest.mark.parametrize("strategy", ALL, ids=_label)
def test_hand_computed_cells_including_an_empty_one(strategy: MergeStrategy) -> None:
    """Each strategy on hand-computed cells; a cell nobody holds gets the default, never NaN."""
    got = strategy.combine(Q, LW, VALID, ONES, default=-1.5)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, EXPECTED[_label(strategy)], rtol=1e-15)


def test_even_counts_median_and_trimmed_mean() -> None:
    """Median of an even count is the mean of the middle two; β=0.25 of 4 cuts one from each tail."""
    q = np.array([[20.0, 1.0, 10.0, 2.0]])
    lw, valid, trust = np.zeros((1, 4)), np.ones((1, 4), bool), np.ones(4)
    assert Median().combine(q, lw, valid, trust).tolist() == [6.0]
    assert TrimmedMean(0.25).combine(q, lw, valid, trust).tolist() == [6.0]
    assert TrimmedMean(0.2).combine(q, lw, valid, trust).tolist() == [8.25]


def test_trust_weights_the_weighted_average_only() -> None:
    """Trust multiplies an origin's weight in weighted_average; the rank-based strategies ignore it."""
    trust = np.array([1.0, 2.0, 0.5])
    wa = WeightedAverage().combine(Q[:1], LW[:1], VALID[:1], trust)
    assert wa[0] == pytest.approx((1 * 1 + 4 * 3 + 0.5 * 8) / 5.5, rel=1e-15)
    for s in (Max(), Min(), Median(), TrimmedMean(0.34)):
        assert s.combine(Q, LW, VALID, trust, -1.5).tolist() == EXPECTED[_label(s)]


@pytest.mark.parametrize("base", [3e6, -3e6, 1e9])
def test_huge_absolute_log_weights_do_not_overflow(base: float) -> None:
    """Absolute lw ≈ 3e6 (wall-clock seconds / H) gives the same value as small lw, without warnings."""
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        got = WeightedAverage().combine(Q, LW + base, VALID, ONES, default=-1.5)
    np.testing.assert_allclose(got, EXPECTED["weighted_average"], rtol=1e-12)


def test_evidence_thousands_of_half_lives_older_has_no_weight() -> None:
    """An origin whose evidence is 2000 half-lives older than another's no longer moves the value."""
    q = np.array([[1.0, 9.0]])
    lw = np.array([[3e6, 3e6 - 2000.0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        assert WeightedAverage().combine(q, lw, np.ones((1, 2), bool), np.ones(2)).tolist() == [1.0]


def test_relative_weights_are_exact_with_a_mask_and_floored_without() -> None:
    """Masked: exactly 2^(lw − top) or 0, tiny weights too; unmasked: held = finite lw, floor 2^-1021."""
    lw_t = np.array([[5.0, -np.inf], [4.0, 1.0], [5.0 - 1050, -np.inf]])  # [origins, cells]
    valid_t = np.array([[True, False], [False, True], [True, False]])
    w, top = relative_weights_t(lw_t, valid_t)
    assert top.tolist() == [5.0, 1.0]
    assert w.tolist() == [[1.0, 0.0], [0.0, 1.0], [2.0**-1050, 0.0]]
    w, top = relative_weights_t(lw_t)  # held: finite lw
    assert top.tolist() == [5.0, 1.0]
    assert w.tolist() == [[1.0, 2.0**-1021], [0.5, 1.0], [2.0**-1021, 2.0**-1021]]
    empty = np.full((2, 1), -np.inf)
    values, top, evidence = weighted_average_t(np.ones((2, 1)), empty, None, np.ones(2), default=3.0)
    assert values.tolist() == [3.0] and top.tolist() == [-np.inf] and evidence[0] < 1e-300


def test_no_cells_and_no_origins() -> None:
    """Zero cells give an empty result; zero origins give the default for every cell."""
    for s in ALL:
        assert s.combine(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3), bool), ONES).shape == (0,)
        out = s.combine(np.zeros((2, 0)), np.zeros((2, 0)), np.zeros((2, 0), bool), np.ones(0), 7.0)
        assert out.tolist() == [7.0, 7.0]


def test_make_strategy_parses_names_and_parameters() -> None:
    """Names, ``trimmed_mean:β`` and instances are accepted; anything else raises ValueError."""
    assert set(STRATEGIES) == {"weighted_average", "max", "min", "median", "trimmed_mean"}
    assert isinstance(make_strategy("weighted_average"), WeightedAverage)
    assert make_strategy("trimmed_mean:0.25").beta == 0.25
    assert make_strategy("trimmed_mean").beta == 0.2
    m = Median()
    assert make_strategy(m) is m
    for bad in ("mean", "max:1", "trimmed_mean:0.5", "trimmed_mean:-0.1"):
        with pytest.raises(ValueError):
            make_strategy(bad)


# ----------------------------------------------------------------------------- properties

_k = st.integers(1, 6)


@st.composite
def cells(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    m, k = draw(st.integers(1, 8)), draw(_k)
    q = draw(hnp.arrays(np.float32, (m, k), elements=st.floats(-1e3, 1e3, width=32)))
    # log-weights on a 1/4 grid: adding an integer shift is exact
    lw = draw(hnp.arrays(np.int64, (m, k), elements=st.integers(-400, 400))) / 4.0
    valid = draw(hnp.arrays(np.bool_, (m, k)))
    trust = draw(hnp.arrays(np.float64, k, elements=st.sampled_from([0.1, 0.5, 1.0, 1.5, 2.0])))
    return q, lw, valid, trust


def _reference(name: str, q: list[float], lw: list[float], t: list[float], beta: float) -> float:
    if name == "weighted_average":
        top = max(lw)
        w = [ti * math.exp2(x - top) for x, ti in zip(lw, t, strict=True)]
        return math.fsum(wi * qi for wi, qi in zip(w, q, strict=True)) / math.fsum(w)
    if name == "max":
        return max(q)
    if name == "min":
        return min(q)
    if name == "median":
        return statistics.median(q)
    cut = math.floor(beta * len(q))
    kept = sorted(q)[cut:len(q) - cut]
    return math.fsum(kept) / len(kept)


@settings(max_examples=200, deadline=None)
@given(c=cells(), beta=st.sampled_from([0.0, 0.2, 0.3, 0.49]))
def test_every_strategy_matches_a_plain_python_reference(
        c: tuple[np.ndarray, ...], beta: float) -> None:
    """Per cell, each strategy equals its textbook definition over the valid origins (default if none)."""
    q, lw, valid, trust = c
    for s in (WeightedAverage(), Max(), Min(), Median(), TrimmedMean(beta)):
        got = s.combine(q, lw, valid, trust, default=-7.0)
        for i in range(q.shape[0]):
            v = valid[i]
            if not v.any():
                assert got[i] == -7.0
                continue
            want = _reference(s.name, q[i][v].astype(float).tolist(), lw[i][v].tolist(),
                              trust[v].tolist(), beta)
            assert got[i] == pytest.approx(want, rel=1e-12, abs=1e-9), s


@settings(max_examples=200, deadline=None)
@given(c=cells(), shift=st.integers(-10**6, 3 * 10**6), data=st.data())
def test_values_ignore_a_common_time_shift_and_the_order_of_origins(
        c: tuple[np.ndarray, ...], shift: int, data: st.DataObject) -> None:
    """A common shift of every log-weight (reading later) and permuting origins change nothing."""
    q, lw, valid, trust = c
    perm = np.array(data.draw(st.permutations(range(q.shape[1]))), np.int64)
    for s in ALL:
        base = s.combine(q, lw, valid, trust)
        np.testing.assert_array_equal(s.combine(q, lw + shift, valid, trust), base)
        np.testing.assert_allclose(s.combine(q[:, perm], lw[:, perm], valid[:, perm], trust[perm]),
                                   base, rtol=1e-12, atol=1e-9)
        q64 = q.astype(np.float64)
        lo = np.where(valid, q64, np.inf).min(axis=1, initial=np.inf)
        hi = np.where(valid, q64, -np.inf).max(axis=1, initial=-np.inf)
        some = valid.any(axis=1)
        slack = 1e-12 * np.maximum(1.0, np.abs(q64).max(axis=1, initial=0.0))
        assert (base[some] >= lo[some] - slack[some]).all() and (base[some] <= hi[some] + slack[some]).all()


@pytest.mark.parametrize("strategy", ALL, ids=_label)
def test_trust_per_cell_and_origin_equals_trust_per_origin_broadcast(strategy: MergeStrategy) -> None:
    """combine accepts trust as [k] or [m, k]: the same trust repeated per cell gives the same values."""
    trust = np.array([0.5, 2.0, 1.0])
    per_origin = strategy.combine(Q, LW, VALID, trust, default=-1.5)
    per_cell = strategy.combine(Q, LW, VALID, np.tile(trust, (Q.shape[0], 1)), default=-1.5)
    np.testing.assert_allclose(per_cell, per_origin, rtol=1e-15)


def test_weighted_average_uses_each_cells_own_trust_row() -> None:
    """With [m, k] trust, every cell is weighted by its own row."""
    q = np.array([[1.0, 3.0], [1.0, 3.0]])
    lw = np.zeros((2, 2))
    valid = np.ones((2, 2), bool)
    got = WeightedAverage().combine(q, lw, valid, np.array([[1.0, 1.0], [1.0, 3.0]]))
    np.testing.assert_allclose(got, [2.0, (1 + 9) / 4], rtol=1e-15)
