"""Prometheus metrics of one node, read from the node at scrape time.

This is the only module of peerd that imports prometheus-client. Nothing is
counted twice: the node keeps plain counters (``Node.counters``) and state
(liveness, trust, table), and ``NodeCollector`` turns them into metric
families when ``/metrics`` is scraped. So the hot path pays nothing for
metrics, and every node gets its own ``CollectorRegistry`` — never the
process-global one — so that many nodes (the simulation, the tests) can live
in one process without their series colliding.

Families (counters carry the ``_total`` suffix in the exposition):

- ``peerd_interactions_total``, ``peerd_deltas_sent_total``,
  ``peerd_deltas_applied_total``, ``peerd_cells_sent_total``,
  ``peerd_cells_applied_total``, ``peerd_bytes_sent_total``,
  ``peerd_bytes_received_total``, ``peerd_messages_received_total``,
  ``peerd_sync_requests_sent_total``, ``peerd_sync_answers_sent_total``,
  ``peerd_trust_rounds_total``, ``peerd_rebirths_requested_total``,
  ``peerd_births_answered_total``, ``peerd_relays_sent_total``,
  ``peerd_relayed_payloads_sent_total``, ``peerd_relayed_deltas_applied_total``;
- ``peerd_rejected_messages_total{reason}`` — ``reason`` is a ``WireError.reason``;
- ``peerd_peers{state}`` for online | suspect | offline | unknown;
- ``peerd_peer_trust{peer}``, ``peerd_peer_alignment{peer}``;
- ``peerd_merge_confidence``, ``peerd_convergence_score`` (absent until the
  first trust round), ``peerd_broker_connected``, ``peerd_table_cells``,
  ``peerd_own_version``, ``peerd_durable_version`` (the watermark: nothing
  newer is published), ``peerd_info{node,federation,fingerprint}``;
- the broker connection: ``peerd_broker_member_info{url}`` (1, for the member
  in use, absent while disconnected; credentials never appear),
  ``peerd_broker_members`` (configured members), ``peerd_broker_reconnects_total``
  (connections after the first) and ``peerd_broker_disconnects_total``
  (connections lost without being asked to).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "NodeCollector", "make_registry", "merge_confidence", "render"]

#: The ``Content-Type`` of ``render``'s output (text exposition format 0.0.4).
CONTENT_TYPE = CONTENT_TYPE_LATEST

#: ``Node.counters`` field → (metric name without ``_total``, help).
_COUNTERS: dict[str, tuple[str, str]] = {
    "interactions": ("peerd_interactions", "Interactions learned from local applications."),
    "deltas_sent": ("peerd_deltas_sent", "Own deltas published (including sync answers)."),
    "deltas_applied": ("peerd_deltas_applied", "Peers' deltas validated and merged."),
    "cells_sent": ("peerd_cells_sent", "Cells in published deltas."),
    "cells_applied": ("peerd_cells_applied", "Peers' cells that changed the table when merged."),
    "bytes_sent": ("peerd_bytes_sent", "Payload bytes handed to the broker."),
    "bytes_received": ("peerd_bytes_received", "Payload bytes received from peers."),
    "messages_received": ("peerd_messages_received", "Messages received from peers."),
    "sync_requests_sent": ("peerd_sync_requests_sent", "Catch-up requests sent to peers."),
    "sync_answers_sent": ("peerd_sync_answers_sent", "Catch-up requests answered."),
    "trust_rounds": ("peerd_trust_rounds", "Consensus trust rounds run."),
    "rebirths_requested": ("peerd_rebirths_requested",
                           "Rebirth requests sent to senders whose key was not pinned."),
    "births_answered": ("peerd_births_answered",
                        "Non-retained births sent for a rebirth request or a new peer's birth."),
    "relays_sent": ("peerd_relays_sent", "Relays of a silent origin's signed payloads."),
    "relayed_payloads_sent": ("peerd_relayed_payloads_sent",
                              "Payloads of other origins re-sent verbatim."),
    "relayed_deltas_applied": ("peerd_relayed_deltas_applied",
                               "Relayed deltas verified with their origin's key and merged."),
}

_PEER_STATES = ("online", "suspect", "offline", "unknown")


def merge_confidence(table: Any) -> float:
    """Mean confidence of the merged view, in [0, 1]; 0 for an empty table.

    Uses ``QTable.confidence()`` when the table has it: the recency-weighted
    ``eff/(eff+1)`` that the merge log records per merge. Otherwise a cheap
    approximation from the public merged view: mean over cells with visits of
    ``n/(n+1)`` (what the exact value would be if no evidence ever decayed).
    """
    exact = getattr(table, "confidence", None)
    if callable(exact):
        return float(exact())
    _, _, n = table.view()
    seen = n[n > 0].astype(np.float64)
    return float((seen / (seen + 1.0)).mean()) if seen.size else 0.0


class NodeCollector(Collector):
    """Reads a ``Node`` (or anything with the same attributes) when the registry is scraped."""

    def __init__(self, node: Any) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node = self.node
        counters = node.counters
        for attr, (name, doc) in _COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=float(getattr(counters, attr, 0)))

        rejected = CounterMetricFamily("peerd_rejected_messages",
                                       "Messages from the network rejected, by reason.",
                                       labels=["reason"])
        for reason, count in sorted(counters.rejected.items()):
            rejected.add_metric([reason], float(count))
        yield rejected

        peers = GaugeMetricFamily("peerd_peers", "Known peers by liveness state.", labels=["state"])
        counts = node.liveness_counts()
        for state in _PEER_STATES:
            peers.add_metric([state], float(counts.get(state, 0)))
        yield peers

        probation = getattr(node, "probation", None)
        if probation is not None:
            yield GaugeMetricFamily("peerd_peers_on_probation",
                                    "New origins whose cells do not count until judged.",
                                    value=float(len(probation)))
            for what, doc in (("admitted", "New origins put on probation."),
                              ("released", "Origins released from probation (judged within "
                                           "the consensus, or never judgeable)."),
                              ("failed", "Origins quarantined while on probation.")):
                yield CounterMetricFamily(f"peerd_probation_{what}", doc,
                                          value=float(getattr(probation, what)))

        trust = GaugeMetricFamily("peerd_peer_trust", "Trust in each peer, in [0.1, 2].",
                                  labels=["peer"])
        for pid, value in sorted(node.trusts().items()):
            trust.add_metric([pid], float(value))
        yield trust

        alignment = GaugeMetricFamily("peerd_peer_alignment",
                                      "Agreement of each peer's signatures with the consensus.",
                                      labels=["peer"])
        for pid, value in sorted(node.alignments().items()):
            alignment.add_metric([pid], float(value))
        yield alignment

        yield GaugeMetricFamily("peerd_merge_confidence",
                                "Mean confidence of the merged view's cells, in [0, 1].",
                                value=merge_confidence(node.table))
        convergence = GaugeMetricFamily("peerd_convergence_score",
                                        "Federation-wide agreement of the last trust round, in [0, 1].")
        if node.convergence is not None:
            convergence.add_metric([], float(node.convergence))
        yield convergence

        transport = node.transport
        yield GaugeMetricFamily("peerd_broker_connected", "1 while connected to the MQTT broker.",
                                value=1.0 if transport is not None and transport.connected else 0.0)
        yield from _broker_families(transport)
        yield GaugeMetricFamily("peerd_table_cells", "Cells of the merged view with visits.",
                                value=float(node.table.size))
        yield GaugeMetricFamily("peerd_own_version", "Version of this node's own contribution.",
                                value=float(node.table.version))
        watermark = getattr(node, "watermark", None)
        if watermark is not None:
            yield GaugeMetricFamily("peerd_durable_version",
                                    "Own version up to which every commit returned (published "
                                    "up to here at most).", value=float(watermark))
        info = GaugeMetricFamily("peerd_info", "Constant 1, labelled with the node's identity.",
                                 labels=["node", "federation", "fingerprint"])
        info.add_metric([node.id, node.fed, node.task.fingerprint], 1.0)
        yield info


def _broker_families(transport: Any) -> Iterator[Metric]:
    """Which member of a (clustered) broker the node uses, and how often it had to reconnect."""
    member = GaugeMetricFamily("peerd_broker_member_info",
                               "Constant 1, labelled with the broker member in use.",
                               labels=["url"])
    in_use = getattr(transport, "member", None)
    if in_use:
        member.add_metric([in_use], 1.0)
    yield member
    yield GaugeMetricFamily("peerd_broker_members", "Broker members configured (tried in order).",
                            value=float(len(getattr(transport, "member_urls", ()) or ())))
    yield CounterMetricFamily("peerd_broker_reconnects",
                              "Broker connections after the first (to any member).",
                              value=float(getattr(transport, "reconnects", 0)))
    yield CounterMetricFamily("peerd_broker_disconnects",
                              "Broker connections lost without being asked to.",
                              value=float(getattr(transport, "disconnects", 0)))


def make_registry(node: Any, *, process: bool = False) -> CollectorRegistry:
    """A fresh registry holding ``NodeCollector(node)``.

    ``process=True`` adds the standard ``process_*`` and ``python_*`` families
    (memory, file descriptors, CPU): right for a daemon, which is one node per
    process, and wrong for the simulation, where they would repeat per node.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    if process:
        from prometheus_client import PlatformCollector, ProcessCollector

        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format (serve with ``CONTENT_TYPE``)."""
    return generate_latest(registry)
