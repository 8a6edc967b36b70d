"""Merge strategies: how the origins' cells of one (state, action) become one value.

Each strategy is a small pure object with one method, ``combine``, vectorised
over cells: it receives, for ``m`` cells and ``k`` origins, the matrices
``q[m, k]`` and ``lw[m, k]``, the boolean ``valid[m, k]`` (the origin holds
counted evidence for that cell) and the trust, either one per origin
(``trust[k]``) or one per cell and origin (``trust[m, k]``, broadcastable),
and returns the merged values ``[m]``. ``QTable`` calls it with padded
``[m, k]`` matrices of the origins that hold each cell (column j of two rows
may be different origins, hence the per-cell trust). Where no origin is valid the result is ``default``:
written down here, not left to chance (NaN never leaks into the view).

The mathematics lives in these functions; ``QTable`` only gathers inputs. The
default ``weighted_average`` is not called on the merge path at all: ``peerd.view``
keeps its sums incrementally, and these functions are its reference.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

#: numpy's exp2 is fast for results well inside the normal float64 range
#: (≥ 2^-1021) and 5-40× slower for -inf, subnormal or zero results.
EXP2_FLOOR = -1021.0


def relative_weights_t(lw_t: np.ndarray, valid_t: np.ndarray | None = None, *,
                       overwrite: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Evidence weights of origin-major cells ``[k, m]``: ``(2^(lw − top), top)``.

    ``top[m]`` is each cell's largest valid log-weight, ``-inf`` where no origin
    is valid. Subtracting it first keeps absolute log-weights of millions
    (wall-clock seconds / H) from overflowing, and the common factor 2^top
    cancels in every ratio of weights.

    With a ``valid_t`` mask the weights are exactly ``where(valid, 2^(lw − top), 0)``.
    With ``valid_t=None`` the slots holding evidence are those with a finite
    ``lw`` (an empty slot has ``lw = -inf``, see ``peerd.cells``) and every
    weight below 2^-1021 is taken as 2^-1021 ≈ 4e-308: empty slots and evidence
    over 1021 half-lives older than its cell's newest, next to which (weight 1)
    it is invisible. That path skips three passes and stays on exp2's fast
    path (see ``EXP2_FLOOR``); empty slots must then have ``q = 0``.
    ``overwrite`` computes the weights in ``lw_t`` itself (``valid_t=None`` only).
    """
    if valid_t is None:
        w = lw_t if overwrite else lw_t.copy()
        top = w.max(axis=0) if w.shape[0] else np.full(w.shape[1], -np.inf)
        np.subtract(w, np.where(np.isfinite(top), top, 0.0), out=w)
        np.maximum(w, EXP2_FLOOR, out=w)
        return np.exp2(w, out=w), top
    valid_t = np.asarray(valid_t, bool)
    w = np.where(valid_t, lw_t, -np.inf)
    top = w.max(axis=0) if w.shape[0] else np.full(w.shape[1], -np.inf)
    np.subtract(w, np.where(np.isfinite(top), top, 0.0), out=w)
    tiny = (w < EXP2_FLOOR) & valid_t  # rare: computed exactly below, on the slow path
    exact = np.exp2(w[tiny]) if tiny.any() else None
    np.maximum(w, EXP2_FLOOR, out=w)
    np.exp2(w, out=w)
    w *= valid_t
    if exact is not None:
        w[tiny] = exact
    return w, top


def weighted_average_t(q_t: np.ndarray, lw_t: np.ndarray, valid_t: np.ndarray | None,
                       trust: np.ndarray, default: float = 0.0, *,
                       overwrite: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Σ t·2^lw·q / Σ t·2^lw per origin-major cell, with the evidence behind it.

    Returns ``(values, top, evidence)``: the merged values (``default`` where no
    origin is valid), each cell's largest valid log-weight (``-inf`` where
    none) and ``evidence = Σ 2^(lw − top)``, the untrusted evidence weight
    relative to ``top`` (from which a confidence follows). Arguments as
    in ``relative_weights_t``.
    """
    out = np.full(lw_t.shape[1], default, dtype=np.float64)
    w, top = relative_weights_t(lw_t, valid_t, overwrite=overwrite)
    evidence = w.sum(axis=0)
    trust = np.asarray(trust, np.float64)
    if (trust != 1.0).any():  # multiplying by 1.0 changes nothing: skip the pass
        w *= trust[:, None] if trust.ndim == 1 else trust
        den = w.sum(axis=0)
    else:
        den = evidence
    w *= q_t
    num = w.sum(axis=0)
    np.divide(num, den, out=out, where=(den > 0) & np.isfinite(top))
    return out, top, evidence


class MergeStrategy(ABC):
    """Combines per-origin cells into the merged view. Pure and stateless."""

    name: ClassVar[str]

    @abstractmethod
    def combine(self, q: np.ndarray, lw: np.ndarray, valid: np.ndarray, trust: np.ndarray,
                default: float = 0.0) -> np.ndarray:
        """Merged value per row of the ``[m, k]`` inputs."""

    def combine_t(self, q_t: np.ndarray, lw_t: np.ndarray, valid_t: np.ndarray, trust: np.ndarray,
                  default: float = 0.0) -> np.ndarray:
        """``combine`` on origin-major inputs ``[k, m]`` (``trust`` ``[k]`` or ``[k, m]``): same result.

        numpy reduces over a short inner axis slowly; a strategy may override
        this to reduce over the outer axis instead.
        """
        trust = np.asarray(trust)
        return self.combine(q_t.T, lw_t.T, valid_t.T, trust.T if trust.ndim == 2 else trust, default)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class WeightedAverage(MergeStrategy):
    """Trust × recency-weighted evidence (DESIGN §2): Σ t·2^lw·q / Σ t·2^lw.

    The largest log-weight of each cell is subtracted before exponentiating, so
    absolute log-weights of millions (wall-clock seconds / H) never overflow,
    and the common decay factor cancels: the value does not depend on when it is
    read. The work is done origin-major by ``weighted_average_t``.
    """

    name = "weighted_average"

    def combine(self, q: np.ndarray, lw: np.ndarray, valid: np.ndarray, trust: np.ndarray,
                default: float = 0.0) -> np.ndarray:
        trust = np.asarray(trust, np.float64)
        return self.combine_t(np.asarray(q).T, np.asarray(lw).T, np.asarray(valid).T,
                              trust.T if trust.ndim == 2 else trust, default)

    def combine_t(self, q_t: np.ndarray, lw_t: np.ndarray, valid_t: np.ndarray, trust: np.ndarray,
                  default: float = 0.0) -> np.ndarray:
        return weighted_average_t(q_t, lw_t, valid_t, trust, default)[0]


class _Extreme(MergeStrategy):
    fill: ClassVar[float]

    def combine(self, q: np.ndarray, lw: np.ndarray, valid: np.ndarray, trust: np.ndarray,
                default: float = 0.0) -> np.ndarray:
        vals = np.where(valid, q.astype(np.float64), self.fill)
        out = vals.max(axis=1, initial=self.fill) if self.fill < 0 else vals.min(axis=1, initial=self.fill)
        return np.where(valid.any(axis=1), out, default)


class Max(_Extreme):
    """Optimistic: the best value any origin reports."""

    name = "max"
    fill = -np.inf


class Min(_Extreme):
    """Pessimistic: the worst value any origin reports."""

    name = "min"
    fill = np.inf


class TrimmedMean(MergeStrategy):
    """Robust: per cell, drop ⌊β·k⌋ origins from each tail of q, average the rest.

    With k valid origins and β < 0.5 at least one value remains. Trust is not
    used: robustness here comes from rank, so a liar cannot buy weight.
    """

    name = "trimmed_mean"

    def __init__(self, beta: float = 0.2) -> None:
        if not (0.0 <= beta < 0.5):
            raise ValueError(f"trimmed_mean beta must be within [0, 0.5), got {beta}")
        self.beta = float(beta)

    def __repr__(self) -> str:
        return f"TrimmedMean(beta={self.beta})"

    def combine(self, q: np.ndarray, lw: np.ndarray, valid: np.ndarray, trust: np.ndarray,
                default: float = 0.0) -> np.ndarray:
        vals = np.sort(np.where(valid, q.astype(np.float64), np.inf), axis=1)  # invalid last
        k = valid.sum(axis=1)
        cut = np.floor(self.beta * k).astype(np.int64)
        rank = np.arange(q.shape[1])[None, :]
        keep = (rank >= cut[:, None]) & (rank < (k - cut)[:, None])
        cnt = keep.sum(axis=1)
        total = np.where(keep, vals, 0.0).sum(axis=1)
        out = np.full(q.shape[0], default, dtype=np.float64)
        np.divide(total, cnt, out=out, where=cnt > 0)
        return out


class Median(MergeStrategy):
    """Robust: the median of the valid origins' q (mean of the middle two when even)."""

    name = "median"

    def combine(self, q: np.ndarray, lw: np.ndarray, valid: np.ndarray, trust: np.ndarray,
                default: float = 0.0) -> np.ndarray:
        vals = np.sort(np.where(valid, q.astype(np.float64), np.inf), axis=1)
        k = valid.sum(axis=1)
        rows = np.arange(q.shape[0])
        lo = np.clip((k - 1) // 2, 0, None)
        hi = np.clip(k // 2, 0, None)
        ncols = max(q.shape[1] - 1, 0)
        a = vals[rows, np.minimum(lo, ncols)] if q.shape[1] else np.zeros(q.shape[0])
        b = vals[rows, np.minimum(hi, ncols)] if q.shape[1] else np.zeros(q.shape[0])
        return np.where(k > 0, (a + b) / 2.0, default)


STRATEGIES: dict[str, type[MergeStrategy]] = {
    cls.name: cls for cls in (WeightedAverage, Max, Min, Median, TrimmedMean)
}


def make_strategy(spec: str | MergeStrategy) -> MergeStrategy:
    """Strategy from a name (``"trimmed_mean"``, ``"trimmed_mean:0.25"``) or an instance."""
    if isinstance(spec, MergeStrategy):
        return spec
    name, _, arg = str(spec).partition(":")
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown merge strategy {spec!r}; known: {sorted(STRATEGIES)}") from None
    if arg:
        if cls is not TrimmedMean:
            raise ValueError(f"strategy {name!r} takes no parameter")
        return TrimmedMean(float(arg))
    return cls()
