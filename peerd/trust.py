"""Trust arithmetic: leave-one-out consensus over pattern signatures (DESIGN §6). Pure.

After each round of signatures, for every state where the *other* nodes reach a
consensus (one action holds a strict majority of their trust × confidence-
weighted vote), a node whose best action agrees gains ``AGREE`` and one that
disagrees loses ``DISAGREE``, each scaled by the node's own confidence in that
signature: a thinly visited guess or a near-tie moves trust little, a confident
lie costs in full. Leaving the judged node out means no node votes for itself,
so a liar cannot outvote the honest majority about its own honesty. Trust stays
within [TRUST_MIN, TRUST_MAX]; invalid messages cost ``INVALID``.

Disagreement is penalised relative to the federation, not in absolute terms.
While a fleet learns, honest nodes disagree with the consensus most of the time
(measured on Taxi, N = 16: 3 disagreements per agreement up to tick ~2,500), so
an absolute penalty walked every honest peer's trust down to 0.66–0.9 exactly
when its evidence mattered most, and unevenly. Each round therefore tolerates,
for every node, the share of disagreement the *median* judged node shows
(``1 − median alignment`` of its judged weight): an honest node as aligned as
the typical node loses nothing, a liar that disagrees everywhere still loses
for every disagreement beyond that share. With fewer than ``MIN_RELATIVE_NODES``
judged nodes the median says nothing about what is normal and the penalty stays
absolute (two nodes that contradict each other both lose, as before).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from peerd.delta import PatternSignature

AGREE = 0.05
DISAGREE = -0.03
INVALID = -0.1
TRUST_MIN, TRUST_MAX = 0.1, 2.0
#: judged nodes needed before disagreement is measured against the median node's
MIN_RELATIVE_NODES = 3


def clamp_trust(value: float) -> float:
    return min(TRUST_MAX, max(TRUST_MIN, float(value)))


@dataclass(frozen=True)
class Judgement:
    """How one node's signatures fared against the others' consensus in one round."""

    node: str
    agree: int
    disagree: int
    #: Σ of the judged signatures' confidences, per outcome (defaults: one per signature)
    agree_weight: float | None = None
    disagree_weight: float | None = None
    #: disagreement weight that costs nothing: the share the federation's median node shows
    tolerated: float = 0.0

    @property
    def change(self) -> float:
        """+0.05 per agreeing, −0.03 per disagreeing state beyond the tolerated share,
        each scaled by the node's confidence."""
        aw = self.agree if self.agree_weight is None else self.agree_weight
        dw = self.disagree if self.disagree_weight is None else self.disagree_weight
        return AGREE * aw + DISAGREE * max(0.0, dw - self.tolerated)

    @property
    def alignment(self) -> float | None:
        """Share of judged signatures that agreed; None when none could be judged."""
        judged = self.agree + self.disagree
        return self.agree / judged if judged else None


def consensus_round(
    signatures: Mapping[str, Sequence[PatternSignature]],
    trust: Mapping[str, float],
) -> dict[str, Judgement]:
    """Judge every node's signatures against the leave-one-out consensus of the others.

    ``trust`` gives each voter's weight (missing → 1.0). A state counts for a
    node only when at least one *other* node signed it and their vote has a
    unique winner. Each judgement tolerates the median judged node's share of
    disagreement (module docstring).
    """
    # votes[key][action] = Σ weight over nodes; per node its own contribution
    votes: dict[int, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    own: dict[str, dict[int, tuple[int, float, float]]] = {}
    for node, sigs in signatures.items():
        w_node = trust.get(node, 1.0)
        mine: dict[int, tuple[int, float, float]] = {}
        for s in sigs:
            if s.key in mine:  # one vote per node and state
                continue
            conf = max(0.0, min(1.0, s.confidence))
            w = w_node * conf
            mine[s.key] = (s.action, w, conf)
            votes[s.key][s.action] += w
        own[node] = mine
    tally: dict[str, tuple[int, int, float, float]] = {}
    for node, mine in own.items():
        agree = disagree = 0
        agree_w = disagree_w = 0.0
        for key, (action, w, conf) in mine.items():
            others = dict(votes[key])
            others[action] -= w
            winner = _unique_winner(others)
            if winner is None:
                continue
            if winner == action:
                agree += 1
                agree_w += conf
            else:
                disagree += 1
                disagree_w += conf
        tally[node] = (agree, disagree, agree_w, disagree_w)
    expected = 1.0 - median_alignment(tally.values())
    return {node: Judgement(node, a, d, aw, dw, tolerated=expected * (aw + dw))
            for node, (a, d, aw, dw) in tally.items()}


def median_alignment(tallies: Iterable[tuple[int, int, float, float]]) -> float:
    """The median confidence-weighted alignment of the judged nodes; 1.0 (tolerate nothing)
    with fewer than ``MIN_RELATIVE_NODES`` of them.

    A median, not a mean: a minority of liars that disagree everywhere cannot
    drag what counts as normal disagreement.
    """
    shares = [aw / (aw + dw) for _, _, aw, dw in tallies if aw + dw > 0]
    if len(shares) < MIN_RELATIVE_NODES:
        return 1.0
    shares.sort()
    mid = len(shares) // 2  # statistics.median would import decimal and fractions into every daemon
    return shares[mid] if len(shares) % 2 else 0.5 * (shares[mid - 1] + shares[mid])


def _unique_winner(tally: Mapping[int, float]) -> int | None:
    """The action holding a strict majority of the weighted vote, if any.

    A plurality is not a consensus: early in learning the honest votes are
    spread over several actions, and two colluding liars voting alike would
    then "win" and be rewarded for agreeing with each other.
    """
    eps = 1e-12
    total = sum(v for v in tally.values() if v > 0)
    best = max(tally.values(), default=0.0)
    if best <= eps or best <= total / 2 + eps:
        return None
    winners = [a for a, v in tally.items() if v >= best - eps]
    return winners[0] if len(winners) == 1 else None


def convergence_score(judgements: Mapping[str, Judgement]) -> float | None:
    """Federation convergence: share of all judged signatures that agree with consensus."""
    agree = sum(j.agree for j in judgements.values())
    judged = agree + sum(j.disagree for j in judgements.values())
    return agree / judged if judged else None
