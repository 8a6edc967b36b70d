"""Dense numpy storage of every origin's cells, addressed by sorted uint64 state keys.

Layout: one row per known state key, one column per action, one slot per origin,
``[rows, actions, origins]`` with the origin innermost, so that gathering "all
origins of these cells" (the merge's inner loop) reads contiguous memory. Rows
are appended (capacity doubles) and found through a sorted key index, so a
batch of keys is located with one ``searchsorted`` and no per-cell Python.

An empty slot has ``lw = -inf``, ``n = 0`` and ``version = 0``; a filled one
has a finite ``lw`` and ``n >= 1`` (deltas are validated, own updates add a
finite weight), so the merge can tell held evidence from ``lw`` alone.
"""

from __future__ import annotations

import numpy as np

_FIELDS = {
    "q": (np.float32, 0.0),
    "lw": (np.float64, -np.inf),
    "n": (np.uint32, 0),
    "succ": (np.uint32, 0),
    "fail": (np.uint32, 0),
    "version": (np.uint64, 0),
}


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


class OriginCells:
    """Cell arrays ``[row_capacity, n_actions, origin_capacity]`` per field."""

    def __init__(self, n_actions: int, row_capacity: int = 64, origin_capacity: int = 4) -> None:
        self.n_actions = n_actions
        self.row_cap = row_capacity
        self.origin_cap = origin_capacity
        self.arrays: dict[str, np.ndarray] = {
            f: np.full((row_capacity, n_actions, origin_capacity), fill, dtype)
            for f, (dtype, fill) in _FIELDS.items()
        }

    def __getitem__(self, field: str) -> np.ndarray:
        return self.arrays[field]

    def flat(self, field: str) -> np.ndarray:
        """The field as ``[row_capacity * n_actions, origin_capacity]`` (a view)."""
        a = self.arrays[field]
        return a.reshape(self.row_cap * self.n_actions, self.origin_cap)

    def field(self, field: str) -> np.ndarray:
        """The field as one flat view: slot ``(row * n_actions + action) * origin_capacity + origin``."""
        return self.arrays[field].reshape(-1)

    def reserve(self, rows: int, origins: int) -> None:
        """Grow (doubling) so that ``rows`` rows and ``origins`` origins fit."""
        if rows <= self.row_cap and origins <= self.origin_cap:
            return
        new_r = self.row_cap
        while new_r < rows:
            new_r *= 2
        new_o = self.origin_cap
        while new_o < origins:
            new_o *= 2
        for f, (dtype, fill) in _FIELDS.items():
            grown = np.full((new_r, self.n_actions, new_o), fill, dtype)
            grown[: self.row_cap, :, : self.origin_cap] = self.arrays[f]
            self.arrays[f] = grown
        self.row_cap, self.origin_cap = new_r, new_o
