"""Merge strategies: how the origins' cells of one (state, action) become one value.

Each strategy is a small pure object with one method, ``combine``, vectorised
over cells: it receives, for ``m`` cells and ``k`` origins, the matrices
``q[m, k]`` and ``lw[m, k]``, the boolean ``valid[m, k]`` (the origin holds
counted evidence for that cell) and the trust vector ``trust[k]``, and returns
the merged values ``[m]``. Where no origin is valid the result is ``default``:
written down here, not left to chance (NaN never leaks into the view).

The mathematics lives in these functions; ``MergedView`` only gathers inputs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np


class MergeStrategy(ABC):
    """Combines per-origin cells into the merged view. Pure and stateless."""

    name: ClassVar[str]

    @abstractmethod
    def combine(self, q: np.ndarray, lw: np.ndarray, valid: np.ndarray, trust: np.ndarray,
                default: float = 0.0) -> np.ndarray:
        """Merged value per row of the ``[m, k]`` inputs."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class WeightedAverage(MergeStrategy):
    """Trust × recency-weighted evidence (DESIGN §2): Σ t·2^lw·q / Σ t·2^lw.

    The largest log-weight of each cell is subtracted before exponentiating, so
    absolute log-weights of millions (wall-clock seconds / H) never overflow,
    and the common decay factor cancels: the value does not depend on when it is
    read.
    """

    name = "weighted_average"

    def combine(self, q: np.ndarray, lw: np.ndarray, valid: np.ndarray, trust: np.ndarray,
                default: float = 0.0) -> np.ndarray:
        lw_valid = np.where(valid, lw, -np.inf)
        top = lw_valid.max(axis=1, keepdims=True)
        top[~np.isfinite(top)] = 0.0
        w = np.exp2(lw_valid - top) * trust
        den = w.sum(axis=1)
        num = (w * q).sum(axis=1)
        out = np.full(q.shape[0], default, dtype=np.float64)
        ok = den > 0
        np.divide(num, den, out=out, where=ok)
        return out


class _Extreme(MergeStrategy):
    fill: ClassVar[float]

    def combine(self, q: np.ndarray, lw: np.ndarray, valid: np.ndarray, trust: np.ndarray,
                default: float = 0.0) -> np.ndarray:
        vals = np.where(valid, q.astype(np.float64), self.fill)
        out = vals.max(axis=1) if self.fill < 0 else vals.min(axis=1)
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
