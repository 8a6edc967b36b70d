"""A node's trust round quarantines a validly signed liar by its values; copied signatures cost trust."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from peerd.config import NodeConfig
from peerd.node import Node
from peerd.sim.liars import LyingTable
from peerd.testing.memory import MemoryBus

ACTIONS = ["a", "b", "c"]


class Fleet:
    def __init__(self) -> None:
        self.bus = MemoryBus()
        self.nodes: list[Node] = []

    async def add(self, node_id: str) -> Node:
        cfg = NodeConfig(federation="lf", node_id=node_id, actions=ACTIONS, secret="s", api_listen="",
                         q_bound=100.0, seed=len(self.nodes))
        node = Node(cfg, transport_factory=self.bus.transport)
        node.auto_trust_rounds = False
        self.nodes.append(node)
        await node.start()
        assert await node.transport.wait_connected(5)
        return node


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    f = Fleet()
    try:
        yield f
    finally:
        for nd in f.nodes:
            await asyncio.wait_for(nd.stop(), 10)


async def _until(pred, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.01)


async def _learn(node: Node, rng: np.random.Generator, count: int = 90) -> None:
    for i in range(count):
        a = i % 3
        await node.learn(f"s{(i // 3) % 10}", a, float(a + 1 + rng.normal(0, 0.05)), done=True)


async def _round(fleet: Fleet, honest: list[Node], liar: Node, kind: str) -> None:
    liar.table = LyingTable(liar.table, kind, liar, np.random.default_rng(9))  # type: ignore[assignment]
    await _until(lambda: all(n.peer_count() == len(fleet.nodes) - 1 for n in fleet.nodes))
    rng = np.random.default_rng(1)
    for nd in fleet.nodes:
        await _learn(nd, rng)
    # the liar's lies come from its view: let it see the honest cells first
    for nd in honest:
        await nd.flush()
    await _until(lambda: all(liar.known_version(h.id) == h.table.version for h in honest))
    for nd in fleet.nodes:  # something new to publish, so that the signatures travel now
        await _learn(nd, rng, 3)
        nd.request_signatures()
        await nd.flush()
    await _until(lambda: all(a.known_version(b.id) == b.table.version
                             for a in honest for b in fleet.nodes if a is not b))
    for nd in honest:
        await nd.trust_round()


async def test_an_inverter_is_quarantined_and_no_honest_node_is(fleet: Fleet) -> None:
    honest = [await fleet.add(f"h{i}") for i in range(4)]
    liar = await fleet.add("liar")
    await _round(fleet, honest, liar, "invert")
    for h in honest:
        assert "liar" in h.quarantine and h.excluded("liar")
        assert not any(p.id in h.quarantine for p in honest)
        assert h.trust_of("liar") == pytest.approx(0.1)
        assert h.counters.quarantined == 1
        row = h.table.values("s0")
        assert row.argmax() == 2  # the view is the honest one: action c pays most


async def test_copied_signatures_contradicting_the_copiers_cells_cost_trust(fleet: Fleet) -> None:
    honest = [await fleet.add(f"h{i}") for i in range(4)]
    liar = await fleet.add("liar")
    await _round(fleet, honest, liar, "copycat")
    for h in honest:
        assert h.counters.rejected.get("contradicting_signatures", 0) >= 1
        assert h.excluded("liar")
        assert all(h.trust_of(p.id) >= 1.0 for p in honest if p is not h)


async def test_a_newcomer_counts_only_after_passing_deviation_rounds(fleet: Fleet) -> None:
    honest = [await fleet.add(f"h{i}") for i in range(4)]
    liar = await fleet.add("liar")
    await _round(fleet, honest, liar, "invert")
    h0 = honest[0]
    assert h0.probation.admitted >= 4  # every peer's first cells came on probation
    for _ in range(h0.probation.max_rounds):  # founders pass (or time out); the inverter fails
        await h0.trust_round()
    assert not any(p.id in h0.probation for p in honest[1:]) and "liar" in h0.quarantine
    assert h0.probation.failed >= 1
    # a newcomer (an honest one, a fresh identity): stored, judged, but not counted at first
    new = await fleet.add("new")
    await _until(lambda: all(n.peer_count() == len(fleet.nodes) - 1 for n in fleet.nodes))
    rng = np.random.default_rng(5)
    await _learn(new, rng)
    await new.flush()
    await _until(lambda: h0.known_version("new") == new.table.version)
    assert "new" in h0.probation and h0.excluded("new")
    assert h0.status()["probation"]["peers"] == ["new"]
    rounds = 0
    while "new" in h0.probation and rounds < 20:
        await h0.deviation_round()
        rounds += 1
    assert "new" not in h0.probation and "new" not in h0.quarantine
    assert h0.probation.rounds <= rounds <= h0.probation.max_rounds  # bounded hold
    assert not h0.excluded("new")


async def test_a_lying_newcomer_never_counts(fleet: Fleet) -> None:
    honest = [await fleet.add(f"h{i}") for i in range(4)]
    liar = await fleet.add("liar")
    await _round(fleet, honest, liar, "invert")
    h0 = honest[0]
    before = h0.table.values("s0").copy()
    sybil = await fleet.add("sybil")
    sybil.table = LyingTable(sybil.table, "invert", sybil,  # type: ignore[assignment]
                             np.random.default_rng(3))
    await _until(lambda: all(n.peer_count() == len(fleet.nodes) - 1 for n in fleet.nodes))
    await _learn(sybil, np.random.default_rng(6))
    await sybil.flush()
    await _until(lambda: h0.known_version("sybil") == sybil.table.version)
    assert "sybil" in h0.probation
    assert h0.table.values("s0") == pytest.approx(before)  # its lies weigh nothing yet
    await h0.deviation_round()
    assert "sybil" in h0.quarantine and "sybil" not in h0.probation
    assert h0.table.values("s0").argmax() == 2


async def test_an_origin_whose_every_delta_is_rejected_never_goes_on_probation(fleet: Fleet) -> None:
    """Probation starts with an origin's first *accepted* cells.

    It used to start with the first attempt: an ``inflate`` liar, every delta
    rejected by the evidence budget, was admitted, released unjudged after
    ``max_rounds`` trust rounds, and admitted again by its next delta.
    """
    honest = [await fleet.add(f"h{i}") for i in range(4)]
    liar = await fleet.add("liar")
    liar.table = LyingTable(liar.table, "inflate", liar, np.random.default_rng(9))  # type: ignore[assignment]
    await _until(lambda: all(n.peer_count() == len(fleet.nodes) - 1 for n in fleet.nodes))
    rng = np.random.default_rng(1)
    for nd in fleet.nodes:
        await _learn(nd, rng)
        await nd.flush()
    await _until(lambda: all(a.known_version(b.id) == b.table.version
                             for a in honest for b in honest if a is not b))
    await _until(lambda: all(sum(h.counters.rejected.values()) >= 1 for h in honest))
    for h in honest:
        assert h.known_version("liar") == 0 and h.table.max_version("liar") == 0
        assert "liar" not in h.probation  # nothing of it was accepted: nothing to judge
        assert h.trust_of("liar") < 1.0  # its rejections cost it trust
        assert h.probation.admitted == len(honest) - 1  # the honest peers' first cells did
