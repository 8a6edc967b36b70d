"""The attack suite's lies: pure transforms of honest cells, always within q_bound."""

from __future__ import annotations

import numpy as np
import pytest

from peerd.sim.attacks import (
    ATTACKS,
    EXTREME_SHARE,
    INFLATE_VISITS,
    AttackSpec,
    focus_cells,
    inflated_evidence,
    lie_values,
    spread,
)

MU = np.array([2.0, -4.0, 10.0, 0.5])
SIGMA = np.array([1.0, 1.0, 3.0, 0.0])
KEYS = np.array([7, 7, 8, 9], np.uint64)
ACTS = np.array([0, 1, 2, 3], np.uint16)


def test_parse_kind_count():
    assert AttackSpec.parse("invert:2") == AttackSpec("invert", 2)
    assert AttackSpec.parse("sybil") == AttackSpec("sybil", 1)
    with pytest.raises(ValueError, match="unknown attack"):
        AttackSpec.parse("gaslight:2")
    with pytest.raises(ValueError, match="COUNT"):
        AttackSpec.parse("invert:two")


@pytest.mark.parametrize("kind", ATTACKS)
def test_every_lie_stays_within_q_bound(kind):
    q = lie_values(kind, MU * 1000, SIGMA, KEYS, ACTS, n_actions=4, q_bound=100.0)
    assert np.abs(q).max() <= 100.0


def test_values_of_each_lie():
    kw = dict(n_actions=4, q_bound=1000.0)
    assert np.allclose(lie_values("invert", MU, SIGMA, KEYS, ACTS, **kw), -MU)
    assert np.allclose(lie_values("ipm", MU, SIGMA, KEYS, ACTS, **kw), -0.1 * MU)
    assert np.allclose(lie_values("alie", MU, SIGMA, KEYS, ACTS, **kw), MU - SIGMA)
    ext = lie_values("extreme", MU, SIGMA, KEYS, ACTS, **kw)
    favoured = (KEYS % np.uint64(4)).astype(int) == ACTS.astype(int)  # key 7 → action 3, 8 → 0, 9 → 1
    assert np.allclose(ext, MU + np.where(favoured, EXTREME_SHARE * 1000.0, 0.0))


def test_inflate_claims_more_visits_at_the_guards_ceiling():
    n, lw = inflated_evidence(np.array([1, 5], np.uint32), now_over_h=10.0, visit_cap=1000)
    assert n.tolist() == [1 + INFLATE_VISITS, 5 + INFLATE_VISITS]
    assert np.all(lw < np.log2(1000) + 10.0) and np.all(lw > np.log2(1000) + 10.0 - 0.01)


def test_focus_rotates_its_budget_over_the_busiest_cells():
    keys = np.arange(100, dtype=np.uint64)
    acts = np.zeros(100, np.uint16)
    visits = np.arange(100)  # the busiest are the highest keys
    k1, _ = focus_cells(keys, acts, visits, budget=10, start=0, cells=20)
    k2, _ = focus_cells(keys, acts, visits, budget=10, start=10, cells=20)
    assert len(set(k1.tolist()) | set(k2.tolist())) == 20
    assert min(k1.min(), k2.min()) >= 80
    assert focus_cells(keys, acts, visits, budget=0, start=0)[0].shape == (0,)


def test_spread_is_the_weighted_mean_and_std():
    q = np.array([[1.0, 3.0, 100.0]])
    w = np.array([[1.0, 1.0, 5.0]])
    valid = np.array([[True, True, False]])
    mu, sd = spread(q, w, valid)
    assert mu[0] == pytest.approx(2.0) and sd[0] == pytest.approx(1.0)
