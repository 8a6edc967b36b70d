"""The key index: uint64 state keys → dense row numbers that never move.

Rows are appended as states are first met; a sorted copy of the keys (with the
row of each) finds a batch of keys with one ``searchsorted`` and no per-key
Python. A merged cell is addressed by its flat id ``row * n_actions + action``
everywhere else in the core.
"""

from __future__ import annotations

import numpy as np


class KeyIndex:
    """Maps uint64 state keys to dense row numbers; rows never move."""

    def __init__(self) -> None:
        self.sorted_keys = np.empty(0, np.uint64)
        self.sorted_rows = np.empty(0, np.int64)
        self.row_keys = np.empty(16, np.uint64)
        self.size = 0

    def find(self, key: int) -> int:
        """Row of one key, or -1. The act/learn hot path."""
        sk = self.sorted_keys
        i = int(sk.searchsorted(np.uint64(key)))
        if i < sk.shape[0] and int(sk[i]) == key:
            return int(self.sorted_rows[i])
        return -1

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Rows of many keys, -1 where unknown."""
        sk = self.sorted_keys
        if sk.shape[0] == 0:
            return np.full(keys.shape[0], -1, np.int64)
        pos = sk.searchsorted(keys)
        pos_c = np.minimum(pos, sk.shape[0] - 1)
        hit = sk[pos_c] == keys
        return np.where(hit, self.sorted_rows[pos_c], -1)

    def ensure(self, keys: np.ndarray) -> np.ndarray:
        """Rows of many keys, appending rows for unknown ones."""
        rows = self.lookup(keys)
        missing = rows < 0
        if missing.any():
            new_keys = np.unique(keys[missing])
            first = self.size
            new_rows = np.arange(first, first + new_keys.shape[0], dtype=np.int64)
            self._append_rows(new_keys)
            at = self.sorted_keys.searchsorted(new_keys)
            self.sorted_keys = np.insert(self.sorted_keys, at, new_keys)
            self.sorted_rows = np.insert(self.sorted_rows, at, new_rows)
            rows[missing] = new_rows[new_keys.searchsorted(keys[missing])]
        return rows

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

    @property
    def nbytes(self) -> int:
        """Bytes held by the index arrays (capacity included)."""
        return int(self.sorted_keys.nbytes + self.sorted_rows.nbytes + self.row_keys.nbytes)
