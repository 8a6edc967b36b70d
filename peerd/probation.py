"""Newcomer probation: a new origin's cells count only once its values have been judged (DESIGN §6). Pure.

The deviation quarantine judges values, but only in trust rounds; whatever an
origin publishes before its first verdict goes straight into the merged
view, and honest nodes bootstrap it into their own values (``extreme``: a
large bonus on one action per state turns every honest node into an outlier
before the first round). And a quarantined liar that returns under a new
identity (possible while ``strict = false``) starts with trust 1: every fresh
identity buys it another window.

So an origin whose cells arrive for the first time is put on **probation**:
its cells are stored, gossiped and judged like any other (its values speak in
the references of the deviation round with its full trust), but it weighs
nothing in the merged view until it has passed ``rounds`` deviation rounds
well within the consensus (score at most ``pass_ratio`` × the median: no
worse than the typical origin, where quarantine needs 3×; a small lie such as
``ipm``, −0.1 μ, is not an outlier early on but rarely better than typical),
with a root mean square deviation at most ``pass_tail`` × the median's (an
``extreme`` liar publishes the consensus it sees on every cell but the one
action per state it favours: by the mean it looks *better* than a typical
honest node, whose values carry their own noise everywhere, and two of three
passed probation this way and were in every view for 4 rounds; by the square,
its +100 on a few cells stands out),
each pass judged over at least ``release_cells`` shared cells (or, where a
small task has fewer, ``3 × rounds`` passes in trust rounds): a
lie on one action per state (``extreme``) may miss the first twenty shared
cells, rarely a hundred. Early verdicts are noise: at tick 300-500 of Taxi an
honest node's values deviate from the others' by 5-50 on 20-70 shared cells,
as much as an ``extreme`` liar's +100 on a sixth of its cells, and the liars
that passed probation then (a pass counted on any number of cells, only the
last needed sixty) had their bonus bootstrapped into honest tables; from
about 100 shared cells (tick 700) the liars score 20-30× the median.
Quarantined on the way, it leaves probation for the quarantine, which restores it like any peer. An
origin that is never quarantined but does not pass either (it cannot be
judged: fewer shared cells than the round needs; or it stays between the
median and the quarantine threshold, as an honest node that found a reward
first may) is released after ``max_rounds`` trust rounds: the hold is bounded,
and by then the deviation quarantine has had as many rounds to judge it.

The node runs extra deviation rounds while anyone is on probation
(``due``: after as many deltas of probationers as there are of them), so an
honest newcomer waits a few publishes, not a few trust rounds.

State is bounded: one small entry per origin on probation (at most the
registry's ``max_origins``), dropped on release, quarantine or expiry.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from peerd.quarantine import Verdict

#: deviation rounds within the consensus before a newcomer's cells count
ROUNDS = 2
#: peers a node must know for probation to apply: with fewer, a median of the others is one or
#: two origins' word (a 3-node federation is not judged strictly enough to hold anyone out)
MIN_PEERS = 3
#: trust rounds on probation before a newcomer that was never quarantined is released anyway
MAX_ROUNDS = 10
#: the merge weight of an origin on probation: below the default ``quarantine_below``
WEIGHT = 0.1
#: a round is passed when the origin's score is at most this many times the median score
PASS_RATIO = 1.0
#: ... and its root mean square deviation at most this many times the median origin's: a lie on
#: a few cells (``extreme``, the consensus elsewhere) scores below the median by the mean, not by this
PASS_TAIL = 1.5
#: ... and released only once it was judged over at least this many shared cells
RELEASE_CELLS = 100
#: ... or, where fewer cells can be shared (a small task), after this many times ``rounds`` passes
SMALL_TASK_ROUNDS = 3


@dataclass
class _Entry:
    passed: int = 0  # passes judged over at least release_cells
    small: int = 0  # passes of trust rounds on fewer cells (what a small task can offer)
    rounds: int = 0  # periodic (trust) rounds spent on probation


@dataclass
class Probation:
    """Which origins are on probation, and how far each has come."""

    rounds: int = ROUNDS
    max_rounds: int = MAX_ROUNDS
    pass_ratio: float = PASS_RATIO
    pass_tail: float = PASS_TAIL
    release_cells: int = RELEASE_CELLS
    pending: dict[str, _Entry] = field(default_factory=dict)
    #: deltas of probationers since the last round (what ``due`` reads)
    deltas_since: int = 0
    admitted: int = 0  # counters: origins put on probation, released, sent to quarantine
    released: int = 0
    failed: int = 0

    def __post_init__(self) -> None:
        if self.rounds < 0 or self.max_rounds < 1:
            raise ValueError("need rounds >= 0 and max_rounds >= 1")

    @property
    def enabled(self) -> bool:
        return self.rounds > 0

    def __contains__(self, origin: object) -> bool:
        return origin in self.pending

    def __len__(self) -> int:
        return len(self.pending)

    def admit(self, origin: str) -> bool:
        """Put a newcomer on probation; False when off or already there."""
        if not self.enabled or origin in self.pending:
            return False
        self.pending[origin] = _Entry()
        self.admitted += 1
        return True

    def note_delta(self, origin: str) -> None:
        """A delta of ``origin`` was applied (counts toward ``due`` if it is on probation)."""
        if origin in self.pending:
            self.deltas_since += 1

    def due(self) -> bool:
        """An extra deviation round is worth running: every probationer may have sent new cells."""
        return bool(self.pending) and self.deltas_since >= len(self.pending)

    def judge(self, verdicts: Mapping[str, Verdict], *, periodic: bool = True,
              silent: AbstractSet[str] = frozenset(), among: AbstractSet[str] | None = None,
              seen: int | None = None) -> tuple[list[str], list[str]]:
        """One deviation round's verdicts; returns ``(released, failed)``.

        ``failed``: quarantined while on probation (the quarantine holds them now).
        Only ``periodic`` rounds (trust rounds, not the extra ones ``due`` asks
        for) count toward ``max_rounds``: the bound is in trust rounds.
        ``silent`` origins (gone offline) stay on probation as they are: a dead
        identity has nothing more to show, and releasing it after ``max_rounds``
        let the dead identities of a returning liar into every view.

        A round that read the cells earlier than it concludes (scored off the
        event loop) passes what probation was then: ``among``, the origins on
        probation when the cells were read (those admitted since wait for the
        next round), and ``seen``, ``deltas_since`` then (the deltas since
        still count toward the next ``due``).
        """
        self.deltas_since = 0 if seen is None else max(0, self.deltas_since - seen)
        released: list[str] = []
        failed: list[str] = []
        for origin, e in list(self.pending.items()):
            if among is not None and origin not in among:
                continue
            v = verdicts.get(origin)
            if v is not None and v.quarantined:
                failed.append(origin)
                continue
            if origin in silent:
                continue
            e.rounds += periodic
            if e.rounds >= self.max_rounds:
                released.append(origin)  # never an outlier in max_rounds trust rounds
                continue
            if v is None or v.score is None:
                continue
            if v.ratio is not None and v.ratio > self.pass_ratio:
                continue  # judged, not an outlier, not clearly inside either: wait
            if v.tail_ratio is not None and v.tail_ratio > self.pass_tail:
                continue  # typical on average, but far out on some cells: wait
            if v.cells >= self.release_cells:
                e.passed += 1
            else:
                e.small += periodic
            if e.passed >= self.rounds or e.small >= SMALL_TASK_ROUNDS * self.rounds:
                released.append(origin)
        for origin in released + failed:
            del self.pending[origin]
        self.released += len(released)
        self.failed += len(failed)
        return released, failed

    def release_all(self) -> list[str]:
        """Nobody can be judged (too few origins to compare): probation would only hold honest peers."""
        out = list(self.pending)
        self.pending.clear()
        self.released += len(out)
        self.deltas_since = 0
        return out

    def weigh(self, trusts: Mapping[str, float]) -> dict[str, float]:
        """The merge weights of ``trusts``: an origin on probation weighs at most ``WEIGHT``."""
        return {o: (min(t, WEIGHT) if o in self.pending else t) for o, t in trusts.items()}

    def forget(self, origin: str) -> None:
        self.pending.pop(origin, None)


__all__ = ["MAX_ROUNDS", "MIN_PEERS", "PASS_TAIL", "ROUNDS", "WEIGHT", "Probation"]
