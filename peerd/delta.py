"""Value objects that travel between tables: ``Delta``, ``PatternSignature``, ``MergeStats``.

A ``Delta`` is a slice of one origin's contribution: the cells that changed
after ``from_version`` up to ``to_version``. Its arrays have exactly the wire
dtypes (DESIGN §5), so encoding is a ``tobytes()`` and decoding a
``frombuffer()``; nothing is converted on the hot path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from peerd import kernels
from peerd.errors import (
    BadActionIndex,
    FingerprintMismatch,
    NonFiniteValue,
    ShapeMismatch,
    ValueOutOfBounds,
)

#: Field name → dtype of a delta's cell arrays, as on the wire (little-endian).
CELL_DTYPES: dict[str, np.dtype] = {
    "keys": np.dtype("<u8"),
    "actions": np.dtype("<u2"),
    "q": np.dtype("<f4"),
    "lw": np.dtype("<f8"),
    "n": np.dtype("<u4"),
    "succ": np.dtype("<u4"),
    "fail": np.dtype("<u4"),
    "version": np.dtype("<u8"),
}
CELL_FIELDS: tuple[str, ...] = tuple(CELL_DTYPES)

#: Deltas this large are validated by the compiled kernels when they are loaded (``peerd.kernels``).
_SCAN_MIN = 256

#: Default bound on |q|: values beyond are rejected as absurd.
DEFAULT_Q_BOUND = 1e6


class Bounds(NamedTuple):
    """What ``Delta.validate`` found on its way that the merge needs next: the largest
    log-weight (the evidence guard) and the largest version (the origin's high mark);
    when the compiled scan ran, also whether the (key, action) pairs strictly increase
    (no duplicates) and whether some cell reports an outcome (None: not looked at).
    Returned so that no array is read again (a pass over a 10 k-cell delta
    costs ~10–30 µs, a tenth of what the compiled merge does per cell)."""

    lw_max: float
    version_max: int
    ordered: bool | None = None
    outcomes: bool | None = None


@dataclass(frozen=True, eq=False)
class Delta:
    """Cells of one origin's contribution changed in ``(from_version, to_version]``."""

    origin: str
    fingerprint: str
    from_version: int
    to_version: int
    keys: np.ndarray
    actions: np.ndarray
    q: np.ndarray
    lw: np.ndarray
    n: np.ndarray
    succ: np.ndarray
    fail: np.ndarray
    version: np.ndarray

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    @classmethod
    def build(cls, origin: str, fingerprint: str, from_version: int, to_version: int,
              **arrays: np.ndarray) -> Delta:
        """Make a delta, converting each array to its wire dtype (a copy only when needed)."""
        missing = set(CELL_FIELDS) - set(arrays)
        if missing:
            raise ShapeMismatch(f"delta lacks arrays {sorted(missing)}")
        conv = {f: np.ascontiguousarray(arrays[f], dtype=CELL_DTYPES[f]) for f in CELL_FIELDS}
        return cls(origin, fingerprint, int(from_version), int(to_version), **conv)

    @classmethod
    def empty(cls, origin: str, fingerprint: str, from_version: int = 0,
              to_version: int = 0) -> Delta:
        return cls.build(origin, fingerprint, from_version, to_version,
                         **{f: np.empty(0, d) for f, d in CELL_DTYPES.items()})

    def split(self, max_cells: int) -> list[Delta]:
        """Cut into deltas of at most ``max_cells`` cells with contiguous version ranges.

        Cells are grouped by version, so the pieces cover ``(from, v1], (v1, v2],
        ... (vk, to]``: a receiver that gets them in order advances its
        catch-up cursor piece by piece, and one that misses a piece sees a gap
        and asks for it. Each piece stays sorted by (key, action).
        """
        m = len(self)
        if m <= max_cells:
            return [self]
        if max_cells < 1:
            raise ValueError("max_cells must be >= 1")
        by_version = np.argsort(self.version, kind="stable")
        pieces: list[Delta] = []
        lo_version = self.from_version
        for start in range(0, m, max_cells):
            idx = by_version[start : start + max_cells]
            last = start + max_cells >= m
            hi_version = self.to_version if last else int(self.version[idx[-1]])
            idx = idx[np.lexsort((self.actions[idx], self.keys[idx]))]
            pieces.append(Delta.build(self.origin, self.fingerprint, lo_version, hi_version,
                                      **{f: getattr(self, f)[idx] for f in CELL_FIELDS}))
            lo_version = hi_version
        return pieces

    def arrays(self) -> dict[str, np.ndarray]:
        return {f: getattr(self, f) for f in CELL_FIELDS}

    def validate(self, *, fingerprint: str, n_actions: int,
                 q_bound: float = DEFAULT_Q_BOUND) -> Bounds:
        """Check everything that needs no clock; raise an ``InvalidDelta`` subclass.

        The one place where a delta's cells are checked, whatever built it:
        the wire decoder (``peerd.wire.codec``, which also bounds the cell
        count before inflating anything), ``QTable.check`` for a delta that
        did not come through a decoder, ``QTable.load`` for stored cells.
        Checks are ordered cheapest first and read each array once. Returns
        the largest ``lw`` and ``version`` (``-inf`` and 0 for an empty delta).
        """
        if self.fingerprint != fingerprint:
            raise FingerprintMismatch(
                f"delta from {self.origin!r} has task fingerprint {self.fingerprint!r}, "
                f"expected {fingerprint!r}")
        m = len(self)
        for f in CELL_FIELDS:
            a = getattr(self, f)
            if not isinstance(a, np.ndarray) or a.ndim != 1:
                raise ShapeMismatch(f"{f} must be a 1-d array")
            if a.dtype != CELL_DTYPES[f]:
                raise ShapeMismatch(f"{f} has dtype {a.dtype}, expected {CELL_DTYPES[f]}")
            if a.shape[0] != m:
                raise ShapeMismatch(f"{f} has {a.shape[0]} entries, keys has {m}")
        if not (0 <= self.from_version <= self.to_version):
            raise ValueOutOfBounds(
                f"version range ({self.from_version}, {self.to_version}] is not ordered")
        if m == 0:
            return Bounds(-math.inf, 0)
        kern = kernels.loaded() if m >= _SCAN_MIN else None
        ordered = outcomes = None
        if kern is not None:  # the compiled kernels are loaded: one call instead of ten passes
            (finite, q_ok, lw_hi, a_max, v_min, v_max, n_min, over, ordered,
             outcomes) = kern.delta_scan(self.keys, self.actions, self.q, self.lw, self.n,
                                         self.succ, self.fail, self.version, float(q_bound))
        else:
            # One min and one max per float array: NaN propagates into both and an
            # infinity shows in one, so they also stand for an isfinite pass.
            q_lo, q_hi = float(self.q.min()), float(self.q.max())
            lw_lo, lw_hi = float(self.lw.min()), float(self.lw.max())
            finite = all(map(math.isfinite, (q_lo, q_hi, lw_lo, lw_hi)))
            q_ok = not max(-q_lo, q_hi) > q_bound  # NaN bound: no bound, as before
            a_max, v_min, v_max = self.actions.max(), self.version.min(), self.version.max()
            n_min, over = self.n.min(), None
        if not finite:
            raise NonFiniteValue(f"delta from {self.origin!r} holds NaN or infinity")
        if not q_ok:
            raise ValueOutOfBounds(f"|q| exceeds q_bound={q_bound:g}")
        if int(a_max) >= n_actions:
            raise BadActionIndex(f"action index {int(a_max)} outside 0..{n_actions - 1}")
        if int(v_min) <= self.from_version or int(v_max) > self.to_version:
            raise ValueOutOfBounds("a cell version lies outside the delta's version range")
        if int(n_min) == 0:
            raise ValueOutOfBounds("a cell with evidence must have n >= 1")
        if over is None:
            over = bool((self.succ.any() or self.fail.any()) and (
                (self.succ.astype(np.uint64) + self.fail) > self.n).any())
        if over:
            raise ValueOutOfBounds("succ + fail exceeds n")
        return Bounds(float(lw_hi), int(v_max), ordered, outcomes)


@dataclass(frozen=True)
class PatternSignature:
    """A compact summary of one learned pattern: the best action in a state."""

    key: int
    action: int
    confidence: float
    visits: int


@dataclass
class MergeStats:
    """What one ``apply`` did, for logs and metrics.

    ``rejected``: ``QTable.apply`` validates a whole delta before it changes
    anything and raises on the first defect, so a delta is rejected entirely
    or not at all; there is no partial rejection, and the stats an ``apply``
    returns always have ``rejected == 0``. A caller that logs or counts the
    rejection builds its record with ``MergeStats.rejection(delta)``.
    Cells an ``apply`` ignores on purpose (older or equal versions, cells
    claiming to be this node's own) are ``conflicts``, not rejections.
    """

    origin: str = ""
    cells: int = 0  # cells in the delta
    new: int = 0  # cells this node had no value for from that origin
    updated: int = 0  # cells replaced by a newer version
    conflicts: int = 0  # cells ignored because the stored version was newer or equal
    rejected: int = 0  # cells rejected (a rejected delta rejects all its cells)
    total_visits: int = 0  # merged visits of the touched cells after the merge
    confidence: float = 0.0  # mean confidence of the touched merged cells, in [0, 1]
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def changed(self) -> int:
        return self.new + self.updated

    @classmethod
    def rejection(cls, delta: Delta) -> MergeStats:
        """The stats of a delta that was rejected as a whole: every cell rejected."""
        return cls(origin=delta.origin, cells=len(delta), rejected=len(delta))
