"""weighted_median: evidence-weighted, robust to a minority of weight, the plain median at equal weights."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerd.robust_strategy import WeightedMedian, weighted_median
from peerd.strategies import STRATEGIES, make_strategy


def test_registered_by_name():
    assert isinstance(make_strategy("weighted_median"), WeightedMedian)
    assert STRATEGIES["weighted_median"] is WeightedMedian


def test_fresh_evidence_outvotes_stale_origins():
    # one fresh origin (lw 10) against three stale ones (lw 0): the plain median would pick 1.0
    q = np.array([[1.0, 1.0, 1.0, 7.0]])
    lw = np.array([[0.0, 0.0, 0.0, 10.0]])
    assert weighted_median(q, lw, np.ones_like(q, bool), np.ones(4))[0] == pytest.approx(7.0)


def test_a_minority_of_weight_cannot_move_it_past_the_honest_values():
    q = np.array([[1.0, 1.1, 0.9, -2000.0, -2000.0]])
    lw = np.zeros((1, 5))
    out = weighted_median(q, lw, np.ones_like(q, bool), np.ones(5))[0]
    assert 0.9 - 1e-12 <= out <= 1.1 + 1e-12


def test_default_where_nothing_is_valid_and_trust_per_cell():
    q = np.array([[3.0, 5.0], [2.0, 4.0]])
    valid = np.array([[False, False], [True, True]])
    trust = np.array([[1.0, 1.0], [1.0, 3.0]])  # [m, k]: the second origin weighs 3× in row 1
    out = weighted_median(q, np.zeros((2, 2)), valid, trust, default=-1.5)
    assert out[0] == pytest.approx(-1.5)
    assert out[1] == pytest.approx(4.0)


def test_even_split_takes_the_midpoint():
    out = weighted_median(np.array([[1.0, 3.0]]), np.zeros((1, 2)), np.ones((1, 2), bool), np.ones(2))
    assert out[0] == pytest.approx(2.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-100, 100), min_size=1, max_size=9))
def test_equal_weights_give_the_plain_median(values):
    q = np.array([values])
    out = weighted_median(q, np.zeros_like(q), np.ones_like(q, bool), np.ones(q.shape[1]))[0]
    assert out == pytest.approx(float(np.median(values)), abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(-50, 50), st.floats(-5, 5)), min_size=1, max_size=8))
def test_result_is_within_the_valid_values(cells):
    q = np.array([[c[0] for c in cells]])
    lw = np.array([[c[1] for c in cells]])
    out = weighted_median(q, lw, np.ones_like(q, bool), np.ones(q.shape[1]))[0]
    assert q.min() - 1e-9 <= out <= q.max() + 1e-9


def test_clipped_mean_is_the_weighted_average_when_values_agree_and_bounds_outliers():
    from peerd.robust_strategy import ClippedMean, clipped_mean

    assert isinstance(make_strategy("clipped_mean:2.5"), ClippedMean)
    assert make_strategy("clipped_mean:2.5").k == pytest.approx(2.5)
    q = np.array([[1.0, 1.2, 0.8, 1.1]])
    lw = np.array([[0.0, 1.0, 0.0, 0.0]])
    wavg = (1.0 + 2 * 1.2 + 0.8 + 1.1) / 5
    assert clipped_mean(q, lw, np.ones_like(q, bool), np.ones(4))[0] == pytest.approx(wavg)
    liars = np.array([[1.0, 1.2, 0.8, 1.1, -2000.0, -2000.0]])
    out = clipped_mean(liars, np.zeros((1, 6)), np.ones((1, 6), bool), np.ones(6))[0]
    assert 0.0 < out < 1.2
