"""MqttTransport over real brokers (each kind), and the in-memory bus that stands in for one."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from support import eventually

from peerd.errors import ConfigError
from peerd.testing.broker import Broker, free_port
from peerd.testing.memory import MemoryBus
from peerd.transport import MqttTransport, TLSConfig, backoff_delay, parse_broker_url
from peerd.transport_api import Transport, topic_matches, validate_filter

if TYPE_CHECKING:
    from conftest import Recorder

    Run = Callable[[Transport, Recorder], asyncio.Task[None]]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def root() -> str:
    """A topic prefix no other test uses (the session broker keeps retained messages)."""
    return f"peerd-test/{uuid.uuid4().hex[:10]}"


def make(url: str, name: str, subscriptions: list[tuple[str, int]] | None = None,
         **kwargs: object) -> MqttTransport:
    return MqttTransport(url, client_id=f"{name}-{uuid.uuid4().hex[:8]}",
                         subscriptions=subscriptions or [], **kwargs)  # type: ignore[arg-type]


async def connected(*transports: MqttTransport, timeout: float = 10.0) -> None:
    for t in transports:
        assert await t.wait_connected(timeout), f"{t!r} did not connect: {t.last_error}"


# -- over a real broker ------------------------------------------------------------------------


async def test_round_trip_qos0_and_qos1(broker: Broker, root: str, recorder: type[Recorder],
                                        run_transport: Run) -> None:
    """Messages published at QoS 0 and QoS 1 reach a wildcard subscriber, flagged not retained."""
    sub_rec, pub_rec = recorder(), recorder()
    sub = make(broker.url, "sub", [(f"{root}/+/x", 1)])
    pub = make(broker.url, "pub")
    run_transport(sub, sub_rec)
    run_transport(pub, pub_rec)
    await connected(sub, pub)

    assert await pub.publish(f"{root}/a/x", b"zero", qos=0)
    assert await pub.publish(f"{root}/b/x", b"one", qos=1)
    await sub_rec.wait_for(lambda r: len(r.messages) == 2)

    assert sorted(sub_rec.messages) == [(f"{root}/a/x", b"zero", False),
                                        (f"{root}/b/x", b"one", False)]
    assert (pub.messages_out, pub.bytes_out) == (2, 7)
    assert (sub.messages_in, sub.bytes_in) == (2, 7)
    assert sub_rec.connects == pub_rec.connects == 1


async def test_messages_arrive_in_publish_order(broker: Broker, root: str,
                                                recorder: type[Recorder],
                                                run_transport: Run) -> None:
    """300 QoS 1 messages from one publisher are delivered in the order they were published."""
    sub_rec = recorder()
    sub = make(broker.url, "sub", [(f"{root}/seq", 1)])
    pub = make(broker.url, "pub")
    run_transport(sub, sub_rec)
    run_transport(pub, recorder())
    await connected(sub, pub)

    for i in range(300):
        assert await pub.publish(f"{root}/seq", str(i).encode(), qos=1)
    await sub_rec.wait_for(lambda r: len(r.messages) == 300, timeout=15)
    assert [int(p) for p in sub_rec.payloads()] == list(range(300))


async def test_backlog_counts_messages_received_and_not_yet_handed_over(
        broker: Broker, root: str, recorder: type[Recorder], run_transport: Run) -> None:
    """While the node is busy with one message, the next ones wait in the queue: ``backlog``
    counts them (a node holds its relays back meanwhile), and is 0 once they are read."""
    gate = asyncio.Event()

    class Busy(recorder):  # type: ignore[misc,valid-type]
        async def on_message(self, topic: str, payload: bytes, retain: bool) -> None:
            await gate.wait()
            await super().on_message(topic, payload, retain)

    sub_rec = Busy()
    sub = make(broker.url, "sub", [(f"{root}/q", 1)])
    pub = make(broker.url, "pub")
    run_transport(sub, sub_rec)
    run_transport(pub, recorder())
    await connected(sub, pub)
    assert sub.backlog == 0
    for i in range(3):
        assert await pub.publish(f"{root}/q", bytes([i]), qos=1)
    await eventually(lambda: sub.backlog == 2, timeout=10.0, what="two messages queued")
    gate.set()
    await sub_rec.wait_for(lambda r: len(r.messages) == 3)
    assert sub.backlog == 0


async def test_retained_message_reaches_late_subscriber(broker: Broker, root: str,
                                                        recorder: type[Recorder],
                                                        run_transport: Run) -> None:
    """A retained message is delivered, flagged retained, to a client that subscribes later."""
    topic = f"{root}/presence/n1"
    pub_rec = recorder()
    pub = make(broker.url, "pub", [(topic, 1)])
    run_transport(pub, pub_rec)
    await connected(pub)
    assert await pub.publish(topic, b"online", qos=1, retain=True)
    # Its echo proves the broker has processed (and retained) it: "later" is now.
    await pub_rec.wait_for(lambda r: (topic, b"online", False) in r.messages)

    late_rec = recorder()
    late = make(broker.url, "late", [(f"{root}/presence/+", 1)])
    run_transport(late, late_rec)
    await late_rec.wait_for(lambda r: len(r.messages) >= 1)
    assert late_rec.messages[0] == (topic, b"online", True)


async def test_empty_retained_payload_clears_the_topic(broker: Broker, root: str,
                                                       recorder: type[Recorder],
                                                       run_transport: Run) -> None:
    """Publishing an empty retained payload removes the retained message for later subscribers."""
    topic = f"{root}/r"
    pub_rec = recorder()
    pub = make(broker.url, "pub", [(topic, 1)])
    run_transport(pub, pub_rec)
    await connected(pub)
    assert await pub.publish(topic, b"stale", retain=True)
    assert await pub.publish(topic, b"", retain=True)
    await pub_rec.wait_for(lambda r: (topic, b"", False) in r.messages)

    late_rec = recorder()
    late = make(broker.url, "late", [(f"{root}/#", 1)])
    run_transport(late, late_rec)
    await connected(late)
    assert await pub.publish(f"{root}/marker", b"m")
    await late_rec.wait_for(lambda r: (f"{root}/marker", b"m", False) in r.messages)
    assert late_rec.payloads(topic) == []


async def test_subscriber_receives_only_what_it_subscribed_to(
        broker: Broker, root: str, recorder: type[Recorder], run_transport: Run) -> None:
    """Retained messages under another client's filter are not sent to a connecting client."""
    other_rec = recorder()
    other = make(broker.url, "other", [(f"{root}/a/#", 1)])
    run_transport(other, other_rec)
    await connected(other)
    assert await other.publish(f"{root}/a/x", b"not for b", retain=True)
    await other_rec.wait_for(lambda r: len(r.messages) == 1)  # retained by the broker now

    b_rec = recorder()
    b = make(broker.url, "b", [(f"{root}/b/#", 1)])
    run_transport(b, b_rec)
    await connected(b)
    assert await other.publish(f"{root}/b/m", b"marker")
    await b_rec.wait_for(lambda r: len(r.messages) >= 1)
    assert b_rec.messages == [(f"{root}/b/m", b"marker", False)]
    assert b.messages_unsolicited == 0  # the broker did not send it (amqtt is patched)


_KILLABLE_CLIENT = """
import asyncio, sys
from peerd.transport import MqttTransport

async def main() -> None:
    url, client_id, topic = sys.argv[1:4]
    transport = MqttTransport(url, client_id=client_id, subscriptions=[],
                              will=(topic, b"offline", 1, True))

    async def on_connect() -> None:
        assert await transport.publish(topic, b"online", qos=1, retain=True)
        print("up", flush=True)

    async def on_message(topic: str, payload: bytes, retain: bool) -> None:
        pass

    await transport.run(on_message, on_connect)

asyncio.run(main())
"""


async def _read_until(stream: asyncio.StreamReader, marker: bytes) -> None:
    """Skip the child's log lines until it prints ``marker`` on a line of its own."""
    while (line := await stream.readline()).strip() != marker:
        assert line, "child exited before it connected"


async def test_will_is_published_retained_when_client_is_killed(
        broker: Broker, root: str, recorder: type[Recorder], run_transport: Run) -> None:
    """SIGKILL of a client process makes the broker publish its Will, retained, like a death."""
    topic = f"{root}/presence/victim"
    watch_rec = recorder()
    watch = make(broker.url, "watch", [(f"{root}/presence/+", 1)])
    run_transport(watch, watch_rec)
    await connected(watch)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                                    os.environ.get("PYTHONPATH")]))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _KILLABLE_CLIENT, broker.url, f"victim-{uuid.uuid4().hex[:8]}", topic,
        stdout=asyncio.subprocess.PIPE, env=env,
    )
    try:
        await asyncio.wait_for(_read_until(proc.stdout, b"up"), 15)  # type: ignore[arg-type]
        await watch_rec.wait_for(lambda r: (topic, b"online", False) in r.messages)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()

    await watch_rec.wait_for(lambda r: (topic, b"offline", False) in r.messages)
    late_rec = recorder()
    run_transport(make(broker.url, "late", [(topic, 1)]), late_rec)
    await late_rec.wait_for(lambda r: len(r.messages) >= 1)
    assert late_rec.messages[0] == (topic, b"offline", True)


def _connect_packet(client_id: str, keepalive: int, will_topic: str, will_payload: bytes) -> bytes:
    """A raw MQTT 3.1.1 CONNECT with a retained QoS 1 Will (clean session)."""
    def field(data: bytes) -> bytes:
        return len(data).to_bytes(2, "big") + data

    flags = 0x02 | 0x04 | (1 << 3) | 0x20  # clean session, will, will QoS 1, will retain
    body = (field(b"MQTT") + bytes([4, flags]) + keepalive.to_bytes(2, "big")
            + field(client_id.encode()) + field(will_topic.encode()) + field(will_payload))
    length, encoded = len(body), b""
    while True:
        byte, length = length % 128, length // 128
        encoded += bytes([byte | (0x80 if length else 0)])
        if not length:
            break
    return b"\x10" + encoded + body


async def test_will_is_published_when_client_goes_silent(
        broker: Broker, root: str, recorder: type[Recorder], run_transport: Run) -> None:
    """A client silent past 1.5 × keep-alive (half-open link) is dropped and its Will published."""
    topic = f"{root}/presence/mute"
    watch_rec = recorder()
    watch = make(broker.url, "watch", [(topic, 1)])
    run_transport(watch, watch_rec)
    await connected(watch)

    reader, writer = await asyncio.open_connection(broker.host, broker.port)
    try:
        writer.write(_connect_packet(f"mute-{uuid.uuid4().hex[:8]}", 1, topic, b"offline"))
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\x20\x02\x00\x00"
        # Say nothing more and keep the socket open: only keep-alive enforcement can notice.
        # mosquitto 2.0 checks keep-alives only every few seconds: ~6 s for keep-alive 1.
        await watch_rec.wait_for(lambda r: (topic, b"offline", False) in r.messages, timeout=12)
    finally:
        writer.close()


async def test_reconnects_after_broker_restart(fresh_broker: Callable[..., Broker],
                                               root: str, recorder: type[Recorder],
                                               run_transport: Run) -> None:
    """After the broker is killed and restarted on its port, the transport reconnects,
    re-subscribes and calls on_connect again; meanwhile publish returns False."""
    b = fresh_broker()
    rec = recorder()
    node = make(b.url, "node", [(f"{root}/#", 1)], backoff=(0.05, 0.5))
    task = run_transport(node, rec)
    await connected(node)
    await rec.wait_for(lambda r: r.connects == 1)

    b.kill()
    assert await node.wait_disconnected(10)
    assert await node.publish(f"{root}/lost", b"x") is False

    await asyncio.to_thread(b.restart)
    await rec.wait_for(lambda r: r.connects == 2, timeout=10)
    assert node.connected and node.reconnects == 1 and not task.done()

    other = make(b.url, "other")
    run_transport(other, recorder())
    await connected(other)
    assert await other.publish(f"{root}/after", b"back")
    await rec.wait_for(lambda r: (f"{root}/after", b"back", False) in r.messages)


async def test_connects_once_a_missing_broker_appears(fresh_broker: Callable[..., Broker],
                                                      recorder: type[Recorder],
                                                      run_transport: Run) -> None:
    """A transport started before its broker exists keeps retrying and connects when it comes."""
    port = free_port()
    rec = recorder()
    node = make(f"mqtt://127.0.0.1:{port}", "early", backoff=(0.05, 0.2))
    run_transport(node, rec)
    assert not node.connected
    assert await node.publish("peerd-test/x", b"x") is False

    fresh_broker(port=port)
    await rec.wait_for(lambda r: r.connects == 1, timeout=10)
    assert node.reconnects == 0


async def test_on_message_exception_does_not_stop_delivery(broker: Broker, root: str,
                                                           recorder: type[Recorder]) -> None:
    """An exception raised by on_message is counted and the next message is still delivered."""
    got: list[bytes] = []
    second = asyncio.Event()

    async def on_message(topic: str, payload: bytes, retain: bool) -> None:
        got.append(payload)
        if payload == b"bad":
            raise RuntimeError("node bug")
        second.set()

    async def on_connect() -> None:
        pass

    sub = make(broker.url, "sub", [(f"{root}/t", 1)])
    pub = make(broker.url, "pub")
    tasks = [asyncio.create_task(sub.run(on_message, on_connect)),
             asyncio.create_task(pub.run(recorder().on_message, on_connect))]
    try:
        await connected(sub, pub)
        assert await pub.publish(f"{root}/t", b"bad")
        assert await pub.publish(f"{root}/t", b"good")
        await asyncio.wait_for(second.wait(), 5)
        assert got == [b"bad", b"good"]
        assert sub.callback_errors == 1 and not tasks[0].done()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_clean_disconnect_delivers_death_and_sends_no_will(
        broker: Broker, root: str, recorder: type[Recorder], run_transport: Run) -> None:
    """A death published just before disconnect() is delivered, run() returns, the Will is not sent."""
    topic = f"{root}/presence/n"
    watch_rec = recorder()
    watch = make(broker.url, "watch", [(f"{root}/#", 1)])
    run_transport(watch, watch_rec)
    node = make(broker.url, "node", will=(topic, b"will", 1, True))
    task = run_transport(node, recorder())
    await connected(watch, node)

    assert await node.publish(topic, b"death", qos=1, retain=True)
    await node.disconnect()
    await asyncio.wait_for(task, 5)
    assert not node.connected
    assert await node.publish(topic, b"late") is False
    await watch_rec.wait_for(lambda r: (topic, b"death", False) in r.messages)

    # A Will would come from the broker handling the disconnect, before this marker.
    assert await watch.publish(f"{root}/marker", b"m")
    await watch_rec.wait_for(lambda r: (f"{root}/marker", b"m", False) in r.messages)
    late_rec = recorder()
    run_transport(make(broker.url, "late", [(topic, 1)]), late_rec)
    await late_rec.wait_for(lambda r: len(r.messages) >= 1)
    assert late_rec.messages[0] == (topic, b"death", True)
    assert b"will" not in watch_rec.payloads(topic)


# -- configuration and pure pieces -----------------------------------------------------------


def test_backoff_is_jittered_doubling_and_capped() -> None:
    """Delays stay within [base, min(cap, base·2^(attempt+1))], even the first is jittered,
    and late ones reach the cap."""
    rng = random.Random(7)
    for attempt in range(12):
        ceiling = min(30.0, 0.2 * 2 ** (attempt + 1))
        delays = [backoff_delay(attempt, 0.2, 30.0, rng) for _ in range(50)]
        assert all(0.2 <= d <= ceiling for d in delays)
    assert len({backoff_delay(0, 0.2, 30.0, rng) for _ in range(10)}) == 10
    assert max(backoff_delay(40, 0.2, 30.0, rng) for _ in range(200)) > 25.0


def test_broker_url_parsing() -> None:
    """mqtt:// and mqtts:// URLs give host, default port, TLS and credentials; others are rejected."""
    a = parse_broker_url("mqtt://127.0.0.1:1884")
    assert (a.host, a.port, a.tls, a.username) == ("127.0.0.1", 1884, False, None)
    b = parse_broker_url("mqtts://alice:s%40cret@broker.example")
    assert (b.host, b.port, b.tls, b.username, b.password) == (
        "broker.example", 8883, True, "alice", "s@cret")
    for bad in ("http://x", "mqtt://", "mqtt://h:notaport"):
        with pytest.raises(ConfigError):
            parse_broker_url(bad)


def test_transport_configuration_is_checked(tmp_path: Path) -> None:
    """mqtts implies TLS; bad backoff, unreadable TLS files and bad filters fail at construction."""
    t = MqttTransport("mqtts://h", client_id="c", subscriptions=[("a/#", 1)])
    assert t.tls == TLSConfig() and t.port == 8883
    with pytest.raises(ConfigError):
        MqttTransport("mqtt://h", client_id="c", subscriptions=[], backoff=(1.0, 0.5))
    with pytest.raises(ConfigError):
        TLSConfig(ca_certs=str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError):
        TLSConfig(keyfile=__file__)
    with pytest.raises(ValueError):
        MqttTransport("mqtt://h", client_id="c", subscriptions=[("a/#/b", 1)])
    assert isinstance(t, Transport)


# -- the in-memory bus -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("+/+", "a/b", True),
        ("a/+/c", "a/x/c", True),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("#", "a/b", True),
        ("#", "$SYS/x", False),
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("a/+", "a/", True),
        ("a/b/#", "a/c", False),
        ("peerd/v1/f/delta/+", "peerd/v1/f/delta/n1", True),
        ("peerd/v1/f/delta/+", "peerd/v1/g/delta/n1", False),
    ],
)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    """Filter matching follows MQTT 3.1.1 for +, # (parent level included) and $-topics."""
    assert topic_matches(topic_filter, topic) is expected


@pytest.mark.parametrize("bad", ["", "a/#/b", "a#", "a/b+", "a/+x/c"])
def test_malformed_filters_are_rejected(bad: str) -> None:
    """Filters with misplaced wildcards are a caller bug, refused with ValueError."""
    with pytest.raises(ValueError):
        validate_filter(bad)


async def test_memory_bus_routes_by_filter(recorder: type[Recorder], run_transport: Run) -> None:
    """Only subscribers whose filter matches receive a message, in publish order, not retained."""
    bus = MemoryBus()
    deltas = bus.transport(client_id="a", subscriptions=[("f/delta/+", 1)])
    beats = bus.transport(client_id="b", subscriptions=[("f/heartbeat/#", 0)])
    pub = bus.transport(client_id="p", subscriptions=[])
    recs = {t.client_id: recorder() for t in (deltas, beats, pub)}
    for t in (deltas, beats, pub):
        run_transport(t, recs[t.client_id])
    for t in (deltas, beats, pub):
        assert await t.wait_connected(10)

    for i in range(3):
        assert await pub.publish(f"f/delta/n{i}", bytes([i]))
    assert await pub.publish("f/heartbeat/n1", b"hb", qos=0)
    await recs["a"].wait_for(lambda r: len(r.messages) == 3)
    await recs["b"].wait_for(lambda r: len(r.messages) == 1)
    assert recs["a"].messages == [(f"f/delta/n{i}", bytes([i]), False) for i in range(3)]
    assert recs["b"].messages == [("f/heartbeat/n1", b"hb", False)]
    assert pub.messages_out == 4 and deltas.messages_in == 3


async def test_memory_bus_retained_and_cleared(recorder: type[Recorder], run_transport: Run) -> None:
    """Retained messages reach late subscribers flagged retained; an empty payload clears them."""
    bus = MemoryBus()
    bus.publish("f/presence/n1", b"online", retain=True)
    bus.publish("f/presence/n2", b"online", retain=True)
    bus.publish("f/presence/n2", b"", retain=True)
    late = bus.transport(client_id="late", subscriptions=[("f/presence/+", 1)])
    rec = recorder()
    run_transport(late, rec)
    await rec.wait_for(lambda r: len(r.messages) >= 1)
    assert rec.messages == [("f/presence/n1", b"online", True)]
    assert bus.retained == {"f/presence/n1": (b"online", 0)}


async def test_memory_bus_kill_publishes_will_and_reconnect_calls_on_connect(
        recorder: type[Recorder], run_transport: Run) -> None:
    """kill() drops a transport and publishes its retained Will; reconnect() brings it back."""
    bus = MemoryBus()
    victim = bus.transport(client_id="v", subscriptions=[("f/delta/+", 1)],
                           will=("f/presence/v", b"offline", 1, True))
    watch = bus.transport(client_id="w", subscriptions=[("f/presence/+", 1)])
    v_rec, w_rec = recorder(), recorder()
    run_transport(victim, v_rec)
    run_transport(watch, w_rec)
    await v_rec.wait_for(lambda r: r.connects == 1)
    assert await watch.wait_connected(10)

    bus.kill(victim)
    assert not victim.connected and bus.client_ids == ["w"]
    await w_rec.wait_for(lambda r: ("f/presence/v", b"offline", False) in r.messages)
    assert bus.retained["f/presence/v"] == (b"offline", 1)
    assert await victim.publish("f/delta/v", b"x") is False
    assert await watch.publish("f/delta/w", b"missed")  # clean session: the victim misses it

    bus.reconnect(victim)
    await v_rec.wait_for(lambda r: r.connects == 2)
    assert victim.reconnects == 1
    assert await watch.publish("f/delta/w", b"heard")
    await v_rec.wait_for(lambda r: len(r.messages) == 1)
    assert v_rec.messages == [("f/delta/w", b"heard", False)]


async def test_memory_clean_disconnect_sends_no_will(recorder: type[Recorder],
                                                     run_transport: Run) -> None:
    """A clean disconnect ends run() without publishing the Will."""
    bus = MemoryBus()
    node = bus.transport(client_id="n", subscriptions=[], will=("f/presence/n", b"offline", 1, True))
    task = run_transport(node, recorder())
    assert await node.wait_connected(10)
    await node.disconnect()
    await asyncio.wait_for(task, 10)
    assert bus.retained == {} and bus.client_ids == []


async def test_memory_on_message_exception_is_counted(run_transport: Run,
                                                      recorder: type[Recorder]) -> None:
    """An on_message exception on the memory bus is counted and delivery continues."""
    bus = MemoryBus()
    node = bus.transport(client_id="n", subscriptions=[("t", 0)])
    rec = recorder()
    original = rec.on_message

    async def flaky(topic: str, payload: bytes, retain: bool) -> None:
        await original(topic, payload, retain)
        if payload == b"bad":
            raise RuntimeError("node bug")

    rec.on_message = flaky  # type: ignore[method-assign]
    run_transport(node, rec)
    assert await node.wait_connected(10)
    bus.publish("t", b"bad")
    bus.publish("t", b"good")
    await rec.wait_for(lambda r: len(r.messages) == 2)
    assert node.callback_errors == 1
    assert isinstance(node, Transport)
