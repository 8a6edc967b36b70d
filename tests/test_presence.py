"""Presence without retained messages: rebirth requests, answered births, brokers without retain."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from support import eventually, fast_config, same_views

from peerd import wire
from peerd.identity import Identity, Verifier
from peerd.node import Node
from peerd.presence import PresenceState
from peerd.testing.broker import Broker, find_mosquitto

_FEDS = itertools.count()

# -- the rate limits alone ---------------------------------------------------------------------


def test_asks_are_limited_per_sender_and_in_total_with_bounded_memory() -> None:
    """One ask per sender per interval, a global burst, and at most max_tracked ids remembered."""
    p = PresenceState(ask_interval=5.0, burst=4, max_tracked=8)
    assert p.may_ask("a", 0.0)
    assert not p.may_ask("a", 1.0)  # same sender within the interval
    assert [p.may_ask(f"x{i}", 1.0) for i in range(5)] == [True, True, True, False, False]
    assert p.may_ask("a", 6.0)  # interval passed, tokens refilled
    for i in range(10_000):  # an attacker spraying sender ids
        p.may_ask(f"spray{i}", 100.0 + i)
    assert len(p._asked) <= 8
    assert p.asks_suppressed > 0


def test_answers_are_coalesced_and_a_live_birth_is_answered_once_per_life() -> None:
    """Many reasons to answer within the interval make one birth; a (peer, epoch) is answered once."""
    p = PresenceState(answer_interval=1.0, answer_delay=0.0)
    assert p.on_live_birth("b", 1, 9.0)
    assert not p.on_live_birth("b", 1, 9.0)
    p.on_rebirth_request(9.5)
    assert p.take_answer(10.0)
    assert not p.take_answer(10.1)  # nothing due
    p.on_rebirth_request(10.2)
    assert not p.take_answer(10.5)  # due, but within the interval
    assert p.take_answer(11.0)
    assert p.on_live_birth("b", 2, 11.0)  # a new life of b


def test_a_burst_of_live_births_is_answered_by_one_birth_once_it_passes() -> None:
    """Peers born in a burst share one answer, sent once the burst is quiet for ``answer_delay``."""
    p = PresenceState(answer_interval=1.0, answer_delay=0.5, answer_max_delay=2.0)
    assert p.answer_at() is None
    answers = 0
    for i in range(64):  # 64 newcomers 7 ms apart, each checked at once
        t = 100.0 + i * 0.007
        assert p.on_live_birth(f"p{i}", 1, t)
        answers += p.take_answer(t)
    assert answers == 0  # nothing while the burst is still arriving
    last = 100.0 + 63 * 0.007
    assert p.answer_at() == pytest.approx(last + 0.5)  # the publisher wakes then
    assert not p.take_answer(last + 0.4)
    assert p.take_answer(last + 0.5)
    assert not p.take_answer(last + 0.6)  # all 64 answered by that one birth
    # a later newcomer gets its own answer, once the interval since the last has passed
    assert p.on_live_birth("late", 1, last + 0.7)
    assert p.answer_at() == pytest.approx(last + 1.5)
    assert not p.take_answer(last + 1.3) and p.take_answer(last + 1.5)
    # a life whose retained birth came first was subscribed before ours went out: no answer
    p.on_retained_birth("old", 3)
    assert p.on_live_birth("old", 3, 105.0)  # first live sighting (relays are offered) ...
    assert p.answer_at() is None  # ... but nothing to answer
    assert p.on_live_birth("old", 4, 105.0) and p.answer_at() is not None  # its next life: answer
    assert p.take_answer(106.0)
    # a (re)connect birth answers whatever was due
    p.on_rebirth_request(110.0)
    p.answered(110.1)
    assert p.answer_at() is None and not p.take_answer(120.0)


def test_a_trickle_of_births_is_answered_every_max_delay_not_every_interval() -> None:
    """Newcomers that never stop arriving still get answers, one per ``answer_max_delay``."""
    p = PresenceState(answer_interval=1.0, answer_delay=0.5, answer_max_delay=2.0)
    sent = []
    for i in range(100):  # one newcomer every 0.1 s for 10 s: never 0.5 s quiet
        t = 200.0 + i * 0.1
        p.on_live_birth(f"q{i}", 1, t)
        if p.take_answer(t):
            sent.append(t)
    assert len(sent) == 4  # at 202, 204.x, 206.x, 208.x: not 10 (one per answer_interval)
    assert all(b - a >= 2.0 - 1e-9 for a, b in itertools.pairwise(sent))
    assert p.take_answer(200.0 + 99 * 0.1 + 0.5)  # the last ones, once quiet


# -- the wire message ----------------------------------------------------------------------------


def test_rebirth_request_round_trips_and_pins_the_askers_key() -> None:
    """A rebirth request is self-signed with the asker's key: a verifier that never met it pins it."""
    me = Identity.generate()
    h = wire.Header(fed="f", node="asker", fp="fp", epoch=1, seq=1, ts=0.0)
    msg = wire.Rebirth(h, to="other", public_key=me.public_key, version=7)
    payload = wire.encode(msg, me)
    v = Verifier()
    got = wire.decode(payload, fed="f", fingerprint="fp", n_actions=2, verifier=v,
                      topic="peerd/v1/f/rebirth/asker")
    assert got == msg
    assert v.pinned("asker") == me.public_key
    assert wire.route(msg) == ("peerd/v1/f/rebirth/asker", 1, False)


def test_rebirth_request_with_another_key_than_the_pinned_one_is_rejected() -> None:
    """Nobody can re-key a known node through a rebirth request."""
    real, fake = Identity.generate(), Identity.generate()
    v = Verifier(allowlist={"asker": real.public_key})
    h = wire.Header(fed="f", node="asker", fp="fp", epoch=1, seq=1, ts=0.0)
    forged = wire.encode(wire.Rebirth(h, to="x", public_key=fake.public_key), fake)
    with pytest.raises(wire.KeyMismatch):
        wire.decode(forged, fed="f", fingerprint="fp", n_actions=2, verifier=v)


# -- nodes on brokers that do not deliver retained messages ----------------------------------------


async def _learn(node: Node, tag: str, count: int) -> None:
    for i in range(count):
        s = f"{tag}-{i % 5}"
        await node.learn(s, node.act(s), float(i % 3), next_state=f"{tag}-{(i + 1) % 5}")
    await node.flush()


@pytest.fixture
def no_retain_broker() -> Any:
    """An amqtt broker that accepts retained publishes and never delivers them."""
    b = Broker("amqtt", deliver_retained=False).start()
    yield b
    b.close()


async def _converge_one_after_the_other(broker: Broker, fed: str, **kw: Any) -> list[Node]:
    first = Node(fast_config("first", broker.url, fed, **kw))
    await first.start()
    assert await first.transport.wait_connected(30)
    await _learn(first, "f", 20)
    second = Node(fast_config("second", broker.url, fed, **kw))
    await second.start()
    assert await second.transport.wait_connected(30)
    await _learn(second, "s", 20)
    nodes = [first, second]
    await eventually(lambda: all(nd.table.total_visits() == 40 for nd in nodes), what="counts")
    await eventually(lambda: same_views(nodes), what="identical views")
    return nodes


async def test_nodes_started_one_after_the_other_converge_without_retained_delivery(
        no_retain_broker: Broker) -> None:
    """The later node never gets the earlier one's retained birth, and still converges with it."""
    nodes = await _converge_one_after_the_other(no_retain_broker, f"nr{next(_FEDS)}-{os.getpid()}")
    try:
        first, second = nodes
        assert first.counters.births_answered >= 1  # answered the newcomer's live birth
        assert second.verifier.pinned("first") == first.identity.public_key
    finally:
        for nd in nodes:
            await nd.stop()


async def test_rebirth_request_alone_brings_in_a_missed_peer(
        no_retain_broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    """With births not answered, the newcomer asks the unknown sender for a rebirth and converges."""
    monkeypatch.setattr(PresenceState, "on_live_birth", lambda self, peer, epoch, now: False)
    fed = f"rb{next(_FEDS)}-{os.getpid()}"
    nodes = await _converge_one_after_the_other(no_retain_broker, fed)
    try:
        first, second = nodes
        assert second.counters.rebirths_requested >= 1
        assert first.counters.births_answered >= 1
        assert second.counters.rejected.get("unknown_sender", 0) >= 1  # before the answer
    finally:
        for nd in nodes:
            await nd.stop()


mosquitto_only = pytest.mark.skipif(find_mosquitto() is None, reason="needs the mosquitto binary")


@mosquitto_only
@pytest.mark.parametrize("configured", [True, False], ids=["retain=false", "detected"])
async def test_mosquitto_without_retain_available(configured: bool) -> None:
    """On a mosquitto that drops clients using the retain bit, nodes carry on without retain."""
    broker = Broker("mosquitto", config_lines=["retain_available false"]).start()
    kw: dict[str, Any] = {"retain": False} if configured else {}
    try:
        nodes = await _converge_one_after_the_other(broker, f"ra{next(_FEDS)}-{os.getpid()}", **kw)
        try:
            assert all(not nd.transport.retain_available for nd in nodes)
            if configured:  # nothing to detect: never dropped
                assert all(nd.transport.reconnects == 0 for nd in nodes)
        finally:
            for nd in nodes:
                await nd.stop()
    finally:
        broker.close()


def test_peerd_sim_runs_on_a_broker_that_never_delivers_retained_messages(
        no_retain_broker: Broker) -> None:
    """``peerd sim --broker URL`` gets past the births and every visit reaches every node."""
    cmd = [sys.executable, "-c", "import sys; from peerd.cli import main; sys.exit(main())",
           "sim", "--broker", no_retain_broker.url, "--env", "frozenlake", "--nodes", "3",
           "--modes", "federated", "--step-cap", "300", "--json"]
    done = subprocess.run(cmd, capture_output=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    federated = json.loads(done.stdout)["modes"]["federated"]
    assert federated["visits_total"] == 3 * federated["interactions_per_node"] > 0
