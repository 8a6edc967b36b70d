"""Benchmark a node: durable learn+act rate, and publish-to-applied latency over a real broker.

Prints JSON. Rates are compared with a baseline measured in the same run (the
same node without durable storage), never against fixed numbers:

- ``durable_interactions_per_s``: ``act`` + ``await learn`` from ``--callers``
  concurrent tasks on a node with SQLite (WAL, synchronous=FULL, group commit);
- ``memory_interactions_per_s``: the same without a store; ``durable_ratio``;
- ``latency_ms``: p50/p99 from a delta's publication (header ts) to its
  application at each of the other ``--nodes`` nodes, through a real broker.
  All nodes share this process and its event loop: paho holds a delta ~8 ms
  after publication, and the rest is the wait for the loop, busy verifying and
  merging the other nodes' deltas. Separate daemons do not share that queue.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peerd import logs
from peerd.config import NodeConfig
from peerd.node import Node
from peerd.testing.broker import Broker

ACTIONS = [f"a{i}" for i in range(6)]


def _config(node_id: str, **kw: object) -> NodeConfig:
    base: dict[str, object] = dict(federation="bench", node_id=node_id, actions=ACTIONS,
                                   secret="s", api_listen="", heartbeat_interval=5.0)
    base.update(kw)
    return NodeConfig(**base)  # type: ignore[arg-type]


async def interaction_rate(state_dir: str, total: int, callers: int) -> float:
    node = Node(_config("rate", state_dir=state_dir))
    await node.open()
    per = total // callers

    async def caller(c: int) -> None:
        for i in range(per):
            s = (c, i % 500)
            a = node.act(s)
            await node.learn(s, a, 1.0, next_state=(c, (i + 1) % 500))

    t0 = time.perf_counter()
    await asyncio.gather(*(caller(c) for c in range(callers)))
    dt = time.perf_counter() - t0
    await node.close()
    return per * callers / dt


async def latency(broker_url: str, nodes: int, rounds: int) -> dict[str, float]:
    samples: list[float] = []
    group = [Node(_config(f"n{i}", broker_url=broker_url, publish_every=10)) for i in range(nodes)]

    def on_merge(header: object, stats: object) -> None:
        samples.append(time.time() - header.ts)  # type: ignore[attr-defined]

    for nd in group:
        nd.on_merge = on_merge
        await nd.start()
    for nd in group:
        await nd.transport.wait_connected(30)
    async with asyncio.timeout(30):
        while any(nd.peer_count() < nodes - 1 for nd in group):
            await asyncio.sleep(0.01)
    expected = 0
    for r in range(rounds):  # one delta per node per round; the next round starts when all arrived
        for i, nd in enumerate(group):
            for k in range(10):
                await nd.learn((i, r, k), k % 6, 1.0, done=True)
            await nd.flush()
            expected += nodes - 1
        async with asyncio.timeout(60):
            while len(samples) < expected:
                await asyncio.sleep(0.002)
    for nd in group:
        await nd.stop()
    ms = np.array(samples) * 1000.0
    return {"deltas": len(ms), "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99)), "max": float(ms.max())}


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        durable = await interaction_rate(str(Path(tmp) / "d"), args.interactions, args.callers)
    memory = await interaction_rate("", args.interactions, args.callers)
    out: dict[str, object] = {
        "interactions": args.interactions, "callers": args.callers,
        "durable_interactions_per_s": round(durable), "memory_interactions_per_s": round(memory),
        "durable_ratio": round(durable / memory, 3),
    }
    with Broker(args.broker_kind) as broker:
        out["broker"] = broker.kind
        out["latency_ms"] = await latency(broker.url, args.nodes, args.rounds)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--interactions", type=int, default=20000)
    p.add_argument("--callers", type=int, default=32, help="concurrent learn callers")
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--broker-kind", default="auto", choices=["auto", "mosquitto", "amqtt"])
    p.add_argument("--json", action="store_true", help="JSON only (default prints JSON too)")
    args = p.parse_args()
    logs.configure("warning")
    print(json.dumps(asyncio.run(main_async(args)), indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
