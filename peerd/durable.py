"""The durable watermark: how far a node may publish its own contribution. Pure: no I/O.

DESIGN §4: a node publishes, and answers syncs, only up to the highest own
version ``v`` such that *every* version ≤ ``v`` has been committed to SQLite.
``QTable.version`` counts updates whose commit is still pending or has failed;
publishing those would let peers hold cells that a crash erases, and the
restarted node would then reuse their version numbers for other cells.

Versions are assigned in order but their commits may resolve out of order
(several ``learn`` calls share one group commit and are woken in any order;
a failed batch fails some of them). So the watermark is not "the last commit
that returned" but ``min(open versions) − 1``, where *open* means begun and
not yet durable.

A failed commit leaves its version open: the in-memory cell holds an update
the disk does not. ``repair_range`` tells the node what to rewrite (every own
cell changed after the watermark, at its current state, which includes the
failed update); once that rewrite commits, ``repaired`` closes the failed
versions it covered. While the disk stays broken the watermark stays put and
nothing newer goes out: safe, and what "publish only what is durable" means.
"""

from __future__ import annotations

__all__ = ["DurableWatermark"]


class DurableWatermark:
    """Own versions begun but not yet durable, and the watermark they imply."""

    def __init__(self) -> None:
        self._pending: set[int] = set()
        self._failed: set[int] = set()

    def begin(self, version: int) -> None:
        """A write of ``version`` was submitted (call before the first ``await``)."""
        self._pending.add(version)

    def committed(self, version: int) -> None:
        """The commit carrying ``version`` returned."""
        self._pending.discard(version)

    def failed(self, version: int) -> None:
        """The commit carrying ``version`` failed (or its caller gave up): it needs a repair."""
        if version in self._pending:
            self._pending.discard(version)
            self._failed.add(version)

    def value(self, table_version: int) -> int:
        """Highest version ``v`` ≤ ``table_version`` with every version ≤ ``v`` durable."""
        if not self._pending and not self._failed:
            return table_version
        return min(table_version, min(self._pending | self._failed) - 1)

    @property
    def needs_repair(self) -> bool:
        return bool(self._failed)

    @property
    def open(self) -> int:
        """How many versions are not durable yet (status, metrics)."""
        return len(self._pending) + len(self._failed)

    def repaired(self, upto: int) -> None:
        """A rewrite of every own cell changed after the watermark, taken at ``upto``, committed."""
        self._failed = {v for v in self._failed if v > upto}
