"""Learning works, and federating pays (DESIGN §2–3).

1. One QTable finds the optimal greedy policy of a small deterministic MDP
   (compared with value iteration).
2. Eight QTables on a virtual clock, exchanging deltas every 10 steps, reach the
   Taxi-v4 target in fewer than a quarter of the steps per agent that one
   QTable needs alone (the reference experiment in shared/reference gives ~1/6).

Environments are stepped from their transition tables (``env.unwrapped.P``,
extracted once), the way the reference experiment does: gymnasium's env
objects would cost more than the learning.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from peerd.qtable import QTable
from peerd.task import Task

SECRET = "learning-tests"


class VirtualClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def value_iteration(ns: np.ndarray, rw: np.ndarray, term: np.ndarray, gamma: float) -> np.ndarray:
    """Optimal Q of a deterministic MDP given as next-state, reward and terminal tables [S, A]."""
    q = np.zeros(ns.shape)
    for _ in range(10_000):
        q2 = rw + gamma * np.where(term, 0.0, q.max(axis=1)[ns])
        if np.abs(q2 - q).max() < 1e-12:
            return q2
        q = q2
    raise AssertionError("value iteration did not converge")


# ----------------------------------------------------------------------------- a small MDP


def chain(n: int = 6, loop_reward: float = 0.12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """States 0..n-1, n-1 terminal. right: s+1 (reward 1 on reaching n-1); left: s-1, at 0 stay
    and get loop_reward.

    With γ = 0.9 the optimal policy is mixed: loop at the left end from the
    first states, run right from the last ones.
    """
    ns = np.zeros((n, 2), np.int64)
    rw = np.zeros((n, 2))
    term = np.zeros((n, 2), bool)
    for s in range(n):
        ns[s, 0] = max(s - 1, 0)
        rw[s, 0] = loop_reward if s == 0 else 0.0
        ns[s, 1] = min(s + 1, n - 1)
        rw[s, 1] = 1.0 if s + 1 == n - 1 else 0.0
        term[s, 1] = s + 1 == n - 1
    return ns, rw, term


def test_a_single_qtable_learns_the_optimal_policy_of_a_small_mdp() -> None:
    """On a 6-state chain the greedy policy equals value iteration's, and Q is close to Q*."""
    gamma = 0.9
    ns, rw, term = chain()
    q_star = value_iteration(ns, rw, term, gamma)
    optimal = q_star[:5].argmax(axis=1)
    assert optimal.tolist() == [0, 0, 0, 1, 1]  # a policy that is not trivially "always right"

    clock = VirtualClock()
    table = QTable(Task(["left", "right"], gamma=gamma), "solo", secret=SECRET, half_life=100.0,
                   clock=clock, seed=0, policy_options={"start": 1.0, "end": 0.3, "decay_steps": 2000})
    rng = np.random.default_rng(0)
    s, steps = int(rng.integers(0, 5)), 0
    for _ in range(4000):
        a = table.act(s)
        s2, r, done = int(ns[s, a]), float(rw[s, a]), bool(term[s, a])
        table.learn(s, a, r, s2, done)
        clock.t += 1
        steps += 1
        if done or steps >= 30:
            s, steps = int(rng.integers(0, 5)), 0
        else:
            s = s2
    keys = np.array([table.key(x) for x in range(5)], np.uint64)
    assert table.greedy(keys).tolist() == optimal.tolist()
    learned = np.array([table.values(x) for x in range(5)])
    np.testing.assert_allclose(learned, q_star[:5], atol=0.05)


# ----------------------------------------------------------------------------- Taxi


class Tabular:
    """A deterministic gymnasium toy-text env as arrays: reset distribution, next state, reward, done."""

    def __init__(self, env_id: str) -> None:
        import gymnasium as gym

        env = gym.make(env_id)
        u = env.unwrapped
        n_s, n_a = u.observation_space.n, u.action_space.n
        self.ns = np.zeros((n_s, n_a), np.int64)
        self.rw = np.zeros((n_s, n_a))
        self.term = np.zeros((n_s, n_a), bool)
        for s in range(n_s):
            for a in range(n_a):
                ((p, s2, r, d),) = u.P[s][a]  # deterministic: one outcome
                assert p == 1.0
                self.ns[s, a], self.rw[s, a], self.term[s, a] = s2, r, d
        init = np.asarray(u.initial_state_distrib, float)
        self.init_cum = np.cumsum(init / init.sum())
        self.n_states, self.n_actions = n_s, n_a
        self.max_steps = env.spec.max_episode_steps
        # 100 evaluation episodes with fixed seeds: gymnasium's own resets
        self.eval_starts = np.array([env.reset(seed=i)[0] for i in range(100)], np.int64)
        self.env = env

    def start(self, rng: np.random.Generator) -> int:
        return int(min(np.searchsorted(self.init_cum, rng.random(), side="right"), self.n_states - 1))

    def evaluate(self, policy: np.ndarray, cap: int = 200) -> float:
        """Mean return of the greedy ``policy[state]`` over the fixed evaluation episodes."""
        s = self.eval_starts.copy()
        ret = np.zeros(s.shape[0])
        alive = np.ones(s.shape[0], bool)
        for _ in range(cap):
            a = policy[s]
            ret += self.rw[s, a] * alive
            alive &= ~self.term[s, a]
            s = self.ns[s, a]
            if not alive.any():
                break
        return float(ret.mean())


@functools.cache
def taxi() -> Tabular:
    return Tabular("Taxi-v4")


def test_the_tabular_taxi_replays_gymnasium() -> None:
    """The extracted tables step exactly like gymnasium's Taxi-v4 (transitions, rewards, termination)."""
    t = taxi()
    rng = np.random.default_rng(1)
    s, _ = t.env.reset(seed=7)
    for _ in range(300):
        a = int(rng.integers(0, t.n_actions))
        s2, r, terminated, truncated, _ = t.env.step(a)
        assert (t.ns[s, a], t.rw[s, a], t.term[s, a]) == (s2, r, terminated)
        s = s2
        if terminated or truncated:
            s, _ = t.env.reset(seed=int(rng.integers(0, 1000)))


TARGET = 7.0
EVAL_EVERY = 250


def steps_to_target(n_agents: int, seed: int, cap: int) -> float:
    """Steps per agent until agent 0's greedy policy reaches TARGET (inf if not within ``cap``)."""
    env = taxi()
    clock = VirtualClock()
    task = Task(env.n_actions, gamma=0.99, name="taxi")
    tables = [QTable(task, f"node{i}", secret=SECRET, half_life=200.0, clock=clock,
                     seed=1000 * seed + i,
                     policy_options={"start": 1.0, "end": 0.05, "decay_steps": 2000})
              for i in range(n_agents)]
    keys = np.array([tables[0].key(s) for s in range(env.n_states)], np.uint64)
    rng = np.random.default_rng(seed)
    state = [env.start(rng) for _ in tables]
    ep_len = [0] * n_agents
    seen = [[0] * n_agents for _ in tables]  # seen[i][j]: version of j last applied by i
    ns, rw, term = env.ns, env.rw, env.term
    for step in range(1, cap + 1):
        for i, table in enumerate(tables):
            s = state[i]
            a = table.act(s)
            s2, done = int(ns[s, a]), bool(term[s, a])
            table.learn(s, a, float(rw[s, a]), s2, done)
            ep_len[i] += 1
            if done or ep_len[i] >= env.max_steps:  # truncation: bootstrapped, then reset
                state[i], ep_len[i] = env.start(rng), 0
            else:
                state[i] = s2
        clock.t += 1  # one tick per step of every node
        if n_agents > 1 and step % 10 == 0:
            for i, table in enumerate(tables):
                for j, other in enumerate(tables):
                    if i != j:
                        table.apply(other.delta(since=seen[i][j]))
                        seen[i][j] = other.version
        if step % EVAL_EVERY == 0 and env.evaluate(tables[0].greedy(keys)) >= TARGET:
            return float(step)
    return float("inf")


@pytest.mark.slow
def test_eight_federated_qtables_learn_taxi_over_four_times_faster() -> None:
    """8 nodes syncing every 10 steps need < 1/4 of the steps per agent of 1 node (median of 3 seeds)."""
    seeds = (0, 1, 2)
    alone = [steps_to_target(1, seed, cap=150_000) for seed in seeds]
    assert all(np.isfinite(alone)), f"one QTable alone did not reach {TARGET}: {alone}"
    # a federated run slower than a quarter of the slowest lone run fails anyway: stop there
    fed_cap = int(max(alone)) // 4
    fed = [steps_to_target(8, seed, cap=fed_cap) for seed in seeds]
    speedup = float(np.median(alone) / np.median(fed))
    report = f"steps per agent: N=1 {alone}, N=8 {fed}, median speedup {speedup:.2f}x"
    print(report)
    assert np.median(fed) < np.median(alone) / 4, report
