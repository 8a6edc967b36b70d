"""The evidence budget: what a peer may claim, checked against what it cannot inflate (DESIGN §2). Pure.

An origin's version rises by one per interaction, and an interaction adds one
visit, of weight at most ``2^((now + skew)/H)``, to one cell. So, whatever a
liar claims, a receiver can hold it to:

- **visits**: every visit has its own version, so the visits held of an
  origin plus those a delta adds never exceed its newest version; a replaced
  cell gains at least one visit (its version changes only with a visit) and
  at most as many as versions passed since the one held. (``visit_budget``,
  ``v1 − min(v0, held)``, is the simpler per-delta form; it assumes a delta
  over ``(v0, v1]`` carries every visit of that range, which a publisher that
  defers cells past its durable watermark does not guarantee.)
- **evidence**: per replaced cell, ``2^lw_new ≤ 2^lw_held + gain·2^((now + skew)/H)``:
  the new weight is the old one plus at most ``gain`` visits made no later
  than now (generalising the ``visit_cap`` guard, which bounds each cell by
  ``visit_cap`` fresh visits whatever it held);
- **rate**: versions themselves are the budget, so their rate is bounded: a
  configured cap, and a multiple of the federation's median rate
  (``VersionRate``), after a burst allowance.

A violation raises ``EvidenceBudgetExceeded`` or ``VersionRateExceeded``
(``InvalidDelta`` subclasses with reasons ``evidence_budget`` and
``version_rate``): the delta is rejected whole, counted, and costs the
verified sender trust.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from peerd.errors import EvidenceBudgetExceeded, VersionRateExceeded

#: slack on log-weights (float64 of wall-clock seconds / H is exact to ~1e-9)
LW_TOLERANCE = 1e-6


def visit_budget(from_version: int, to_version: int, held_through: int) -> int:
    """Visits a delta over ``(from_version, to_version]`` may add when ``(0, held_through]`` is held."""
    return max(0, int(to_version) - min(int(from_version), max(0, int(held_through))))


def check_budget(origin: str, from_version: int, to_version: int, held_through: int, *,
                 n_new: np.ndarray, lw_new: np.ndarray, n_held: np.ndarray, lw_held: np.ndarray,
                 replaces: np.ndarray, now_over_h: float,
                 v_new: np.ndarray | None = None, v_held: np.ndarray | None = None,
                 held_total: int | None = None, top_version: int | None = None) -> int:
    """Raise ``EvidenceBudgetExceeded`` unless the replaced cells fit the budget; return the visits gained.

    Arrays are per cell of the delta: the claimed ``n``/``lw``, what the
    receiver holds of that origin's cell (``n = 0``, ``lw = -inf`` when
    nothing), and ``replaces`` (the delta's version of the cell is newer, so
    it would be applied). ``now_over_h`` = (now + allowed skew) / H.
    """
    rep = np.asarray(replaces, bool)
    if not rep.any():
        return 0
    gain = np.asarray(n_new, np.int64)[rep] - np.asarray(n_held, np.int64)[rep]
    if (gain < 1).any():
        raise EvidenceBudgetExceeded(
            f"{int((gain < 1).sum())} cell(s) of {origin!r} changed version without a new visit")
    total = int(gain.sum())
    if v_new is not None and v_held is not None:
        # a cell's new visits carry distinct versions in (held version, new version]
        span = (np.asarray(v_new, np.int64)[rep] - np.asarray(v_held, np.int64)[rep])
        if (gain > span).any():
            raise EvidenceBudgetExceeded(
                f"a cell of {origin!r} gains more visits than versions since the one held")
    if held_total is not None:
        # every visit held or added has its own version, at most the newest one
        top = max(int(to_version), int(top_version or 0))
        if held_total + total > top:
            raise EvidenceBudgetExceeded(
                f"{origin!r} would hold {held_total + total} visits at version {top}")
        return total
    budget = visit_budget(from_version, to_version, held_through)
    if total > budget:
        raise EvidenceBudgetExceeded(
            f"delta of {origin!r} over ({from_version}, {to_version}] adds {total} visits; "
            f"its versions allow {budget}")
    rel_new = np.asarray(lw_new, np.float64)[rep] - now_over_h
    with np.errstate(over="ignore"):
        held_w = np.exp2(np.minimum(np.asarray(lw_held, np.float64)[rep] - now_over_h, 60.0))
    limit = np.log2(held_w + gain)
    over = rel_new > limit + LW_TOLERANCE
    if over.any():
        i = int(np.flatnonzero(over)[0])
        raise EvidenceBudgetExceeded(
            f"a cell of {origin!r} claims log-weight {rel_new[i]:.3f} (relative to now) for "
            f"{int(gain[i])} new visit(s); at most {limit[i]:.3f}")
    return total


@dataclass
class _Track:
    t0: float
    v0: int
    t: float
    v: int


@dataclass
class VersionRate:
    """Per peer, how fast its version grows since first seen; bounds it (DESIGN §2).

    A peer may be at most ``burst`` versions ahead of
    ``rate_limit × (now − first seen)``, with ``rate_limit`` the smaller of
    ``cap`` and ``multiple`` × the federation's median rate (own included),
    never below ``floor`` (an idle federation must not freeze its one busy
    node). The version at first sight is free: a node that learned offline, or
    that this node meets late, is not suspect for its history.
    """

    cap: float = 1000.0
    multiple: float = 10.0
    burst: int = 1000
    floor: float = 1.0
    refresh: float = 1.0
    tracks: dict[str, _Track] = field(default_factory=dict)
    _median: tuple[float, float | None] | None = field(default=None, repr=False)

    def observe(self, peer: str, version: int, now: float, *, anchor: bool = True) -> None:
        """Record a version this peer reached (after a check passed, or for the own node).

        ``anchor=False``: the version may move a track but never starts one.
        For a relayed delta: it is an old payload, kept by a holder, and its
        version is the peer's past, not where the peer is now. Started there,
        the track would charge the peer's whole history since that payload to
        its rate: a newcomer that got an origin's oldest relayed delta before
        the origin's own catch-up answer rejected that answer (and every
        re-ask) as ``version_rate`` until its clock had run for
        ``(version − burst) / limit`` more seconds, which a simulation's clock,
        standing still while it waits for delivery, never did.
        """
        tr = self.tracks.get(peer)
        if tr is None:
            if anchor:
                self.tracks[peer] = _Track(now, int(version), now, int(version))
        elif version >= tr.v:
            tr.t, tr.v = now, int(version)

    def rate(self, peer: str) -> float | None:
        tr = self.tracks.get(peer)
        if tr is None or tr.t <= tr.t0:
            return None
        return (tr.v - tr.v0) / (tr.t - tr.t0)

    def median_rate(self) -> float | None:
        rates = [r for p in self.tracks if (r := self.rate(p)) is not None]
        return float(np.median(rates)) if rates else None

    def _cached_median(self, now: float) -> float | None:
        """The median rate, recomputed at most once per ``refresh`` seconds.

        The median is O(peers); recomputing it per delta made every delta cost
        O(fleet) (1000 peers: 74 of 450 profiled seconds). Once a second, it is
        O(1) per delta at any fleet size, and a rate over a peer's whole history
        moves little in a second.
        """
        cached = self._median
        if cached is None or not 0.0 <= now - cached[0] < self.refresh:
            cached = self._median = (now, self.median_rate())
        return cached[1]

    def limit(self, now: float | None = None) -> float:
        med = self.median_rate() if now is None else self._cached_median(now)
        lim = self.cap if med is None else min(self.cap, self.multiple * med)
        return max(lim, self.floor)

    def check(self, peer: str, version: int, now: float) -> None:
        """Raise ``VersionRateExceeded`` if ``version`` is further ahead than the rate allows."""
        tr = self.tracks.get(peer)
        if tr is None:
            return
        elapsed = max(0.0, now - tr.t0)
        if version <= tr.v0 + self.burst + self.floor * elapsed:
            return  # within what the smallest possible limit allows: no median needed
        limit = self.limit(now)
        allowed = tr.v0 + self.burst + limit * elapsed
        if version > allowed:
            raise VersionRateExceeded(
                f"{peer!r} claims version {version}; at {limit:.3g} versions/s since "
                f"first seen at {tr.v0} at most {int(allowed)}")

    def forget(self, peer: str) -> None:
        self.tracks.pop(peer, None)


__all__ = ["LW_TOLERANCE", "VersionRate", "check_budget", "visit_budget"]
