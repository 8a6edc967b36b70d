"""Lies a validly signed node can tell the federation: the attack suite of ``peerd sim --attack``.

Pure: honest cells in, lying cells out. The simulation (``peerd.sim.runner``)
wraps an attacker's ``QTable`` so that what it *publishes* is the lie, signed
with its own pinned key on the real broker; everything here is numpy.

Each attack keeps the liar inside every rule a receiver can check on its own
(DESIGN §2 "Evidence budget"), except ``inflate``, which is the attack on that
budget:

=========  ==================================================================
invert     q = −μ: the worst actions look best (μ = the liar's merged view,
           i.e. the honest consensus it observes)
extreme    q = μ + a large bonus on one action per state (within ``q_bound``):
           a lie that makes a bad action best, with no trace in the argmax
           of its signatures
ipm        q = −0.1·μ (inner-product manipulation: small, but the wrong sign)
alie       q = μ − σ ("a little is enough": inside the honest spread)
inflate    q = −μ, claiming 1 000 more visits per cell than it made, with the
           largest log-weight the ``visit_cap`` guard lets through
focus      q = −μ, with the liar's whole evidence budget (one visit per
           version, as the budget allows) spent on the federation's busiest
           cells instead of the cells it visited
copycat    q = −μ, with signatures copied from an honest peer
sybil      invert; once quarantined, it returns under a new identity
           (possible while ``strict = false``)
=========  ==================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ATTACKS = ("invert", "extreme", "ipm", "alie", "inflate", "focus", "copycat", "sybil")
#: the extra visits ``inflate`` claims per published cell
INFLATE_VISITS = 1000
#: the bonus ``extreme`` adds to one action per state, as a share of ``q_bound``
EXTREME_SHARE = 0.05
#: how many of the busiest cells ``focus`` spreads its budget over
FOCUS_CELLS = 50


@dataclass(frozen=True)
class AttackSpec:
    """``KIND:COUNT`` from the command line: COUNT liars telling lie KIND."""

    kind: str
    count: int

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise ValueError(f"unknown attack {self.kind!r}; known: {', '.join(ATTACKS)}")
        if self.count < 0:
            raise ValueError(f"attack count must be >= 0, got {self.count}")

    @classmethod
    def parse(cls, text: str) -> AttackSpec:
        kind, sep, count = text.partition(":")
        try:
            n = int(count) if sep else 1
        except ValueError:
            raise ValueError(f"attack {text!r}: COUNT must be an integer (KIND:COUNT)") from None
        return cls(kind.strip(), n)


def lie_values(kind: str, mu: np.ndarray, sigma: np.ndarray, keys: np.ndarray,
               actions: np.ndarray, *, n_actions: int, q_bound: float) -> np.ndarray:
    """The q a liar of ``kind`` publishes for cells ``(keys, actions)``.

    ``mu``/``sigma``: the merged value of each cell and the spread of the
    origins' values around it, as the liar sees them. The result always lies
    within ``±q_bound`` (a receiver rejects anything else outright).
    """
    mu = np.asarray(mu, np.float64)
    if kind in ("invert", "inflate", "focus", "copycat", "sybil"):
        q = -mu
    elif kind == "ipm":
        q = -0.1 * mu
    elif kind == "alie":
        q = mu - np.asarray(sigma, np.float64)
    elif kind == "extreme":
        favoured = (np.asarray(keys, np.uint64) % np.uint64(n_actions)).astype(np.int64)
        q = mu + np.where(np.asarray(actions, np.int64) == favoured, EXTREME_SHARE * q_bound, 0.0)
    else:
        raise ValueError(f"unknown attack {kind!r}")
    return np.clip(q, -q_bound, q_bound)


def inflated_evidence(n: np.ndarray, now_over_h: float, visit_cap: int) -> tuple[np.ndarray, np.ndarray]:
    """``inflate``'s claim: ``n + INFLATE_VISITS`` visits, all fresh up to the ``visit_cap`` guard."""
    n2 = np.asarray(n, np.uint64) + np.uint64(INFLATE_VISITS)
    n2 = np.minimum(n2, np.uint64(np.iinfo(np.uint32).max)).astype(np.uint32)
    lw = np.full(n2.shape[0], np.log2(visit_cap) + now_over_h - 1e-3)
    return n2, lw


def focus_cells(busy_keys: np.ndarray, busy_actions: np.ndarray, busy_visits: np.ndarray,
                budget: int, start: int, cells: int = FOCUS_CELLS) -> tuple[np.ndarray, np.ndarray]:
    """Where ``focus`` spends ``budget`` visits: the ``cells`` busiest cells, in rotation.

    ``busy_*`` describe the liar's merged view (merged visits per cell);
    ``start`` rotates through the chosen cells from one publish to the next, so
    the budget is spread over all of them. Returns ``(keys, actions)`` with at
    most ``budget`` distinct cells.
    """
    busy_visits = np.asarray(busy_visits)
    if budget <= 0 or busy_visits.shape[0] == 0:
        return np.empty(0, np.uint64), np.empty(0, np.uint16)
    top = np.argsort(-busy_visits, kind="stable")[:cells]
    # a canonical order (by key, action) so that the rotation does not depend on ties
    top = top[np.lexsort((busy_actions[top], busy_keys[top]))]
    take = np.arange(start, start + min(budget, top.shape[0])) % top.shape[0]
    pick = top[take]
    return np.asarray(busy_keys, np.uint64)[pick], np.asarray(busy_actions, np.uint16)[pick]


def spread(q: np.ndarray, w: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Evidence-weighted mean and standard deviation of ``q[m, k]`` per row (0 where no origin)."""
    w = np.where(valid, w, 0.0)
    tot = w.sum(axis=1)
    safe = np.where(tot > 0, tot, 1.0)
    mu = (w * q).sum(axis=1) / safe
    var = (w * (q - mu[:, None]) ** 2).sum(axis=1) / safe
    return np.where(tot > 0, mu, 0.0), np.where(tot > 0, np.sqrt(np.maximum(var, 0.0)), 0.0)


__all__ = ["ATTACKS", "AttackSpec", "focus_cells", "inflated_evidence", "lie_values", "spread"]
