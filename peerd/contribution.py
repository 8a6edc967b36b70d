"""This node's own contribution: the TD update of one own cell, and the version counter.

Own cells live in the ``CellStore`` like every origin's (slot 0); this module
is the only writer of that slot besides a restore from the node's own store.
An own update with target ``T`` at time ``t`` (DESIGN §2):
``lw' = log2(2^lw + 2^(t/H))``, ``q' = q + (T − q)·2^(t/H − lw')``, ``n' = n + 1``,
``version = ++own_version``. ``q`` is stored as float32 (its wire dtype), and
the next update starts from the stored value, so what the view merges, what
is published and what the store restores are the same number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from peerd.cells import CellStore

OWN = 0  # the slot of this node's own origin


@dataclass(frozen=True)
class OwnChange:
    """One own cell before and after an update, for the merged view."""

    entry: int
    q_old: float
    lw_old: float  # -inf: the cell was new
    n_old: int
    q_new: float
    lw_new: float


class Contribution:
    """Writes own updates into slot 0 of a ``CellStore`` and counts the own version."""

    def __init__(self, store: CellStore) -> None:
        self.store = store
        self.version = 0

    def update(self, cell: int, target: float, now: float, success: bool | None) -> OwnChange:
        """Apply the recency-weighted TD update to own ``cell`` at time ``now`` (in half-lives)."""
        st = self.store
        e = st.find_one(cell, OWN)
        if e < 0:
            e = int(st.insert(OWN, np.array([cell], np.int64))[0])
            q_old, lw_old, n_old = 0.0, -math.inf, 0
        else:
            f = st.fields
            q_old, lw_old, n_old = float(f["q"][e]), float(f["lw"][e]), int(f["n"][e])
        lw_new = float(np.logaddexp2(lw_old, now))
        q_new = float(np.float32(q_old + (target - q_old) * math.exp2(now - lw_new)))
        self.version += 1
        f = st.fields
        f["q"][e], f["lw"][e], f["n"][e], f["version"][e] = q_new, lw_new, n_old + 1, self.version
        if success is not None:
            st.enable_outcomes()
            st.fields["succ" if success else "fail"][e] += 1
        return OwnChange(e, q_old, lw_old, n_old, q_new, lw_new)
