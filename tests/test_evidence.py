"""The evidence budget: a delta adds at most its version range in visits, weights and rates are bounded."""

from __future__ import annotations

import math

import numpy as np
import pytest

from peerd.errors import EvidenceBudgetExceeded, InvalidDelta, VersionRateExceeded
from peerd.evidence import VersionRate, check_budget, visit_budget


def _check(n_new, lw_new, n_held, lw_held, *, frm=10, to=20, held=10, now=100.0, replaces=None):
    m = len(n_new)
    return check_budget("liar", frm, to, held, n_new=np.array(n_new), lw_new=np.array(lw_new, float),
                        n_held=np.array(n_held), lw_held=np.array(lw_held, float),
                        replaces=np.ones(m, bool) if replaces is None else np.array(replaces),
                        now_over_h=now)


def test_visit_budget_covers_a_gap_and_never_goes_negative():
    assert visit_budget(10, 20, 10) == 10
    assert visit_budget(10, 20, 4) == 16  # the gap (4, 10] is in this delta's cells too
    assert visit_budget(10, 20, 15) == 10  # overlap: the range itself bounds it
    assert visit_budget(30, 20, 25) == 0


def test_an_honest_delta_fits_its_budget():
    # 10 versions: 3 visits to a held cell, 7 to a new one, each as fresh as now at most
    held_lw = 100.0 + math.log2(2.0)  # two visits' worth at "now"
    lw1 = math.log2(2.0 + 3.0) + 100.0
    lw2 = math.log2(7.0) + 100.0
    assert _check([5, 7], [lw1, lw2], [2, 0], [held_lw, -np.inf]) == 10


def test_more_visits_than_versions_is_rejected_with_a_reason():
    with pytest.raises(EvidenceBudgetExceeded) as e:
        _check([1005], [100.0], [5], [99.0])
    assert e.value.reason == "evidence_budget" and isinstance(e.value, InvalidDelta)


def test_a_version_bump_without_a_visit_is_rejected():
    with pytest.raises(EvidenceBudgetExceeded, match="without a new visit"):
        _check([5], [99.0], [5], [99.0])


def test_more_weight_than_the_new_visits_can_carry_is_rejected():
    # one new visit on an empty cell may weigh at most 2^now: claiming 4 fresh visits' weight is a lie
    with pytest.raises(EvidenceBudgetExceeded, match="log-weight"):
        _check([1], [100.0 + 2.0], [0], [-np.inf])
    assert _check([1], [100.0 - 1e-9], [0], [-np.inf]) == 1


def test_cells_that_would_not_replace_cost_nothing():
    # a stale duplicate (not newer than what is held) is not counted, whatever it claims
    assert _check([10**6], [500.0], [3], [1.0], replaces=[False]) == 0


def test_version_rate_allows_a_burst_then_the_cap():
    vr = VersionRate(cap=10.0, multiple=100.0, burst=50, floor=0.0)
    vr.observe("p", 1000, now=0.0)  # the history at first sight is free
    vr.check("p", 1050, now=0.0)
    with pytest.raises(VersionRateExceeded) as e:
        vr.check("p", 1051, now=0.0)
    assert e.value.reason == "version_rate"
    vr.check("p", 1150, now=10.0)  # 10/s × 10 s + burst


def test_version_rate_follows_a_multiple_of_the_federations_median():
    vr = VersionRate(cap=1e9, multiple=4.0, burst=10, floor=0.0)
    for peer in ("a", "b", "c"):
        vr.observe(peer, 0, now=0.0)
        vr.observe(peer, 100, now=100.0)  # 1 version per second
    vr.observe("liar", 0, now=0.0)
    vr.check("liar", 4 * 200 + 10, now=200.0)
    with pytest.raises(VersionRateExceeded):
        vr.check("liar", 4 * 200 + 11, now=200.0)


def test_version_rate_floor_keeps_an_idle_federation_from_freezing_its_busy_node():
    vr = VersionRate(cap=1e9, multiple=4.0, burst=0, floor=50.0)
    for peer in ("a", "b"):
        vr.observe(peer, 0, now=0.0)
        vr.observe(peer, 0, now=100.0)  # idle: median rate 0
    vr.observe("busy", 0, now=0.0)
    vr.check("busy", 5000, now=100.0)
    assert vr.limit() == pytest.approx(50.0)


def test_version_rate_median_is_computed_once_per_refresh_not_once_per_delta():
    """A check must not cost O(peers): the median is cached for ``refresh`` seconds."""
    vr = VersionRate(cap=1e9, multiple=4.0, burst=0, floor=0.0, refresh=1.0)
    for i in range(500):
        vr.observe(f"p{i}", 0, now=0.0)
        vr.observe(f"p{i}", 100, now=100.0)  # median 1 version/s
    calls = 0
    rate = vr.rate

    def counting(peer: str) -> float | None:
        nonlocal calls
        calls += 1
        return rate(peer)

    vr.rate = counting  # type: ignore[method-assign]
    for i in range(200):  # 200 deltas within one second: one median, not 200
        vr.check(f"p{i}", 400, now=100.0 + i / 1000)
    assert calls <= 2 * 500
    with pytest.raises(VersionRateExceeded):
        vr.check("p0", 403, now=100.5)  # limit 4/s × 100.5 s = 402
    # the cache expires: after a second, a faster federation raises the limit
    for i in range(500):
        vr.observe(f"p{i}", 300, now=101.0)
    vr.check("p0", 1200, now=101.5)
    assert calls > 500


def test_held_visits_plus_new_ones_never_exceed_the_newest_version():
    """Sound in any delivery order: a deferred cell brings older visits, never more visits than versions."""
    kw = dict(now_over_h=100.0, replaces=np.array([True]), lw_new=np.array([99.0]),
              lw_held=np.array([-np.inf]), n_held=np.array([0]))
    # a cell first seen in (10, 20] with 3 visits from versions 4, 12, 15: fine when 10 others are held
    assert check_budget("p", 10, 20, 10, n_new=np.array([3]), v_new=np.array([15]),
                        v_held=np.array([0]), held_total=10, top_version=10, **kw) == 3
    with pytest.raises(EvidenceBudgetExceeded, match="would hold"):
        check_budget("p", 10, 20, 10, n_new=np.array([11]), v_new=np.array([15]),
                     v_held=np.array([0]), held_total=10, top_version=10, **kw)
    with pytest.raises(EvidenceBudgetExceeded, match="more visits than versions"):
        check_budget("p", 10, 20, 10, n_new=np.array([3]), v_new=np.array([12]),
                     v_held=np.array([10]), held_total=0, top_version=10,
                     **{**kw, "n_held": np.array([0])})


def test_version_rate_limit_is_computed_once_per_refresh_window():
    """The O(peers) median is reused by check() for ``refresh`` seconds, then recomputed."""
    vr = VersionRate(cap=1e9, multiple=1.0, burst=0, floor=0.0, refresh=1.0)
    for peer in ("a", "b", "c"):
        vr.observe(peer, 0, now=0.0)
        vr.observe(peer, 100, now=100.0)  # 1 version/s
    vr.observe("p", 0, now=0.0)
    vr.check("p", 100, now=100.0)  # computes and keeps 1/s
    for peer in ("a", "b", "c"):
        vr.observe(peer, 300, now=100.5)  # the median jumps to ~3/s
    with pytest.raises(VersionRateExceeded):
        vr.check("p", 101, now=100.5)  # still the kept 1/s
    vr.check("p", 200, now=101.0)  # a second later: recomputed
    assert vr.limit() == pytest.approx(300 / 100.5)
