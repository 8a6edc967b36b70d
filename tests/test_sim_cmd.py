"""`peerd sim` stops with one clear line, not a traceback, when the nodes never meet."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from peerd.sim.runner import _wait_delivered, federation_problem, nudge_plan
from peerd.testing.broker import free_port

REPO = Path(__file__).resolve().parents[1]


def test_unreachable_broker_is_one_line_and_exit_1() -> None:
    """--broker at a port nothing listens on: `peerd sim` exits 1 after --peer-timeout with one
    line saying the broker is unreachable at that address. (A subprocess: `peerd sim` sets up
    the process's logging, which must not leak into the other tests.)"""
    port = free_port()
    proc = subprocess.run(
        [sys.executable, "-m", "peerd.cli", "sim", "--nodes", "2", "--modes", "federated",
         "--env", "frozenlake", "--broker", f"mqtt://127.0.0.1:{port}", "--peer-timeout", "1",
         "--json"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 1, proc.stderr
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("peerd sim: ") and "Traceback" not in err[0]
    assert "unreachable" in err[0] and f"127.0.0.1:{port}" in err[0]
    assert proc.stdout == ""


def test_trust_every_shorter_than_a_publishing_round_is_refused_with_exit_2() -> None:
    """--trust-every below publish-every + max-lag leaves no time for signatures to arrive:
    `peerd sim` says so in one line and exits 2 before starting anything."""
    proc = subprocess.run(
        [sys.executable, "-m", "peerd.cli", "sim", "--nodes", "2", "--modes", "federated",
         "--env", "frozenlake", "--trust-every", "5", "--json"],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("peerd sim: trust_every"), err
    assert proc.stdout == ""


@dataclass
class _Transport:
    connected: bool


@dataclass
class _Node:
    connected: bool
    peers: dict[str, Any] = field(default_factory=dict)

    @property
    def transport(self) -> _Transport:
        return _Transport(self.connected)

    def peer_count(self) -> int:
        return len(self.peers)


def test_connected_nodes_that_never_see_births_blame_retained_delivery() -> None:
    """Connected nodes that saw no (or not all) births: the line names undelivered retained
    presence (or another federation); the URL is shown without its credentials."""
    nodes = [_Node(True), _Node(True, {"n0": object()}), _Node(True)]
    line = federation_problem(nodes, "mqtt://user:secret@broker.example:1884", 5.0)  # type: ignore[arg-type]
    assert line is not None and "\n" not in line
    assert "retained" in line and "1 of 6 peer births" in line
    assert "mqtt://broker.example:1884" in line and "secret" not in line


def test_disconnected_nodes_blame_the_broker_and_met_nodes_are_fine() -> None:
    """Any node not connected: broker unreachable; everyone connected and met: no problem."""
    down = [_Node(True, {"b": 1}), _Node(False, {"a": 1})]
    line = federation_problem(down, "mqtt://127.0.0.1:9", 2.0)  # type: ignore[arg-type]
    assert line is not None and "unreachable" in line and "1 of 2 nodes" in line
    met = [_Node(True, {"b": 1}), _Node(True, {"a": 1})]
    assert federation_problem(met, "mqtt://127.0.0.1:9", 2.0) is None  # type: ignore[arg-type]


def test_an_unknown_attack_is_one_line_and_exit_2() -> None:
    """`--attack KIND:COUNT` with an unknown kind or a bad count: exit 2, one line naming the kinds."""
    for bad, says in (("gaslight:2", "unknown attack"), ("invert:two", "COUNT")):
        proc = subprocess.run(
            [sys.executable, "-m", "peerd.cli", "sim", "--modes", "federated", "--attack", bad,
             "--json"], capture_output=True, text=True, timeout=120, cwd=REPO)
        assert proc.returncode == 2, proc.stderr
        err = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("peerd sim: ") and says in err[0], err


class _Holder:
    """A node for ``_wait_delivered``: what it knows of others, what it has published."""

    def __init__(self, node_id: str, published: int) -> None:
        self.id = node_id
        self.published_version = published
        self.watermark = published  # its publisher is up to date: it owes what it published
        self.config = SimpleNamespace(publish_every=10)
        self.known: dict[str, int] = {}
        self.applied_event = asyncio.Event()
        self.asked: list[str] = []
        self.answers: dict[str, _Holder] | None = None  # resync delivers these senders' tails
        self.transport = SimpleNamespace(backlog=0)  # inbound messages not read yet

    def known_version(self, origin: str) -> int:
        return self.known.get(origin, 0)

    def resync(self, origin: str) -> None:
        self.asked.append(origin)
        if self.answers is not None:  # the sender answers the sync request: the tail arrives
            self.known[origin] = self.answers[origin].published_version
            self.applied_event.set()


async def test_delivery_wait_gives_up_only_without_progress() -> None:
    """The hang guard counts seconds without progress: a slow round passes, a stuck one raises."""
    a, b = _Holder("a", 10), _Holder("b", 10)
    nodes: list[Any] = [a, b]

    async def trickle() -> None:  # one version every 0.3 s: 10 versions take ~3 s > timeout
        for v in range(1, 11):
            await asyncio.sleep(0.3)
            a.known["b"] = b.known["a"] = v
            a.applied_event.set()
            b.applied_event.set()

    task = asyncio.ensure_future(trickle())
    await _wait_delivered(nodes, 0, timeout=1.5)  # returns: progress all along
    assert a.known_version("b") == b.known_version("a") == 10
    await task
    b.published_version = 20  # nobody will ever deliver versions 11..20
    with pytest.raises(TimeoutError):
        await _wait_delivered(nodes, 0, timeout=1.5)


def test_nudge_asks_each_sender_once_from_the_node_furthest_behind() -> None:
    """Many nodes lack one sender's tail: one re-ask (the sender answers them all from the lowest
    ``since``), by a node with nothing unread; none while every node behind has a backlog."""
    n = 64
    nodes = [_Holder(f"n{i:02d}", 40) for i in range(n)]
    for nd in nodes:
        for o in nodes:
            if o is not nd:
                nd.known[o.id] = 40
    for i, nd in enumerate(nodes[1:], start=1):
        nd.known["n00"] = 30 - i % 7  # everyone lost n00's tail, some more of it
    plan = nudge_plan(nodes, nodes, 0)  # type: ignore[arg-type]
    assert [(a.id, o.id) for a, o in plan] == [("n06", "n00")]  # 4,032 pairs before: 63 asks
    for nd in nodes:
        if nd.known.get("n00", 40) == 24:
            nd.transport.backlog = 5  # n00's answer may sit in their queues
    (asker, _), = nudge_plan(nodes, nodes, 0)  # type: ignore[arg-type]
    assert asker.known_version("n00") == 25 and asker.transport.backlog == 0
    for nd in nodes:
        nd.transport.backlog = 1
    assert nudge_plan(nodes, nodes, 0) == []  # type: ignore[arg-type]


async def test_delivery_wait_nudges_less_often_while_nothing_arrives() -> None:
    """Without progress the re-asks back off (5, 10, 20 s ... here 0.3, 0.6, 1.2 s): asking again
    and again while answers queue only lengthens the queues."""
    a, b = _Holder("a", 40), _Holder("b", 40)
    a.known["b"], b.known["a"] = 40, 30  # b lost a's tail, and nobody will ever answer
    with pytest.raises(TimeoutError):
        await _wait_delivered([a, b], 0, timeout=6.0, nudge=0.3)  # type: ignore[list-item]
    # progress is checked once a second: asks at ~1, 2, 4 s; without the back-off at 1, 2, 3, 4, 5
    assert 2 <= len(b.asked) <= 3 and a.asked == []


async def test_delivery_wait_asks_again_for_a_dropped_tail() -> None:
    """The broker dropped a node's last deltas; its gossip would re-ask only as the (virtual,
    frozen) clock moves on: the wait asks again itself instead of stalling (every sybil run did)."""
    a, b = _Holder("a", 40), _Holder("b", 40)
    a.known["b"], b.known["a"] = 40, 30  # b lost a's tail (versions 31..40)
    b.answers = {"a": a}
    nodes: list[Any] = [a, b]
    await _wait_delivered(nodes, 0, timeout=3.0, nudge=0.5)
    assert b.asked == ["a"] and a.asked == []  # only the node behind asked, and only its sender
    assert b.known_version("a") == 40
