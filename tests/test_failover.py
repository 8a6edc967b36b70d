"""Broker members: failover order and pacing, confirmed publishes, and no stray tracebacks on a disconnect."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from peerd.testing.broker import Broker, find_mosquitto
from peerd.transport import MqttTransport, backoff_delay, retry_delay

if TYPE_CHECKING:
    from conftest import Recorder

REPO = Path(__file__).resolve().parents[1]
needs_mosquitto = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not on PATH")


def make(urls: str | list[str], subscriptions: list[tuple[str, int]] | None = None,
         **kwargs: Any) -> MqttTransport:
    return MqttTransport(urls, client_id=f"fo-{uuid.uuid4().hex[:8]}",
                         subscriptions=subscriptions or [], **kwargs)


# -- pacing: pure -----------------------------------------------------------------------------


def test_next_member_is_tried_quickly_and_full_backoff_waits_for_a_failed_round() -> None:
    """Short jittered pauses while untried members remain; backoff only after a whole round failed."""
    rng = random.Random(7)
    base, cap = 0.2, 10.0
    for failures in (0, 1, 2, 4, 5):  # 3 members: 0 = just lost, 1..2 and 4..5 mid-round
        assert all(0.0 <= retry_delay(failures, 3, base, cap, rng) <= base for _ in range(50))
    after_round = [retry_delay(3, 3, base, cap, rng) for _ in range(200)]
    assert min(after_round) >= base and max(after_round) <= 2 * base
    after_two = [retry_delay(6, 3, base, cap, rng) for _ in range(200)]
    assert max(after_two) > 2 * base and max(after_two) <= 4 * base
    assert len({round(d, 6) for d in after_round}) > 100  # jittered, not lockstep
    # one member: every failure is a failed round, paced as the plain backoff
    one = [retry_delay(2, 1, base, cap, rng) for _ in range(200)]
    assert min(one) >= base and max(one) <= 4 * base
    assert backoff_delay(1, base, cap, random.Random(0)) <= 4 * base


def test_members_are_parsed_and_shown_without_credentials() -> None:
    """Each member is parsed; status shows URLs without user or password; duplicates are refused."""
    t = make(["mqtt://alice:s3cret@h1:1884", "mqtt://h2"])
    assert t.member_urls == ["mqtt://h1:1884", "mqtt://h2:1883"]
    assert t.member is None and t.host == "h1" and t.username == "alice"
    from peerd.errors import ConfigError
    with pytest.raises(ConfigError):
        make(["mqtt://h1", "mqtt://h1:1883"])
    with pytest.raises(ConfigError):
        make([])


# -- failover over real brokers ----------------------------------------------------------------


@needs_mosquitto
async def test_lost_member_fails_over_to_the_next(recorder: type[Recorder]) -> None:
    """Two brokers: killing the one in use moves the transport to the other, which it reports."""
    first, second = Broker("mosquitto").start(), Broker("mosquitto").start()
    rec = recorder()
    t = make([first.url, second.url], [("fo/#", 1)], backoff=(0.05, 0.5))
    task = asyncio.create_task(t.run(rec.on_message, rec.on_connect))
    try:
        assert await t.wait_connected(10)
        assert t.member == first.url
        first.kill()
        await rec.wait_for(lambda r: r.connects == 2, timeout=10)
        assert t.member == second.url and t.reconnects == 1 and t.disconnects == 1
        assert await t.publish("fo/x", b"after", qos=1)
        await rec.wait_for(lambda r: ("fo/x", b"after", False) in r.messages)
    finally:
        await t.disconnect()
        task.cancel()
        first.close()
        second.close()


@needs_mosquitto
async def test_confirmed_publish_is_false_when_the_connection_dies_first() -> None:
    """With ``confirm``, QoS 1 publish is True only once acknowledged; a dead broker makes it False."""
    b = Broker("mosquitto").start()
    t = make(b.url, confirm=True, backoff=(0.05, 0.5))
    task = asyncio.create_task(t.run(_ignore, _nothing))
    try:
        assert await t.wait_connected(10)
        assert await t.publish("fo/ok", b"x", qos=1) is True
        b.stop()  # broker gone: a publish can no longer be acknowledged
        assert await t.wait_disconnected(10)
        assert await t.publish("fo/lost", b"x", qos=1) is False
    finally:
        await t.disconnect()
        task.cancel()
        b.close()


async def _ignore(topic: str, payload: bytes, retain: bool) -> None:
    return None


async def _nothing() -> None:
    return None


# -- no unhandled futures ---------------------------------------------------------------------


async def _read_body(reader: asyncio.StreamReader) -> bytes:
    """The rest of an MQTT packet after its first byte: the remaining length, then that many bytes."""
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return await reader.readexactly(length)


async def _drop_on_subscribe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A broker that accepts CONNECT, then closes the connection at SUBSCRIBE (a member dying)."""
    try:
        while header := await reader.read(1):
            await _read_body(reader)
            if header[0] >> 4 == 1:  # CONNECT → CONNACK accepted
                writer.write(bytes([0x20, 2, 0, 0]))
                await writer.drain()
            elif header[0] >> 4 == 8:  # SUBSCRIBE → gone
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()


@pytest.fixture
async def asyncio_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """Whatever asyncio reports to its exception handler ("never retrieved", "in callback")."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    yield seen
    loop.set_exception_handler(previous)


async def test_connection_lost_during_subscribe_leaves_no_unretrieved_future(
        asyncio_errors: list[dict[str, Any]]) -> None:
    """aiomqtt's disconnect future is retrieved even when the loss happens outside message iteration."""
    server = await asyncio.start_server(_drop_on_subscribe, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    t = make(f"mqtt://127.0.0.1:{port}", [("fo/#", 1)], backoff=(0.01, 0.05), timeout=2.0)
    task = asyncio.create_task(t.run(_ignore, _nothing))
    try:
        async with asyncio.timeout(20):  # wait on the condition: a few sessions failed so
            while t.connect_failures < 3:
                await asyncio.sleep(0.02)
        assert t.last_error is not None and "connection lost" in t.last_error
    finally:
        await t.disconnect()
        task.cancel()
        server.close()
    for _ in range(3):
        gc.collect()
        await asyncio.sleep(0)
    messages = [str(c.get("message")) + repr(c.get("exception")) for c in asyncio_errors]
    assert not messages, messages


_NODE_ACROSS_A_KILL = textwrap.dedent("""
    import asyncio, gc, sys
    from peerd.testing.broker import Broker
    from peerd.config import NodeConfig
    from peerd.node import Node

    async def main() -> None:
        broker = Broker("mosquitto").start()
        node = Node(NodeConfig(federation="fo", node_id="solo", actions=["a", "b"], secret="s",
                               broker_url=broker.url, api_listen="", heartbeat_interval=0.2,
                               publish_every=1))
        await node.start()
        assert await node.transport.wait_connected(10)
        for round_ in range(3):  # three losses while interactions are being published
            for i in range(20):
                await node.learn(f"s{i % 4}", 0, 1.0)
            broker.kill()
            assert await node.transport.wait_disconnected(10)
            for i in range(5):
                await node.learn(f"s{i % 4}", 1, 0.0)
            broker.start()
            assert await node.transport.wait_connected(20)
            print("round", round_, flush=True)
        await node.stop()
        broker.close()
        gc.collect()
        print("done", node.transport.reconnects, flush=True)

    asyncio.run(main())
""")


@needs_mosquitto
async def test_node_across_broker_kills_prints_no_traceback() -> None:
    """A node run across three broker kills: stderr holds no "exception was never retrieved",
    no "Exception in callback" and no traceback; each loss is one ``broker_disconnected`` event."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-X", "dev", "-c", _NODE_ACROSS_A_KILL, env=env, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    except TimeoutError:
        proc.send_signal(signal.SIGKILL)
        raise
    stdout, stderr = out.decode(), err.decode()
    assert proc.returncode == 0, stderr[-3000:]
    assert "done 3" in stdout, stdout
    for bad in ("exception was never retrieved", "Exception in callback", "Traceback"):
        assert bad not in stderr and bad not in stdout, (stdout + stderr)[-4000:]
    events = stdout + stderr  # structlog writes JSON lines to stdout when not a terminal
    assert events.count('"broker_disconnected"') == 3, events[-4000:]


# -- deltas a lost connection swallowed are sent again --------------------------------------------


async def _swallow_publishes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A broker that admits the client, never acknowledges a PUBLISH, and dies at the second."""
    publishes = 0
    try:
        while header := await reader.read(1):
            await _read_body(reader)
            if header[0] >> 4 == 1:
                writer.write(bytes([0x20, 2, 0, 0]))
                await writer.drain()
            elif header[0] >> 4 == 3:
                publishes += 1
                if publishes == 2:
                    break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()


async def test_tracked_publish_reports_what_the_broker_never_acknowledged() -> None:
    """``publish_tracked`` hands over at once; its future ends False/cancelled when the connection dies
    before the PUBACK, and is None when not connected at all."""
    server = await asyncio.start_server(_swallow_publishes, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    t = make(f"mqtt://127.0.0.1:{port}", backoff=(0.5, 1.0))
    task = asyncio.create_task(t.run(_ignore, _nothing))
    try:
        assert await t.wait_connected(10)
        first = await t.publish_tracked("fo/a", b"1", qos=1)
        second = await t.publish_tracked("fo/b", b"2", qos=1)
        assert first is not None and second is not None
        async with asyncio.timeout(10):
            await asyncio.wait({first, second})
        assert all(f.cancelled() or f.result() is False for f in (first, second))
        assert await t.wait_disconnected(5)
        assert await t.publish_tracked("fo/c", b"3", qos=1) is None
    finally:
        await t.disconnect()
        task.cancel()
        server.close()


async def test_unconfirmed_delta_rewinds_the_published_cursor() -> None:
    """A delta the broker never acknowledged moves ``published_version`` back to where it started,
    so the publisher recomputes it from versions; a later piece never moves the cursor forward."""
    from peerd.config import NodeConfig
    from peerd.node import Node

    node = Node(NodeConfig(federation="fo", node_id="n", actions=["a", "b"], secret="s",
                           api_listen=""))
    await node.open()
    for i in range(20):
        await node.learn(f"s{i % 4}", 0, 1.0)
    node._gossip.published_version = 20  # white-box: the cursor as after a publish
    node._unconfirmed(node.table.delta(since=10))
    assert node.published_version == 10
    node._unconfirmed(node.table.delta(since=15))
    assert node.published_version == 10
    assert len(node.table.delta(since=node.published_version)) > 0  # what goes out again
