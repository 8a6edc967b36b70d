"""A robust merge that knows evidence: the trust × evidence-weighted median (DESIGN §2, §6). Pure.

``median`` and ``trimmed_mean`` count every origin alike, so an origin that
last visited a cell a hundred half-lives ago outvotes a fresh one: 7-11× slower
learning with no liar at all. ``weighted_median`` weighs each origin by
``t·2^(lw − top)`` (trust × its evidence relative to the freshest, the
``weighted_average`` weights) and takes the value where half the weight is
reached: fresh evidence rules as in the weighted average, while a minority of
the weight, however extreme its values, cannot move the result past the
honest values around it.

Registered in ``peerd.strategies.STRATEGIES`` as ``weighted_median``.
"""

from __future__ import annotations

import numpy as np

from peerd.strategies import EXP2_FLOOR, MergeStrategy


def weighted_median(q: np.ndarray, lw: np.ndarray, valid: np.ndarray, trust: np.ndarray,
                    default: float = 0.0) -> np.ndarray:
    """Per row of ``[m, k]``: the value where the trust × ``2^(lw − top)`` weight reaches one half.

    Where the half falls exactly between two values (to 1e-12 of the total) the
    result is their mean, so that two equal weights do not pick a side. Rows
    with no valid origin (or zero total weight) get ``default``.
    ``trust`` is ``[k]`` (per origin) or ``[m, k]`` (per cell and origin).
    """
    q = np.asarray(q, np.float64)
    m, k = q.shape
    out = np.full(m, float(default))
    if m == 0 or k == 0:
        return out
    valid = np.asarray(valid, bool)
    lw = np.where(valid, np.asarray(lw, np.float64), -np.inf)
    top = lw.max(axis=1, keepdims=True)
    rel = np.maximum(lw - np.where(np.isfinite(top), top, 0.0), EXP2_FLOOR)
    t = np.asarray(trust, np.float64)
    t = np.broadcast_to(t[None, :] if t.ndim == 1 else t, (m, k))
    w = np.where(valid, np.exp2(rel) * t, 0.0)
    order = np.argsort(np.where(valid, q, np.inf), axis=1, kind="stable")
    qs = np.take_along_axis(q, order, 1)
    ws = np.take_along_axis(w, order, 1)
    c = ws.cumsum(axis=1)
    tot = c[:, -1]
    half = 0.5 * tot
    tol = 1e-12 * tot
    rows = np.arange(m)
    lo = np.minimum((c < half[:, None] - tol[:, None]).sum(axis=1), k - 1)
    value = qs[rows, lo]
    # exactly half the weight at or below qs[lo]: the median lies between it and the next value
    tie = np.abs(c[rows, lo] - half) <= tol
    nxt = np.minimum(lo + 1, k - 1)
    # the next value with weight (skip zero-weight entries, sorted last or in between)
    has_next = tie & (lo + 1 < k)
    if has_next.any():
        rest = np.where(np.arange(k)[None, :] > lo[:, None], ws, 0.0) > 0
        first = np.where(rest.any(axis=1), rest.argmax(axis=1), nxt)
        value = np.where(has_next & rest.any(axis=1), 0.5 * (value + qs[rows, first]), value)
    ok = valid.any(axis=1) & (tot > 0)
    out[ok] = value[ok]
    return out


class WeightedMedian(MergeStrategy):
    """Robust and evidence-aware: the trust × recency-weighted median of the origins' q."""

    name = "weighted_median"

    def combine(self, q: np.ndarray, lw: np.ndarray, valid: np.ndarray, trust: np.ndarray,
                default: float = 0.0) -> np.ndarray:
        return weighted_median(q, lw, valid, trust, default)


__all__ = ["WeightedMedian", "weighted_median"]
