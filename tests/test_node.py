"""Nodes over a real MQTT broker (mosquitto and the embedded amqtt): the system claims of DESIGN §4–7."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import eventually, same_views

from peerd import wire
from peerd.config import NodeConfig
from peerd.delta import Delta
from peerd.identity import Identity
from peerd.node import Node
from peerd.testing.broker import Broker
from peerd.transport import MqttTransport

ACTIONS = ["a", "b", "c"]


_FEDS = itertools.count()


@pytest.fixture(autouse=True)
def _fresh_federation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own federation: retained presence of earlier tests must not leak in."""
    monkeypatch.setattr(sys.modules[__name__], "FED", f"t{next(_FEDS)}-{os.getpid()}")


FED = "t"


def make_config(node_id: str, broker: Broker | None, state_dir: Path | None = None,
                **kw: Any) -> NodeConfig:
    base: dict[str, Any] = dict(
        federation=FED, node_id=node_id, actions=ACTIONS, secret="s",
        broker_url=broker.url if broker else "", state_dir=str(state_dir) if state_dir else "",
        heartbeat_interval=0.3, sync_interval=0.2, api_listen="", publish_every=10)
    base.update(kw)
    return NodeConfig(**base)


async def learn_block(node: Node, tag: str, count: int) -> None:
    """``count`` interactions on states private to ``tag``."""
    for i in range(count):
        s = f"{tag}-{i % 7}"
        await node.learn(s, node.act(s), float(i % 3), next_state=f"{tag}-{(i + 1) % 7}")


async def start_all(nodes: list[Node]) -> None:
    for nd in nodes:
        await nd.start()
    for nd in nodes:
        assert await nd.transport.wait_connected(20)


async def stop_all(nodes: list[Node]) -> None:
    for nd in nodes:
        await nd.stop()


async def test_three_nodes_converge_with_exact_visit_counts(broker: Broker, tmp_path: Path) -> None:
    """Three nodes learning disjoint states end with identical views whose visits equal the true counts."""
    nodes = [Node(make_config(f"n{i}", broker, tmp_path / f"n{i}")) for i in range(3)]
    await start_all(nodes)
    try:
        for i, nd in enumerate(nodes):
            await learn_block(nd, f"s{i}", 45)
        for nd in nodes:
            await nd.flush()
        await eventually(lambda: all(nd.table.total_visits() == 135 for nd in nodes), what="counts")
        await eventually(lambda: same_views(nodes), what="identical views")
        assert all(nd.counters.rejected == {} for nd in nodes)
        assert nodes[0].table.size == nodes[1].table.size > 0
    finally:
        await stop_all(nodes)


async def test_late_joiner_catches_up(broker: Broker) -> None:
    """A node started after the others learned catches up with everything they published."""
    early = [Node(make_config(f"e{i}", broker)) for i in range(2)]
    await start_all(early)
    late = Node(make_config("late", broker))
    try:
        for i, nd in enumerate(early):
            await learn_block(nd, f"e{i}", 40)
            await nd.flush()
        await start_all([late])
        await eventually(lambda: late.table.total_visits() == 80, what="late joiner caught up")
        await eventually(lambda: same_views([*early, late]), what="identical views")
    finally:
        await stop_all([*early, late])


async def test_restarted_node_resumes_version_and_view(broker: Broker, tmp_path: Path) -> None:
    """A node restarted from its database resumes its version, bumps its epoch and has the same view."""
    peer = Node(make_config("peer", broker))
    node = Node(make_config("node", broker, tmp_path / "node"))
    await start_all([peer, node])
    try:
        await learn_block(peer, "p", 25)
        await peer.flush()
        await learn_block(node, "n", 33)
        await eventually(lambda: node.table.total_visits() == 58, what="peer's cells applied")
        before_view, version, epoch = node.table.view(), node.table.version, node.epoch
        await node.stop()
        again = Node(make_config("node", broker, tmp_path / "node"))
        await again.open()
        assert again.table.version == version == 33
        assert again.epoch == epoch + 1
        k, q, n = again.table.view()
        assert np.array_equal(k, before_view[0]) and np.array_equal(n, before_view[2])
        assert np.allclose(q, before_view[1], rtol=1e-12)
        assert again.table.trust("peer") == node.table.trust("peer")
        await again.start()
        await again.stop()
    finally:
        await peer.stop()


async def test_broker_killed_and_restarted_nodes_reconverge(fresh_broker: Callable[..., Broker]) -> None:
    """Nodes keep learning while the broker is dead, reconnect after its restart and reconverge exactly."""
    broker = fresh_broker()
    nodes = [Node(make_config(f"b{i}", broker)) for i in range(3)]
    await start_all(nodes)
    try:
        for i, nd in enumerate(nodes):
            await learn_block(nd, f"b{i}", 20)
        broker.kill()
        await eventually(lambda: not any(nd.transport.connected for nd in nodes), what="disconnect")
        for i, nd in enumerate(nodes):  # learning and acting go on without the broker
            await learn_block(nd, f"x{i}", 20)
        assert all(nd.table.version == 40 for nd in nodes)
        broker.restart()
        for nd in nodes:
            assert await nd.transport.wait_connected(30)
        for nd in nodes:
            await nd.flush()
        await eventually(lambda: all(nd.table.total_visits() == 120 for nd in nodes), timeout=30,
                         what="counts after outage")
        await eventually(lambda: same_views(nodes), what="identical views after outage")
        assert all(nd.transport.reconnects >= 1 for nd in nodes)
    finally:
        await stop_all(nodes)


async def test_forged_message_changes_nothing_and_is_counted(broker: Broker) -> None:
    """A delta on a node's topic signed with a foreign key changes no view and is counted as bad_signature."""
    victim, honest = Node(make_config("victim", broker)), Node(make_config("honest", broker))
    await start_all([victim, honest])
    foreign = MqttTransport(broker.url, client_id="intruder", subscriptions=[])
    runner = asyncio.create_task(foreign.run(_noop_message, _noop_connect))
    try:
        await learn_block(honest, "h", 10)
        await honest.flush()
        await eventually(lambda: victim.table.total_visits() == 10, what="honest delta")
        await eventually(lambda: victim.pinned_key("honest") is not None, what="honest pinned")
        before = victim.table.view()
        assert await foreign.wait_connected(20)
        fake = Delta.build("honest", victim.task.fingerprint, 10, 11, keys=[123], actions=[0],
                           q=[999.0], lw=[1.0], n=[1], succ=[0], fail=[0], version=[11])
        hdr = wire.Header(fed=FED, node="honest", fp=victim.task.fingerprint, epoch=99, seq=1, ts=0.0)
        payload = wire.encode(wire.DeltaMsg(hdr, delta=fake), Identity.generate())
        assert await foreign.publish(wire.topic(FED, "delta", "honest"), payload, qos=1)
        assert await foreign.publish(wire.topic(FED, "delta", "honest"), b"\x00garbage", qos=1)
        await eventually(lambda: victim.counters.rejected.get("bad_signature", 0) >= 1
                         and sum(victim.counters.rejected.values()) >= 2, what="rejections counted")
        after = victim.table.view()
        assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    finally:
        await foreign.disconnect()
        runner.cancel()
        await stop_all([victim, honest])


async def _noop_message(topic: str, payload: bytes, retain: bool) -> None:
    return None


async def _noop_connect() -> None:
    return None


CHILD = textwrap.dedent("""
    import asyncio, sys
    from peerd import logs
    from peerd.config import NodeConfig
    from peerd.node import Node

    async def main():
        logs.configure("warning")
        node = Node(NodeConfig(federation="t", node_id="k", actions=["a", "b"], secret="s",
                               state_dir=sys.argv[1], api_listen=""))
        await node.open()
        sem = asyncio.Semaphore(16)
        async def one(i):
            async with sem:
                await node.learn(f"s{i}", i % 2, 1.0, done=True)
                sys.stdout.write(f"{i}\\n"); sys.stdout.flush()
        await asyncio.gather(*(one(i) for i in range(100000)))
    asyncio.run(main())
""")


def test_sigkill_after_acknowledgement_loses_nothing(tmp_path: Path) -> None:
    """Interactions acknowledged by learn() survive a SIGKILL of the process right after."""
    state = tmp_path / "k"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(state)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    acked: list[int] = []
    assert proc.stdout is not None
    try:
        while len(acked) < 600:
            line = proc.stdout.readline()
            assert line, "child died before acknowledging enough interactions"
            acked.append(int(line))
    finally:  # whatever failed above, the child must not outlive the test
        proc.send_signal(signal.SIGKILL)
    rest, _ = proc.communicate(timeout=30)
    acked += [int(x) for x in rest.decode().split()]  # printed before the kill, not yet read

    async def check() -> None:
        node = Node(NodeConfig(federation="t", node_id="k", actions=["a", "b"], secret="s",
                               state_dir=str(state), api_listen=""))
        await node.open()
        lost = [i for i in acked if int(node.table.visits(f"s{i}")[i % 2]) != 1]
        assert node.table.version >= len(acked)
        assert lost == [], f"{len(lost)} acknowledged interactions lost"
        await node._close_store()

    asyncio.run(check())


@pytest.mark.parametrize("policy", ["ucb1", "thompson"])
async def test_bandit_policies_run_on_a_node(policy: str) -> None:
    """A node without a broker learns a bandit with UCB1 / Thompson and prefers the better arm."""
    node = Node(make_config("bandit", None, policy=policy, seed=3))
    await node.start()
    try:
        rng = np.random.default_rng(0)
        for _ in range(400):
            a = node.act("ctx")
            win = bool(rng.random() < (0.8 if a == 1 else 0.2))
            await node.learn("ctx", a, float(win), success=win)
        assert int(np.argmax(node.table.visits("ctx"))) == 1
    finally:
        await node.stop()
