"""Action selection: ε-greedy with decay, UCB1, Thompson sampling, random greedy tie-break (DESIGN §3)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from peerd.policy import UCB1, EpsilonGreedy, Policy, Thompson, make_policy
from peerd.qtable import QTable
from peerd.task import Task


def counts(policy: Policy, trials: int, values: list[float], visits: list[int] | None = None,
           succ: list[int] | None = None, fail: list[int] | None = None, step: int = 0,
           explore: bool = True) -> Counter[int]:
    v = np.array(values, np.float64)
    n = np.array(visits, np.uint64) if visits is not None else np.zeros(len(values), np.uint64)
    s = np.array(succ, np.uint64) if succ is not None else np.zeros(len(values), np.uint64)
    f = np.array(fail, np.uint64) if fail is not None else np.zeros(len(values), np.uint64)
    return Counter(policy.choose(v, n, s, f, step, explore) for _ in range(trials))


def test_epsilon_decays_linearly_then_stays() -> None:
    """ε goes from start to end over decay_steps decisions, then stays at end."""
    p = EpsilonGreedy(start=1.0, end=0.05, decay_steps=2000)
    assert p.epsilon(0) == 1.0
    assert p.epsilon(1000) == pytest.approx(0.525)
    assert p.epsilon(2000) == pytest.approx(0.05) and p.epsilon(10**6) == pytest.approx(0.05)
    assert [p.epsilon(s) for s in range(0, 2001, 100)] == sorted(
        [p.epsilon(s) for s in range(0, 2001, 100)], reverse=True)


def test_epsilon_greedy_explores_early_and_exploits_late() -> None:
    """At ε=1 every action is tried about equally; at ε=0.05 the best one is taken ~97% of the time."""
    p = EpsilonGreedy(1.0, 0.05, 2000, seed=3)
    early = counts(p, 3000, [0.0, 10.0, 0.0], step=0)
    assert all(800 < early[a] < 1200 for a in range(3))
    late = counts(p, 3000, [0.0, 10.0, 0.0], step=5000)
    assert late[1] / 3000 == pytest.approx(0.95 + 0.05 / 3, abs=0.02)
    assert counts(p, 200, [0.0, 10.0, 0.0], step=0, explore=False) == Counter({1: 200})


def test_greedy_breaks_ties_at_random_and_reproducibly() -> None:
    """Equal best values are chosen at random (never a worse action); the same seed repeats choices."""
    c = counts(EpsilonGreedy(0.0, 0.0, seed=1), 400, [1.0, 1.0, 0.0])
    assert set(c) == {0, 1} and min(c.values()) > 120
    z4 = np.zeros(4, np.uint64)
    p1, p2 = EpsilonGreedy(seed=9), EpsilonGreedy(seed=9)
    seq1 = [p1.choose(np.zeros(4), z4, z4, z4, s) for s in range(50)]
    seq2 = [p2.choose(np.zeros(4), z4, z4, z4, s) for s in range(50)]
    assert seq1 == seq2 and len(set(seq1)) == 4


def test_ucb1_tries_every_unvisited_arm_first() -> None:
    """UCB1 picks only unvisited arms while there are any, whatever the values."""
    p = UCB1(seed=0)
    assert counts(p, 100, [9.0, 0.0, 5.0], visits=[5, 0, 3]) == Counter({1: 100})
    c = counts(p, 300, [9.0, 0.0, 5.0], visits=[0, 0, 4])
    assert set(c) == {0, 1}


def test_ucb1_balances_value_and_uncertainty() -> None:
    """With all arms visited, the bonus c·sqrt(ln N / n) lets a rarely tried arm beat a better one."""
    p = UCB1(seed=0)
    assert counts(p, 20, [1.0, 0.9], visits=[1000, 2]) == Counter({1: 20})
    assert counts(p, 20, [1.0, 0.0], visits=[1000, 1000]) == Counter({0: 20})
    assert counts(p, 20, [1.0, 0.9], visits=[1000, 2], explore=False) == Counter({0: 20})


def test_thompson_prefers_the_arm_with_the_better_beta_posterior() -> None:
    """Beta(succ+1, fail+1) samples favour 90/10 over 10/90 almost always; ties in evidence split."""
    p = Thompson(seed=4)
    c = counts(p, 500, [0.0, 0.0], succ=[90, 10], fail=[10, 90])
    assert c[0] >= 495
    close = counts(p, 1000, [0.0, 0.0], succ=[5, 5], fail=[5, 5])
    assert 350 < close[0] < 650
    # without exploration: the posterior mean, (s+1)/(s+f+2)
    assert counts(p, 50, [0.0, 0.0], succ=[3, 30], fail=[0, 10], explore=False) == Counter({0: 50})


def test_make_policy_by_name_with_options() -> None:
    """Names map to classes, options go to the constructor, instances pass through, unknown names raise."""
    p = make_policy("epsilon_greedy", seed=1, start=0.5, end=0.1, decay_steps=10)
    assert isinstance(p, EpsilonGreedy) and (p.start, p.end, p.decay_steps) == (0.5, 0.1, 10)
    assert isinstance(make_policy("ucb1"), UCB1) and isinstance(make_policy("thompson"), Thompson)
    q = UCB1()
    assert make_policy(q) is q
    with pytest.raises(ValueError):
        make_policy("softmax")
    with pytest.raises(ValueError):
        EpsilonGreedy(start=0.1, end=0.5)


def test_qtable_policies_act_on_the_merged_view() -> None:
    """A QTable's UCB1 tries each action of a state once, then Thompson follows observed successes."""
    t = QTable(Task(3), "me", secret="s", policy="ucb1", seed=0, clock=lambda: 0.0)
    tried = []
    for _ in range(3):
        a = t.act("ctx")
        tried.append(a)
        t.learn("ctx", a, 0.0)
    assert sorted(tried) == [0, 1, 2]
    b = QTable(Task(2), "me", secret="s", policy="thompson", seed=0, clock=lambda: 0.0)
    for _ in range(30):
        b.learn("ctx", 1, 1.0, success=True)
        b.learn("ctx", 0, 0.0, success=False)
    assert Counter(b.act("ctx") for _ in range(100))[1] >= 98
    e = QTable(Task(3), "me", secret="s", seed=0, clock=lambda: 0.0,
               policy_options={"start": 1.0, "end": 0.0, "decay_steps": 10})
    e.learn("s", 2, 5.0)
    for _ in range(10):
        e.act("s")
    assert e.steps == 10
    assert Counter(e.act("s") for _ in range(50)) == Counter({2: 50})  # ε reached 0
    assert e.act("s", explore=False) == 2 and e.steps == 60
