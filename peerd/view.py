"""The merged view: dense per-cell accumulators, kept up to date term by term.

For every flat cell id (``row * n_actions + action``) the view holds

==========  =======  ====================================================
num, den    float64  Σ t·2^(lw − ref)·q and Σ t·2^(lw − ref) over counted origins
ref_rel     float32  the cell's reference log-weight ``ref``, as a whole number
                     of half-lives relative to the table's ``base`` (``-inf``:
                     nothing counted yet)
mass        float32  the largest ``den`` since the cell was last computed exactly
n           uint64   merged visits: Σ of each counted origin's own n
succ, fail  uint64   likewise (allocated once some origin reports an outcome)
robust      float64  the value of a robust strategy (allocated only for those)
==========  =======  ====================================================

so 32 B per cell (48 with outcomes, +8 with a robust strategy), whatever the
number of origins; with the holder-chain head and the key index, about 50 B
per merged cell at 6 actions (``QTable.memory``). The weighted-average value
is ``num / den`` (``default`` where ``den = 0``).

The first five are one 32-byte row per cell (``_buf``, 64-byte aligned, so
a row is half a cache line and never straddles two), exposed as strided
column views: a delta's cells are random in the table, so each separate
array cost one cache miss per cell and per field; a row costs one. The merge
path (``swap``) gathers the rows once (``take``) and writes them back once
(``put`` of 32-byte items).

Why ``ref`` and ``mass`` fit in float32 without touching the view's
precision: the value is ``num/den`` whatever the reference is, so ``ref``
only has to be *some* number near the cell's largest log-weight, the same
one wherever it is read. It is always ``base + r`` with ``r`` a float32
holding ``floor(lw − base)`` (a whole number: exact below 2^24 half-lives
from ``base``, and ``base`` a whole number too, so ``base + r`` is exact in
float64), and every term is still ``2^(lw − ref)`` in float64. ``mass`` is
only the threshold of the cancellation test (``den < mass·2^-8``): a
relative rounding of 2^-24 moves that threshold, not any sum.
Past 2^24 half-lives from ``base`` the float32 ``r`` rounds ``floor(lw − base)``
to its spacing (8 at 2^26, 64 at 2^29, 128 at 2^30), so a term weighs up to
2^(REBASE + spacing/2) relative: below 2^30, far below float32's 2^128. Beyond,
``mass`` can overflow to inf (numpy warns about the cast): the cell is then reported
for an exact recompute on every change, slower but never wrong. No honest
log-weight gets there (a wall clock with H = 600 s is ~3e6 half-lives from
any ``base``); a peer's delta claiming a huge negative ``lw`` can.

Replacing an origin's stored cell subtracts its old term and adds its new one
(``replace``): O(cells changed). Absolute log-weights are huge (wall-clock
seconds / H), so terms are relative to ``ref``; an incoming ``lw`` more than
``REBASE`` above it moves ``ref`` up (to ``floor(lw)``) and scales the sums by
2^(old − new). Subtraction loses precision when what remains is much smaller
than what was there: a cell whose ``den`` falls below ``mass · 2^-CANCEL_BITS``
is reported back to be recomputed exactly from the origins that hold it (rare:
it takes a dominant origin leaving, being distrusted or being replaced by much
older evidence). The rounding error of a cell then stays below about
``2^CANCEL_BITS · ε · √(updates)`` relative.
"""

from __future__ import annotations

import math

import numpy as np

REBASE = 64.0  # an incoming lw this far above ref moves ref (2^64 keeps far from overflow)
CANCEL_BITS = 8  # den below mass · 2^-8: recompute exactly
_CANCEL = 2.0 ** -CANCEL_BITS
_EXP_MIN, _EXP_MAX = -1021.0, 1000.0  # exp2 stays on its fast path (peerd.strategies.EXP2_FLOOR)
#: what a cell holds before any origin does (``robust``: the default value)
_FILL = {"succ": 0, "fail": 0}
ROW_BYTES = 32  # one cell's row: num f64 | den f64 | ref_rel f32, mass f32 | n u64
_ALIGN = 64  # a cache line: rows never straddle two
#: a fresh row as 4 float64 words (ref_rel = -inf in float32, mass 0, n 0)
_ROW_FILL = np.zeros(4)
_ROW_FILL.view(np.float32)[4] = -np.inf


def _row_block(cap: int) -> np.ndarray:
    """``cap`` uninitialised 32-byte rows (uint8) starting on a cache-line boundary."""
    raw = np.empty(cap * ROW_BYTES + _ALIGN, np.uint8)
    off = -raw.ctypes.data % _ALIGN
    return raw[off : off + cap * ROW_BYTES]


class MergedView:
    """Per-cell numerator, denominator, reference log-weight and merged counts.

    ``base``: the table's reference point (a whole number of half-lives,
    e.g. the clock at start-up); each cell's ``ref`` is stored relative to it.
    """

    def __init__(self, default: float, *, robust: bool, base: float = 0.0) -> None:
        self.default = float(default)
        self.base = float(math.floor(base)) if math.isfinite(base) else 0.0
        self.cap = 0
        self._buf = _row_block(0)
        self._columns()
        self.succ: np.ndarray | None = None
        self.fail: np.ndarray | None = None
        self.robust: np.ndarray | None = np.zeros(0) if robust else None
        self.reserve(64)

    def reserve(self, cells: int) -> None:
        """Grow (by half) so that flat cell ids below ``cells`` exist."""
        if cells <= self.cap:
            return
        cap = max(cells, int(self.cap * 1.5))
        buf = _row_block(cap)
        used = self.cap * ROW_BYTES
        buf[:used] = self._buf
        buf[used:].view(np.float64).reshape(-1, 4)[:] = _ROW_FILL
        self._buf = buf
        self._columns()
        for name in ("succ", "fail", "robust"):
            old = getattr(self, name)
            if old is None:
                continue
            fill = _FILL.get(name, self.default)
            grown = np.full(cap, fill, old.dtype)
            grown[: self.cap] = old
            setattr(self, name, grown)
        self.cap = cap

    def _columns(self) -> None:
        """(Re)bind the column views of the row block and its 32-byte row view."""
        buf = self._buf
        f8 = self._f8 = buf.view(np.float64).reshape(-1, 4)
        f4 = self._f4 = buf.view(np.float32).reshape(-1, 8)
        self._i8 = buf.view(np.int64).reshape(-1, 4)
        self.num, self.den = f8[:, 0], f8[:, 1]
        self.ref_rel, self.mass = f4[:, 4], f4[:, 5]
        self.n = buf.view(np.uint64).reshape(-1, 4)[:, 3]
        self._rows = buf.view(f"V{ROW_BYTES}")
        self.kernel_rows = (f8, f4, self._i8, self.base)  # ``rows_for_kernels``, kept

    def enable_outcomes(self) -> None:
        if self.succ is None:
            self.succ = np.zeros(self.cap, np.uint64)
            self.fail = np.zeros(self.cap, np.uint64)

    @property
    def nbytes(self) -> int:
        arrays = (self._buf, self.succ, self.fail, self.robust)
        return int(sum(a.nbytes for a in arrays if a is not None))

    # ------------------------------------------------------------ references
    def quantize(self, lw: np.ndarray) -> np.ndarray:
        """The stored ``ref_rel`` for reference log-weights near ``lw``: float32 ``floor(lw − base)``.

        ``-inf`` stays ``-inf``. ``base + quantize(lw)`` is at most ``lw`` and
        less than one half-life below it (while ``lw − base < 2^24``)."""
        return np.floor(np.subtract(lw, self.base)).astype(np.float32)

    def refs(self, cells: np.ndarray | slice) -> np.ndarray:
        """Absolute reference log-weights of cells (float64): ``base + ref_rel``."""
        out = self.ref_rel[cells].astype(np.float64)  # float32 + a Python float stays float32
        out += self.base
        return out

    # ---------------------------------------------------------------- reads
    def values(self, cells: np.ndarray | slice) -> np.ndarray:
        """Merged values of cells (flat ids or a slice)."""
        if self.robust is not None:
            return self.robust[cells].copy()
        den = self.den[cells]
        out = np.full(den.shape, self.default)
        np.divide(self.num[cells], den, out=out, where=den > 0)
        return out

    def counts(self, name: str, cells: np.ndarray | slice) -> np.ndarray:
        a = getattr(self, name)
        if a is None:
            return np.zeros(self.n[cells].shape, np.uint64)
        return a[cells].copy()

    def evidence(self, cells: np.ndarray, now: float) -> np.ndarray:
        """Trusted evidence of cells as a number of fresh updates: 2^(ref − now)·den (≤ 2^30·den)."""
        return evidence_of(self.den[cells], self.refs(cells), now)

    # --------------------------------------------------------------- writes
    def replace(self, cells: np.ndarray, t_old: np.ndarray | float, q_old: np.ndarray,
                lw_old: np.ndarray, t_new: np.ndarray | float, q_new: np.ndarray,
                lw_new: np.ndarray) -> np.ndarray:
        """Swap one origin's term in each of distinct ``cells``; returns the cells to recompute.

        ``t_old``/``t_new`` are the old and new term's weights (trust, 0 when
        the term does not count); ``lw_old = -inf`` for a cell the origin did
        not hold. Cells must be distinct (plain fancy assignment).
        """
        t_old = np.asarray(t_old, np.float64)
        t_new = np.asarray(t_new, np.float64)
        ref = self.refs(cells)
        mass = self.mass[cells].astype(np.float64)
        up = (lw_new > ref + REBASE) & (t_new > 0)
        if up.any():
            cu = cells[up]
            r32 = self.quantize(lw_new[up])
            new_ref = r32.astype(np.float64) + self.base
            scale = np.exp2(ref[up] - new_ref)  # 0 where ref = -inf
            self.num[cu] *= scale
            self.den[cu] *= scale
            mass[up] *= scale
            self.ref_rel[cu] = r32
            ref[up] = new_ref
        # Exponents are clipped to exp2's fast range: a term over 1021 half-lives below
        # the reference weighs 2^-1021 (it is invisible next to the reference term, and
        # added and removed alike); t = 0 (not counted) zeroes it, whatever ref is.
        with np.errstate(invalid="ignore"):  # -inf − -inf: an absent term (weight 0 anyway)
            d_old = np.subtract(lw_old, ref)
            d_new = np.subtract(lw_new, ref)
        w_old = np.exp2(np.fmin(np.fmax(d_old, _EXP_MIN), _EXP_MAX))  # fmax: NaN → _EXP_MIN
        w_old *= t_old
        w_new = np.exp2(np.fmin(np.fmax(d_new, _EXP_MIN), _EXP_MAX))
        w_new *= t_new
        den = self.den[cells] - w_old
        den += w_new
        w_old *= q_old
        w_new *= q_new
        num = self.num[cells] - w_old
        num += w_new
        np.maximum(mass, den, out=mass)
        self.den[cells] = den
        self.num[cells] = num
        self.mass[cells] = mass
        return cells[den < mass * _CANCEL]

    def swap(self, cells: np.ndarray, t: float, ok_old: np.ndarray, q_old: np.ndarray,
             lw_old: np.ndarray, ok_new: np.ndarray | None, q_new: np.ndarray, lw_new: np.ndarray,
             dn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``replace`` for one origin's delta (scalar trust ``t``), plus ``n += dn``: the merge path.

        The same arithmetic as ``replace`` with ``t_old = t·ok_old`` and
        ``t_new = t·ok_new`` (``ok_new=None``: every new term counts), but each
        per-cell array is read and written once, in place: a delta is ~30
        passes over its cells, and gathers and temporaries are most of them.
        Returns ``(cells to recompute, n, den, ref)`` after the swap, so that
        the caller's statistics need no second gather.
        """
        blk = self._rows.take(cells)
        f8 = blk.view(np.float64).reshape(-1, 4)
        f4 = blk.view(np.float32).reshape(-1, 8)
        num, den, ref32 = f8[:, 0], f8[:, 1], f4[:, 4]
        n = blk.view(np.int64).reshape(-1, 4)[:, 3]  # uint64 read as int64: signed arithmetic
        ref = ref32.astype(np.float64)
        ref += self.base
        mass = f4[:, 5].astype(np.float64)
        w = np.empty((2, cells.shape[0]))  # old and new terms' exponents, then weights: one pass each
        w_old, w_new = w[0], w[1]
        with np.errstate(invalid="ignore"):  # -inf − -inf: an absent term (weight 0 anyway)
            np.subtract(lw_old, ref, out=w_old)
            np.subtract(lw_new, ref, out=w_new)
        if t > 0:
            up = np.greater(w_new, REBASE)  # lw_new more than REBASE above ref (ref = -inf: inf)
            if ok_new is not None:
                up &= ok_new
            iu = np.flatnonzero(up)  # few: indices beat five masked passes
            if iu.shape[0]:
                r32 = self.quantize(lw_new[iu])
                new_ref = r32.astype(np.float64) + self.base
                scale = np.exp2(ref[iu] - new_ref)  # 0 where ref = -inf
                num[iu] *= scale
                den[iu] *= scale
                mass[iu] *= scale
                ref[iu] = new_ref
                ref32[iu] = r32
                with np.errstate(invalid="ignore"):
                    w_old[iu] = lw_old[iu] - new_ref
                w_new[iu] = lw_new[iu] - new_ref
        np.fmax(w, _EXP_MIN, out=w)  # NaN → _EXP_MIN, as in ``replace``
        np.fmin(w, _EXP_MAX, out=w)
        np.exp2(w, out=w)
        if t != 1.0:
            w *= t
        w_old *= ok_old
        if ok_new is not None:
            w_new *= ok_new
        den -= w_old
        den += w_new
        w_old *= q_old
        w_new *= q_new
        num -= w_old
        num += w_new
        np.maximum(mass, den, out=mass)
        f4[:, 5] = mass
        n += dn
        self._rows.put(cells, blk)
        bad = np.flatnonzero(den < mass * _CANCEL)
        return cells[bad], n, den, ref

    def rows_for_kernels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """The row block as ``[cap, 4]`` float64 (num, den), ``[cap, 8]`` float32 (ref_rel at 4,
        mass at 5) and ``[cap, 4]`` int64 (merged n at 3), and ``base``:
        ``kernels_numba.merge_swap``'s view of the same memory (``swap``'s arithmetic, as
        one compiled loop)."""
        return self.kernel_rows

    def replace_one(self, cell: int, t_old: float, q_old: float, lw_old: float, t_new: float,
                    q_new: float, lw_new: float) -> bool:
        """``replace`` for one cell in Python floats (the own-update path); True: recompute it."""
        ref = float(self.ref_rel[cell]) + self.base
        mass = float(self.mass[cell])
        if t_new > 0 and lw_new > ref + REBASE:
            r = math.floor(lw_new - self.base)
            self.ref_rel[cell] = r
            new_ref = float(self.ref_rel[cell]) + self.base  # as stored (float32)
            scale = math.exp2(ref - new_ref)  # 0.0 where ref = -inf
            self.num[cell] *= scale
            self.den[cell] *= scale
            mass *= scale
            ref = new_ref
        finite = math.isfinite(ref)  # clipped as in ``replace``: the same term in and out
        w_old = t_old * math.exp2(min(max(lw_old - ref, _EXP_MIN), _EXP_MAX)) if t_old > 0 and finite else 0.0
        w_new = t_new * math.exp2(min(max(lw_new - ref, _EXP_MIN), _EXP_MAX)) if t_new > 0 and finite else 0.0
        den = float(self.den[cell]) - w_old + w_new
        self.num[cell] = float(self.num[cell]) - w_old * q_old + w_new * q_new
        self.den[cell] = den
        mass = max(mass, den)
        self.mass[cell] = mass
        return den < mass * _CANCEL

    def set_exact(self, cells: np.ndarray, num: np.ndarray, den: np.ndarray, ref_rel: np.ndarray) -> None:
        """Overwrite cells with sums computed exactly relative to ``base + ref_rel`` (``quantize``'s
        float32 references; ``peerd.qtable``'s recompute)."""
        self.num[cells] = num
        self.den[cells] = den
        self.ref_rel[cells] = ref_rel
        self.mass[cells] = den

    def add_counts(self, name: str, cells: np.ndarray, diff: np.ndarray) -> None:
        """Merged counts change by ``diff`` (int64) at distinct cells."""
        a = getattr(self, name)
        as_int = a.view(np.int64)  # uint64 read as int64: the same bits, signed arithmetic
        as_int[cells] += diff


def evidence_of(den: np.ndarray, ref: np.ndarray, now: float) -> np.ndarray:
    """``MergedView.evidence`` from already gathered ``den`` and ``ref``.

    ``2^min(ref − now, 30) · max(den, 0)``: where nothing counts, ``ref`` is
    -inf and ``den`` 0, and ``2^-inf · 0`` is 0, so no mask pass is needed.
    """
    scale = np.subtract(ref, now)
    np.minimum(scale, 30.0, out=scale)
    np.exp2(scale, out=scale)
    scale *= np.maximum(den, 0.0)
    return scale
