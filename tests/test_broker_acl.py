"""The shipped Mosquitto files (config/mosquitto/) on a real broker: each node speaks only for itself.

The ACL and the bridge file are used as shipped; only the paths, addresses
and secrets a test must own are rewritten. Absence of a forged message is
proven with a marker published after it by the same client at QoS 1: the
broker keeps one publisher's order, so once the marker has arrived the forged
message would have arrived before it.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from peerd.testing.broker import Broker, find_mosquitto
from peerd.transport import MqttTransport

if TYPE_CHECKING:
    from conftest import Recorder

    Run = Callable[[Any, Recorder], asyncio.Task[None]]

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")

CONFIG = Path(__file__).resolve().parent.parent / "config" / "mosquitto"
FED = "acl"
USERS = {"alice": "alice-pw", "bob": "bob-pw", "watcher": "watcher-pw",
         "bridge-site-a": "bridge-pw"}


def _password_file(path: Path) -> Path:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd is not on PATH: cannot create a password file")
    for i, (user, password) in enumerate(USERS.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run([tool, *create, "-b", str(path), user, password], check=True,
                       capture_output=True, timeout=30)
    path.chmod(0o600)
    return path


@pytest.fixture
def auth_lines(tmp_path: Path) -> list[str]:
    """Broker config lines: the shipped ACL (copied) and a password file of ``USERS``."""
    acl = tmp_path / "acl"
    shutil.copyfile(CONFIG / "acl", acl)
    pw = _password_file(tmp_path / "passwd")
    return [f"password_file {pw}", f"acl_file {acl}", "allow_anonymous false"]


@pytest.fixture
def brokers() -> Iterator[list[Broker]]:
    """Brokers a test starts; closed afterwards."""
    made: list[Broker] = []
    yield made
    for b in made:
        b.close()


@pytest.fixture
def secured(auth_lines: list[str], brokers: list[Broker]) -> Broker:
    """One Mosquitto with the shipped ACL and a password file."""
    broker = Broker("mosquitto", config_lines=auth_lines).start()
    brokers.append(broker)
    return broker


@pytest.fixture
async def clients() -> AsyncIterator[list[MqttTransport]]:
    """Transports a test makes; disconnected afterwards."""
    made: list[MqttTransport] = []
    yield made
    for t in made:
        await t.disconnect()


def _client(clients: list[MqttTransport], url: str, user: str | None,
            subscriptions: list[tuple[str, int]] | None = None) -> MqttTransport:
    t = MqttTransport(url, client_id=f"acl-test-{user or 'anonymous'}-{len(clients)}",
                      subscriptions=subscriptions or [], username=user,
                      password=USERS.get(user or ""), backoff=(0.1, 0.5), timeout=5.0)
    clients.append(t)
    return t


async def _connected(*transports: MqttTransport) -> None:
    for t in transports:
        assert await t.wait_connected(10), f"{t!r} did not connect: {t.last_error}"


def _topic(kind: str, node: str) -> str:
    return f"peerd/v1/{FED}/{kind}/{node}"


async def test_node_publishes_on_its_own_topics(secured: Broker, clients: list[MqttTransport],
                                                recorder: type[Recorder], run_transport: Run) -> None:
    """alice's delta, presence and heartbeat on her own topics reach another account."""
    rec = recorder()
    watcher = _client(clients, secured.url, "watcher", [("peerd/v1/#", 1)])
    alice = _client(clients, secured.url, "alice")
    run_transport(watcher, rec)
    run_transport(alice, recorder())
    await _connected(watcher, alice)

    sent = [(_topic(kind, "alice"), kind.encode()) for kind in ("delta", "presence", "heartbeat")]
    for topic, payload in sent:
        assert await alice.publish(topic, payload, qos=1)
    await rec.wait_for(lambda r: len(r.messages) >= len(sent))
    assert [(t, p) for t, p, _ in rec.messages] == sent


async def test_publish_on_another_nodes_topic_never_arrives(
        secured: Broker, clients: list[MqttTransport], recorder: type[Recorder],
        run_transport: Run) -> None:
    """alice cannot publish as bob: her forged delta is dropped, her marker after it arrives."""
    rec = recorder()
    watcher = _client(clients, secured.url, "watcher", [("peerd/v1/#", 1)])
    alice = _client(clients, secured.url, "alice")
    run_transport(watcher, rec)
    run_transport(alice, recorder())
    await _connected(watcher, alice)

    assert await alice.publish(_topic("delta", "bob"), b"forged", qos=1)
    assert await alice.publish(_topic("presence", "bob"), b"forged presence", qos=1, retain=True)
    assert await alice.publish(_topic("delta", "alice"), b"marker", qos=1)
    await rec.wait_for(lambda r: b"marker" in r.payloads())
    assert rec.payloads() == [b"marker"]


async def test_node_cannot_write_outside_its_own_topics(
        secured: Broker, clients: list[MqttTransport], recorder: type[Recorder],
        run_transport: Run) -> None:
    """A node's own name does not open other trees: no writes outside peerd/v1/<f>/<kind>/<id>."""
    rec = recorder()
    watcher = _client(clients, secured.url, "watcher", [("peerd/v1/#", 1), ("other/#", 1)])
    bob = _client(clients, secured.url, "bob")
    run_transport(watcher, rec)
    run_transport(bob, recorder())
    await _connected(watcher, bob)

    assert await bob.publish("other/topic/bob", b"outside peerd", qos=1)
    assert await bob.publish(f"peerd/v1/{FED}/delta/bob/extra", b"deeper", qos=1)
    assert await bob.publish(_topic("sync", "bob"), b"marker", qos=1)
    await rec.wait_for(lambda r: b"marker" in r.payloads())
    assert rec.payloads() == [b"marker"]


async def test_anonymous_and_wrong_password_are_refused(secured: Broker,
                                                        clients: list[MqttTransport],
                                                        recorder: type[Recorder],
                                                        run_transport: Run) -> None:
    """Without credentials, or with a wrong password, the broker refuses the connection."""
    anonymous = _client(clients, secured.url, None)
    wrong = MqttTransport(secured.url, client_id="acl-test-wrong", subscriptions=[],
                          username="alice", password="not-alices", backoff=(0.1, 0.5))
    clients.append(wrong)
    for t in (anonymous, wrong):
        run_transport(t, recorder())
    async with asyncio.timeout(10):
        while anonymous.last_error is None or wrong.last_error is None:
            await asyncio.sleep(0.02)
    for t in (anonymous, wrong):
        assert not t.connected
        assert "authori" in t.last_error.lower(), t.last_error


def _bridge_lines(remote: Broker) -> list[str]:
    """bridge-site-a.conf as shipped, pointed at ``remote`` over plain loopback MQTT."""
    out = []
    for line in (CONFIG / "bridge-site-a.conf").read_text().splitlines():
        key = line.split(maxsplit=1)[0] if line.strip() and not line.startswith("#") else ""
        if key.startswith("bridge_") and key != "bridge_protocol_version":
            continue  # TLS settings: the test's remote listener is plain loopback
        if key == "address":
            line = f"address {remote.host}:{remote.port}"
        elif key == "remote_password":
            line = f"remote_password {USERS['bridge-site-a']}"
        elif key == "restart_timeout":
            line = "restart_timeout 1 2"
        out.append(line)
    assert any(line.startswith("topic peerd/v1/# both") for line in out)
    return out


async def test_bridge_relays_both_ways_and_keeps_the_acl(
        auth_lines: list[str], brokers: list[Broker], clients: list[MqttTransport],
        recorder: type[Recorder], run_transport: Run) -> None:
    """bridge-site-a.conf joins two sites both ways; a forgery at site B does not cross."""
    site_b = Broker("mosquitto", config_lines=auth_lines).start()
    brokers.append(site_b)
    site_a = Broker("mosquitto", config_lines=[*auth_lines, *_bridge_lines(site_b)]).start()
    brokers.append(site_a)

    rec_a, rec_b = recorder(), recorder()
    watcher_a = _client(clients, site_a.url, "watcher", [("peerd/v1/#", 1)])
    watcher_b = _client(clients, site_b.url, "watcher", [("peerd/v1/#", 1)])
    alice = _client(clients, site_a.url, "alice")
    bob = _client(clients, site_b.url, "bob")
    for t, rec in ((watcher_a, rec_a), (watcher_b, rec_b), (alice, recorder()), (bob, recorder())):
        run_transport(t, rec)
    await _connected(watcher_a, watcher_b, alice, bob)

    # bob's retained birth at B reaches A as soon as the bridge is up, however late.
    assert await bob.publish(_topic("presence", "bob"), b"bob online", qos=1, retain=True)
    await rec_a.wait_for(lambda r: b"bob online" in r.payloads(), timeout=15)

    assert await alice.publish(_topic("delta", "alice"), b"from A", qos=1)
    await rec_b.wait_for(lambda r: b"from A" in r.payloads())
    assert await bob.publish(_topic("delta", "alice"), b"forged at B", qos=1)
    assert await bob.publish(_topic("delta", "bob"), b"from B", qos=1)
    everything = {b"bob online", b"from A", b"from B"}
    await rec_a.wait_for(lambda r: everything <= set(r.payloads()))
    await rec_b.wait_for(lambda r: everything <= set(r.payloads()))
    # Once each, on both sides (no echo across the bridge); the forgery nowhere.
    assert sorted(rec_a.payloads()) == [b"bob online", b"from A", b"from B"]
    assert sorted(rec_b.payloads()) == [b"bob online", b"from A", b"from B"]
