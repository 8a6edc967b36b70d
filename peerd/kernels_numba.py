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
from numba.cpython.unsafe.numbers import trailing_zeros
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
    Σ merged n, Σ eff/(eff+1) over the others)`` with ``eff`` as
    ``peerd.view.evidence_of`` (the caller adds the cancelled cells' once
    their sums are recomputed).
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


@njit(cache=True, nogil=True)
def _entry_order(table, n, end):  # type: ignore[no-untyped-def]
    """The ``n`` entry ids in a hash (all ``< end``), ascending: a bitmap of ``end`` bits, then its
    set bits in order. ``np.sort`` of them cost 12 ms at 200 k ids on this project's VM (numpy's
    5 ms), a third of a merge's time over 200 deltas at 8 origins; this is ~1 ms."""
    words = np.zeros((end >> 6) + 1, np.uint64)
    one = np.uint64(1)
    for p in range(table.shape[0]):
        x = table[p]
        if x != 0:
            words[x >> 6] |= one << np.uint64(x & 63)
    out = np.empty(n, np.int64)
    j = 0
    for w in range(words.shape[0]):
        b = words[w]
        while b != 0:
            out[j] = (w << 6) + np.int64(trailing_zeros(b))
            j += 1
            b &= b - one
    return out[:j]


#: ``merge_delta``'s status: merged; the key index must grow; the view must grow
DONE, KEYS_FULL, VIEW_FULL = 0, 1, 2


@njit(cache=True, nogil=True)
def merge_delta(keytab, mult, shift, keys, actions, n_actions, row_keys, ksize, klimit, kstart,
                cell_cap, table, hn, max_load, rebuild_load,
                cellcol, nextcol, slots, rec_q, rec_lw, rec_n, rec_version, head, free, used, slot,
                f8, f4, acc_i, base, q_in, lw_in, n_in, version_in, t, floor, now,
                cells, e, gaps, q_old, lw_old, n_old, absent, ids, at, bad, qc, lwc, nc, vc
                ):  # type: ignore[no-untyped-def]
    """A delta's whole merge in one call: ``key_ensure``, ``cell_probe``, the drop of cells
    whose version is not newer, the origin hash's growth, new ids + ``insert_new``, ``merge_swap``.

    The stages and their arithmetic are the kernels above, called in turn;
    what the caller did between them in Python (growth checks, temporaries,
    bookkeeping) is done here, or checked up front: the records and slots
    hold ``len(keys)`` more entries. Two growths stay the caller's, each
    returned as a status before anything but the key index changed, and
    the caller calls again once it has grown: ``KEYS_FULL``, the key index
    reached ``klimit`` keys (as ``key_ensure``; again from ``kstart``, the
    cell it stopped at), and ``VIEW_FULL``, the key index's cells pass
    ``cell_cap`` (the view's and ``head``'s length; again with ``kstart =
    len(keys)``). ``cells``, ``e``, ``gaps``, ``q_old``, ``lw_old``,
    ``n_old``, ``absent``, ``ids``, ``at``, ``bad``, ``qc``, ``lwc``,
    ``nc``, ``vc``: scratch of at least ``len(keys)`` each, which the caller
    keeps across deltas (and across such calls: ``cells`` holds the ids of
    the cells before ``kstart``).

    New entries take freed ids first (the last ``reuse`` of ``free``, in
    order), then fresh ones from ``used``, as ``CellStore._allocate``. The
    origin's hash (``hn`` entries) is rebuilt as ``CellStore.insert`` rebuilds
    it (past ``max_load`` full, to ``rebuild_load``), its entries put back
    in entry order: the hash after the merge is returned (``table`` itself
    unless rebuilt).

    Returns ``(status, key index size, kstart, k, na, reuse, used, nbad,
    Σ merged n, Σ eff/(eff+1), hash)``; once ``DONE``, ``cells[:k]`` are the
    changed cells and ``e[:k]`` their entries, ``absent[:na]`` the positions
    of the new ones among them, ``at[:k]`` where each is in the delta (only
    if ``k < len(keys)``), ``bad[:nbad]`` the positions whose sums cancelled.
    """
    m = keys.shape[0]
    cells, e, gaps, q_old, lw_old, n_old = cells[:m], e[:m], gaps[:m], q_old[:m], lw_old[:m], n_old[:m]
    if kstart < m:
        ksize, kstart = key_ensure(keytab, mult, shift, keys, actions, n_actions, row_keys, ksize,
                                   klimit, kstart, cells)
        if kstart < m:
            return KEYS_FULL, ksize, kstart, 0, 0, 0, used, 0, 0, 0.0, table
    if ksize * n_actions > cell_cap:
        return VIEW_FULL, ksize, m, 0, 0, 0, used, 0, 0, 0.0, table
    newer, na = cell_probe(table, cellcol, rec_q, rec_lw, rec_n, rec_version, cells, version_in, e,
                           gaps, q_old, lw_old, n_old, absent)
    k = m
    if newer < m:  # keep the newer cells in order, in place (the delta's arrays: copied)
        k = 0
        na = 0
        for i in range(m):
            if version_in[i] > rec_version[e[i]]:
                cells[k] = cells[i]
                e[k] = e[i]
                gaps[k] = gaps[i]
                q_old[k] = q_old[i]
                lw_old[k] = lw_old[i]
                n_old[k] = n_old[i]
                at[k] = i
                qc[k] = q_in[i]
                lwc[k] = lw_in[i]
                nc[k] = n_in[i]
                vc[k] = version_in[i]
                if e[i] == 0:
                    absent[na] = k
                    na += 1
                k += 1
    if k == 0:
        return DONE, ksize, m, 0, 0, 0, used, 0, 0, 0.0, table
    reuse = 0
    if na:
        use_gaps = True
        if hn + na > max_load * table.shape[0]:  # rebuild at rebuild_load, every probe from home
            old = _entry_order(table, hn, used)  # entry order: records read in sequence
            table = np.zeros(max(64, np.int64((hn + na) / rebuild_load) + 1), np.int32)
            hash_put(table, cellcol, old, np.full(old.shape[0], -1, np.int64))
            use_gaps = False
        nfree = free.shape[0]
        reuse = min(na, nfree)
        for j in range(na):
            ids[j] = np.int64(free[nfree - reuse + j]) if j < reuse else used + j - reuse
        insert_new(ids[:na], absent[:na], cells, gaps if use_gaps else gaps[:0], slot, cellcol,
                   nextcol, slots, head, table, e)
        used += na - reuse
    if k < m:
        nbad, total, conf = merge_swap(f8, f4, acc_i, base, cells[:k], e[:k], rec_q, rec_lw, rec_n,
                                       rec_version, qc[:k], lwc[:k], nc[:k], vc[:k], q_old[:k],
                                       lw_old[:k], n_old[:k], t, floor, now, bad)
    else:
        nbad, total, conf = merge_swap(f8, f4, acc_i, base, cells, e, rec_q, rec_lw, rec_n,
                                       rec_version, q_in, lw_in, n_in, version_in, q_old, lw_old,
                                       n_old, t, floor, now, bad)
    return DONE, ksize, m, k, na, reuse, used, nbad, total, conf, table


@njit(cache=True, nogil=True)
def recompute_exact(f8, f4, base, cells, which, head, nextcol, slots, rec_q, rec_lw, rec_n, trust,
                    floor, now):  # type: ignore[no-untyped-def]
    """``QTable._recompute_exact`` of cells ``cells[which]`` (those whose sums cancelled in
    ``merge_swap``), walking each one's holder chain twice instead of ~40 numpy calls, and
    their ``Σ eff/(eff+1)`` (``merge_swap`` left them out of its own).

    As the numpy code: a holder counts with ``trust[slot]`` (the effective trusts, the last
    one standing for any slot past the array) where its ``n`` reaches the floor (1 for
    the own slot 0); the reference is ``quantize`` of the largest counting ``lw``; each
    weight ``t·2^min(lw − ref, 1000)``; the sums are written as ``set_exact`` writes them,
    the evidence read as ``evidence_of``. The sums run in chain order (numpy's
    ``sum(axis=1)`` runs pairwise past 8 holders: the same within a few ulp).
    """
    conf = 0.0
    last = trust.shape[0] - 1
    for i in range(which.shape[0]):
        c = cells[which[i]]
        top = -np.inf
        x = head[c]
        while x >= 0:
            sl = slots[x]
            if rec_n[x] >= (1 if sl == 0 else floor) and trust[min(sl, last)] > 0.0 and rec_lw[x] > top:
                top = rec_lw[x]
            x = nextcol[x]
        r32 = np.float32(np.floor(top - base))  # peerd.view.MergedView.quantize
        ref = np.float64(r32) + base
        b = ref if np.isfinite(ref) else 0.0
        num = 0.0
        den = 0.0
        x = head[c]
        while x >= 0:
            sl = slots[x]
            t = trust[min(sl, last)] if rec_n[x] >= (1 if sl == 0 else floor) else 0.0
            if t > 0.0:
                d = rec_lw[x] - b
                if d > 1000.0:
                    d = 1000.0
                w = t * np.exp2(d)
                num += w * np.float64(rec_q[x])
                den += w
            x = nextcol[x]
        f8[c, 0] = num
        f8[c, 1] = den
        f4[c, 4] = r32
        f4[c, 5] = np.float32(den)
        sc = ref - now  # peerd.view.evidence_of
        if sc > 30.0:
            sc = 30.0
        eff = np.exp2(sc) * (den if den > 0.0 else 0.0)
        conf += eff / (eff + 1.0)
    return conf


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
    from peerd.cells import CellStore, MergeScratch  # here: peerd.cells does not need this module
    from peerd.keyindex import KeyIndex
    from peerd.view import MergedView  # the view's exact row arrays

    def src(a: np.ndarray) -> np.ndarray:  # an array as a delta holds it
        a.setflags(write=not readonly)
        return a

    index, store, view = KeyIndex(), CellStore(), MergedView(0.0, robust=False)
    view.reserve(64)
    store.reserve_cells(64)
    keys = src(np.array([3], np.uint64))
    key_put(*index.kernel_args, np.array([3], np.uint64), np.zeros(1, np.int64))
    index._tab[:] = 0
    one16, one32 = src(np.zeros(1, np.uint16)), src(np.ones(1, np.uint32))
    key_ensure(*index.kernel_args, keys, one16, 4, index.row_keys, 0, 1, 0, np.zeros(1, np.int64))
    index._tab[:] = 0
    delta_scan(keys, one16, src(np.ones(1, np.float32)), src(np.ones(1)), one32, one32, one32,
               src(np.ones(1, np.uint64)), 1.0)
    scan_order(keys, one16, one32, one32)
    store.reserve_entries(1)
    h = store.origin_hash(1, 1)
    merge_delta(*index.kernel_args, keys, one16, 4, index.row_keys, 0, index.limit(), 0, 64, h.table, 0,
                *store.hash_loads, *store.kernel_cols, store.head, store.free, store.used, 1,
                *view.kernel_rows,
                src(np.ones(1, np.float32)), src(np.ones(1)), one32, src(np.full(1, 2, np.uint64)),
                1.0, 1, 0.0, *MergeScratch().get(1))
    f8, f4, _, base = view.kernel_rows
    recompute_exact(f8, f4, base, np.zeros(1, np.int64), np.zeros(1, np.int64), store.head,
                    store.next, store.slot, *store.kernel_cols[3:6], np.ones(2), 1, 0.0)


#: an IEEE double's bits, with this xor-ed in where the sign bit is set, order as signed integers
#: as the doubles do (``_max_double``)
_LOW63 = np.int64(0x7FFFFFFFFFFFFFFF)


@njit(cache=True, nogil=True)
def _max_double(a):  # type: ignore[no-untyped-def]
    """The largest of ``a`` (finite, not empty): an integer max over the doubles' bits mapped to
    their order, which vectorises (a float max does not: NaN's rules), then mapped back."""
    b = a.view(np.int64)
    top = np.int64(-_LOW63) - 1
    for i in range(b.shape[0]):
        x = b[i]
        top = max(top, x ^ ((x >> 63) & _LOW63))
    out = np.empty(1, np.int64)
    out[0] = top ^ ((top >> 63) & _LOW63)
    return out.view(np.float64)[0]


@njit(cache=True, nogil=True)
def delta_scan(keys, actions, q, lw, n, succ, fail, version, q_bound):  # type: ignore[no-untyped-def]
    """Every value ``Delta.validate`` checks, and what the merge asks next, in four short
    loops that vectorise (~8 µs for 10 k cells, against ~25–30 µs for one branchy loop
    and ~17 for ``scan_order``'s) instead of ten numpy reductions.

    Returns ``(finite, q_ok, lw_hi, a_max, v_min, v_max, n_min, over, ordered,
    outcomes)``: whether every ``q`` and ``lw`` is finite, whether every
    ``|q| ≤ q_bound`` (meaningful once finite), the largest ``lw`` (NaN unless
    finite), the extremes, whether some ``succ + fail`` exceeds ``n``, whether
    the (key, action) pairs strictly increase and whether some cell reports an
    outcome (``scan_order``'s answers). ``lw_hi`` and ``v_max`` are what the
    evidence guard and ``QTable.apply`` need next, ``ordered`` and
    ``outcomes`` what ``QTable._merge`` does: returned so that no array is read again.
    """
    m = q.shape[0]
    nonfinite = False
    q_over = False
    for i in range(m):  # x − x is 0 for a finite x, NaN (≠ 0) for NaN or an infinity
        x, y = np.float64(q[i]), lw[i]
        nonfinite |= (x - x != 0.0) | (y - y != 0.0)
        q_over |= abs(x) > q_bound
    a_max = np.uint16(0)
    v_min, v_max = version[0], version[0]
    n_min = n[0]
    either = np.uint32(0)
    over = False
    for i in range(m):
        a_max = max(a_max, actions[i])
        v = version[i]
        v_min = min(v_min, v)
        v_max = max(v_max, v)
        n_min = min(n_min, n[i])
        s, f = succ[i], fail[i]
        either |= s | f
        over |= np.uint64(s) + np.uint64(f) > np.uint64(n[i])
    disorder = False
    for i in range(1, m):
        k0, k1 = keys[i - 1], keys[i]
        disorder |= (k1 < k0) | ((k1 == k0) & (actions[i] <= actions[i - 1]))
    lw_hi = np.nan if nonfinite else _max_double(lw)
    return (not nonfinite, not q_over, lw_hi, a_max, v_min, v_max, n_min, over, not disorder,
            either != 0)


@njit(cache=True, nogil=True)
def scan_order(keys, actions, succ, fail):  # type: ignore[no-untyped-def]
    """``(strictly sorted, some outcome)``: whether the (key, action) pairs strictly increase
    (``qtable._strictly_sorted``: then there are no duplicates) and whether some cell
    reports a success or failure, in one pass instead of five numpy passes and two
    (``delta_scan`` answers both too, for a delta validated just before its merge)."""
    disorder = False
    for i in range(1, keys.shape[0]):
        k0, k1 = keys[i - 1], keys[i]
        disorder |= (k1 < k0) | ((k1 == k0) & (actions[i] <= actions[i - 1]))
    either = np.uint32(0)
    for i in range(succ.shape[0]):
        either |= succ[i] | fail[i]
    return not disorder, either != 0
