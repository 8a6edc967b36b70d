"""Action selection on the merged view: ε-greedy with decay, UCB1, Thompson sampling.

A policy sees one state's merged row (values, visits, successes, failures) and
the number of decisions this node has taken, and returns an action index. It
holds its own random generator so that a seeded node is reproducible. Ties
between equal values are broken at random: with a fresh table every value is
0 and "first action wins" would make every node explore the same way.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod

import numpy as np


class Policy(ABC):
    """Chooses an action from one merged row."""

    name: str

    def __init__(self, seed: int | None = None) -> None:
        self.rng = random.Random(seed)

    @abstractmethod
    def choose(self, values: np.ndarray, visits: np.ndarray, succ: np.ndarray,
               fail: np.ndarray, step: int, explore: bool = True) -> int:
        """Index of the chosen action."""

    def greedy(self, values: np.ndarray) -> int:
        """Argmax with random tie-breaking."""
        best = values.max()
        ties = np.flatnonzero(values == best)
        if ties.shape[0] == 1:
            return int(ties[0])
        return int(ties[self.rng.randrange(ties.shape[0])])


class EpsilonGreedy(Policy):
    """Explore with probability ε, decaying linearly from ``start`` to ``end`` over ``decay_steps``."""

    name = "epsilon_greedy"

    def __init__(self, start: float = 1.0, end: float = 0.05, decay_steps: int = 2000,
                 seed: int | None = None) -> None:
        super().__init__(seed)
        if not (0.0 <= end <= start <= 1.0):
            raise ValueError(f"need 0 <= eps_end <= eps_start <= 1, got {start}, {end}")
        self.start, self.end, self.decay_steps = float(start), float(end), max(int(decay_steps), 1)

    def epsilon(self, step: int) -> float:
        frac = min(1.0, step / self.decay_steps)
        return self.start + frac * (self.end - self.start)

    def choose(self, values: np.ndarray, visits: np.ndarray, succ: np.ndarray,
               fail: np.ndarray, step: int, explore: bool = True) -> int:
        if explore and self.rng.random() < self.epsilon(step):
            return self.rng.randrange(values.shape[0])
        return self.greedy(values)


class UCB1(Policy):
    """Optimism in the face of uncertainty, on the federation's merged visit counts."""

    name = "ucb1"

    def __init__(self, c: float = math.sqrt(2.0), seed: int | None = None) -> None:
        super().__init__(seed)
        self.c = float(c)

    def choose(self, values: np.ndarray, visits: np.ndarray, succ: np.ndarray,
               fail: np.ndarray, step: int, explore: bool = True) -> int:
        if not explore:
            return self.greedy(values)
        n = visits.astype(np.float64)
        if (n == 0).any():
            return self.greedy(np.where(n == 0, 1.0, 0.0))
        bonus = self.c * np.sqrt(math.log(n.sum()) / n)
        return self.greedy(values + bonus)


class Thompson(Policy):
    """Thompson sampling on Beta(succ + 1, fail + 1): for binary outcomes (bandits).

    The draws come from the policy's ``random.Random``, one per action: a row
    has a handful of actions, and ``numpy.random`` (imported on first use)
    would add ~2.5 MB to every daemon for them.
    """

    name = "thompson"

    def choose(self, values: np.ndarray, visits: np.ndarray, succ: np.ndarray,
               fail: np.ndarray, step: int, explore: bool = True) -> int:
        s = succ.astype(np.float64)
        f = fail.astype(np.float64)
        if not explore:
            return self.greedy((s + 1.0) / (s + f + 2.0))
        beta = self.rng.betavariate
        return self.greedy(np.array([beta(a + 1.0, b + 1.0) for a, b in zip(s.tolist(), f.tolist(),
                                                                              strict=True)]))


POLICIES: dict[str, type[Policy]] = {p.name: p for p in (EpsilonGreedy, UCB1, Thompson)}


def make_policy(spec: str | Policy, seed: int | None = None, **kwargs: float) -> Policy:
    """Policy from a name or an instance; keyword settings go to the constructor."""
    if isinstance(spec, Policy):
        return spec
    try:
        cls = POLICIES[spec]
    except KeyError:
        raise ValueError(f"unknown policy {spec!r}; known: {sorted(POLICIES)}") from None
    return cls(seed=seed, **kwargs)  # type: ignore[arg-type]
