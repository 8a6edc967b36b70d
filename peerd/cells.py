"""Every origin's stored cells: one sparse store of the (origin, cell) pairs that exist.

A merged cell is addressed by its flat id ``cell = row * n_actions + action``
(``peerd.keyindex``); an origin by a small integer *slot* (0 = this node). The
store keeps one **entry** per (slot, cell) pair that exists. The fields a
merge reads and writes are one 32-byte record per entry (``rec``, 64-byte
aligned, so a record is one cache line's half and never straddles two): a
delta's cells are random in the store, and one record costs one cache miss
where six parallel arrays cost one each. ``cell``, ``next`` and
``fields[...]`` are strided views of its columns:

==========  =======  =====================================================
field       dtype    why
==========  =======  =====================================================
cell        int32    flat cell id (the view is dense, so < 2^31 cells)
next        int32    next entry holding the same cell (holder chain)
q           float32  as on the wire
n           uint32   as on the wire
lw          float64  absolute log-weights reach ~3e6: float32 would round
version     uint64   as on the wire
slot        uint16   origin slot, its own array (not on the merge path);
                     ``FREE`` marks a freed entry
succ, fail  uint32   own arrays, allocated once some origin reports an outcome
==========  =======  =====================================================

Entry 0 is a sentinel that no origin holds (cell −1, version 0, n 0,
lw −inf): an absent cell's look-up returns entry 0 (``lookup``), so a merge
gathers the records of present and absent cells alike, with no masks.

Two indexes find entries without scanning:

- one open-addressing hash per origin (linear probing, int32 entry ids, 0 =
  empty, 1/4 to 1/2 full) maps a cell to that
  origin's entry: a delta's cells are found in O(cells), vectorised, in a
  table sized to that origin alone (it stays in cache however many origins
  there are); its live slots are also the
  origin's entry list, so a trust change, ``forget``, ``delta_of`` and the
  leave-one-out read cost O(that origin's cells);
- holder chains: ``head[cell]`` → ``next[entry]`` → ... lists the origins that
  hold a cell, so an exact recompute or a robust strategy reads only those.

Entries never move, so every index stays valid; ``forget`` unlinks an
origin's entries, drops its hash and returns its entries to a free list that
later inserts reuse. 34 B per pair (42 with outcomes) plus 8-16 B of hash:
under 64 B, whatever the number of origins. No per-cell Python on any batch
path: every method works on arrays of cells (batches of at most 16 cells are
probed in plain Python, which is faster there).

Records and slots live in address space reserved up front (``MAP_NORESERVE``:
no memory until touched) and grow inside it without a copy or an ``mremap``;
a fresh entry's record is the only memory it first touches besides its slot
and hash slot. Fresh records of a small batch are written in 4 KiB pages,
those of a bulk batch (≥ 2 MiB: a restore) and every completed 2 MiB page
are advised huge pages (``CellStore._advise``): a huge page costs one fault
for 65 536 records, but on a VM whose memory was never used that fault is
~5 µs per KiB against ~0.9 for 4 KiB pages, and most of a delta's fresh
records would pay for a 2 MiB page they only begin.
"""

from __future__ import annotations

import contextlib
import mmap
import sys
from typing import NamedTuple

import numpy as np

FREE = np.uint16(0xFFFF)  # slot of a freed entry
MAX_SLOTS = 0xFFFF
_EMPTY = 0  # an empty hash slot (entry 0 is the sentinel: no origin holds it)
_GOLDEN_INT = 0x9E3779B97F4A7C15
_GOLDEN = np.uint64(_GOLDEN_INT)
_MASK64 = (1 << 64) - 1
_GROW = 1.25  # entry arrays grow by this factor: little slack, still amortised O(1)
_MAX_LOAD, _REBUILD_LOAD = 0.5, 0.25  # a hash is rebuilt at 1/2 full, to 1/4 full
_SMALL = 16  # batches up to this size are probed in plain Python
_TAIL = 48  # a vectorised probe loop finishes its last this-many cells in plain Python
_ALIGN = 64  # a cache line
_HUGE = 2 << 20  # a transparent huge page


def _map_bytes(cap: int) -> int:
    """Bytes to map for ``cap`` records: past 2 MiB, whole huge pages.

    A mapping whose length is a multiple of 2 MiB starts on a 2 MiB boundary
    and keeps it when ``mremap`` moves it, so its huge pages move whole;
    otherwise they are split into 4 KiB pages, and the random gathers of a
    merge miss the TLB. The tail past ``cap`` is never touched: no memory.
    """
    n = cap * REC.itemsize
    return n if n < _HUGE else -(-n // _HUGE) * _HUGE

#: one entry's record: what a merge reads and writes together (32 bytes, aligned)
REC = np.dtype({"names": ["cell", "next", "q", "n", "lw", "version"],
                "formats": ["<i4", "<i4", "<f4", "<u4", "<f8", "<u8"],
                "offsets": [0, 4, 8, 12, 16, 24], "itemsize": 32})
#: field -> dtype of the per-entry payload (what a delta carries, minus key and action)
PAYLOAD = {"q": np.float32, "lw": np.float64, "n": np.uint32, "version": np.uint64}
OUTCOMES = {"succ": np.uint32, "fail": np.uint32}


#: ``MAP_NORESERVE`` (Python's ``mmap`` names it from 3.13 on; Linux's value before)
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform.startswith("linux") else 0)
#: entries whose records (and slots) a store reserves address space for up front (16 GiB
#: of records): they grow inside it without ``mremap``, so parts of it can get different
#: huge-page advice (``CellStore._advise``); past it, a store grows as before
_RESERVE_ENTRIES = 1 << 29


def _reserve_map(nbytes: int) -> mmap.mmap | None:
    """A private anonymous mapping of ``nbytes`` of address space, not committed (``MAP_NORESERVE``):
    pages exist only once touched. None where the platform refuses (no ``MAP_NORESERVE``, strict
    overcommit, an address-space limit)."""
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    if not flags or not _MAP_NORESERVE:
        return None
    try:
        return mmap.mmap(-1, nbytes, flags=flags | _MAP_NORESERVE)
    except (OSError, ValueError, TypeError, OverflowError):
        return None


def _records(cap: int) -> tuple[mmap.mmap | None, np.ndarray]:
    """``cap`` zeroed records starting on a cache-line boundary, and the buffer that holds them.

    A private anonymous mapping where the platform has one: page-aligned, and
    ``_grow_records`` can enlarge it in place (``mremap``: no copy, no second
    array alive meanwhile, so no peak of twice the store). Else a numpy
    array, aligned by hand (numpy aligns to 16 only); ``buf`` is then None.
    """
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    if flags:
        try:
            buf = mmap.mmap(-1, _map_bytes(cap), flags=flags)
        except (OSError, ValueError, TypeError):
            pass
        else:
            if hasattr(mmap, "MADV_HUGEPAGE"):  # numpy asks the same for its large arrays
                with contextlib.suppress(OSError):
                    buf.madvise(mmap.MADV_HUGEPAGE)
            return buf, np.frombuffer(buf, REC, count=cap)
    raw = np.zeros(cap * REC.itemsize + _ALIGN, np.uint8)
    off = -raw.ctypes.data % _ALIGN
    return None, raw[off : off + cap * REC.itemsize].view(REC)


class _OriginHash:
    """One origin's open-addressing hash: cell → entry id (linear probing, int32 slots, 0 = empty).

    Per origin, so that a delta's look-ups stay within a table sized to that
    origin's cells (cache-friendly, whatever the fleet) and ``forget`` drops
    the whole table at once. Sized to be 1/4 full when built and rebuilt past
    1/2 (any size: the home slot is ``hi32(cell × golden) × size / 2^32``), so
    probes stay short and a pair costs 8-16 B of hash.
    """

    __slots__ = ("n", "size", "table")

    def __init__(self, n: int = 0) -> None:
        self.size = max(64, int(n / _REBUILD_LOAD) + 1)
        self.table = np.zeros(self.size, np.int32)
        self.n = 0  # entries held

    def home(self, cell: np.ndarray) -> np.ndarray:
        """Home slots of int64 cells (non-negative)."""
        h = cell.view(np.uint64) * _GOLDEN  # wraps modulo 2^64, as intended
        h >>= np.uint64(32)
        h *= np.uint64(self.size)
        h >>= np.uint64(32)
        return h.view(np.int64)

    def home_one(self, cell: int) -> int:
        return ((((cell * _GOLDEN_INT) & _MASK64) >> 32) * self.size) >> 32

    def ids(self) -> np.ndarray:
        t = self.table
        return t[t != _EMPTY]


def _step(pos: np.ndarray, size: int) -> np.ndarray:
    """The next slots after ``pos``, wrapping at ``size`` (in place)."""
    pos += 1
    pos[pos == size] = 0
    return pos


class ScratchArrays(NamedTuple):
    """The compiled merge's per-cell scratch: ``kernels_numba.merge_delta``'s last arguments,
    in its order and under its names (passed as ``*scratch``); each of at least the delta's
    length. After a merge of ``k`` changed cells (of ``na`` new ones, ``nbad`` cancelled):"""

    cells: np.ndarray  #: int64: ``[:k]`` the changed cells (flat ids)
    e: np.ndarray  #: int64: ``[:k]`` their entries in the store
    gaps: np.ndarray  #: int64: hash probe distances (the kernel's own)
    q_old: np.ndarray  #: float32: ``[:k]`` the stored q before the merge
    lw_old: np.ndarray  #: float64: ``[:k]`` the stored lw before
    n_old: np.ndarray  #: uint32: ``[:k]`` the stored n before (0 for a new entry)
    absent: np.ndarray  #: int64: ``[:na]`` positions (in ``cells[:k]``) of the new entries
    ids: np.ndarray  #: int64: the new entries' ids (the kernel's own)
    at: np.ndarray  #: int64: ``[:k]`` where each changed cell is in the delta (if ``k < m``)
    bad: np.ndarray  #: int64: ``[:nbad]`` positions whose sums cancelled (recomputed exactly)
    qc: np.ndarray  #: float32: the kept cells' incoming q (if ``k < m``)
    lwc: np.ndarray  #: float64: ... lw
    nc: np.ndarray  #: uint32: ... n
    vc: np.ndarray  #: uint64: ... version


_SCRATCH_DTYPES = ScratchArrays(np.int64, np.int64, np.int64, np.float32, np.float64, np.uint32,
                                np.int64, np.int64, np.int64, np.int64, np.float32, np.float64,
                                np.uint32, np.uint64)


def _scratch(m: int) -> ScratchArrays:
    return ScratchArrays._make(np.empty(m, d) for d in _SCRATCH_DTYPES)


class MergeScratch:
    """Per-cell scratch of the compiled merge, kept across deltas of up to ``KEEP`` cells.

    Allocating ~14 arrays per delta (and first touching their pages) was
    part of the Python glue between the compiled stages; a larger delta (a
    bulk load) gets its own, dropped after it, so an idle table keeps at
    most ``KEEP`` × 96 B.
    """

    KEEP = 1 << 15

    def __init__(self) -> None:
        self.cap = 0
        self.arrays = _scratch(0)

    def get(self, m: int) -> ScratchArrays:
        """Arrays of at least ``m`` cells each."""
        if m <= self.cap:
            return self.arrays
        if m > self.KEEP:
            return _scratch(m)
        self.cap = min(self.KEEP, max(m, 2 * self.cap))
        self.arrays = _scratch(self.cap)
        return self.arrays


class CellStore:
    """The (slot, cell) entries of every origin, with per-origin hashes and holder chains."""

    def __init__(self, capacity: int = 1024) -> None:
        self.cap = max(2, capacity)
        # Records and slots in reserved address space where possible (grown without moving;
        # fresh entries' pages first touched as the entries are written), else as before.
        self._buf = _reserve_map(max(_RESERVE_ENTRIES, self.cap) * REC.itemsize)
        self._reserved = self._buf is not None
        self._huge_to = 0  # records below this byte offset are advised huge (``_advise``)
        self._advised_to = 0  # and below this one, advised one way or the other
        if self._buf is not None:
            self.rec = np.frombuffer(self._buf, REC, count=self.cap)
        else:
            self._buf, self.rec = _records(self.cap)
        self._slotbuf = _reserve_map(max(_RESERVE_ENTRIES, self.cap) * 2)
        if self._slotbuf is not None:  # zero pages: entries not allocated yet read slot 0
            self.slot = np.frombuffer(self._slotbuf, np.uint16, count=self.cap)
        else:
            self.slot = np.full(self.cap, FREE, np.uint16)
        self.slot[0] = FREE  # the sentinel
        self.fields: dict[str, np.ndarray] = {}
        self._bind()
        self.has_outcomes = False
        # entry 0: the sentinel an absent cell's look-up returns (never in a hash or a chain)
        self.rec[0] = (-1, -1, 0.0, 0, -np.inf, 0)
        self.used = 1  # entries ever allocated (high-water mark), the sentinel included
        self.free = np.empty(0, np.int32)  # freed entry ids, reused first
        self.head = np.full(64, -1, np.int32)  # first holder entry per cell
        self.hashes: dict[int, _OriginHash] = {}

    def _bind(self) -> None:
        """(Re)bind the column views of ``rec``."""
        rec = self.rec
        self.cell, self.next = rec["cell"], rec["next"]
        for f in PAYLOAD:
            self.fields[f] = rec[f]
        #: what the compiled merge takes of the store, in its order (rebound with the records)
        self.kernel_cols = (self.cell, self.next, self.slot, *(self.fields[f] for f in PAYLOAD))

    # ---------------------------------------------------------------- sizes
    @property
    def pairs(self) -> int:
        """Number of stored (origin, cell) pairs."""
        return self.used - 1 - self.free.shape[0]

    def count(self, slot: int) -> int:
        h = self.hashes.get(slot)
        return 0 if h is None else h.n

    def entries(self, slot: int) -> np.ndarray:
        """Entry ids of one origin, in no particular order: O(its cells)."""
        h = self.hashes.get(slot)
        return np.empty(0, np.int32) if h is None else h.ids()

    @property
    def nbytes(self) -> int:
        """Bytes of the pair storage and its indexes (hashes, free list; not ``head``)."""
        arrays = [self.rec, self.slot, self.free, *(self.fields[o] for o in OUTCOMES if o in self.fields)]
        return int(sum(a.nbytes for a in arrays) + sum(h.table.nbytes for h in self.hashes.values()))

    def reserve_cells(self, n_cells: int) -> None:
        """Make ``head`` cover flat cell ids ``< n_cells``."""
        if n_cells > self.head.shape[0]:
            grown = np.full(max(n_cells, int(self.head.shape[0] * 1.5)), -1, np.int32)
            grown[: self.head.shape[0]] = self.head
            self.head = grown

    def enable_outcomes(self) -> None:
        """Allocate succ/fail the first time some origin reports an outcome."""
        if not self.has_outcomes:
            self.has_outcomes = True
            for f, d in OUTCOMES.items():
                self.fields[f] = np.zeros(self.cap, d)

    # --------------------------------------------------------------- lookup
    def find(self, cell: np.ndarray, slot: int) -> np.ndarray:
        """Entry id of each cell of origin ``slot``, -1 where absent; vectorised."""
        return self.probe(cell, slot)[0]

    def probe(self, cell: np.ndarray, slot: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``find``, plus where each absent cell's probe ended: ``(entries, gaps)`` (see ``lookup``)."""
        e, gaps = self.lookup(np.asarray(cell, np.int64), slot)
        e[e == 0] = -1
        return e, gaps

    def lookup(self, cell: np.ndarray, slot: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Entry id of each int64 cell of origin ``slot``, **0** (the sentinel) where absent.

        Also returns ``gaps``: ``gaps[i]`` is the empty hash slot that ended
        the probe of an absent cell (-1 for a present one);
        ``insert(..., gaps=...)`` puts new entries there directly instead of
        probing again, provided the origin's hash did not change in between.
        ``gaps`` is None when there was nothing to probe (no hash, or a batch
        small enough for Python).
        """
        m = cell.shape[0]
        h = self.hashes.get(slot)
        if h is None or h.n == 0:
            return np.zeros(m, np.int64), None
        if m <= _SMALL:  # a few cells: plain Python probes beat setting up arrays
            return np.array([max(self.find_one(c, slot), 0) for c in cell.tolist()], np.int64), None
        table, size, cells = h.table, h.size, self.cell
        pos = h.home(cell)
        # First probe of every cell without compressing anything: most end here.
        e = table.take(pos)
        hit = cells[e] == cell  # a strided view: take would copy it whole. Empty: cell -1, no hit
        full = e != _EMPTY
        out = np.multiply(e, hit, dtype=np.int64)  # the entry where hit, else 0 (absent)
        gaps = np.where(full, -1, pos)
        idx = np.flatnonzero(np.greater(full, hit, out=full))  # occupied by another cell: probe on
        pos = _step(pos[idx], size)
        while idx.shape[0] > _TAIL:
            e = table.take(pos)
            hit = cells[e] == cell[idx]
            out[idx[hit]] = e[hit]
            empty = e == _EMPTY
            gaps[idx[empty]] = pos[empty]
            go = ~(empty | hit)
            idx, pos = idx[go], _step(pos[go], size)
        # The last few long probe sequences: a vectorised round costs ~10 array
        # set-ups whatever the batch, so a handful of cells is faster in Python.
        for i, p in zip(idx.tolist(), pos.tolist(), strict=True):
            c = int(cell[i])
            while True:
                e1 = int(table[p])
                if e1 == _EMPTY:
                    gaps[i] = p
                    break
                if int(cells[e1]) == c:
                    out[i] = e1
                    break
                p = p + 1 if p + 1 < size else 0
        return out, gaps

    def find_one(self, cell: int, slot: int) -> int:
        """``find`` for one cell in plain Python ints: the own-update hot path (no array set-up)."""
        h = self.hashes.get(slot)
        if h is None or h.n == 0:
            return -1
        table, cells, size = h.table, self.cell, h.size
        pos = h.home_one(cell)
        while True:
            e = int(table[pos])
            if e == _EMPTY:
                return -1
            if int(cells[e]) == cell:
                return e
            pos = pos + 1 if pos + 1 < size else 0

    def _insert_hash(self, h: _OriginHash, ids: np.ndarray, pos: np.ndarray | None = None) -> None:
        """Put entries (known absent) into an origin's hash, vectorised over the batch.

        ``pos``: where each entry's probe starts (default: its home slot).
        """
        table, size = h.table, h.size
        h.n += ids.shape[0]
        if ids.shape[0] <= _SMALL and pos is None:
            for e in ids.tolist():
                p = h.home_one(int(self.cell[e]))
                while table[p] != _EMPTY:
                    p = p + 1 if p + 1 < size else 0
                table[p] = e
            return
        if pos is None:
            pos = h.home(self.cell[ids].astype(np.int64))
        ids = ids.astype(np.int32)
        while ids.shape[0] > _TAIL:
            open_ = table[pos] == _EMPTY
            cand_pos, cand_ids = pos[open_], ids[open_]
            table[cand_pos] = cand_ids  # several may race for one slot: one write survives
            won = np.zeros(ids.shape[0], bool)
            won[open_] = table[cand_pos] == cand_ids
            lose = ~won
            ids, pos = ids[lose], _step(pos[lose], size)
        for e, p in zip(ids.tolist(), pos.tolist(), strict=True):  # the long tail, as in ``find``
            while table[p] != _EMPTY:
                p = p + 1 if p + 1 < size else 0
            table[p] = e

    # --------------------------------------------------------------- insert
    def insert(self, slot: int, cell: np.ndarray, gaps: np.ndarray | None = None) -> np.ndarray:
        """New entries for distinct cells that ``slot`` does not hold yet; returns their ids.

        The caller writes ``q``, ``lw``, ``n`` and ``version`` (``succ`` and
        ``fail`` start at 0). The entries are linked at the head of their
        cells' holder chains and put in the origin's hash: at ``gaps`` (from
        ``lookup``, the hash unchanged since) unless the hash must grow.
        """
        k = cell.shape[0]
        ids, reuse = self._allocate(k)
        at: np.ndarray | slice = ids
        if not reuse:  # fresh entries are one run: slices write them sequentially
            at = slice(int(ids[0]), int(ids[0]) + k) if k else slice(0, 0)
        self.cell[at] = cell
        self.slot[at] = slot
        if self.has_outcomes:  # a recycled entry may hold old counts; the caller writes the rest
            self.fields["succ"][at] = 0
            self.fields["fail"][at] = 0
        self.next[at] = self.head[cell]
        self.head[cell] = ids
        h = self.hashes.get(slot)
        if h is None:
            h = self.hashes[slot] = _OriginHash(k)
        if h.n + k > _MAX_LOAD * h.size:  # grow: rebuild at 1/4 full
            old = h.ids()
            h = self.hashes[slot] = _OriginHash(h.n + k)
            self._insert_hash(h, np.concatenate([old, ids.astype(np.int32)]))
        elif gaps is not None:  # the empty slots that ended their probes: no second probe
            table = h.table
            ids32 = ids.astype(np.int32)
            table[gaps] = ids32  # two new cells may share a gap: one write survives
            lose = table[gaps] != ids32
            h.n += k
            if lose.any():  # the others go on probing after that gap, as from their home
                h.n -= int(np.count_nonzero(lose))
                self._insert_hash(h, ids[lose], _step(gaps[lose], h.size))
        else:
            self._insert_hash(h, ids)
        return ids

    def _allocate(self, k: int) -> tuple[np.ndarray, int]:
        """Ids for ``k`` new entries: freed ones first, then fresh ones; and how many were freed."""
        reuse = min(k, self.free.shape[0])
        ids = np.empty(k, np.int64)
        if reuse:
            ids[:reuse] = self.free[self.free.shape[0] - reuse :]
            self.free = self.free[: self.free.shape[0] - reuse]
        if k > reuse:
            self._reserve(self.used + k - reuse)
            self._advise(self.used, self.used + k - reuse)
            ids[reuse:] = np.arange(self.used, self.used + k - reuse)
            self.used += k - reuse
        return ids, reuse

    def _advise(self, first: int, end: int) -> None:
        """Huge-page advice for the records of fresh entries ``[first, end)``, before they are written.

        Records are written in entry order, so the 2 MiB pages below the
        batch's end are complete once it is written: they are advised
        ``MADV_HUGEPAGE`` (a page a bulk batch fills whole is faulted as a huge
        page; one written in 4 KiB pages may be collapsed by the kernel's
        ``khugepaged`` later, in the background). The page the
        batch leaves unfinished gets a huge page only if the batch is at least
        2 MiB of records itself (a restore, a bulk load); a delta adding a few
        thousand entries writes it in 4 KiB pages (``MADV_NOHUGEPAGE``) instead of
        faulting 2 MiB for a few KiB of it: on this project's VM, a 2 MiB fault
        on memory the guest never used costs ~5 µs per KiB, a 4 KiB fault ~0.9
        (``docs/merge.md``). Only within the reservation: one mapping whose
        parts may differ (``mremap`` would need one region).
        """
        self._advise_fresh(first, end)
        self._advise_done(end)

    def _advise_fresh(self, first: int, bound: int) -> None:
        """``_advise``'s advice for the pages fresh entries ``[first, end)`` may begin, ``end ≤ bound``
        (the compiled merge knows its count only once done): a bulk batch's pages huge, as
        ``_advise``; else the pages up to ``bound``'s not advised yet ``MADV_NOHUGEPAGE``
        (a page the batch may leave unfinished; one it completes is advised huge by
        ``_advise_done`` afterwards, for ``khugepaged``)."""
        if not self._reserved or self._buf is None or not hasattr(mmap, "MADV_HUGEPAGE"):
            return
        lo, hi, size = first * REC.itemsize, bound * REC.itemsize, len(self._buf)
        if hi <= lo:
            return
        with contextlib.suppress(OSError, ValueError):
            if hi - lo >= _HUGE:  # a bulk batch (a restore): huge pages throughout
                b = hi // _HUGE * _HUGE
                if b > self._huge_to:
                    self._buf.madvise(mmap.MADV_HUGEPAGE, self._huge_to, b - self._huge_to)
                    self._huge_to = b
                if hi > b and b < size and self._advised_to <= b:
                    self._buf.madvise(mmap.MADV_HUGEPAGE, b, min(_HUGE, size - b))
                    self._huge_to = self._advised_to = b + _HUGE
                return
            start = max(self._advised_to, lo // _HUGE * _HUGE)
            stop = min(-(-hi // _HUGE) * _HUGE, size)  # end of the page the bound ends in
            if stop > start:
                self._buf.madvise(mmap.MADV_NOHUGEPAGE, start, stop - start)
                self._advised_to = stop

    def _advise_done(self, end: int) -> None:
        """The 2 MiB pages below the one entry ``end`` is in are complete: ``MADV_HUGEPAGE``."""
        if not self._reserved or self._buf is None or not hasattr(mmap, "MADV_HUGEPAGE"):
            return
        b = end * REC.itemsize // _HUGE * _HUGE
        if b > self._huge_to:  # only where a batch crossed a page boundary
            with contextlib.suppress(OSError, ValueError):
                self._buf.madvise(mmap.MADV_HUGEPAGE, self._huge_to, b - self._huge_to)
            self._huge_to = b

    # ------------------------------------------------- the compiled merge
    def reserve_entries(self, k: int) -> None:
        """Room for ``k`` more entries before a compiled merge (``kernels_numba.merge_delta``),
        which learns how many it adds only once done: records and slots, and the huge-page
        advice for the pages they may begin (``_advise_fresh``)."""
        end = self.used + k
        if end > self.cap:
            self._reserve(end)
        if end * REC.itemsize > self._advised_to:
            self._advise_fresh(self.used, end)

    #: an origin hash's loads, for ``kernels_numba.merge_delta``: rebuilt past the first, to the second
    hash_loads = (_MAX_LOAD, _REBUILD_LOAD)

    def origin_hash(self, slot: int, k: int) -> _OriginHash:
        """The hash of origin ``slot``; a new one sized for ``k`` entries if it has none."""
        h = self.hashes.get(slot)
        if h is None:
            h = self.hashes[slot] = _OriginHash(k)
        return h

    def inserted(self, slot: int, table: np.ndarray, k: int, reuse: int, used: int) -> None:
        """After a compiled merge added ``k`` entries (``reuse`` of them freed ones, the fresh ones
        up to ``used``) with ``table`` as the origin's hash (a rebuilt one, or the same)."""
        h = self.hashes[slot]
        if table is not h.table:
            h.table, h.size = table, table.shape[0]
        h.n += k
        if reuse:
            self.free = self.free[: self.free.shape[0] - reuse]
        if used != self.used:
            self.used = used
            self._advise_done(used)

    def _reserve(self, n: int) -> None:
        if n <= self.cap:
            return
        cap = max(n, int(self.cap * _GROW) + 1024)
        self.rec = self._grow_records(cap)
        if self._slotbuf is not None and cap * 2 <= len(self._slotbuf):
            self.slot = np.frombuffer(self._slotbuf, np.uint16, count=cap)  # in place: no copy
        else:
            slot = np.full(cap, FREE, np.uint16)
            slot[: self.used] = self.slot[: self.used]
            self.slot, self._slotbuf = slot, None
        for f in OUTCOMES:
            if f in self.fields:
                grown = np.zeros(cap, self.fields[f].dtype)
                grown[: self.used] = self.fields[f][: self.used]
                self.fields[f] = grown
        self._bind()
        self.cap = cap

    def _grow_records(self, cap: int) -> np.ndarray:
        """The records, ``cap`` of them: within the reservation, else the mapping enlarged in
        place, else a copy."""
        if self._reserved and self._buf is not None and cap * REC.itemsize <= len(self._buf):
            return np.frombuffer(self._buf, REC, count=cap)
        self._reserved = False  # past the reservation (or none): ``mremap`` or copy from here on
        if self._buf is not None:
            del self.rec, self.cell, self.next  # the mapping cannot move while views of it live
            for f in PAYLOAD:
                del self.fields[f]
            try:
                self._buf.resize(_map_bytes(cap))
            except (BufferError, OSError, ValueError, SystemError):
                pass  # a view still alive somewhere, or no mremap here: copy instead
            else:
                return np.frombuffer(self._buf, REC, count=cap)
            old = np.frombuffer(self._buf, REC, count=self.cap)
        else:
            old = self.rec
        self._buf, rec = _records(cap)
        # as bytes: a structured copy goes field by field, ~9x slower
        rec[: self.used].view(np.uint8)[:] = old[: self.used].view(np.uint8)
        return rec

    # ---------------------------------------------------------------- remove
    def drop(self, slot: int) -> np.ndarray:
        """Free every entry of ``slot`` for good; returns the cells it held.

        Unlinks each entry from its cell's holder chain (vectorised: one pass
        per position along the longest chain touched), drops the origin's hash
        and returns the entry ids to the free list.
        """
        h = self.hashes.pop(slot, None)
        if h is None or h.n == 0:
            return np.empty(0, np.int64)
        ids = h.ids().astype(np.int64)
        cells = self.cell[ids].astype(np.int64)
        self._unlink(ids, cells)
        self.slot[ids] = FREE
        self.free = np.concatenate([self.free, ids.astype(np.int32)])
        return cells

    def _unlink(self, ids: np.ndarray, cells: np.ndarray) -> None:
        """Remove entries (one per cell) from their holder chains."""
        first = self.head[cells]
        at_head = first == ids
        self.head[cells[at_head]] = self.next[ids[at_head]]
        p, target = first[~at_head].astype(np.int64), ids[~at_head]
        while p.shape[0]:
            nx = self.next[p]
            found = nx == target
            self.next[p[found]] = self.next[target[found]]
            keep = ~found
            p, target = nx[keep].astype(np.int64), target[keep]

    # --------------------------------------------------------------- holders
    def holders(self, cells: np.ndarray) -> np.ndarray:
        """Entry ids of every origin holding each cell, padded with -1: ``[m, kmax]``."""
        p = self.head[cells].astype(np.int64)
        cols = []
        while True:
            alive = p >= 0
            if not alive.any():
                break
            cols.append(p)
            p = np.where(alive, self.next[np.maximum(p, 0)], -1).astype(np.int64)
        if not cols:
            return np.full((cells.shape[0], 0), -1, np.int64)
        return np.stack(cols, axis=1)
