"""Prometheus metrics: the text exposition reads the node's state at scrape time, per node."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from peerd import liveness
from peerd.config import NodeConfig
from peerd.metrics import make_registry, merge_confidence, render
from peerd.node import Node

FAMILIES = [
    "peerd_interactions", "peerd_deltas_sent", "peerd_deltas_applied", "peerd_cells_applied",
    "peerd_bytes_sent", "peerd_bytes_received", "peerd_rejected_messages", "peerd_peers",
    "peerd_peer_trust", "peerd_peer_alignment", "peerd_merge_confidence",
    "peerd_convergence_score", "peerd_broker_connected", "peerd_table_cells", "peerd_own_version",
]


def make_node(node_id: str = "m") -> Node:
    return Node(NodeConfig(federation="metrics", node_id=node_id, actions=["a", "b"], secret="s",
                           api_listen=""))


def scrape(node_or_registry: Any) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """family name → {(sample name, sorted labels): value}."""
    registry = node_or_registry if hasattr(node_or_registry, "collect") else make_registry(
        node_or_registry)
    out: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for fam in text_string_to_metric_families(render(registry).decode()):
        out[fam.name] = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in fam.samples}
    return out


def value(fams: dict[str, Any], family: str, sample: str | None = None, **labels: str) -> float:
    return fams[family][(sample or family, tuple(sorted(labels.items())))]


async def test_exposition_carries_every_family_with_the_node_values() -> None:
    """Counters, peer states, trust, alignment, convergence and table gauges match the node."""
    node = make_node()
    for i in range(5):
        await node.learn(f"s{i % 2}", i % 2, 1.0, done=True)
    node.counters.deltas_sent, node.counters.bytes_sent = 3, 1234
    node.counters.deltas_applied, node.counters.cells_applied = 2, 17
    node.counters.bytes_received = 999
    node.counters.rejected.update(bad_signature=2, replay=5)
    p1, p2 = node._registry.admit("p1"), node._registry.admit("p2")  # what two births leave
    liveness.on_birth(p1.life, 1, 100.0)
    liveness.on_birth(p2.life, 1, 100.0)
    liveness.on_death(p2.life, 1, 101.0)
    p1.trust, p1.alignment = 1.5, 0.8

    fams = scrape(node)
    assert set(FAMILIES) <= set(fams)
    assert value(fams, "peerd_interactions", "peerd_interactions_total") == 5
    assert value(fams, "peerd_deltas_sent", "peerd_deltas_sent_total") == 3
    assert value(fams, "peerd_deltas_applied", "peerd_deltas_applied_total") == 2
    assert value(fams, "peerd_cells_applied", "peerd_cells_applied_total") == 17
    assert value(fams, "peerd_bytes_sent", "peerd_bytes_sent_total") == 1234
    assert value(fams, "peerd_bytes_received", "peerd_bytes_received_total") == 999
    assert value(fams, "peerd_rejected_messages", "peerd_rejected_messages_total",
                 reason="bad_signature") == 2
    assert value(fams, "peerd_rejected_messages", "peerd_rejected_messages_total",
                 reason="replay") == 5
    assert [value(fams, "peerd_peers", state=s) for s in ("online", "suspect", "offline",
                                                          "unknown")] == [1, 0, 1, 0]
    assert value(fams, "peerd_peer_trust", peer="p1") == 1.5
    assert value(fams, "peerd_peer_trust", peer="p2") == 1.0
    assert value(fams, "peerd_peer_alignment", peer="p1") == 0.8
    assert value(fams, "peerd_table_cells") == node.table.size == 2
    assert value(fams, "peerd_own_version") == 5
    assert value(fams, "peerd_durable_version") == 5  # no commit pending
    assert value(fams, "peerd_broker_connected") == 0
    assert 0.0 < value(fams, "peerd_merge_confidence") < 1.0
    assert fams["peerd_convergence_score"] == {}  # no trust round yet: absent, not 0

    node.convergence = 0.75
    node.counters.interactions += 1  # read at scrape time: nothing to register or update
    fams = scrape(node)
    assert value(fams, "peerd_convergence_score") == 0.75
    assert value(fams, "peerd_interactions", "peerd_interactions_total") == 6


async def test_registries_are_per_node_and_not_global() -> None:
    """Two nodes in one process export their own values, and nothing lands in the global registry."""
    one, two = make_node("one"), make_node("two")
    await one.learn("s", 0, 1.0, done=True)
    assert value(scrape(one), "peerd_interactions", "peerd_interactions_total") == 1
    assert value(scrape(two), "peerd_interactions", "peerd_interactions_total") == 0
    assert value(scrape(two), "peerd_info", node="two", federation="metrics",
                 fingerprint=two.task.fingerprint) == 1
    assert REGISTRY.get_sample_value("peerd_interactions_total") is None


def test_process_collectors_are_opt_in() -> None:
    """process_* families appear only with process=True (one daemon per process)."""
    node = make_node()
    assert not any(k.startswith("process_") for k in scrape(make_registry(node)))
    assert "process_resident_memory_bytes" in scrape(make_registry(node, process=True))


async def test_merge_confidence_prefers_the_exact_value_and_approximates_otherwise() -> None:
    """merge_confidence uses QTable.confidence() when present, else mean n/(n+1) over visited cells."""
    node = make_node()
    assert merge_confidence(node.table) == 0.0
    await node.learn("s", 0, 1.0, done=True)
    await node.learn("s", 0, 1.0, done=True)
    await node.learn("t", 1, 1.0, done=True)
    if not hasattr(node.table, "confidence"):
        assert merge_confidence(node.table) == pytest.approx(np.mean([2 / 3, 1 / 2]))

    class Exact:
        def confidence(self) -> float:
            return 0.42

    assert merge_confidence(Exact()) == 0.42
