"""The sync parts of ``Node``: asks rate-limited on the monotonic clock, retained births at 0 patient."""

from __future__ import annotations

import asyncio
from typing import Any

from support import eventually
from test_registry import FED, Clock, SignedPeer, open_node

from peerd import wire
from peerd.node import Node


class Captured:
    """A connected transport that keeps what the node publishes."""

    connected = True
    backlog = 0

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> bool:
        self.sent.append((topic, payload))
        return True

    def syncs(self) -> list[str]:
        return [t for t, _ in self.sent if wire.parse_topic(t)[1] == "sync"]  # type: ignore[index]


async def node_with(mono: Clock, **kw: Any) -> tuple[Node, Captured]:
    node = await open_node(clock=Clock(500.0), **kw)  # the node's clock stands still throughout
    node.monotonic = mono
    cap = Captured()
    node.transport = cap  # type: ignore[assignment]
    return node, cap


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_ask_rate_limit_runs_on_the_monotonic_clock_not_the_nodes() -> None:
    """A simulation's virtual clock stands still while it waits for delivery: the asks' rate limit
    must not (a deferred ask would never fall due). The cursor's times are monotonic ones."""
    mono = Clock(50.0)
    node, cap = await node_with(mono, sync_interval=2.0)
    p = SignedPeer("p", node.task.fingerprint)
    await p.birth(node)
    await p.delta(node, 1, lw=0.0)
    p.version = 5  # versions 2..5 lost: the next delta leaves a gap
    await p.delta(node, 2, lw=0.0)
    await settle()
    cur = node._registry.get("p").cursor  # type: ignore[union-attr]
    assert len(cap.syncs()) == 1 and cur.last_sync == 50.0  # not the node's clock (500)
    mono.t = 51.0
    await p.delta(node, 3, lw=0.0)  # another gap within the interval: deferred, not asked
    await settle()
    assert len(cap.syncs()) == 1 and cur.deferred == 6  # wanted: up to its from_version


async def test_retained_birth_at_zero_is_not_asked_at_once() -> None:
    """A retained birth advertising version 0 (a fleet starting together) costs no sync request;
    it is asked one heartbeat later unless the origin's first delta came (it cancels the ask)."""
    mono = Clock(50.0)
    node, cap = await node_with(mono, heartbeat_interval=15.0)
    quiet, live = SignedPeer("quiet", node.task.fingerprint), SignedPeer("live", node.task.fingerprint)
    for peer in (quiet, live):
        msg = wire.Birth(peer.header(), public_key=peer.identity.public_key, version=0)
        await node.receive(wire.topic(FED, "presence", peer.id), peer.payload(msg), retain=True)
    await live.delta(node, 1, lw=0.0)
    await settle()
    assert cap.syncs() == []
    q = node._registry.get("quiet").cursor  # type: ignore[union-attr]
    assert q.deferred and q.not_before == 65.0
    assert not node._registry.get("live").cursor.deferred  # type: ignore[union-attr]
    older = SignedPeer("older", node.task.fingerprint)  # published 4 versions before we came
    msg = wire.Birth(older.header(), public_key=older.identity.public_key, version=4)
    await node.receive(wire.topic(FED, "presence", older.id), older.payload(msg), retain=True)
    await settle()
    assert len(cap.syncs()) == 1  # data to fetch: asked at once


async def test_a_deferred_ask_is_sent_when_due_and_only_deferred_peers_are_visited() -> None:
    """The publisher asks a deferred origin once its rate limit has passed; it keeps the set of
    peers with a deferred ask instead of walking every peer on every wake-up."""
    mono = Clock(50.0)
    node, cap = await node_with(mono, sync_interval=2.0)
    others = [SignedPeer(f"o{i}", node.task.fingerprint) for i in range(20)]
    for o in others:
        await o.birth(node)
        await o.delta(node, 1, lw=0.0)
    p = SignedPeer("p", node.task.fingerprint)
    await p.birth(node)
    await p.delta(node, 1, lw=0.0)
    p.version = 5
    await p.delta(node, 2, lw=0.0)  # a gap: asked at once
    mono.t = 51.0
    await p.delta(node, 3, lw=0.0)  # another gap within the interval: deferred
    await settle()
    asked = len(cap.syncs())
    assert node._deferred_asks == {"p"}
    publisher = asyncio.ensure_future(node._publisher())
    try:
        mono.t = 53.0  # the interval has passed
        node._wake.set()
        await eventually(lambda: len(cap.syncs()) == asked + 1, what="the deferred ask sent")
        await eventually(lambda: not node._deferred_asks, what="nothing deferred any more")
    finally:
        publisher.cancel()
        await asyncio.gather(publisher, return_exceptions=True)
