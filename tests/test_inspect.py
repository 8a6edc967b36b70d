"""``peerd inspect``: live traffic decoded and judged like a node would, hostile messages included."""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
import os
from typing import Any

import msgpack
import pytest

from peerd import inspect_cmd, wire
from peerd.config import NodeConfig
from peerd.identity import Identity
from peerd.inspect_cmd import UNVERIFIED, VALID, Inspector
from peerd.node import Node
from peerd.testing.broker import Broker, free_port
from peerd.transport import MqttTransport

ACTIONS = ["left", "right", "stay"]
_FEDS = itertools.count()


def _fed() -> str:
    """A federation per test: retained presence of earlier tests must not leak in."""
    return f"insp{next(_FEDS)}-{os.getpid()}"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    inspect_cmd._add_arguments(parser)
    return parser.parse_args(list(argv))


def _records(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


async def _eventually(pred: Any, timeout: float = 10.0) -> None:
    """Wait until ``pred()`` holds, re-checking between event-loop turns."""
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.02)


def _node(fed: str, node_id: str, broker: Broker) -> Node:
    return Node(NodeConfig(federation=fed, node_id=node_id, actions=ACTIONS, secret="s",
                           broker_url=broker.url, heartbeat_interval=0.3, sync_interval=0.2,
                           api_listen="", publish_every=10))


def _header(fed: str, node: str, fp: str, seq: int = 1) -> wire.Header:
    return wire.Header(fed=fed, node=node, fp=fp, epoch=1, seq=seq, ts=1.0)


# ---------------------------------------------------------------- over a real broker

async def test_inspect_shows_live_nodes_valid_and_hostile_messages_rejected(broker: Broker) -> None:
    """Births, deltas and heartbeats of two nodes are valid; garbage and forgeries are shown
    rejected (or unverified) with a reason, and inspect keeps going until --count."""
    fed = _fed()
    count = 24
    out = io.StringIO()
    ready = asyncio.Event()
    args = _args("--broker", broker.url, "--federation", fed, "--json",
                 "--count", str(count), "--timeout", "30")
    watch = asyncio.create_task(inspect_cmd.run_async(args, out=out, ready=ready))
    await asyncio.wait_for(ready.wait(), 10)

    foreign = MqttTransport(broker.url, client_id=f"insp-foreign-{fed}", subscriptions=[])
    runner = asyncio.create_task(foreign.run(_ignore, _nothing))
    nodes = [_node(fed, "n1", broker), _node(fed, "n2", broker)]
    try:
        assert await foreign.wait_connected(10)
        # Before any node: garbage, and a correctly signed heartbeat of a node never born.
        assert await foreign.publish(wire.topic(fed, "delta", "mallory"), b"\xc1 not msgpack", qos=1)
        fp = nodes[0].task.fingerprint
        carol = wire.encode(wire.Heartbeat(_header(fed, "carol", fp), version=0, size=0),
                            Identity.generate())
        assert await foreign.publish(wire.topic(fed, "heartbeat", "carol"), carol, qos=1)

        for nd in nodes:
            await nd.start()
        for nd in nodes:
            for i in range(10):  # publish_every: a delta goes out on its own
                s = f"{nd.id}-{i % 4}"
                await nd.learn(s, nd.act(s), float(i % 3), next_state=f"{nd.id}-{(i + 1) % 4}")
            await nd.flush()
        # Once n1's key is pinned: a heartbeat in n1's name signed by another key.
        await _eventually(lambda: any(r["node"] == "n1" and r["type"] == "birth"
                                      for r in _records(out)))
        forged = wire.encode(wire.Heartbeat(_header(fed, "n1", fp, seq=10**6), version=0, size=0),
                             Identity.generate())
        assert await foreign.publish(wire.topic(fed, "heartbeat", "n1"), forged, qos=1)

        assert await asyncio.wait_for(watch, 30) == 0
    finally:
        for nd in nodes:
            await nd.stop()
        await foreign.disconnect()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)

    records = _records(out)
    assert len(records) == count
    by_node: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_node.setdefault(str(r["node"]), []).append(r)

    for node in ("n1", "n2"):
        genuine = [r for r in by_node[node] if r is not _forged(records)]
        kinds = {r["type"] for r in genuine}
        assert {"birth", "delta", "heartbeat"} <= kinds, (node, kinds)
        assert all(r["verdict"] == VALID for r in genuine), [r["verdict"] for r in genuine]
        deltas = [r for r in genuine if r["type"] == "delta"]
        assert sum(r["cells"] for r in deltas) >= 4 and all(r["origin"] == node for r in deltas)
        assert max(r["to_version"] for r in deltas) == 10
        assert any(r["signatures"] > 0 for r in deltas)
        assert all(0 <= r["max_action"] < len(ACTIONS) for r in deltas)

    garbage = next(r for r in records if r["topic"].endswith("/delta/mallory"))
    assert garbage["verdict"].startswith("rejected: malformed") and garbage["reason"] == "malformed"
    assert records.index(garbage) < len(records) - 1  # the watch went on after it
    assert by_node["carol"][0]["verdict"] == UNVERIFIED
    forged_rec = _forged(records)
    assert forged_rec is not None and forged_rec["reason"] == "bad_signature", forged_rec


def _forged(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((r for r in records if r["node"] == "n1" and r["seq"] == 10**6), None)


async def _ignore(topic: str, payload: bytes, retain: bool) -> None:
    return None


async def _nothing() -> None:
    return None


async def test_inspect_exits_1_when_the_broker_cannot_be_reached(
        capsys: pytest.CaptureFixture[str]) -> None:
    """No broker on the port: a clear one-line error and exit status 1, without waiting long."""
    url = f"mqtt://127.0.0.1:{free_port()}"
    out = io.StringIO()
    code = await asyncio.wait_for(
        inspect_cmd.run_async(_args("--broker", url, "--federation", "f"), out=out), 15)
    assert code == 1
    assert f"cannot connect to {url}" in capsys.readouterr().err
    assert out.getvalue() == ""


async def test_inspect_timeout_before_count_is_exit_1(broker: Broker,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """--timeout expiring before --count messages arrived is a failure for scripts (exit 1)."""
    args = _args("--broker", broker.url, "--federation", _fed(), "--count", "1",
                 "--timeout", "0.5")
    assert await inspect_cmd.run_async(args, out=io.StringIO()) == 1
    assert "expired after 0 of 1 messages" in capsys.readouterr().err


def test_bad_options_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """Nonsense options exit 2 before any connection is tried."""
    for argv in (["--count", "0"], ["--federation", "a/b"], ["--actions", "0"]):
        args = _args("--broker", "mqtt://127.0.0.1:1", "--federation", "f", *argv)
        assert inspect_cmd.run(args) == 2
    assert "peerd inspect:" in capsys.readouterr().err


# ---------------------------------------------------------------- the judging, without a broker

FED = "unit"
FP = "fp0"


def _delta_payload(identity: Identity, node: str, *, seq: int, actions: list[int]) -> bytes:
    import numpy as np

    from peerd.delta import Delta

    m = len(actions)
    delta = Delta(node, FP, 0, m, keys=np.arange(1, m + 1, dtype="<u8"),
                  actions=np.array(actions, dtype="<u2"), q=np.ones(m, dtype="<f4"),
                  lw=np.zeros(m, dtype="<f8"), n=np.ones(m, dtype="<u4"),
                  succ=np.zeros(m, dtype="<u4"), fail=np.zeros(m, dtype="<u4"),
                  version=np.arange(1, m + 1, dtype="<u8"))
    return wire.encode(wire.DeltaMsg(_header(FED, node, FP, seq), delta=delta), identity)


def test_inspector_pins_keys_from_births_and_never_raises() -> None:
    """Keyless → unverified, birth pins the key, forgeries and junk → rejected with a reason."""
    alice = Identity.generate()
    insp = Inspector(FED)
    t = wire.topic
    early = insp.examine(t(FED, "delta", "alice"), _delta_payload(alice, "alice", seq=1, actions=[0, 7]))
    assert early["verdict"] == UNVERIFIED and early["max_action"] == 7
    birth = wire.encode(wire.Birth(_header(FED, "alice", FP, 2), public_key=alice.public_key), alice)
    assert insp.examine(t(FED, "presence", "alice"), birth, retain=True)["verdict"] == VALID
    later = insp.examine(t(FED, "delta", "alice"), _delta_payload(alice, "alice", seq=3, actions=[2]))
    assert later["verdict"] == VALID and later["cells"] == 1 and later["from_version"] == 0

    forged = insp.examine(t(FED, "delta", "alice"),
                          _delta_payload(Identity.generate(), "alice", seq=4, actions=[1]))
    assert forged["reason"] == "bad_signature"
    replayed = insp.examine(t(FED, "delta", "alice"), _delta_payload(alice, "alice", seq=3, actions=[2]))
    assert replayed["reason"] == "replay"
    wrong_topic = insp.examine(t(FED, "delta", "bob"), _delta_payload(alice, "alice", seq=5, actions=[1]))
    assert wrong_topic["reason"] == "topic"
    other_task = wire.encode(wire.Heartbeat(wire.Header(FED, "alice", "fp9", 1, 6, 1.0), version=0,
                                            size=0), alice)
    assert insp.examine(t(FED, "heartbeat", "alice"), other_task)["reason"] == "fingerprint"
    hostile = [b"", b"\x00" * 100, msgpack.packb({"v": 1, "b": b"x", "s": b"y" * 64}),
               msgpack.packb({"v": 2}), os.urandom(4096),
               msgpack.packb({"v": 1, "b": msgpack.packb({"v": 1, "type": "delta", "node": "\x1b[2J",
                                                          "fed": FED}), "s": b"s" * 64})]
    for payload in hostile:
        rec = insp.examine(t(FED, "delta", "alice"), payload)
        assert rec["verdict"].startswith("rejected: ") and rec["reason"], rec
    assert insp.max_action_seen == 7
    assert insp.verdicts["valid"] == 2 and insp.verdicts["unverified"] == 1


def test_inspector_with_actions_rejects_unknown_action_indices() -> None:
    """--actions N turns an index >= N into a rejection (without it, only the maximum is reported)."""
    alice = Identity.generate()
    insp = Inspector(FED, n_actions=3)
    rec = insp.examine(wire.topic(FED, "delta", "alice"),
                       _delta_payload(alice, "alice", seq=1, actions=[0, 5]))
    assert rec["reason"] == "unknown_action"


def test_readable_stream_is_one_sanitised_line_per_message() -> None:
    """The default output: one line per message with its verdict; peer text cannot inject escapes."""
    alice = Identity.generate()
    insp = Inspector(FED)
    out = io.StringIO()
    printer = inspect_cmd._StreamPrinter(out)
    birth = wire.encode(wire.Birth(_header(FED, "alice", FP, 1), public_key=alice.public_key), alice)
    evil = msgpack.packb({"v": 1, "b": msgpack.packb({"v": 1, "type": "death", "node": "\x1b[2Jx",
                                                      "fed": FED}), "s": b"s" * 64})
    printer.emit(insp.examine(wire.topic(FED, "presence", "alice"), birth))
    printer.emit(insp.examine(wire.topic(FED, "delta", "alice"),
                              _delta_payload(alice, "alice", seq=2, actions=[1, 2])))
    printer.emit(insp.examine(wire.topic(FED, "presence", "x"), evil))
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert "birth" in lines[0] and "alice" in lines[0] and lines[0].rstrip().endswith("valid")
    assert "2 cells v0→2 of alice" in lines[1] and "valid" in lines[1]
    assert "rejected: malformed" in lines[2] and "\x1b" not in out.getvalue()
