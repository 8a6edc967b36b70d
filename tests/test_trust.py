"""Leave-one-out consensus over pattern signatures and trust clamping (DESIGN §6)."""

from __future__ import annotations

import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerd.delta import PatternSignature
from peerd.trust import (
    AGREE,
    DISAGREE,
    MIN_RELATIVE_NODES,
    TRUST_MAX,
    TRUST_MIN,
    Judgement,
    clamp_trust,
    consensus_round,
    convergence_score,
    median_alignment,
)


def sigs(action: int, keys: range | list[int] = range(3), confidence: float = 0.8) -> list[PatternSignature]:
    return [PatternSignature(k, action, confidence, 10) for k in keys]


def test_a_liar_against_three_honest_nodes_loses_and_the_honest_gain() -> None:
    """Three honest nodes agree, a liar signs another action: the liar loses, every honest node gains."""
    signatures = {"h1": sigs(0), "h2": sigs(0), "h3": sigs(0), "liar": sigs(1)}
    j = consensus_round(signatures, {})
    assert (j["liar"].agree, j["liar"].disagree) == (0, 3)
    # each judged signature counts with the judged node's confidence in it (0.8 here)
    assert j["liar"].change == pytest.approx(3 * 0.8 * DISAGREE) and j["liar"].alignment == 0.0
    for h in ("h1", "h2", "h3"):
        assert (j[h].agree, j[h].disagree) == (3, 0)
        assert j[h].change == pytest.approx(3 * 0.8 * AGREE) and j[h].alignment == 1.0
    assert convergence_score(j) == pytest.approx(9 / 12)


def test_no_node_votes_for_itself() -> None:
    """A node's own vote is left out of the consensus it is judged by, however heavy it is."""
    signatures = {"x": sigs(1, confidence=1.0), "y": sigs(0, confidence=0.2), "z": sigs(0, confidence=0.2)}
    j = consensus_round(signatures, {"x": 2.0})  # with its own vote x would outweigh y + z
    assert (j["x"].agree, j["x"].disagree) == (0, 3)
    # y is judged by x and z: x's 2.0 outweighs z's 0.2, so y disagrees with that consensus
    assert (j["y"].agree, j["y"].disagree) == (0, 3)


def test_two_nodes_that_disagree_are_each_judged_by_the_other_alone() -> None:
    """With two nodes, each one's consensus is the other's lone vote: both count a disagreement.

    That is sensible because trust changes apply only to peers (a node's own
    trust is fixed at 1): in a two-node federation each node lowers its trust in
    a peer that keeps disagreeing with it, the only evidence there is, and the
    judged node's own opinion never counts for itself. Agreement gains more
    (+0.05) than disagreement costs (−0.03), so honest peers that mostly agree
    still gain.
    """
    j = consensus_round({"a": sigs(0), "b": sigs(1)}, {})
    assert (j["a"].agree, j["a"].disagree) == (0, 3)
    assert (j["b"].agree, j["b"].disagree) == (0, 3)
    agreeing = consensus_round({"a": sigs(0), "b": sigs(0)}, {})
    assert all((x.agree, x.disagree) == (3, 0) for x in agreeing.values())


def test_states_without_a_unique_consensus_of_others_are_not_judged() -> None:
    """A state nobody else signed, a tie among the others, or only zero-confidence others: no judgement."""
    signatures = {
        "lonely": [PatternSignature(99, 0, 0.9, 5)],
        "a": [PatternSignature(1, 0, 0.5, 5)],
        "b": [PatternSignature(1, 1, 0.5, 5)],
        "c": [PatternSignature(1, 2, 0.5, 5), PatternSignature(2, 0, 0.7, 5)],
        "d": [PatternSignature(2, 1, 0.0, 5)],
    }
    j = consensus_round(signatures, {})
    assert (j["lonely"].agree, j["lonely"].disagree) == (0, 0)
    assert j["lonely"].alignment is None and j["lonely"].change == 0.0
    # state 1: every node is judged by a tie of the two others
    for n in ("a", "b"):
        assert (j[n].agree, j[n].disagree) == (0, 0)
    # c on state 2 faces only d's zero-confidence vote; d faces c's vote and disagrees
    assert (j["c"].agree, j["c"].disagree) == (0, 0)
    assert (j["d"].agree, j["d"].disagree) == (0, 1)


def test_votes_are_weighted_by_trust_and_clamped_confidence() -> None:
    """A voter weighs trust × confidence (confidence clamped to [0, 1]); duplicates count once."""
    signatures = {
        "judged": sigs(0, [7]),
        "trusted": sigs(1, [7], confidence=0.5),
        "doubted1": sigs(0, [7], confidence=0.5) * 3,  # the same signature three times: one vote
        "doubted2": sigs(0, [7], confidence=5.0),  # counts as confidence 1
    }
    # doubted: 0.2·0.5 + 0.2·1.0 = 0.3 for action 0 against 2.0·0.5 = 1.0 for action 1
    j = consensus_round(signatures, {"trusted": 2.0, "doubted1": 0.2, "doubted2": 0.2})
    assert (j["judged"].agree, j["judged"].disagree) == (0, 1)
    # at equal trust the doubted pair (0.5 + 1.0) outvotes the trusted one (0.5)
    j = consensus_round(signatures, {})
    assert (j["judged"].agree, j["judged"].disagree) == (1, 0)


def test_repeated_rounds_drive_trust_to_the_clamps() -> None:
    """Applying each round's change with clamping: the liar ends at 0.1, the honest at 2.0."""
    signatures = {"h1": sigs(0), "h2": sigs(0), "h3": sigs(0), "liar": sigs(1)}
    trust = dict.fromkeys(signatures, 1.0)
    for _ in range(40):
        for node, j in consensus_round(signatures, trust).items():
            trust[node] = clamp_trust(trust[node] + j.change)
    assert trust == {"h1": TRUST_MAX, "h2": TRUST_MAX, "h3": TRUST_MAX, "liar": TRUST_MIN}


def test_clamp_trust_bounds_and_judgement_arithmetic() -> None:
    """Trust stays within [0.1, 2.0]; a judgement's change is +0.05 per agreement, −0.03 per disagreement."""
    assert clamp_trust(5) == 2.0 and clamp_trust(-1.0) == 0.1 and clamp_trust(0.7) == 0.7
    assert (TRUST_MIN, TRUST_MAX) == (0.1, 2.0)
    j = Judgement("n", agree=2, disagree=3)
    assert j.change == pytest.approx(2 * 0.05 - 3 * 0.03) and j.alignment == pytest.approx(0.4)
    assert convergence_score({}) is None
    assert consensus_round({}, {}) == {}


def test_trust_change_scales_with_the_judged_signatures_confidence() -> None:
    """A thinly visited (low-confidence) disagreement costs less trust than a confident one.

    Three honest nodes: with two, the sure dissenter (1.0) would outvote each
    one's single honest co-voter (0.9), every node would disagree, and the
    median node's disagreement is then tolerated (no penalty for anyone).
    """
    honest = {f"h{i}": sigs(0, confidence=0.9) for i in range(3)}
    unsure = consensus_round({**honest, "x": sigs(1, confidence=0.1)}, {})["x"]
    sure = consensus_round({**honest, "x": sigs(1, confidence=1.0)}, {})["x"]
    assert unsure.disagree == sure.disagree == 3
    assert sure.change == pytest.approx(3 * DISAGREE)
    assert unsure.change == pytest.approx(0.1 * sure.change)


def learning_fleet(n: int = 6) -> dict[str, list[PatternSignature]]:
    """Honest nodes mid-learning: they mostly disagree with the consensus, and every one alike.

    On key k node k is sure (confidence 1.0) of action 0 and the others guess
    different actions thinly (0.15); on key 100 all agree, unsure (0.3). Each
    node's weighted alignment is 0.3 / 1.05 ≈ 0.29: an absolute penalty
    (−0.03 per disagreement against +0.05 per agreement) would lower the trust
    of every one of them, every round.
    """
    fleet: dict[str, list[PatternSignature]] = {}
    for i in range(n):
        mine = [PatternSignature(k, 0 if k == i else 1 + (i - k) % n, 1.0 if k == i else 0.15, 10)
                for k in range(n)]
        fleet[f"h{i}"] = [*mine, PatternSignature(100, 0, 0.3, 10)]
    return fleet


def test_ordinary_learning_disagreement_costs_honest_nodes_no_trust() -> None:
    """Disagreeing as much as the median node does is tolerated: honest trust only grows."""
    j = consensus_round(learning_fleet(), {})
    for x in j.values():
        assert x.disagree > x.agree and x.alignment is not None and x.alignment < 0.375
        # the absolute rule would have cost trust ...
        assert AGREE * x.agree_weight + DISAGREE * x.disagree_weight < 0
        # ... the relative one tolerates the federation's typical share
        assert x.tolerated == pytest.approx(x.disagree_weight)
        assert x.change == pytest.approx(AGREE * x.agree_weight) and x.change > 0


def test_a_liar_among_learning_honest_nodes_still_falls_to_the_floor() -> None:
    """The tolerance is the median's: a liar disagreeing everywhere keeps losing, the honest gain."""
    fleet = learning_fleet()
    fleet["liar"] = [PatternSignature(k, 5, 1.0, 10) for k in [*range(6), 100]]
    trust = dict.fromkeys(fleet, 1.0)
    for _ in range(200):
        for node, j in consensus_round(fleet, trust).items():
            trust[node] = clamp_trust(trust[node] + j.change)
            if node != "liar":
                assert trust[node] >= 1.0  # never lowered on the way
    assert trust["liar"] == TRUST_MIN
    assert all(trust[f"h{i}"] == TRUST_MAX for i in range(6))


def test_below_min_relative_nodes_disagreement_costs_in_full() -> None:
    """Two nodes that contradict each other: no median to compare with, both lose (absolute rule)."""
    assert MIN_RELATIVE_NODES == 3
    j = consensus_round({"a": sigs(0), "b": sigs(1)}, {})
    for x in j.values():
        assert x.tolerated == 0.0 and x.change == pytest.approx(3 * 0.8 * DISAGREE)


@given(st.lists(st.tuples(st.floats(0.0, 10.0), st.floats(0.0, 10.0)), min_size=0, max_size=12))
def test_median_alignment_is_the_median_share_of_the_judged_nodes(weights: list[tuple[float, float]]) -> None:
    """Odd and even counts alike: the statistics module's median over the judged nodes' shares."""
    tallies = [(0, 0, aw, dw) for aw, dw in weights]
    shares = [aw / (aw + dw) for aw, dw in weights if aw + dw > 0]
    expected = statistics.median(shares) if len(shares) >= MIN_RELATIVE_NODES else 1.0
    assert median_alignment(tallies) == pytest.approx(expected, rel=1e-12, abs=1e-12)
