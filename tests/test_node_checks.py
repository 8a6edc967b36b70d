"""A delta's cells are checked once on every path into a node, and a bad one is still rejected
with its precise reason, counted, and changes nothing: sent, relayed, restored, built locally."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from test_registry import FED, SignedPeer, fresh_lw, open_node

from peerd import wire
from peerd.delta import Delta
from peerd.errors import BadActionIndex, ExcessiveEvidence, ValueOutOfBounds
from peerd.node import Node


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every ``Delta.validate`` call, by the delta's origin."""
    calls: list[str] = []
    real = Delta.validate

    def counted(self: Delta, **kw: Any) -> Any:
        calls.append(self.origin)
        return real(self, **kw)

    monkeypatch.setattr(Delta, "validate", counted)
    yield calls


def _payload(peer: SignedPeer, since: int, upto: int, *, key: int = 1, action: int = 0,
             q: float = 0.5, lw: float) -> bytes:
    d = Delta.build(peer.id, peer.fp, since, upto, keys=[key], actions=[action], q=[q], lw=[lw],
                    n=[1], succ=[0], fail=[0], version=[upto])
    return peer.payload(wire.DeltaMsg(peer.header(), delta=d))


def _held(node: Node) -> int:
    return sum(len(node.table.delta_of(o)) for o in node.table.origins if o != node.id)


async def test_the_nodes_decoder_checks_with_the_tables_task_and_bound() -> None:
    """The premise of checking a decoded delta once: decoder and table agree on what is valid."""
    node = await open_node(q_bound=250.0)
    try:
        lim = node.decoder.limits
        assert node.decoder.fingerprint == node.table.task.fingerprint
        assert lim.n_actions == node.table.task.n_actions
        assert lim.q_bound == pytest.approx(node.table.q_bound)
    finally:
        await node.close()


@pytest.mark.parametrize("budget", [True, False])
async def test_a_sent_and_a_relayed_delta_are_each_checked_once(
        validations: list[str], budget: bool) -> None:
    """Decoded once (the codec checks every cell), applied without a second pass."""
    node = await open_node(evidence_budget=budget)
    x, b = SignedPeer("X", node.task.fingerprint), SignedPeer("B", node.task.fingerprint)
    try:
        await x.birth(node)
        await b.birth(node)
        await node.receive(wire.topic(FED, "delta", "X"), _payload(x, 0, 1, lw=fresh_lw(node)))
        assert validations == ["X"] and _held(node) == 1
        await node.receive(wire.topic(FED, "relay", "B"),
                           _payload(x, 1, 2, key=2, lw=fresh_lw(node)))
        assert validations == ["X", "X"] and _held(node) == 2
        assert node.counters.rejected == {} and node.counters.relayed_deltas_applied == 1
    finally:
        await node.close()


BAD = [
    (dict(action=7), "unknown_action"),  # the task has fewer actions
    (dict(q=1e7), "out_of_bounds"),  # beyond q_bound
    (dict(lw=1e6), "excessive_evidence"),  # valid cells, but far more than visit_cap fresh visits
]


@pytest.mark.parametrize("budget", [True, False])
@pytest.mark.parametrize(("bad", "reason"), BAD)
async def test_a_bad_delta_sent_or_relayed_is_rejected_with_its_reason_and_changes_nothing(
        bad: dict[str, Any], reason: str, budget: bool) -> None:
    node = await open_node(evidence_budget=budget)
    x, b = SignedPeer("X", node.task.fingerprint), SignedPeer("B", node.task.fingerprint)
    try:
        await x.birth(node)
        await b.birth(node)
        kw: dict[str, Any] = {"lw": fresh_lw(node), **bad}
        await node.receive(wire.topic(FED, "delta", "X"), _payload(x, 0, 1, **kw))
        assert node.counters.rejected == {reason: 1}
        await node.receive(wire.topic(FED, "relay", "B"), _payload(x, 0, 1, **kw))
        assert node.counters.rejected == {reason: 2}
        assert _held(node) == 0 and node.known_version("X") == 0
        assert node.counters.deltas_applied == 0
    finally:
        await node.close()


async def test_a_delta_built_locally_or_restored_is_checked_by_the_table() -> None:
    """No decoder on these paths: ``QTable.apply`` and ``QTable.load`` check the cells."""
    node = await open_node()
    t = node.table
    try:
        lw = fresh_lw(node)
        bad = Delta.build("X", t.task.fingerprint, 0, 1, keys=[1], actions=[7], q=[0.5], lw=[lw],
                          n=[1], succ=[0], fail=[0], version=[1])
        with pytest.raises(BadActionIndex):
            t.apply(bad)
        with pytest.raises(BadActionIndex):
            t.load("X", bad.arrays())
        rich = Delta.build("X", t.task.fingerprint, 0, 1, keys=[1], actions=[0], q=[0.5],
                           lw=[1e6], n=[1], succ=[0], fail=[0], version=[1])
        with pytest.raises(ExcessiveEvidence):
            t.apply(rich)
        t.load("X", rich.arrays())  # restored cells are this node's own record: no clock guard
        assert len(t.delta_of("X")) == 1
        arrays = rich.arrays() | {"n": np.zeros(1, np.uint32)}
        with pytest.raises(ValueOutOfBounds):
            t.load("Y", arrays)
        assert "Y" not in t.origins
    finally:
        await node.close()
