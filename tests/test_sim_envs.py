"""Environment side of ``peerd sim``: Gymnasium dynamics, evaluation, bandit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from peerd.sim.bandit import BanditBatch, make_routing, success_probs
from peerd.sim.envs import (
    ALIASES,
    EnvBatch,
    EnvSpec,
    evaluate,
    load_env,
    make_batch,
    make_gym_env,
    optimal_policy,
    transition,
)

GYM_ALIASES = ["taxi", "frozenlake8x8", "cliffwalking", "frozenlake"]
ALL_ALIASES = [*GYM_ALIASES, "routing"]


def _replay_against_gym(spec: EnvSpec, seeds: list[int], steps: int, action_seed: int) -> int:
    """Step EnvBatch and real gym envs with the same seeds and actions; return episodes seen."""
    batch = EnvBatch(spec, seeds)
    envs = [make_gym_env(spec, s) for s in seeds]
    assert batch.reset().tolist() == [e.reset()[0] for e in envs]
    rng = np.random.default_rng(action_seed)
    episodes = 0
    for _ in range(steps):
        actions = rng.integers(0, spec.n_actions, len(seeds))
        s2, r, term, trunc = batch.step(actions)
        for i, env in enumerate(envs):
            obs, rew, te, tr, _ = env.step(int(actions[i]))
            assert (obs, float(rew), te, tr) == (s2[i], r[i], term[i], trunc[i])
            if te or tr:
                obs, _ = env.reset()
                episodes += 1
            assert obs == batch.states[i]
    return episodes


@pytest.mark.parametrize("name", GYM_ALIASES)
def test_dynamics_replay_gymnasium_draw_for_draw(name: str) -> None:
    """An instance seeded s reproduces gym.make(...).reset(seed=s) exactly: states, rewards, flags, resets."""
    spec = load_env(name)
    episodes = _replay_against_gym(spec, [3, 17, 99], steps=300, action_seed=1)
    assert episodes > 0  # auto-reset was exercised


def test_time_limit_truncation_matches_gymnasium() -> None:
    """Truncation comes at max_steps as in Gymnasium's TimeLimit (CliffWalking never ends going up)."""
    spec = load_env("cliffwalking")
    batch, env = EnvBatch(spec, [5]), make_gym_env(spec, 5)
    batch.reset()
    env.reset()
    up = spec.action_names.index("up")
    for t in range(1, spec.max_steps + 1):
        _, r, term, trunc = batch.step(np.array([up]))
        _, gr, gte, gtr, _ = env.step(up)
        assert (term[0], trunc[0], r[0]) == (gte, gtr, gr)
        assert trunc[0] == (t == spec.max_steps)
    assert batch.episodes[0] == 1 and batch.episode_steps[0] == 0


def test_slippery_outcome_probabilities_match_P() -> None:
    """For every (s, a) of slippery FrozenLake8x8 the sampled outcomes and masses are gym's P."""
    spec = load_env("frozenlake8x8")
    P = make_gym_env(spec).unwrapped.P
    grid = (np.arange(6000) + 0.5) / 6000  # uniforms spread evenly over [0, 1)
    for s in range(spec.n_states):
        for a in range(spec.n_actions):
            s2, r, term = transition(spec, np.full(grid.size, s), np.full(grid.size, a), grid)
            got: dict[tuple[int, float, bool], float] = {}
            for key in zip(s2.tolist(), r.tolist(), term.tolist(), strict=True):
                got[key] = got.get(key, 0.0) + 1 / grid.size
            want: dict[tuple[int, float, bool], float] = {}
            for p, ns, rew, done in P[s][a]:
                want[(ns, float(rew), done)] = want.get((ns, float(rew), done), 0.0) + p
            assert got.keys() == {k for k, p in want.items() if p > 0}
            for k, p in got.items():
                assert abs(p - want[k]) < 1e-3


def test_instance_stream_does_not_depend_on_batch() -> None:
    """A node's environment randomness is its own: same seed, same trajectory in a batch of 1 or of 5."""
    spec = load_env("frozenlake8x8")
    alone, crowd = EnvBatch(spec, [42], block=8), EnvBatch(spec, [1, 2, 42, 3, 4], block=8)
    assert alone.reset()[0] == crowd.reset()[2]
    rng = np.random.default_rng(0)
    for _ in range(200):  # block=8 forces many refills
        acts = rng.integers(0, spec.n_actions, 5)
        a1 = alone.step(acts[2:3])
        a5 = crowd.step(acts)
        assert [x[0] for x in a1] == [x[2] for x in a5]
        assert alone.states[0] == crowd.states[2]


@pytest.mark.parametrize("name", ALL_ALIASES)
def test_optimal_policy_reaches_target_random_does_not(name: str) -> None:
    """Value iteration's policy reaches each alias's target on the eval set; 16 random policies do not."""
    spec = load_env(name)
    opt = evaluate(spec, optimal_policy(spec))
    # the same evaluation twice: equal up to summation order, which differs between CPUs
    assert opt == pytest.approx(spec.optimal_metric, rel=1e-12)
    assert spec.optimal_metric >= spec.target
    rand = np.random.default_rng(7).integers(0, spec.n_actions, (16, spec.n_states))
    assert (evaluate(spec, rand) < spec.target).all()


def test_known_optimal_values() -> None:
    """Measured optima pin the evaluation protocol (same episodes as the reference experiment)."""
    assert load_env("taxi").optimal_metric == pytest.approx(8.31)
    assert load_env("frozenlake8x8").optimal_metric == pytest.approx(0.88)
    assert load_env("cliffwalking").optimal_metric == pytest.approx(-13.0)  # the path along the cliff
    assert load_env("frozenlake").optimal_metric == pytest.approx(0.85)


def test_evaluation_is_deterministic_and_batch_consistent() -> None:
    """Same policy gives the same number every time, alone or inside a batch, and after a fresh load."""
    spec = load_env("frozenlake8x8")
    rng = np.random.default_rng(3)
    pis = np.stack([optimal_policy(spec), *rng.integers(0, 4, (3, spec.n_states))])
    batch = evaluate(spec, pis)
    assert batch.shape == (4,)
    # equal up to summation order (vectorised reductions may add in another order per shape)
    same = dict(rel=1e-12, abs=1e-15)
    assert [evaluate(spec, p) for p in pis] == pytest.approx(batch.tolist(), **same)
    assert evaluate(spec, pis).tolist() == pytest.approx(batch.tolist(), **same)
    fresh = dataclasses.replace(spec)  # rebuilds the eval set from eval_seed
    assert evaluate(fresh, pis).tolist() == pytest.approx(batch.tolist(), **same)
    other_seed = dataclasses.replace(spec, eval_seed=1)
    # the episodes really come from eval_seed
    assert evaluate(other_seed, pis[0]) != pytest.approx(batch[0], **same)


def test_unknown_or_non_tabular_env_is_a_clear_error() -> None:
    """Unknown names list the aliases; continuous or tuple-observation envs are refused as not tabular."""
    with pytest.raises(ValueError, match="taxi, frozenlake8x8, cliffwalking, frozenlake, routing"):
        load_env("no-such-env")
    with pytest.raises(ValueError, match="not tabular"):
        load_env("CartPole-v1")
    with pytest.raises(ValueError, match="not tabular"):
        load_env("Blackjack-v1")
    with pytest.raises(ValueError, match="takes no options"):
        load_env("taxi", map_name="8x8")
    assert set(ALL_ALIASES) == set(ALIASES)


def test_generic_gym_id_gets_model_and_documented_target() -> None:
    """A plain Gymnasium id loads its model, picks its metric, and targets 90 % of the way to optimal."""
    fl = load_env("FrozenLake-v1")
    assert (fl.n_states, fl.n_actions, fl.metric) == (16, 4, "success_rate")
    assert fl.target == pytest.approx(0.9 * fl.optimal_metric)
    assert fl.max_steps == 100  # the registered TimeLimit
    fl8 = load_env("FrozenLake-v1", map_name="8x8")
    assert np.array_equal(fl8.prob, load_env("frozenlake8x8").prob)
    cw = load_env("CliffWalking-v1")
    assert cw.metric == "mean_return" and cw.max_steps == 200  # no registered TimeLimit
    assert cw.target == pytest.approx(-13.0 - 1.3)
    assert load_env("taxi") is load_env("taxi")  # cached, immutable


def test_spec_is_immutable() -> None:
    """Specs are shared between nodes, so neither fields nor model arrays can be changed."""
    spec = load_env("taxi")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.target = 0.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        spec.prob[0, 0, 0] = 0.5
    assert spec.epsilon(0) == 1.0 and spec.epsilon(10**6) == pytest.approx(0.05)
    assert spec.action_names == ("south", "north", "east", "west", "pickup", "dropoff")


def test_batch_rejects_misuse() -> None:
    """Stepping before reset, wrong shapes and out-of-range actions fail loudly, corrupting nothing."""
    spec = load_env("taxi")
    batch = EnvBatch.from_seed(spec, 4, seed=0)
    with pytest.raises(RuntimeError):
        batch.step(np.zeros(4, np.int64))
    batch.reset()
    with pytest.raises(ValueError):
        batch.step(np.zeros(3, np.int64))
    with pytest.raises(ValueError):
        batch.step(np.full(4, 6))
    with pytest.raises(ValueError):
        evaluate(spec, np.zeros(10, np.int64))


def test_routing_bandit_steps_are_one_step_episodes() -> None:
    """Routing: always terminated, never truncated, 0/1 rewards at the hidden rates, uniform classes."""
    spec = load_env("routing")
    assert spec is load_env("routing") and spec.kind == "bandit"
    batch = make_batch(spec, list(range(50)))
    assert isinstance(batch, BanditBatch)
    ctx = batch.reset()
    p = success_probs(spec)
    arm = np.zeros(50, np.int64)
    expect, wins, seen = 0.0, 0.0, np.zeros(spec.n_states)
    for _ in range(400):
        nxt, r, term, trunc = batch.step(arm)
        assert term.all() and not trunc.any()
        assert set(np.unique(r)) <= {0.0, 1.0}
        expect += p[ctx, 0].sum()
        wins += r.sum()
        np.add.at(seen, ctx, 1)
        assert np.array_equal(nxt, batch.states)
        ctx = nxt
    n = 400 * 50
    assert abs(wins - expect) < 4 * np.sqrt(n * 0.25)  # success at the hidden rate
    assert seen.min() > 0.8 * n / spec.n_states  # classes drawn uniformly


def test_routing_evaluation_is_exact() -> None:
    """The routing metric is the expected success of the greedy route, with no sampling noise."""
    spec = make_routing(n_contexts=6, n_arms=3, seed=4)
    p = success_probs(spec)
    pi = np.array([0, 1, 2, 0, 1, 2])
    assert evaluate(spec, pi) == pytest.approx(p[np.arange(6), pi].mean())
    assert spec.optimal_metric == pytest.approx(p.max(axis=1).mean())
    assert spec.target == pytest.approx(0.95 * spec.optimal_metric)
    best_overall = np.full(spec.n_states, p.mean(axis=0).argmax())
    default = load_env("routing")
    pd = success_probs(default)
    assert evaluate(default, np.full(20, pd.mean(axis=0).argmax())) < default.target
    assert evaluate(spec, best_overall) <= spec.optimal_metric
