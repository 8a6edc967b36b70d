"""Compiled merge kernels (numba): one loop per delta, no temporaries.

Imported only through ``peerd.kernels.load()``, never by ``import peerd``:
numba and LLVM cost ~100 MB of RSS, which a daemon that only ever sees small
deltas should not pay (``peerd.kernels`` says when they are loaded).

Each kernel does, per cell, what a stage of the numpy merge path does with
~20 whole-array passes (``KeyIndex.lookup``, ``CellStore.lookup`` + the
version test, ``CellStore.insert``, ``MergedView.swap``): a numpy pass over a
10 k-cell delta costs 3–25 µs of set-up, casts and a temporary, and the merge
makes ~100 of them; a loop compiled once does the same arithmetic with the
values in registers. The arithmetic is the numpy path's, in the same order
(the numpy path stays the reference: ``tests/test_kernels.py`` checks that
both give the same view). ``cache=True``: compiled once per machine, then
loaded from ``__pycache__``.

All integer arithmetic on hashes is on explicit ``np.uint64`` values: numba,
like numpy, turns a uint64 mixed with a signed int into a float.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_U32 = np.uint64(32)
_REBASE = 64.0  # peerd.view.REBASE
_CANCEL = 2.0 ** -8  # peerd.view._CANCEL
_EXP_MIN, _EXP_MAX = -1021.0, 1000.0  # peerd.view._EXP_MIN, _EXP_MAX
#: how many cells ahead a loop asks for the memory it will touch (``_prefetch``)
_AHEAD = 32


@intrinsic
def _prefetch(typingctx, arr, idx):  # type: ignore[no-untyped-def]
    """Ask the CPU for ``arr[idx]``'s cache line now (LLVM's ``prefetch``; no fault, no result).

    A delta's cells are random in tables of tens of MB, so each look-up is a
    cache miss. numpy's whole-array ``take`` issues all of a pass's misses at
    once; one loop that does a cell's look-up, arithmetic and ``exp2`` at a
    time keeps few in flight and waits for each (measured: slower than
    numpy). Prefetching ``_AHEAD`` cells ahead overlaps them again.
    """
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        aryty, idxty = signature.args
        ary = context.make_array(aryty)(context, builder, args[0])
        at = context.cast(builder, args[1], idxty, types.intp)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [at], wraparound=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # read/write = 1 (the loops write most lines they touch), locality 3, data cache
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 1), ir.Constant(i32, 3),
                          ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True)
def _cell_home(c: int, size: int) -> int:
    """``_OriginHash.home`` of one cell: hi32(cell × golden) × size / 2^32."""
    h = (np.uint64(c) * _GOLDEN) >> _U32
    return np.int64((h * np.uint64(size)) >> _U32)


@njit(cache=True, nogil=True)
def key_put(tab, mult, shift, keys, rows):  # type: ignore[no-untyped-def]
    """``KeyIndex._put``: distinct keys, known absent, at the end of their probes."""
    mask = tab.shape[0] - 1
    flat = tab.reshape(-1)
    m = keys.shape[0]
    for i in range(m):
        if i + _AHEAD < m:
            _prefetch(flat, 2 * np.int64((keys[i + _AHEAD] * mult) >> shift))
        k = keys[i]
        p = np.int64((k * mult) >> shift)
        while tab[p, 1] != 0:
            p = (p + 1) & mask
        tab[p, 0] = k
        tab[p, 1] = np.uint64(rows[i] + 1)


@njit(cache=True, nogil=True)
def key_ensure(tab, mult, shift, keys, actions, n_actions, row_keys, size, limit, start,
               cells):  # type: ignore[no-untyped-def]
    """``KeyIndex.ensure`` and the flat cell ids ``row · n_actions + action``, one loop.

    From cell ``start`` on: a key not found is given the next row (appended
    to ``row_keys``) and put in the hash at the end of its probe, so a later
    cell of the same key finds it. A new key that would make the index hold
    more than ``limit`` keys (the hash half full, or ``row_keys`` full) stops
    the loop: the caller grows what is full and calls again from there, so
    the index grows exactly when ``ensure``'s would. For sorted keys (a
    merge's are) new rows come in key order, as ``np.unique`` gives them on
    the numpy path. Returns ``(size, where it stopped)``.
    """
    mask = tab.shape[0] - 1
    flat = tab.reshape(-1)
    m = keys.shape[0]
    for i in range(start, m):
        if i + _AHEAD < m:
            _prefetch(flat, 2 * np.int64((keys[i + _AHEAD] * mult) >> shift))
        k = keys[i]
        p = np.int64((k * mult) >> shift)
        row = -1
        while True:
            r = tab[p, 1]
            if r == 0:
                break
            if tab[p, 0] == k:
                row = np.int64(r) - 1
                break
            p = (p + 1) & mask
        if row < 0:  # p: the empty slot that ended the probe
            if size >= limit:
                return size, i
            row = size
            row_keys[size] = k
            size += 1
            tab[p, 0] = k
            tab[p, 1] = np.uint64(row + 1)
        cells[i] = row * n_actions + np.int64(actions[i])
    return size, m


@njit(cache=True, nogil=True)
def cell_probe(table, cellcol, rec_q, rec_lw, rec_n, rec_version, cells, version,
               e, gaps, q_old, lw_old, n_old, absent):  # type: ignore[no-untyped-def]
    """``CellStore.lookup`` + the version test + the gather of the old records, in one loop.

    Writes each cell's entry (0: absent), the empty hash slot its probe
    ended at (-1 where present), and the held ``q``, ``lw``, ``n`` (the
    sentinel's where absent), and the indices of the absent cells into
    ``absent``. Returns ``(how many incoming versions are newer, how many absent)``.
    """
    size = table.shape[0]
    m = cells.shape[0]
    newer = 0
    na = 0
    for i in range(m):
        # two stages ahead: the hash slot of cell i + 2·AHEAD, the record its slot names for i + AHEAD
        if i + 2 * _AHEAD < m:
            _prefetch(table, _cell_home(cells[i + 2 * _AHEAD], size))
        if i + _AHEAD < m:
            _prefetch(cellcol, table[_cell_home(cells[i + _AHEAD], size)])
        c = cells[i]
        p = _cell_home(c, size)
        while True:
            x = table[p]
            if x == 0:
                e[i] = 0
                gaps[i] = p
                break
            if cellcol[x] == c:
                e[i] = x
                gaps[i] = -1
                break
            p += 1
            if p == size:
                p = 0
        x = e[i]
        if x == 0:
            absent[na] = i
            na += 1
        q_old[i] = rec_q[x]
        lw_old[i] = rec_lw[x]
        n_old[i] = rec_n[x]
        if version[i] > rec_version[x]:
            newer += 1
    return newer, na


@njit(cache=True, nogil=True, inline="always")
def _put_from(table, p, x):  # type: ignore[no-untyped-def]
    """``table[first empty slot from p on, wrapping] = x``: linear probing's insert."""
    size = table.shape[0]
    while table[p] != 0:
        p += 1
        if p == size:
            p = 0
    table[p] = x


@njit(cache=True, nogil=True)
def hash_put(table, cellcol, ids, gaps):  # type: ignore[no-untyped-def]
    """Put entries (known absent) into an origin's hash (its rebuild): each probe starts at
    ``gaps[i]`` (where its look-up ended, the hash unchanged since) or, where -1, at home."""
    size = table.shape[0]
    m = ids.shape[0]
    for i in range(m):
        if i + _AHEAD < m:
            g = gaps[i + _AHEAD]
            _prefetch(table, g if g >= 0 else _cell_home(np.int64(cellcol[ids[i + _AHEAD]]), size))
        x = ids[i]
        p = gaps[i]
        _put_from(table, p if p >= 0 else _cell_home(np.int64(cellcol[x]), size), x)


@njit(cache=True, nogil=True)
def insert_new(ids, at, cells, gaps, slot, cellcol, nextcol, slots, head, table, e):  # type: ignore[no-untyped-def]
    """New entries ``ids`` for cells ``cells[at]``: cell, slot, holder chain, origin hash
    (from ``gaps[at]`` where the look-up's probe ended; from home where that is -1 or
    ``gaps`` is empty), and ``e[at] = ids``. One loop: ``link_new`` + ``hash_put``."""
    size = table.shape[0]
    k = ids.shape[0]
    use_gaps = gaps.shape[0] > 0
    for j in range(k):
        if j + _AHEAD < k:
            _prefetch(head, cells[at[j + _AHEAD]])
            if use_gaps:
                _prefetch(table, gaps[at[j + _AHEAD]])
        x = ids[j]
        i = at[j]
        c = cells[i]
        cellcol[x] = c
        slots[x] = slot
        nextcol[x] = head[c]
        head[c] = x
        e[i] = x
        p = gaps[i] if use_gaps else -1
        _put_from(table, p if p >= 0 else _cell_home(c, size), x)


@njit(cache=True, nogil=True)
def merge_swap(f8, f4, acc_i, base, cells, e, rec_q, rec_lw, rec_n, rec_version,
               q_in, lw_in, n_in, version_in, q_old, lw_old, n_old,
               t, floor, now, bad):  # type: ignore[no-untyped-def]
    """Field writes + ``MergedView.swap`` + the apply statistics, one loop over the cells.

    ``f8``, ``f4`` and ``acc_i`` are the view's 32-byte rows as ``[cap, 4]``
    float64 (num, den), ``[cap, 8]`` float32 (ref_rel at 4, mass at 5) and
    ``[cap, 4]`` int64 (merged n at 3); ``base`` the view's. Writes the indices
    of the cells whose sums cancelled into ``bad``; returns ``(how many,
    Σ merged n, Σ eff/(eff+1))`` with ``eff`` as ``peerd.view.evidence_of``.
    """
    nbad = 0
    total = 0
    conf = 0.0
    m = cells.shape[0]
    flat = f8.reshape(-1)
    for i in range(m):
        if i + _AHEAD < m:  # a 32-byte row, 64-byte aligned: one line
            _prefetch(flat, 4 * cells[i + _AHEAD])
            _prefetch(rec_q, e[i + _AHEAD])
        c = cells[i]
        x = e[i]
        rec_q[x] = q_in[i]
        rec_lw[x] = lw_in[i]
        rec_n[x] = n_in[i]
        rec_version[x] = version_in[i]
        ok_old = n_old[i] >= floor
        ok_new = n_in[i] >= floor
        dn = np.int64(0)
        if ok_new:
            dn += np.int64(n_in[i])
        if ok_old:
            dn -= np.int64(n_old[i])
        num = f8[c, 0]
        den = f8[c, 1]
        ref = np.float64(f4[c, 4]) + base
        mass = np.float64(f4[c, 5])
        d_old = lw_old[i] - ref  # NaN for -inf − -inf: clipped below, and weight 0 anyway
        d_new = lw_in[i] - ref
        if t > 0.0 and ok_new and d_new > _REBASE:  # also ref = -inf
            r32 = np.float32(np.floor(lw_in[i] - base))  # peerd.view.MergedView.quantize
            new_ref = np.float64(r32) + base
            scale = np.exp2(ref - new_ref)
            num *= scale
            den *= scale
            mass *= scale
            ref = new_ref
            f4[c, 4] = r32
            d_old = lw_old[i] - new_ref
            d_new = lw_in[i] - new_ref
        w_old = 0.0  # a term that does not count weighs 0 (numpy: × ok), whatever its exponent
        if ok_old:
            if not d_old >= _EXP_MIN:  # NaN too, as np.fmax
                d_old = _EXP_MIN
            elif d_old > _EXP_MAX:
                d_old = _EXP_MAX
            w_old = np.exp2(d_old) * t
        w_new = 0.0
        if ok_new:
            if not d_new >= _EXP_MIN:
                d_new = _EXP_MIN
            elif d_new > _EXP_MAX:
                d_new = _EXP_MAX
            w_new = np.exp2(d_new) * t
        den = den - w_old
        den = den + w_new
        num = num - w_old * np.float64(q_old[i])
        num = num + w_new * np.float64(q_in[i])
        if den > mass:
            mass = den
        f8[c, 0] = num
        f8[c, 1] = den
        f4[c, 5] = np.float32(mass)
        n_after = acc_i[c, 3] + dn
        acc_i[c, 3] = n_after
        total += n_after
        if den < mass * _CANCEL:
            bad[nbad] = i
            nbad += 1
        else:
            s = ref - now
            if s > 30.0:
                s = 30.0
            eff = np.exp2(s) * (den if den > 0.0 else 0.0)
            conf += eff / (eff + 1.0)
    return nbad, total, conf


def warm() -> None:
    """Call every kernel once on tiny arrays of the merge path's exact types.

    Loads each one from numba's cache (or compiles it, the first time on a
    machine) now, at ``peerd.kernels.load()``, rather than in the middle of
    some later delta that happens to need, say, the first key-index insert.
    Twice: a delta decoded from the wire holds read-only arrays
    (``np.frombuffer``), a type of its own for numba.
    """
    for readonly in (False, True):
        _warm(readonly)


def _warm(readonly: bool) -> None:
    """``warm`` with the delta's arrays writable or not."""
    from peerd.cells import REC  # here: peerd.cells does not need this module

    rec = np.zeros(4, REC)
    rec["lw"][0] = -np.inf
    cellcol, nextcol = rec["cell"], rec["next"]
    q, lw, n, ver = rec["q"], rec["lw"], rec["n"], rec["version"]

    def src(a: np.ndarray) -> np.ndarray:  # an array as a delta holds it
        a.setflags(write=not readonly)
        return a

    tab = np.zeros((64, 2), np.uint64)
    keys = src(np.array([3], np.uint64))
    rows = np.zeros(1, np.int64)
    mult, shift = np.uint64(0x9E3779B97F4A7C15), np.uint64(58)
    key_put(tab, mult, shift, np.array([3], np.uint64), rows)  # the index's own copy: writable
    table = np.zeros(64, np.int32)
    cells, ids, gaps = np.array([5], np.int64), np.array([1], np.int64), np.full(1, -1, np.int64)
    e = np.zeros(1, np.int64)
    q_old, lw_old, n_old = np.zeros(1, np.float32), np.zeros(1), np.zeros(1, np.uint32)
    head = np.full(8, -1, np.int32)
    hash_put(table, cellcol, ids, gaps)
    cell_probe(table, cellcol, q, lw, n, ver, cells, src(np.ones(1, np.uint64)), e, gaps, q_old, lw_old,
               n_old, np.empty(1, np.int64))
    insert_new(ids, np.zeros(1, np.int64), cells, gaps, 1, cellcol, nextcol, np.zeros(4, np.uint16),
               head, table, e)
    key_ensure(tab, mult, shift, keys, src(np.zeros(1, np.uint16)), 4, np.zeros(4, np.uint64), 1, 2, 0,
               rows)
    from peerd.view import MergedView  # the view's exact row arrays

    view = MergedView(0.0, robust=False)
    one16, one32 = src(np.zeros(1, np.uint16)), src(np.ones(1, np.uint32))
    delta_scan(one16, src(np.ones(1, np.float32)), src(np.ones(1)), one32, one32, one32,
               src(np.ones(1, np.uint64)))
    scan_order(keys, one16, one32, one32)
    merge_swap(*view.rows_for_kernels(), cells, ids, q, lw, n, ver,
               src(np.ones(1, np.float32)), src(np.ones(1)), one32, src(np.full(1, 2, np.uint64)),
               q_old, lw_old, n_old, 1.0, 1, 0.0, np.empty(1, np.int64))


@njit(cache=True, nogil=True)
def delta_scan(actions, q, lw, n, succ, fail, version):  # type: ignore[no-untyped-def]
    """Every value ``Delta.validate`` checks, in one pass instead of ten reductions.

    Returns ``(finite, q_lo, q_hi, lw_hi, a_max, v_min, v_max, n_min, over)``:
    whether every ``q`` and ``lw`` is finite, the extremes, and whether some
    ``succ + fail`` exceeds ``n``. ``lw_hi`` and ``v_max`` are what the evidence
    guard and ``QTable.apply`` need next: returned so that neither reads its array again.
    """
    finite = True
    q_lo, q_hi = np.inf, -np.inf
    lw_hi = -np.inf
    a_max = np.uint16(0)
    v_min, v_max = version[0], version[0]
    n_min = n[0]
    over = False
    for i in range(q.shape[0]):
        x = np.float64(q[i])
        if not (np.isfinite(x) and np.isfinite(lw[i])):
            finite = False
        if x < q_lo:
            q_lo = x
        if x > q_hi:
            q_hi = x
        if lw[i] > lw_hi:
            lw_hi = lw[i]
        if actions[i] > a_max:
            a_max = actions[i]
        v = version[i]
        if v < v_min:
            v_min = v
        if v > v_max:
            v_max = v
        if n[i] < n_min:
            n_min = n[i]
        if np.uint64(succ[i]) + np.uint64(fail[i]) > np.uint64(n[i]):
            over = True
    return finite, q_lo, q_hi, lw_hi, a_max, v_min, v_max, n_min, over


@njit(cache=True, nogil=True)
def scan_order(keys, actions, succ, fail):  # type: ignore[no-untyped-def]
    """``(strictly sorted, some outcome)``: whether the (key, action) pairs strictly increase
    (``qtable._strictly_sorted``: then there are no duplicates) and whether some cell
    reports a success or failure, in one pass instead of five numpy passes and two."""
    ordered = True
    for i in range(1, keys.shape[0]):
        k0, k1 = keys[i - 1], keys[i]
        if k1 < k0 or (k1 == k0 and actions[i] <= actions[i - 1]):
            ordered = False
            break
    outcomes = False
    for i in range(succ.shape[0]):
        if succ[i] != 0 or fail[i] != 0:
            outcomes = True
            break
    return ordered, outcomes
