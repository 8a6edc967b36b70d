"""Built-in contextual bandit ``routing``: the seed designs' routing use case.

K service classes (contexts) arrive uniformly at random; a node routes each
request over one of A routes (arms) and learns whether it succeeded. Each
(class, route) has a hidden success probability, fixed by a seed so that every
node of a federation faces the same task. It exercises the bandit path of
DESIGN §3 (no next state, binary outcomes, succ/fail counts for Thompson
sampling) without any Gymnasium dependency.

The probabilities are ``sigmoid(route_bias[a] + affinity[c, a])``: some routes
are better overall, but the best route depends on the class, so a policy that
ignores the context cannot reach the target (measured for the default task:
best single route 0.62, second-best route of every class 0.65, target 0.71).

The task is expressed as an ``EnvSpec`` with a two-outcome tabular model per
(class, route): outcome 0 = success (probability p, reward 1), outcome 1 =
failure (reward 0), both terminal. ``EnvBatch`` then already implements the
dynamics: every step is a one-step episode, and the auto-reset draws the next
class uniformly. Evaluation needs no sampling: the metric is the exact expected
success of the greedy route, averaged over classes.
"""

from __future__ import annotations

import numpy as np

from peerd.sim.envs import EnvBatch, EnvSpec

#: Default task and learning settings. Why: 20 classes x 5 routes, with a
#: median gap of 0.07 between a class's best and second route, is the size of
#: the seed designs' routing priors. Picking the best route in most classes
#: takes ~1k requests for one node, which is short but long enough to measure
#: a speedup; the target is 0.95 (not 0.9) x optimal because 0.9 was met after
#: ~5 samples per cell, by luck as much as by learning. Learning settings were
#: tuned like the Gymnasium envs' (DESIGN §2 rule, 32 seeds, sync every 10):
#: one node alone needs ~0.9-1.0k steps, 8 nodes ~160. H is long because the
#: task is stationary (forgetting only adds noise; 500..10000 measured alike);
#: decay over 1000-20000 steps measured alike (0.9k-1.07k). Evaluation is exact
#: and costs microseconds, so evaluate often.
ROUTING_SETTINGS: dict[str, float | int] = dict(
    n_contexts=20, n_arms=5, seed=0,
    bias_scale=0.5,       # sd of the per-route logit: some routes are better overall
    affinity_scale=1.0,   # sd of the per-(class, route) logit: the best route depends on the class
    target_fraction=0.95,  # target = 0.95 x optimal expected success
    half_life=10_000.0, eps_start=1.0, eps_end=0.05, eps_decay_steps=1_000,
    eval_every=20, step_cap=50_000,
)

#: One-step episodes end by termination; no time limit applies.
NO_TIME_LIMIT = 2**31 - 1


def make_routing(
    n_contexts: int = int(ROUTING_SETTINGS["n_contexts"]),
    n_arms: int = int(ROUTING_SETTINGS["n_arms"]),
    seed: int = int(ROUTING_SETTINGS["seed"]),
) -> EnvSpec:
    """The routing bandit as an ``EnvSpec`` (``load_env("routing")`` is the default one).

    ``metric`` is ``success_rate``: the expected success probability of the
    greedy route, averaged over classes; ``target`` = 0.95 × the optimal value.
    ``gamma`` is 0: episodes last one step, the TD target is just the reward.
    """
    if n_contexts < 1 or n_arms < 2:
        raise ValueError("routing needs >= 1 context and >= 2 arms")
    s = ROUTING_SETTINGS
    rng = np.random.default_rng(seed)
    bias = rng.normal(0.0, float(s["bias_scale"]), n_arms)
    affinity = rng.normal(0.0, float(s["affinity_scale"]), (n_contexts, n_arms))
    p = 1.0 / (1.0 + np.exp(-(bias + affinity)))
    K, A = n_contexts, n_arms
    prob = np.stack([p, 1.0 - p], axis=-1)
    reward = np.broadcast_to(np.array([1.0, 0.0]), (K, A, 2)).copy()
    terminal = np.ones((K, A, 2), bool)
    next_state = np.broadcast_to(np.arange(K)[:, None, None], (K, A, 2)).copy()  # unused
    optimal = float(p.max(axis=1).mean())
    frac = float(s["target_fraction"])
    return EnvSpec(
        name="routing", gym_id="", n_states=K, n_actions=A,
        action_names=tuple(f"route{a}" for a in range(A)),
        metric="success_rate", target=frac * optimal, gamma=0.0,
        max_steps=NO_TIME_LIMIT, half_life=float(s["half_life"]),
        eps_start=float(s["eps_start"]), eps_end=float(s["eps_end"]),
        eps_decay_steps=int(s["eps_decay_steps"]), eval_every=int(s["eval_every"]),
        step_cap=int(s["step_cap"]),
        next_state=next_state, reward=reward, terminal=terminal, prob=prob,
        init_dist=np.full(K, 1.0 / K), optimal_metric=optimal,
        eval_episodes=K, eval_cap=1, gym_kwargs=(("n_contexts", K), ("n_arms", A), ("seed", seed)),
        kind="bandit",
        note=f"contextual bandit, {K} classes x {A} routes (seed {seed}); "
             f"target = {frac} x optimal expected success {optimal:.4f}",
    )


def success_probs(spec: EnvSpec) -> np.ndarray:
    """The hidden success probability of every (class, route), ``[K, A]``."""
    if spec.kind != "bandit":
        raise ValueError(f"{spec.name!r} is not a bandit")
    return spec.prob[:, :, 0]


def expected_success(spec: EnvSpec, pi: np.ndarray) -> np.ndarray:
    """Exact metric of greedy policies ``pi[R, K]``: no sampling noise, so one
    evaluation tells a good policy from a lucky one."""
    p = success_probs(spec)
    chosen = p[np.arange(spec.n_states), pi]  # [R, K]
    return chosen @ spec.init_dist


class BanditBatch(EnvBatch):
    """One routing bandit per node, stepped at once.

    Same interface and random streams as ``EnvBatch``: one uniform decides
    success, one draws the next class. ``terminated`` is always true and
    ``truncated`` always false; the returned ``next_states`` are the next
    classes (the same as ``batch.states``), since a bandit has no successor
    state to bootstrap from.
    """

    def __init__(self, spec: EnvSpec, seeds: np.ndarray | list[int], *, block: int = 512):
        if spec.kind != "bandit":
            raise ValueError(f"{spec.name!r} is not a bandit; use EnvBatch")
        super().__init__(spec, seeds, block=block)

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Route one request per node: ``(next_classes, success, terminated, truncated)``."""
        _, r, term, trunc = super().step(actions)
        return self.states.copy(), r, term, trunc
