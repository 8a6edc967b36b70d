"""The key index: uint64 state keys → dense row numbers that never move.

Rows are appended as states are first met (``row_keys[row]`` is the key).
Keys are found through an open-addressing hash (linear probing, 1/4 to 1/2
full, a power-of-two number of 16-byte slots ``[key, row + 1]``, 0 = empty):
a batch of keys is one vectorised probe round for most of them (one cache
miss per key), where a binary search over sorted keys took ~17 dependent
steps per key, and adding keys never shifts an array. The slot of a key is
the top bits of ``key × M`` for a random odd ``M`` drawn per index: keys
come from peers too, and a peer that could predict the slots could send keys
that all collide. A merged cell is addressed by its flat id
``row * n_actions + action`` everywhere else in the core.
"""

from __future__ import annotations

import secrets
from types import ModuleType

import numpy as np

_MASK64 = (1 << 64) - 1
_MIN_BITS = 6
_TAIL = 48  # a vectorised probe loop finishes its last this-many keys in plain Python


class KeyIndex:
    """Maps uint64 state keys to dense row numbers; rows never move."""

    def __init__(self) -> None:
        self.row_keys = np.empty(16, np.uint64)
        self.size = 0
        self._mult = secrets.randbits(64) | 1
        self._bits = _MIN_BITS
        self._tab = np.zeros((1 << self._bits, 2), np.uint64)  # [key, row + 1]; row + 1 = 0: empty
        self._slots = self._tab.view("V16").reshape(-1)
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None
        self._bind()

    def _bind(self) -> None:
        """``kernel_args``: the hash, its multiplier and shift, as ``kernels_numba.key_ensure``
        takes them (a tuple kept while the hash stays)."""
        self.kernel_args = (self._tab, np.uint64(self._mult), np.uint64(64 - self._bits))

    # ---------------------------------------------------------------- probes
    def _home(self, keys: np.ndarray) -> np.ndarray:
        h = keys * np.uint64(self._mult)  # wraps modulo 2^64, as intended
        h >>= np.uint64(64 - self._bits)
        return h.view(np.int64)  # < 2^bits: the same bits

    def _home_one(self, key: int) -> int:
        return ((key * self._mult) & _MASK64) >> (64 - self._bits)

    def find(self, key: int) -> int:
        """Row of one key, or -1. The act/learn hot path."""
        tab, mask = self._tab, (1 << self._bits) - 1
        pos = self._home_one(int(key))
        while True:
            r = int(tab[pos, 1])
            if r == 0:
                return -1
            if int(tab[pos, 0]) == key:
                return r - 1
            pos = (pos + 1) & mask

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Rows of many keys, -1 where unknown."""
        keys = np.asarray(keys, np.uint64)
        m = keys.shape[0]
        if self.size == 0 or m == 0:
            return np.full(m, -1, np.int64)
        mask = (1 << self._bits) - 1
        pos = self._home(keys)
        blk = self._slots.take(pos).view(np.uint64).reshape(m, 2)
        r = blk[:, 1]
        hit = blk[:, 0] == keys  # key 0 "hits" an empty slot [0, 0]: its row reads -1 below
        go = r != 0
        go = np.greater(go, hit, out=go)  # occupied by another key: probe on
        rows = np.multiply(r, hit).view(np.int64)  # row + 1 where hit, else 0
        rows -= 1
        idx = np.flatnonzero(go)
        pos = pos[idx]
        pos += 1
        pos &= mask
        while idx.shape[0] > _TAIL:
            blk = self._slots.take(pos).view(np.uint64).reshape(-1, 2)
            r = blk[:, 1]
            hit = blk[:, 0] == keys[idx]
            go = r != 0
            go = np.greater(go, hit, out=go)
            hit &= r != 0
            rows[idx[hit]] = r[hit].view(np.int64) - 1
            idx, pos = idx[go], (pos[go] + 1) & mask
        flat = self._tab.reshape(-1)  # [key, row + 1] pairs
        for i, p in zip(idx.tolist(), pos.tolist(), strict=True):  # the last long probe sequences
            k = int(keys[i])
            while True:
                r1 = int(flat[2 * p + 1])
                if r1 == 0:
                    break
                if int(flat[2 * p]) == k:
                    rows[i] = r1 - 1
                    break
                p = (p + 1) & mask
        return rows

    def _put(self, keys: np.ndarray, rows: np.ndarray, kern: ModuleType | None = None) -> None:
        """Put distinct keys, known absent, into the hash (room is the caller's job)."""
        tab, mask = self._tab, (1 << self._bits) - 1
        if kern is not None:
            kern.key_put(tab, np.uint64(self._mult), np.uint64(64 - self._bits), keys,
                         rows.astype(np.int64, copy=False))
            return
        pos = self._home(keys)
        tag = rows.astype(np.uint64) + np.uint64(1)
        while keys.shape[0] > _TAIL:
            open_ = np.flatnonzero(tab[pos, 1] == 0)
            cand = pos[open_]
            tab[cand, 1] = tag[open_]  # several may race for one slot: one write survives
            won = np.zeros(keys.shape[0], bool)
            won[open_] = tab[cand, 1] == tag[open_]
            tab[pos[won], 0] = keys[won]
            lose = ~won
            keys, tag, pos = keys[lose], tag[lose], (pos[lose] + 1) & mask
        for k, t, p in zip(keys.tolist(), tag.tolist(), pos.tolist(), strict=True):
            while int(tab[p, 1]) != 0:
                p = (p + 1) & mask
            tab[p, 0], tab[p, 1] = k, t

    def _grow(self, need: int, kern: ModuleType | None = None) -> None:
        """Rebuild the hash with the keys held, doubling until ``need`` keys fill it at most half."""
        bits = self._bits
        while need > (1 << bits) // 2:
            bits += 1
        if bits == self._bits:
            return
        self._bits = bits
        self._tab = np.zeros((1 << bits, 2), np.uint64)
        self._slots = self._tab.view("V16").reshape(-1)
        self._bind()
        self._put(self.row_keys[: self.size].copy(), np.arange(self.size, dtype=np.int64), kern)

    # ----------------------------------------------------------------- adds
    def ensure(self, keys: np.ndarray) -> np.ndarray:
        """Rows of many keys, appending rows for unknown ones."""
        keys = np.asarray(keys, np.uint64)
        rows = self.lookup(keys)
        missing = rows < 0
        if missing.any():
            new_keys, inv = np.unique(keys[missing], return_inverse=True)
            first = self.size
            new_rows = np.arange(first, first + new_keys.shape[0], dtype=np.int64)
            self._grow(first + new_keys.shape[0])  # rehashes the keys held so far
            self._append_rows(new_keys)
            self._put(new_keys, new_rows)
            rows[missing] = new_rows[inv.reshape(-1)]
        return rows

    def limit(self) -> int:
        """How many keys the index holds before it must grow (``make_room``): its hash half
        full, or ``row_keys`` full."""
        return min((1 << self._bits) // 2, self.row_keys.shape[0])

    def make_room(self, kern: ModuleType | None = None) -> None:
        """Grow what is full once ``limit()`` keys are held: ``row_keys`` as ``_append_rows``
        grows it, the hash as ``_grow``. The compiled merge (``kernels_numba.merge_delta``)
        adds keys until ``limit()`` and asks for this, then goes on: the index grows when
        and as ``ensure``'s does."""
        if self.size >= self.row_keys.shape[0]:
            grown = np.empty(max(self.size + 1, 2 * self.row_keys.shape[0]), np.uint64)
            grown[: self.size] = self.row_keys[: self.size]
            self.row_keys = grown
        self._grow(self.size + 1, kern)

    def grew_to(self, size: int) -> None:
        """After a compiled merge appended rows up to ``size``."""
        if size != self.size:
            self.size = int(size)
            self._sorted = None

    def add(self, key: int) -> int:
        """Row of one key, appending it if unknown."""
        row = self.find(key)
        if row >= 0:
            return row
        return int(self.ensure(np.array([key], np.uint64))[0])

    def _append_rows(self, new_keys: np.ndarray) -> None:
        need = self.size + new_keys.shape[0]
        if need > self.row_keys.shape[0]:
            grown = np.empty(max(need, 2 * self.row_keys.shape[0]), np.uint64)
            grown[: self.size] = self.row_keys[: self.size]
            self.row_keys = grown
        self.row_keys[self.size : need] = new_keys
        self.size = need
        self._sorted = None

    # ---------------------------------------------------------------- sorted
    def _by_key(self) -> tuple[np.ndarray, np.ndarray]:
        if self._sorted is None or self._sorted[0].shape[0] != self.size:
            rows = np.argsort(self.row_keys[: self.size], kind="stable")
            self._sorted = (self.row_keys[rows], rows)
        return self._sorted

    @property
    def sorted_keys(self) -> np.ndarray:
        """Every key, ascending (computed on demand: for comparisons and tools, not hot paths)."""
        return self._by_key()[0]

    @property
    def sorted_rows(self) -> np.ndarray:
        """The row of each of ``sorted_keys``."""
        return self._by_key()[1]

    @property
    def nbytes(self) -> int:
        """Bytes held by the index arrays (capacity included; not the on-demand sorted copy)."""
        return int(self._tab.nbytes + self.row_keys.nbytes)
