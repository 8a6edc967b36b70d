"""Simulated liars: what they publish passes every check a receiver makes, except the inflater's lie."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from peerd.config import NodeConfig
from peerd.delta import Delta
from peerd.errors import EvidenceBudgetExceeded
from peerd.node import Node
from peerd.sim.liars import LyingTable


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


KNOWN: dict[tuple[str, str], int] = {}


def _node(node_id: str, clock: Clock) -> Node:
    cfg = NodeConfig(federation="liars", node_id=node_id, actions=["a", "b", "c"], secret="s",
                     api_listen="", half_life=50.0, seed=3, q_bound=100.0)
    node = Node(cfg, clock=clock)
    node.known_version = lambda peer: KNOWN.get((node_id, peer), 0)  # type: ignore[method-assign]
    return node


def _learn(node: Node, clock: Clock, steps: int, rng: np.random.Generator) -> None:
    for _ in range(steps):
        s = int(rng.integers(5))
        node.table.learn(s, int(rng.integers(3)), float(rng.normal(1.0, 0.1)), int(rng.integers(5)))
        clock.t += 1.0


def _receive(receiver: Node, d: Delta) -> None:
    receiver.check_evidence(d)
    receiver.table.apply(d)
    KNOWN[(receiver.id, d.origin)] = d.to_version  # what the registry cursor would hold


def _setup(kind: str) -> tuple[Node, Node, Node, Clock, np.random.Generator]:
    clock = Clock()
    rng = np.random.default_rng(0)
    honest, liar, receiver = _node("honest", clock), _node("liar", clock), _node("receiver", clock)
    _learn(honest, clock, 200, rng)
    liar.table.apply(honest.table.delta(0))  # the liar knows the honest view
    liar.table = LyingTable(liar.table, kind, liar, rng)  # type: ignore[assignment]
    return honest, liar, receiver, clock, rng


@pytest.mark.parametrize("kind", ["invert", "ipm", "alie", "extreme", "focus", "copycat", "sybil"])
def test_lies_within_the_evidence_budget_are_accepted(kind: str) -> None:
    _, liar, receiver, clock, rng = _setup(kind)
    published = 0
    for _ in range(5):
        _learn(liar, clock, 10, rng)
        d = liar.table.delta(published)
        assert len(d) and d.to_version == liar.table.version
        _receive(receiver, d)
        published = d.to_version
    # sums of visits never exceed the liar's versions: Σ n over its cells <= version
    held = receiver.table.delta_of("liar")
    assert int(held.n.sum()) <= liar.table.version


def test_inverted_values_are_minus_the_liars_view() -> None:
    _, liar, _, clock, rng = _setup("invert")
    _learn(liar, clock, 10, rng)
    d = liar.table.delta(0)
    mu = np.array([liar.table.values_key(int(k))[int(a)] for k, a in zip(d.keys, d.actions, strict=True)])
    assert np.allclose(d.q, -mu, atol=1e-4)


def test_focus_spends_its_budget_on_the_busiest_cells() -> None:
    honest, liar, _, clock, rng = _setup("focus")
    _learn(liar, clock, 10, rng)
    d = liar.table.delta(0)
    assert int(d.n.sum()) == liar.table.version  # exactly its budget
    keys, _, vn = honest.table.view()
    busiest = set(keys[np.argsort(-vn.sum(axis=1))[:12]].tolist())
    assert set(d.keys.tolist()) <= set(keys.tolist()) and len(d) <= 10
    assert set(d.keys.tolist()) & busiest


def test_inflated_visits_are_rejected_with_a_reason() -> None:
    _, liar, receiver, clock, rng = _setup("inflate")
    _learn(liar, clock, 10, rng)
    with pytest.raises(EvidenceBudgetExceeded) as e:
        receiver.check_evidence(liar.table.delta(0))
    assert e.value.reason == "evidence_budget"


def test_copycat_copies_an_honest_peers_signatures() -> None:
    honest, liar, *_ = _setup("copycat")
    sigs: Any = tuple(honest.table.signatures(8))
    liar.peer_signatures = lambda: {"honest": sigs}  # type: ignore[method-assign]
    assert tuple(liar.table.signatures(8)) == sigs
