"""Tabular environments for ``peerd sim``: Gymnasium's dynamics, stepped in numpy.

The simulation runs many nodes in lockstep. Stepping one ``gymnasium`` env per
node per tick would make the Python interpreter, not the learning, the cost of
a run, so we extract each toy-text env's transition model (``unwrapped.P`` and
its initial-state distribution) once and step all nodes' instances together
with numpy. The model *is* what ``env.step`` samples from, and we sample it the
way Gymnasium does (``categorical_sample``: the first outcome whose cumulative
probability exceeds one uniform draw, one draw per step and per reset), so an
instance seeded with ``s`` replays ``gym.make(...).reset(seed=s)`` draw for draw.

Evaluation is the yardstick of every experiment ("steps until the greedy policy
reaches the target"), so it must be cheap and comparable between modes: a fixed
set of episodes (fixed starts and fixed uniforms from ``eval_seed``, i.e. common
random numbers) played by a whole batch of greedy policies at once.

Nothing here imports the daemon: the module is pure numpy (gymnasium is
imported lazily, only to read a model).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import gymnasium

Metric = Literal["mean_return", "success_rate"]

#: Evaluation protocol shared by every env (DESIGN §2 and the reference
#: experiment): 100 fixed episodes, capped at 200 steps, drawn from seed 12345.
#: The draw order matches the reference, so "steps to target" is measured on
#: the very episodes behind the numbers in DESIGN §2.
EVAL_EPISODES = 100
EVAL_CAP = 200
EVAL_SEED = 12345

# ---------------------------------------------------------------------------
# Per-environment settings: the one place to change them.
#
# Why these numbers: every speedup we report is a ratio against the *isolated*
# baseline (one node learning alone with the same settings), so the settings
# must make that baseline strong, not the federation look good. taxi and
# frozenlake8x8 use exactly the settings the reference experiment
# (shared/reference/fedq.py, CFG) was tuned with and DESIGN §2 reports
# (H = 200 ticks). cliffwalking, frozenlake and routing were tuned the same
# way, with the DESIGN §2 rule in a numpy simulation (32-64 seeds, sync every
# 10 ticks): each row minimises the isolated node's median steps-to-target;
# where that was flat, the choice that is robust for both N = 1 and N = 8.
# Measured medians (steps per node, N = 1 / N = 8) are in each row's note.
#   target          metric value the greedy policy must reach on the eval set
#   max_steps       training episode cap (None: the registered TimeLimit)
#   half_life       H of the evidence weights, in ticks of the virtual clock
#   eps_*           linear epsilon-greedy decay per node step, then constant
#   eval_every      steps per node between two evaluations
#   step_cap        give up after that many steps per node
# ---------------------------------------------------------------------------
ENV_TABLE: dict[str, dict[str, Any]] = {
    "taxi": dict(
        gym_id="Taxi-v4", gym_kwargs={},  # default args: Taxi-v3 dynamics (v3 is gone in 1.4)
        metric="mean_return", target=7.0, max_steps=None, gamma=0.99,
        half_life=200.0, eps_start=1.0, eps_end=0.05, eps_decay_steps=2_000,
        eval_every=250, step_cap=300_000,
        note="reference settings (32k / 5.8k steps); the optimal policy scores 8.31 on the "
             "eval set",
    ),
    "frozenlake8x8": dict(
        gym_id="FrozenLake-v1", gym_kwargs={"map_name": "8x8", "is_slippery": True},
        metric="success_rate", target=0.60, max_steps=None, gamma=0.99,
        half_life=200.0, eps_start=1.0, eps_end=0.05, eps_decay_steps=200_000,
        eval_every=500, step_cap=400_000,
        note="reference settings (91k steps alone); training episodes keep the registered "
             "cap of 100 steps, evaluation allows 200 (optimal policy: 0.88 on the eval set)",
    ),
    "cliffwalking": dict(
        gym_id="CliffWalking-v1", gym_kwargs={},  # v0 is deprecated in gymnasium 1.4
        metric="mean_return", target=-17.0, max_steps=200, gamma=0.99,
        half_life=200.0, eps_start=1.0, eps_end=0.05, eps_decay_steps=2_000,
        eval_every=50, step_cap=50_000,
        note="deterministic, one start state: the optimal return is -13 (along the cliff); "
             "-17 accepts the safe detour two rows up and rejects any policy that falls or "
             "wanders. No registered TimeLimit: training episodes are capped at 200 "
             "(~1.9k / 0.7k steps; decay over 500 or H = 400 made the isolated node slower)",
    ),
    "frozenlake": dict(
        gym_id="FrozenLake-v1", gym_kwargs={"map_name": "4x4", "is_slippery": True},
        metric="success_rate", target=0.70, max_steps=None, gamma=0.99,
        half_life=50.0, eps_start=1.0, eps_end=0.05, eps_decay_steps=5_000,
        eval_every=100, step_cap=100_000,
        note="4x4 slippery; optimal policy succeeds in 0.85 of the eval episodes (200-step "
             "cap). H = 50 beat 200 alone too (3.0-3.4k vs 4.3k / 1.3k vs 3.0k steps); "
             "decay over 1000 made the isolated node unstable (6.1k)",
    ),
}

#: Settings for any other Gymnasium id with Discrete spaces. Not tuned for a
#: particular env: override fields with ``dataclasses.replace`` if needed.
#: Target (documented rule, applied to ``optimal_metric`` measured on the eval
#: set with the value-iteration policy): 0.9 × optimal for success rates,
#: optimal − 10 % of |optimal| for returns.
GENERIC_SETTINGS: dict[str, Any] = dict(
    metric=None, target=None, max_steps=None, gamma=0.99,
    half_life=200.0, eps_start=1.0, eps_end=0.05, eps_decay_steps=20_000,
    eval_every=500, step_cap=400_000,
)
#: Training episode cap for Gymnasium ids registered without a TimeLimit.
DEFAULT_MAX_STEPS = 200

#: Human-readable action names, by the unwrapped env's class (Gymnasium order).
ACTION_NAMES: dict[str, tuple[str, ...]] = {
    "TaxiEnv": ("south", "north", "east", "west", "pickup", "dropoff"),
    "FrozenLakeEnv": ("left", "down", "right", "up"),
    "CliffWalkingEnv": ("up", "right", "down", "left"),
}

#: Every name ``load_env`` accepts besides a Gymnasium id.
ALIASES: tuple[str, ...] = (*ENV_TABLE, "routing")


def _readonly(a: np.ndarray, dtype: type | None = None) -> np.ndarray:
    """A read-only contiguous array: the caller's own array is never frozen in place."""
    a = np.asarray(a)
    if a.flags.writeable or not a.flags.c_contiguous or (dtype and a.dtype != dtype):
        a = np.array(a, dtype=dtype or a.dtype, order="C")  # always a copy
        a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class EnvSpec:
    """Everything the simulation needs to know about one task, immutable.

    The tabular model has shape ``[S, A, K]`` (K = most outcomes of any
    (s, a); shorter lists are padded with probability-0 copies of their last
    outcome): ``next_state``, ``reward``, ``terminal``, ``prob``; ``cum`` is
    ``prob``'s cumulative sum, ``init_dist`` the start-state distribution.
    Derived arrays (``cum``, ``init_cum``, the evaluation set) are computed on
    construction, so ``dataclasses.replace`` keeps them consistent.
    Equality is identity: specs hold arrays, and one loaded spec is shared.
    ``gym_kwargs`` are the options the model was built with (``gymnasium.make``
    kwargs; for the routing bandit, ``make_routing``'s). ``kind`` tells
    ``evaluate`` and ``make_batch`` whether to roll out episodes (``"gym"``)
    or to compute the bandit's exact expectation (``"bandit"``).
    """

    name: str
    gym_id: str
    n_states: int
    n_actions: int
    action_names: tuple[str, ...]
    metric: Metric
    target: float
    gamma: float
    max_steps: int
    half_life: float
    eps_start: float
    eps_end: float
    eps_decay_steps: int
    eval_every: int
    step_cap: int
    next_state: np.ndarray = field(repr=False)
    reward: np.ndarray = field(repr=False)
    terminal: np.ndarray = field(repr=False)
    prob: np.ndarray = field(repr=False)
    init_dist: np.ndarray = field(repr=False)
    optimal_metric: float = math.nan
    eval_episodes: int = EVAL_EPISODES
    eval_cap: int = EVAL_CAP
    eval_seed: int = EVAL_SEED
    gym_kwargs: tuple[tuple[str, Any], ...] = ()
    kind: Literal["gym", "bandit"] = "gym"
    note: str = ""
    cum: np.ndarray = field(init=False, repr=False)
    init_cum: np.ndarray = field(init=False, repr=False)
    eval_starts: np.ndarray = field(init=False, repr=False)
    eval_u: np.ndarray = field(init=False, repr=False)  # [eval_cap, eval_episodes]

    def __post_init__(self) -> None:
        S, A = self.n_states, self.n_actions
        if len(self.action_names) != A:
            raise ValueError(f"{A} actions but {len(self.action_names)} action names")
        if self.metric not in ("mean_return", "success_rate"):
            raise ValueError(f"unknown metric {self.metric!r}")
        shape = self.prob.shape
        if len(shape) != 3 or shape[:2] != (S, A):
            raise ValueError(f"model arrays must be [{S}, {A}, K], got {shape}")
        for arr in (self.next_state, self.reward, self.terminal):
            if arr.shape != shape:
                raise ValueError(f"model arrays disagree in shape: {arr.shape} vs {shape}")
        if self.init_dist.shape != (S,):
            raise ValueError(f"init_dist must have shape ({S},)")
        if self.max_steps < 1 or self.eval_cap < 1 or self.eval_episodes < 1:
            raise ValueError("max_steps, eval_cap and eval_episodes must be >= 1")
        put = functools.partial(object.__setattr__, self)
        put("next_state", _readonly(self.next_state, np.int64))
        put("reward", _readonly(self.reward, np.float64))
        put("terminal", _readonly(self.terminal, bool))
        put("prob", _readonly(self.prob, np.float64))
        put("init_dist", _readonly(self.init_dist, np.float64))
        # Gymnasium's categorical_sample takes np.cumsum of the listed
        # probabilities; the same cumsum here gives the same outcome per draw.
        put("cum", _readonly(np.cumsum(self.prob, axis=-1)))
        put("init_cum", _readonly(np.cumsum(self.init_dist)))
        rng = np.random.default_rng(self.eval_seed)
        put("eval_starts", _readonly(sample_start(self, rng.random(self.eval_episodes))))
        u = rng.random((self.eval_episodes, self.eval_cap))
        put("eval_u", _readonly(u.T))  # one contiguous row per time step

    @property
    def n_outcomes(self) -> int:
        """K: the most outcomes any (state, action) pair has."""
        return int(self.prob.shape[2])

    def epsilon(self, step: int | np.ndarray) -> float | np.ndarray:
        """Recommended exploration rate after ``step`` steps of one node."""
        frac = np.minimum(1.0, np.asarray(step, dtype=float) / max(1, self.eps_decay_steps))
        eps = self.eps_start + frac * (self.eps_end - self.eps_start)
        return float(eps) if np.ndim(eps) == 0 else eps


# ---------------------------------------------------------------------------
# sampling (Gymnasium's semantics, vectorised)
# ---------------------------------------------------------------------------
def sample_start(spec: EnvSpec, u: np.ndarray) -> np.ndarray:
    """Start states for uniforms ``u``, exactly as ``env.reset`` picks them.

    ``categorical_sample`` returns ``argmax(cumsum > u)``: the first index
    whose cumulative probability exceeds ``u``, and 0 if none does (possible
    only through rounding). ``searchsorted(side="right")`` counts the entries
    ``<= u``, which is that first index.
    """
    k = np.searchsorted(spec.init_cum, u, side="right")
    return np.where(k >= spec.n_states, 0, k).astype(np.int64)


def transition(
    spec: EnvSpec, states: np.ndarray, actions: np.ndarray, u: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outcome of (state, action) for uniform ``u``, as ``env.step`` samples it.

    Returns ``(next_state, reward, terminated)``, element-wise over the inputs.
    """
    K = spec.n_outcomes
    sa = states * spec.n_actions + actions
    if K == 1:
        flat = sa
    else:
        k = (spec.cum.reshape(-1, K)[sa] <= u[..., None]).sum(-1)
        k = np.where(k >= K, 0, k)  # no cumulative prob exceeds u: argmax of all-False
        flat = sa * K + k
    return (spec.next_state.reshape(-1)[flat], spec.reward.reshape(-1)[flat],
            spec.terminal.reshape(-1)[flat])


# ---------------------------------------------------------------------------
# batched environment instances
# ---------------------------------------------------------------------------
class EnvBatch:
    """Independent instances of one env (one per simulated node), stepped at once.

    Instance ``i`` draws its random numbers from its own stream
    ``np.random.default_rng(seeds[i])``, one uniform per step and one per
    reset, in the order Gymnasium draws them. So instance ``i`` behaves exactly
    like ``make_gym_env(spec, seeds[i])`` given the same actions, and its
    dynamics do not depend on how many other nodes share the batch.

    Auto-reset is done here: ``step`` returns the true successor states (the
    learner needs them for its TD target, also on truncation, where it must
    bootstrap), and instances whose episode ended are reset at once; act next
    from ``batch.states``. Uniforms are drawn per instance in blocks, so the
    per-node Python work happens once every few hundred steps, not per step.
    """

    def __init__(self, spec: EnvSpec, seeds: Sequence[int] | np.ndarray, *, block: int = 512):
        seeds = [int(s) for s in np.asarray(seeds).reshape(-1)]
        if not seeds:
            raise ValueError("EnvBatch needs at least one seed")
        if block < 4:
            raise ValueError("block must be >= 4")
        self.spec = spec
        self.seeds: tuple[int, ...] = tuple(seeds)
        self._rngs = [np.random.default_rng(s) for s in seeds]
        self._buf = np.stack([g.random(block) for g in self._rngs])
        self._cur = np.zeros(len(seeds), np.int64)
        self._rows = np.arange(len(seeds))
        self._started = False
        #: states to act from (after auto-reset)
        self.states = np.zeros(len(seeds), np.int64)
        #: steps taken in each instance's current episode
        self.episode_steps = np.zeros(len(seeds), np.int64)
        #: episodes finished (terminated or truncated) per instance
        self.episodes = np.zeros(len(seeds), np.int64)

    @classmethod
    def from_seed(cls, spec: EnvSpec, n: int, seed: int) -> EnvBatch:
        """``n`` instances with distinct seeds derived from one run seed."""
        seeds = np.random.SeedSequence(seed).generate_state(n, np.uint32)
        return cls(spec, seeds)

    def __len__(self) -> int:
        return len(self.seeds)

    def _draw(self, rows: np.ndarray) -> np.ndarray:
        """Next uniform of each instance in ``rows`` (advancing its stream)."""
        u = self._buf[rows, self._cur[rows]]
        self._cur[rows] += 1
        return u

    def _refill(self) -> None:
        """Keep at least two unread uniforms per instance (a step uses <= 2)."""
        block = self._buf.shape[1]
        if self._cur.max() <= block - 2:
            return
        for i in np.nonzero(self._cur)[0]:  # once every >= block/2 steps
            c = int(self._cur[i])
            self._buf[i, : block - c] = self._buf[i, c:]
            self._buf[i, block - c:] = self._rngs[i].random(c)
        self._cur[:] = 0

    def reset(self) -> np.ndarray:
        """Start a new episode in every instance; returns the start states."""
        self._refill()
        self.states = sample_start(self.spec, self._draw(self._rows))
        self.episode_steps[:] = 0
        self._started = True
        return self.states.copy()

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One step of every instance: ``(next_states, rewards, terminated, truncated)``.

        ``truncated`` follows Gymnasium's TimeLimit: true on the step where the
        episode reaches ``spec.max_steps`` (possibly together with
        ``terminated``). Finished instances are reset before returning.
        """
        if not self._started:
            raise RuntimeError("call reset() before step()")
        a = np.asarray(actions)
        if a.shape != self.states.shape or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"actions must be an integer array of shape {self.states.shape}")
        if a.size and (a.min() < 0 or a.max() >= self.spec.n_actions):
            raise ValueError(f"actions must lie in [0, {self.spec.n_actions})")
        self._refill()
        s2, r, term = transition(self.spec, self.states, a, self._draw(self._rows))
        self.episode_steps += 1
        trunc = self.episode_steps >= self.spec.max_steps
        done = term | trunc
        states = s2.copy()
        if done.any():
            rows = self._rows[done]
            states[rows] = sample_start(self.spec, self._draw(rows))
            self.episode_steps[rows] = 0
            self.episodes[rows] += 1
        self.states = states
        return s2, r, term, trunc


def make_batch(spec: EnvSpec, seeds: Sequence[int] | np.ndarray) -> EnvBatch:
    """The batch class that fits the spec: ``BanditBatch`` for bandits, else ``EnvBatch``."""
    if spec.kind == "bandit":
        from peerd.sim.bandit import BanditBatch

        return BanditBatch(spec, seeds)
    return EnvBatch(spec, seeds)


def make_gym_env(env: str | EnvSpec, seed: int | None = None) -> gymnasium.Env:
    """The real ``gymnasium.make(...)`` env behind a spec, for cross-checks.

    Made with the spec's kwargs and ``max_episode_steps = spec.max_steps``. With
    ``seed`` its generator is seeded as ``reset(seed=seed)`` would, without
    resetting: the first ``env.reset()`` then draws what ``EnvBatch``'s instance
    with that seed draws, and so does every following step and reset.
    """
    import gymnasium as gym
    from gymnasium.utils import seeding

    spec = env if isinstance(env, EnvSpec) else load_env(env)
    if spec.kind != "gym":
        raise ValueError(f"{spec.name!r} is not a Gymnasium environment")
    genv = gym.make(spec.gym_id, max_episode_steps=spec.max_steps, **dict(spec.gym_kwargs))
    if seed is not None:
        genv.unwrapped.np_random = seeding.np_random(seed)[0]
        genv.action_space.seed(seed)
    return genv


# ---------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------
def evaluate(spec: EnvSpec, policy: np.ndarray) -> float | np.ndarray:
    """Metric of greedy policies on the spec's fixed evaluation episodes.

    ``policy`` is ``pi[S]`` (returns a float) or a batch ``pi[R, S]`` (returns
    ``[R]``). Every policy plays the same episodes: the same start states and
    the same uniform for step ``t`` of episode ``j`` (common random numbers),
    so differences between modes are differences of policies, not of luck.
    An episode ends when it terminates or after ``eval_cap`` steps.
    ``success_rate`` counts episodes with a positive return.
    """
    pi = np.asarray(policy)
    single = pi.ndim == 1
    pi2 = pi.reshape(1, -1) if single else pi
    if pi2.ndim != 2 or pi2.shape[1] != spec.n_states:
        raise ValueError(f"policy must have shape [{spec.n_states}] or [R, {spec.n_states}]")
    if not np.issubdtype(pi2.dtype, np.integer):
        raise ValueError("policy must hold integer action indices")
    if pi2.size and (pi2.min() < 0 or pi2.max() >= spec.n_actions):
        raise ValueError(f"policy actions must lie in [0, {spec.n_actions})")
    if spec.kind == "bandit":
        from peerd.sim.bandit import expected_success

        out = expected_success(spec, pi2)
    else:
        out = _rollout(spec, pi2)
    return float(out[0]) if single else out


def _rollout(spec: EnvSpec, pi: np.ndarray) -> np.ndarray:
    """Play the eval episodes for every row of ``pi``; only live episodes are stepped."""
    R, n = pi.shape[0], spec.eval_episodes
    flat_pi = pi.reshape(-1).astype(np.int64, copy=False)
    ep = np.tile(np.arange(n), R)  # episode index j of each (row, episode)
    off = np.repeat(np.arange(R) * spec.n_states, n)  # row offset into flat_pi
    live = np.arange(R * n)
    s = spec.eval_starts[ep]
    ret = np.zeros(R * n)
    for t in range(spec.eval_cap):
        a = flat_pi[off[live] + s]
        s2, r, term = transition(spec, s, a, spec.eval_u[t, ep[live]])
        ret[live] += r
        if term.any():
            keep = ~term
            live, s = live[keep], s2[keep]
            if not live.size:
                break
        else:
            s = s2
    ret = ret.reshape(R, n)
    if spec.metric == "success_rate":
        return (ret > 0).mean(axis=1)
    return ret.mean(axis=1)


# ---------------------------------------------------------------------------
# optimal reference
# ---------------------------------------------------------------------------
def q_value_iteration(spec: EnvSpec, tol: float = 1e-10, max_iter: int = 100_000) -> np.ndarray:
    """Optimal ``Q[S, A]`` of the model under ``spec.gamma`` (no time limit)."""
    cont = spec.prob * ~spec.terminal  # probability mass that continues
    exp_r = (spec.prob * spec.reward).sum(-1)
    V = np.zeros(spec.n_states)
    for _ in range(max_iter):
        Q = exp_r + spec.gamma * (cont * V[spec.next_state]).sum(-1)
        V_new = Q.max(axis=1)
        if np.abs(V_new - V).max() < tol:
            break
        V = V_new
    return exp_r + spec.gamma * (cont * V_new[spec.next_state]).sum(-1)


def optimal_policy(spec: EnvSpec) -> np.ndarray:
    """Greedy policy ``pi[S]`` of the value-iteration Q (first action on ties)."""
    return q_value_iteration(spec).argmax(axis=1).astype(np.int64)


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------
def load_env(name: str, **gym_kwargs: Any) -> EnvSpec:
    """The spec of an alias (``taxi``, ``frozenlake8x8``, ``cliffwalking``,
    ``frozenlake``, ``routing``) or of any Gymnasium id with Discrete
    observation and action spaces (``gym_kwargs`` go to ``gymnasium.make``;
    for ``routing`` they go to ``peerd.sim.bandit.make_routing``).

    Specs are immutable and cached: loading twice returns the same object.
    Raises ``ValueError`` for unknown names and non-tabular envs.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"environment name must be a non-empty string; aliases: {list(ALIASES)}")
    name = name.strip()
    if name.lower() in ALIASES:
        name = name.lower()  # "Taxi" and "taxi" are one cached spec
    key = tuple(sorted(gym_kwargs.items()))
    try:
        hash(key)
    except TypeError:  # unhashable options (e.g. a custom map as a list): no caching
        return _load(name, key)
    return _load_cached(name, key)


@functools.lru_cache(maxsize=64)
def _load_cached(name: str, kwargs: tuple[tuple[str, Any], ...]) -> EnvSpec:
    return _load(name, kwargs)


def _load(name: str, kwargs: tuple[tuple[str, Any], ...]) -> EnvSpec:
    alias = name.lower()
    if alias == "routing":
        from peerd.sim.bandit import make_routing

        return make_routing(**dict(kwargs))
    if alias in ENV_TABLE:
        if kwargs:
            raise ValueError(f"alias {alias!r} takes no options; use its Gymnasium id "
                             f"{ENV_TABLE[alias]['gym_id']!r} with options instead")
        row = ENV_TABLE[alias]
        return _from_gym(alias, row["gym_id"], row["gym_kwargs"], row)
    return _from_gym(name, name, dict(kwargs), GENERIC_SETTINGS)


def _make(gym_id: str, kwargs: Mapping[str, Any]) -> gymnasium.Env:
    import gymnasium as gym

    try:
        return gym.make(gym_id, **kwargs)
    except gym.error.Error as exc:
        raise ValueError(f"unknown environment {gym_id!r}: not an alias ({', '.join(ALIASES)}) "
                         f"and not usable as a Gymnasium id: {exc}") from None
    except TypeError as exc:
        raise ValueError(f"bad options for {gym_id!r}: {exc}") from None


def _from_gym(name: str, gym_id: str, kwargs: Mapping[str, Any],
              settings: Mapping[str, Any]) -> EnvSpec:
    """Read the tabular model of a Gymnasium env and complete it to a spec."""
    from gymnasium.spaces import Discrete

    env = _make(gym_id, kwargs)
    try:
        obs, act = env.observation_space, env.action_space
        if not (isinstance(obs, Discrete) and isinstance(act, Discrete)):
            raise ValueError(f"{gym_id!r} is not tabular: peerd sim needs Discrete observation "
                             f"and action spaces, got {obs} and {act}")
        if obs.start != 0 or act.start != 0:
            raise ValueError(f"{gym_id!r}: Discrete spaces must start at 0")
        u = env.unwrapped
        P = getattr(u, "P", None)
        isd = getattr(u, "initial_state_distrib", None)
        if isd is None:
            isd = getattr(u, "isd", None)  # older toy-text naming
        if P is None or isd is None:
            raise ValueError(f"{gym_id!r} has Discrete spaces but no tabular model "
                             "(unwrapped.P and initial_state_distrib)")
        S, A = int(obs.n), int(act.n)
        registered_cap = env.spec.max_episode_steps if env.spec is not None else None
        names = ACTION_NAMES.get(type(u).__name__, ())
    finally:
        env.close()
    if len(names) != A:
        names = tuple(f"a{i}" for i in range(A))
    K = max(len(P[s][a]) for s in range(S) for a in range(A))
    ns = np.zeros((S, A, K), np.int64)
    rw = np.zeros((S, A, K))
    tm = np.zeros((S, A, K), bool)
    pr = np.zeros((S, A, K))
    for s in range(S):
        for a in range(A):
            outcomes = P[s][a]
            for k in range(K):
                p, s2, r, d = outcomes[min(k, len(outcomes) - 1)]  # pad with the last outcome
                ns[s, a, k], rw[s, a, k], tm[s, a, k] = s2, r, d
                pr[s, a, k] = p if k < len(outcomes) else 0.0
    metric = settings["metric"] or _generic_metric(pr, rw, tm)
    spec = EnvSpec(
        name=name, gym_id=gym_id, n_states=S, n_actions=A, action_names=names,
        metric=metric, target=math.nan, gamma=float(settings["gamma"]),
        max_steps=int(settings["max_steps"] or registered_cap or DEFAULT_MAX_STEPS),
        half_life=float(settings["half_life"]), eps_start=float(settings["eps_start"]),
        eps_end=float(settings["eps_end"]), eps_decay_steps=int(settings["eps_decay_steps"]),
        eval_every=int(settings["eval_every"]), step_cap=int(settings["step_cap"]),
        next_state=ns, reward=rw, terminal=tm, prob=pr,
        init_dist=np.asarray(isd, dtype=float).reshape(-1),
        gym_kwargs=tuple(sorted(kwargs.items())),
        note=settings.get("note", ""),
    )
    opt = float(evaluate(spec, optimal_policy(spec)))
    if settings["target"] is not None:
        target = float(settings["target"])
        note = spec.note
    else:
        target = generic_target(metric, opt)
        note = (f"generic target from optimal {opt:.4g}: "
                + ("0.9 x optimal" if metric == "success_rate" else "optimal - 10% of |optimal|"))
    return dataclasses.replace(spec, optimal_metric=opt, target=target, note=note)


def _generic_metric(pr: np.ndarray, rw: np.ndarray, tm: np.ndarray) -> Metric:
    """``success_rate`` for goal-reaching tasks, else ``mean_return``.

    A goal-reaching task pays nothing but a positive reward on terminal
    transitions (FrozenLake): its return is > 0 exactly when the goal was
    reached, and the success rate is what a user of it cares about.
    """
    possible = pr > 0
    r = rw[possible]
    goal = (r >= 0).all() and (r > 0).any() and tm[possible][r > 0].all()
    return "success_rate" if goal else "mean_return"


def generic_target(metric: Metric, optimal: float) -> float:
    """Target for envs without a hand-picked one: 90 % of the way to optimal.

    0.9 × optimal for success rates; optimal − 0.1·|optimal| for returns
    (returns can be negative, so a ratio would point the wrong way).
    """
    if metric == "success_rate":
        return 0.9 * optimal
    return optimal - 0.1 * abs(optimal)
