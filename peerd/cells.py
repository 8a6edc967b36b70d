"""Every origin's stored cells: one sparse store of the (origin, cell) pairs that exist.

A merged cell is addressed by its flat id ``cell = row * n_actions + action``
(``peerd.keyindex``); an origin by a small integer *slot* (0 = this node). The
store keeps one **entry** per (slot, cell) pair that exists, in parallel arrays
(structure of arrays, so numpy gathers one field at a time):

==========  =======  =====================================================
field       dtype    why
==========  =======  =====================================================
cell        int32    flat cell id (the view is dense, so < 2^31 cells)
slot        uint16   origin slot; ``FREE`` marks a freed entry
q           float32  as on the wire
lw          float64  absolute log-weights reach ~3e6: float32 would round
n           uint32   as on the wire
version     uint64   as on the wire
succ, fail  uint32   allocated only once some origin reports an outcome
next        int32    next entry holding the same cell (holder chain)
==========  =======  =====================================================

Three indexes find entries without scanning:

- an open-addressing hash (linear probing, int32 entry ids, load ≤ 1/2) on
  ``(cell, slot)``: a delta's cells are found in O(cells), vectorised;
- holder chains: ``head[cell]`` → ``next[entry]`` → ... lists the origins that
  hold a cell, so an exact recompute or a robust strategy reads only those;
- per-origin entry lists, so a trust change, ``forget``, ``delta_of`` and the
  leave-one-out read cost O(that origin's cells).

Entries never move, so every index stays valid; ``forget`` returns an
origin's entries to a free list that later inserts reuse, and leaves
tombstones in the hash (rebuilt when they pile up). About 46 B per pair plus
the hash (8-10 B) and the origin list (4-5 B): under 64 B, whatever the number
of origins. No per-cell Python anywhere: every method works on arrays of cells.
"""

from __future__ import annotations

import numpy as np

FREE = np.uint16(0xFFFF)  # slot of a freed entry
MAX_SLOTS = 0xFFFF
_EMPTY, _TOMB = -1, -2  # hash slot states (entry ids are >= 0)
_GOLDEN_INT = 0x9E3779B97F4A7C15
_GOLDEN = np.uint64(_GOLDEN_INT)
_MASK64 = (1 << 64) - 1
_GROW = 1.25  # entry arrays grow by this factor: little slack, still amortised O(1)
_MAX_LOAD, _REBUILD_LOAD = 0.5, 0.4
_SMALL = 16  # batches up to this size are probed in plain Python

#: field -> dtype of the per-entry payload (what a delta carries, minus key and action)
PAYLOAD = {"q": np.float32, "lw": np.float64, "n": np.uint32, "version": np.uint64}
OUTCOMES = {"succ": np.uint32, "fail": np.uint32}


class _IntList:
    """A growable int32 array (one origin's entry ids)."""

    __slots__ = ("a", "n")

    def __init__(self) -> None:
        self.a = np.empty(16, np.int32)
        self.n = 0

    def extend(self, ids: np.ndarray) -> None:
        need = self.n + ids.shape[0]
        if need > self.a.shape[0]:
            grown = np.empty(max(need, int(self.a.shape[0] * _GROW) + 16), np.int32)
            grown[: self.n] = self.a[: self.n]
            self.a = grown
        self.a[self.n : need] = ids
        self.n = need

    @property
    def ids(self) -> np.ndarray:
        return self.a[: self.n]


class CellStore:
    """The (slot, cell) entries of every origin, with a hash, holder chains and origin lists."""

    def __init__(self, capacity: int = 1024) -> None:
        self.cap = capacity
        self.cell = np.empty(capacity, np.int32)
        self.slot = np.full(capacity, FREE, np.uint16)
        self.next = np.empty(capacity, np.int32)
        self.fields: dict[str, np.ndarray] = {f: np.zeros(capacity, d) for f, d in PAYLOAD.items()}
        self.has_outcomes = False
        self.used = 0  # entries ever allocated (high-water mark)
        self.free = np.empty(0, np.int32)  # freed entry ids, reused first
        self.head = np.full(64, -1, np.int32)  # first holder entry per cell
        self.lists: dict[int, _IntList] = {}
        self._table = np.full(2048, _EMPTY, np.int32)
        self._filled = 0  # non-empty hash slots (live + tombstones)
        self._tombs = 0

    # ---------------------------------------------------------------- sizes
    @property
    def pairs(self) -> int:
        """Number of stored (origin, cell) pairs."""
        return self.used - self.free.shape[0]

    def count(self, slot: int) -> int:
        lst = self.lists.get(slot)
        return 0 if lst is None else lst.n

    def entries(self, slot: int) -> np.ndarray:
        """Entry ids of one origin (a view: do not keep it across inserts)."""
        lst = self.lists.get(slot)
        return np.empty(0, np.int32) if lst is None else lst.ids

    @property
    def nbytes(self) -> int:
        """Bytes of the pair storage and its indexes (hash, lists, free list; not ``head``)."""
        arrays = [self.cell, self.slot, self.next, self._table, self.free, *self.fields.values()]
        return int(sum(a.nbytes for a in arrays) + sum(lst.a.nbytes for lst in self.lists.values()))

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
    def _home(self, cell: np.ndarray, slot: np.ndarray | int) -> np.ndarray:
        key = (cell.astype(np.uint64) << np.uint64(16)) | np.asarray(slot, np.uint64)
        h = (key * _GOLDEN) >> np.uint64(32)
        return ((h * np.uint64(self._table.shape[0])) >> np.uint64(32)).astype(np.int64)

    def find(self, cell: np.ndarray, slot: np.ndarray | int) -> np.ndarray:
        """Entry id of each (cell, slot), -1 where absent. ``slot``: one int or one per cell."""
        cell = np.asarray(cell, np.int64)
        m = cell.shape[0]
        if m <= _SMALL:  # a few cells: plain Python probes beat setting up arrays
            slots = [int(slot)] * m if np.ndim(slot) == 0 else np.asarray(slot).tolist()
            return np.array([self.find_one(c, s) for c, s in zip(cell.tolist(), slots, strict=True)],
                            np.int64)
        out = np.full(m, -1, np.int64)
        if self.pairs == 0:
            return out
        table, cap = self._table, self._table.shape[0]
        pos = self._home(cell, slot)
        idx = np.arange(m)
        scalar = np.ndim(slot) == 0
        want_slot = slot if scalar else np.asarray(slot)
        while idx.shape[0]:
            e = table[pos]
            ee = np.maximum(e, 0)
            ws = want_slot if scalar else want_slot[idx]
            hit = (e >= 0) & (self.cell[ee] == cell[idx]) & (self.slot[ee] == ws)
            out[idx[hit]] = e[hit]
            go = ~hit & (e != _EMPTY)
            idx, pos = idx[go], pos[go] + 1
            pos[pos == cap] = 0
        return out

    def find_one(self, cell: int, slot: int) -> int:
        """``find`` for one cell in plain Python ints: the own-update hot path (no array set-up)."""
        if self.pairs == 0:
            return -1
        table = self._table
        cap = table.shape[0]
        key = (cell << 16) | slot
        pos = ((((key * _GOLDEN_INT) & _MASK64) >> 32) * cap) >> 32
        cells, slots = self.cell, self.slot
        while True:
            e = int(table[pos])
            if e == _EMPTY:
                return -1
            if e >= 0 and int(cells[e]) == cell and int(slots[e]) == slot:
                return e
            pos += 1
            if pos == cap:
                pos = 0

    def _insert_hash(self, ids: np.ndarray) -> None:
        """Put entries (known absent from the hash) into it, vectorised over the batch."""
        table, cap = self._table, self._table.shape[0]
        if ids.shape[0] <= _SMALL:
            for e in ids.tolist():
                key = (int(self.cell[e]) << 16) | int(self.slot[e])
                pos = ((((key * _GOLDEN_INT) & _MASK64) >> 32) * cap) >> 32
                while table[pos] >= 0:
                    pos = pos + 1 if pos + 1 < cap else 0
                if table[pos] == _EMPTY:
                    self._filled += 1
                else:
                    self._tombs -= 1
                table[pos] = e
            return
        pos = self._home(self.cell[ids], self.slot[ids])
        ids = ids.astype(np.int32)
        while ids.shape[0]:
            cur = table[pos]
            open_ = cur < 0
            cand_pos, cand_ids = pos[open_], ids[open_]
            table[cand_pos] = cand_ids  # several may race for one slot: one write survives
            won = np.zeros(ids.shape[0], bool)
            won[open_] = table[cand_pos] == cand_ids
            self._filled += int(np.count_nonzero(cur[won] == _EMPTY))
            self._tombs -= int(np.count_nonzero(cur[won] == _TOMB))
            lose = ~won
            ids, pos = ids[lose], pos[lose] + 1
            pos[pos == cap] = 0

    def _rebuild_hash(self, extra: int = 0) -> None:
        live = self.pairs + extra
        size = max(2048, int(live / _REBUILD_LOAD) + 1)
        self._table = np.full(size, _EMPTY, np.int32)
        self._filled = self._tombs = 0
        ids = np.flatnonzero(self.slot[: self.used] != FREE)
        if ids.shape[0]:
            self._insert_hash(ids)

    # --------------------------------------------------------------- insert
    def insert(self, slot: int, cell: np.ndarray) -> np.ndarray:
        """New entries for distinct cells that ``slot`` does not hold yet; returns their ids.

        The caller writes the payload fields. The entries are linked at the
        head of their cells' holder chains and appended to the origin's list.
        """
        k = cell.shape[0]
        reuse = min(k, self.free.shape[0])
        ids = np.empty(k, np.int64)
        if reuse:
            ids[:reuse] = self.free[self.free.shape[0] - reuse :]
            self.free = self.free[: self.free.shape[0] - reuse]
        if k > reuse:
            self._reserve(self.used + k - reuse)
            ids[reuse:] = np.arange(self.used, self.used + k - reuse)
            self.used += k - reuse
        self.cell[ids] = cell
        self.slot[ids] = slot
        for a in self.fields.values():
            a[ids] = 0
        self.next[ids] = self.head[cell]
        self.head[cell] = ids
        self.lists.setdefault(slot, _IntList()).extend(ids.astype(np.int32))
        if self._filled + k > _MAX_LOAD * self._table.shape[0]:
            self._rebuild_hash(extra=0)  # the new ids are live already: rebuild takes them
        else:
            self._insert_hash(ids)
        return ids

    def _reserve(self, n: int) -> None:
        if n <= self.cap:
            return
        cap = max(n, int(self.cap * _GROW) + 1024)
        for name in ("cell", "next"):
            old = getattr(self, name)
            grown = np.empty(cap, old.dtype)
            grown[: self.used] = old[: self.used]
            setattr(self, name, grown)
        slot = np.full(cap, FREE, np.uint16)
        slot[: self.used] = self.slot[: self.used]
        self.slot = slot
        for f, old in list(self.fields.items()):
            grown = np.zeros(cap, old.dtype)
            grown[: self.used] = old[: self.used]
            self.fields[f] = grown
        self.cap = cap

    # ---------------------------------------------------------------- remove
    def drop(self, slot: int) -> np.ndarray:
        """Free every entry of ``slot`` for good; returns the cells it held.

        Unlinks each entry from its cell's holder chain (vectorised: one pass
        per position along the longest chain touched), tombstones it in the
        hash and returns its id to the free list.
        """
        lst = self.lists.pop(slot, None)
        if lst is None or lst.n == 0:
            return np.empty(0, np.int64)
        ids = lst.ids.astype(np.int64)
        cells = self.cell[ids].astype(np.int64)
        self._unlink(ids, cells)
        pos = self._home(cells, slot)
        cap = self._table.shape[0]
        idx = np.arange(ids.shape[0])
        while idx.shape[0]:
            hit = self._table[pos] == ids[idx]
            self._table[pos[hit]] = _TOMB
            go = ~hit
            idx, pos = idx[go], pos[go] + 1
            pos[pos == cap] = 0
        self._tombs += ids.shape[0]
        self.slot[ids] = FREE
        self.free = np.concatenate([self.free, ids.astype(np.int32)])
        if self._tombs > self.pairs:  # tombstones slow every probe: start afresh
            self._rebuild_hash()
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
