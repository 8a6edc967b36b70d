"""Trust arithmetic: leave-one-out consensus over pattern signatures (DESIGN §6). Pure.

After each round of signatures, for every state where the *other* nodes reach a
consensus (one action holds a strict majority of their trust × confidence-
weighted vote), a node whose best action agrees gains ``AGREE`` and one that
disagrees loses ``DISAGREE``, each scaled by the node's own confidence in that
signature: a thinly visited guess or a near-tie moves trust little, a confident
lie costs in full. Leaving the judged node out means no node votes for itself,
so a liar cannot outvote the honest majority about its own honesty. Trust stays
within [TRUST_MIN, TRUST_MAX]; invalid messages cost ``INVALID``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from peerd.delta import PatternSignature

AGREE = 0.05
DISAGREE = -0.03
INVALID = -0.1
TRUST_MIN, TRUST_MAX = 0.1, 2.0


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

    @property
    def change(self) -> float:
        """+0.05 per agreeing, −0.03 per disagreeing state, each scaled by the node's confidence."""
        aw = self.agree if self.agree_weight is None else self.agree_weight
        dw = self.disagree if self.disagree_weight is None else self.disagree_weight
        return AGREE * aw + DISAGREE * dw

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
    unique winner.
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
    out: dict[str, Judgement] = {}
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
        out[node] = Judgement(node, agree, disagree, agree_w, disagree_w)
    return out


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
