"""Newcomer probation: a new origin weighs nothing until it passes deviation rounds; bounded."""

from __future__ import annotations

import pytest

from peerd.probation import WEIGHT, Probation
from peerd.quarantine import Verdict


def _v(origin: str, score: float | None, quarantined: bool = False, ratio: float = 1.0,
       cells: int = 100) -> Verdict:
    return Verdict(origin, score, None if score is None else ratio, cells, quarantined)


def test_newcomer_is_released_after_passing_rounds_within_consensus():
    p = Probation(rounds=2)
    assert p.admit("a")
    assert not p.admit("a")  # already there: one entry
    assert "a" in p and len(p) == 1
    assert p.judge({"a": _v("a", 0.5)}) == ([], [])
    assert "a" in p
    assert p.judge({"a": _v("a", 0.4)}) == (["a"], [])
    assert "a" not in p and p.released == 1


def test_a_round_near_the_threshold_or_on_few_cells_does_not_release():
    p = Probation(rounds=1, pass_ratio=1.5, release_cells=60)
    p.admit("a")
    assert p.judge({"a": _v("a", 2.0, ratio=2.5)}) == ([], [])  # not quarantined, not clearly in
    assert p.judge({"a": _v("a", 0.5, cells=20)}) == ([], [])  # passed, but on too few cells
    assert "a" in p
    assert p.judge({"a": _v("a", 0.5, cells=60)}) == (["a"], [])
    small = Probation(rounds=1, release_cells=60)
    small.admit("b")  # a small task: never 60 shared cells; more passed rounds instead
    assert small.judge({"b": _v("b", 0.5, cells=20)}) == ([], [])
    assert small.judge({"b": _v("b", 0.5, cells=20)}) == ([], [])
    assert small.judge({"b": _v("b", 0.5, cells=20)}) == (["b"], [])


def test_quarantined_newcomer_fails_and_leaves_probation_for_the_quarantine():
    p = Probation(rounds=2)
    p.admit("x")
    assert p.judge({"x": _v("x", 9.0, quarantined=True)}) == ([], ["x"])
    assert "x" not in p and p.failed == 1 and p.released == 0


def test_a_newcomer_never_quarantined_is_released_after_max_rounds_trust_rounds():
    p = Probation(rounds=2, max_rounds=3)
    p.admit("a")
    p.admit("b")
    for _ in range(5):  # extra rounds (between trust rounds) do not count toward the bound
        assert p.judge({"b": _v("b", 2.0, ratio=2.5)}, periodic=False) == ([], [])
    assert p.judge({"a": _v("a", None), "b": _v("b", 2.0, ratio=2.5)}) == ([], [])
    assert p.judge({}) == ([], [])
    assert sorted(p.judge({"b": _v("b", 2.0, ratio=2.5)})[0]) == ["a", "b"]
    assert not len(p)


def test_weigh_caps_only_origins_on_probation():
    p = Probation()
    p.admit("new")
    w = p.weigh({"new": 1.5, "old": 1.5})
    assert w["new"] == pytest.approx(WEIGHT)
    assert w["old"] == pytest.approx(1.5)


def test_due_after_one_delta_per_probationer():
    p = Probation()
    p.admit("a")
    p.admit("b")
    p.note_delta("old")  # not on probation: does not count
    p.note_delta("a")
    assert not p.due()
    p.note_delta("b")
    assert p.due()
    p.judge({})
    assert not p.due()  # a round resets the count


def test_off_admits_nobody_and_release_all_empties():
    off = Probation(rounds=0)
    assert not off.enabled and not off.admit("a")
    p = Probation()
    p.admit("a")
    p.admit("b")
    assert sorted(p.release_all()) == ["a", "b"] and not len(p)
    p.admit("c")
    p.forget("c")
    assert "c" not in p


def test_bad_settings_raise():
    with pytest.raises(ValueError):
        Probation(rounds=-1)
    with pytest.raises(ValueError):
        Probation(max_rounds=0)
