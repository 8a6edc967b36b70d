#!/usr/bin/env python3
"""bench_fleet: what one node pays to hold a fleet of P peers, on a virtual clock.

One ``Node`` with a real SQLite store (a temporary directory) receives the
traffic of P simulated, validly signed peers at the default cadence: each peer
makes one interaction per second over its own 200 states × 6 actions and
publishes a delta after 10 interactions (1000 peers → 100 deltas/s of ≤ 10
cells), heartbeats every 15 s and sends its 32 pattern signatures once per
heartbeat interval; the node runs its own heartbeat round (``Node.tick``:
ageing, expiry, trust round, saving the registry) every 15 s.

Fleet time is virtual: the node's ``clock``/``monotonic`` are set to each
message's time and the traffic is replayed as fast as the node takes it.
The peers run in a separate generator process (their tables, ``wire.encode``,
Ed25519 signing) that streams the messages through a pipe, one fleet second at
a time, so neither their CPU nor their memory is counted as the node's. Each P
runs in a fresh node process, so peak RSS is that P's alone.

Measured per P, in the node process:

- ``node_cpu_s_per_fleet_s``: process CPU (all threads: the SQLite writer too)
  spent in ``Node.receive`` and ``Node.tick``, per second of fleet time;
- ``baseline_cpu_s_per_fleet_s``: the same messages only decoded and verified
  (``wire.decode`` with a ``Verifier``), same process, same run — and the ratio;
- ``peak_rss_mb``; p50/p99 of receipt → merged view updated (``Node.receive``
  entry to the return of ``QTable.apply``) and of receipt → durable (to the
  ``on_merge`` callback, after the store commit: wall time, fsync included);
- ``generator_cpu_s``: the peers' side (simulation, encoding, signing), apart.

``half_core_peers`` extrapolates linearly (CPU = a + b·P through the measured
points; one point: through the origin) to the P at 0.5 CPU s per fleet second.

    python scripts/bench_fleet.py --peers 100,1000 --json
    python scripts/bench_fleet.py --peers 50 --minutes 1      # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
from typing import IO, Any

import numpy as np

from peerd import wire
from peerd.config import NodeConfig
from peerd.delta import Delta, PatternSignature
from peerd.errors import WireError
from peerd.identity import Identity, Verifier
from peerd.node import Node
from peerd.task import state_key

ACTIONS = [f"a{i}" for i in range(6)]
STATES = 200
PUBLISH_EVERY = 10
HEARTBEAT = 15.0
SIGNATURES = 32
FED = "fleet"
SECRET = "bench-fleet"
T0 = 1_800_000_000.0  # virtual epoch of the run
HALF_LIFE = 600.0

_FRAME = struct.Struct("<dBHI")  # time, kind, topic length, payload length
_KINDS = ("presence", "delta", "heartbeat")
_END_OF_SECOND = 255
_END = 254


def node_config(state_dir: str, peers: int, synchronous: str, relay: bool = True) -> NodeConfig:
    return NodeConfig(federation=FED, node_id="host", actions=ACTIONS, secret=SECRET,
                      state_dir=state_dir, api_listen="", half_life=HALF_LIFE,
                      heartbeat_interval=HEARTBEAT, max_origins=max(1024, peers),
                      synchronous=synchronous, seed=1, relay=relay)


# ------------------------------------------------------------------ the peers (generator process)

class Fleet:
    """P peers' own tables, vectorised: shape (P, STATES, actions)."""

    def __init__(self, peers: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.p = peers
        self.ids = [f"p{i:05d}" for i in range(peers)]
        self.idents = [Identity.from_seed(rng.bytes(32)) for _ in range(peers)]
        self.keys = np.array([[state_key(f"{pid}/s{j}", SECRET) for j in range(STATES)]
                              for pid in self.ids], dtype=np.uint64)
        shape = (peers, STATES, len(ACTIONS))
        self.q = np.zeros(shape)
        self.lw = np.full(shape, -np.inf)
        self.n = np.zeros(shape, np.int64)
        self.version = np.zeros(shape, np.int64)
        self.own_version = np.zeros(peers, np.int64)
        self.published = np.zeros(peers, np.int64)
        # spread the fleet: publishes and heartbeats of different peers fall in different seconds
        self.unpublished = (np.arange(peers) % PUBLISH_EVERY).astype(np.int64)
        self.seq = np.zeros(peers, np.int64)
        self.last_sigs = np.full(peers, -1e18)
        self.fp = NodeConfig(federation=FED, node_id="x", actions=ACTIONS).task.fingerprint

    def header(self, i: int, now: float) -> wire.Header:
        self.seq[i] += 1
        return wire.Header(fed=FED, node=self.ids[i], fp=self.fp, epoch=1, seq=int(self.seq[i]),
                           ts=now)

    def births(self, now: float) -> list[tuple[float, int, str, bytes]]:
        return [(now, 0, wire.topic(FED, "presence", pid),
                 wire.encode(wire.Birth(self.header(i, now), public_key=self.idents[i].public_key,
                                        version=0), self.idents[i]))
                for i, pid in enumerate(self.ids)]

    def second(self, sec: int) -> list[tuple[float, int, str, bytes]]:
        """Every peer's interaction in fleet second ``sec``, and the messages they cause."""
        out: list[tuple[float, int, str, bytes]] = []
        rng = self.rng
        s = rng.integers(0, STATES, self.p)
        a = rng.integers(0, len(ACTIONS), self.p)
        reward = rng.random(self.p)
        for i in range(self.p):
            now = T0 + sec + i / self.p
            t = now / HALF_LIFE
            si, ai = s[i], a[i]
            lw_new = float(np.logaddexp2(self.lw[i, si, ai], t))
            self.q[i, si, ai] += (reward[i] - self.q[i, si, ai]) * 2.0 ** (t - lw_new)
            self.lw[i, si, ai] = lw_new
            self.n[i, si, ai] += 1
            self.own_version[i] += 1
            self.version[i, si, ai] = self.own_version[i]
            self.unpublished[i] += 1
            if self.unpublished[i] >= PUBLISH_EVERY:
                out.append((now, 1, wire.topic(FED, "delta", self.ids[i]), self.delta(i, now)))
            if (sec + i) % int(HEARTBEAT) == 0:
                hb = wire.Heartbeat(self.header(i, now), version=int(self.published[i]),
                                    size=int(np.count_nonzero(self.n[i])))
                out.append((now, 2, wire.topic(FED, "heartbeat", self.ids[i]),
                            wire.encode(hb, self.idents[i])))
        out.sort(key=lambda m: m[0])
        return out

    def delta(self, i: int, now: float) -> bytes:
        since = self.published[i]
        rows, acts = np.nonzero(self.version[i] > since)
        keys = self.keys[i, rows]
        order = np.lexsort((acts, keys))
        rows, acts, keys = rows[order], acts[order], keys[order]
        d = Delta.build(self.ids[i], self.fp, int(since), int(self.own_version[i]), keys=keys,
                        actions=acts, q=self.q[i, rows, acts], lw=self.lw[i, rows, acts],
                        n=self.n[i, rows, acts], succ=np.zeros(len(rows)),
                        fail=np.zeros(len(rows)), version=self.version[i, rows, acts])
        sigs: tuple[PatternSignature, ...] = ()
        if now - self.last_sigs[i] >= HEARTBEAT:
            self.last_sigs[i] = now
            visits = self.n[i].sum(axis=1)
            top = np.argsort(-visits, kind="stable")[:SIGNATURES]
            sigs = tuple(PatternSignature(int(self.keys[i, r]), int(np.argmax(self.q[i, r])),
                                          float(visits[r] / (visits[r] + 10)), int(visits[r]))
                         for r in top if visits[r] > 0)
        self.published[i] = self.own_version[i]
        self.unpublished[i] = 0
        return wire.encode(wire.DeltaMsg(self.header(i, now), delta=d, signatures=sigs),
                           self.idents[i])


def write_frame(out: IO[bytes], now: float, kind: int, topic: str, payload: bytes) -> None:
    t = topic.encode()
    out.write(_FRAME.pack(now, kind, len(t), len(payload)))
    out.write(t)
    out.write(payload)


def generate(peers: int, seconds: int, seed: int) -> None:
    """The generator process: stream the fleet's messages to stdout, one fleet second at a time."""
    out = sys.stdout.buffer
    fleet = Fleet(peers, seed)
    for now, kind, topic, payload in fleet.births(T0):
        write_frame(out, now, kind, topic, payload)
    for sec in range(seconds):
        for now, kind, topic, payload in fleet.second(sec):
            write_frame(out, now, kind, topic, payload)
        write_frame(out, T0 + sec + 1, _END_OF_SECOND, "", b"")
    write_frame(out, T0 + seconds, _END, "", b"")
    out.flush()


def read_second(inp: IO[bytes]) -> tuple[list[tuple[float, int, str, bytes]], bool]:
    """Frames up to the next end-of-second marker; (frames, more to come)."""
    frames = []
    while True:
        head = inp.read(_FRAME.size)
        if len(head) < _FRAME.size:
            return frames, False
        now, kind, tlen, plen = _FRAME.unpack(head)
        if kind == _END:
            return frames, False
        if kind == _END_OF_SECOND:
            return frames, True
        topic = inp.read(tlen).decode()
        frames.append((now, kind, topic, inp.read(plen)))


# ------------------------------------------------------------------ the node (one process per P)

class VirtualClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def run_node(peers: int, seconds: int, seed: int, synchronous: str,
                   relay: bool = True) -> dict[str, Any]:
    gen = subprocess.Popen([sys.executable, __file__, "--generator", str(peers), "--seconds",
                            str(seconds), "--seed", str(seed)], stdout=subprocess.PIPE)
    assert gen.stdout is not None
    result: dict[str, Any] = {"peers": peers, "fleet_seconds": seconds}
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        clock = VirtualClock(T0)
        cfg = node_config(tmp, peers, synchronous, relay)
        node = Node(cfg, clock=clock, monotonic=clock)
        await node.open()
        task = cfg.task
        baseline = Verifier()
        latencies: list[float] = []
        to_view: list[float] = []
        received = [0.0]
        node.on_merge = lambda _h, _s: latencies.append(time.perf_counter() - received[0])
        apply = node.table.apply

        def timed_apply(delta: Delta, **kw: Any) -> Any:  # the merged view is updated on return
            stats = apply(delta, **kw)
            to_view.append(time.perf_counter() - received[0])
            return stats

        node.table.apply = timed_apply  # type: ignore[method-assign]
        node_cpu = base_cpu = 0.0
        messages = deltas = 0
        next_tick = T0 + HEARTBEAT
        done = 0
        more = True
        try:
            while more:
                frames, more = read_second(gen.stdout)  # not timed: the network's part
                c0 = time.process_time()
                for now, _kind, topic, payload in frames:
                    while now >= next_tick:
                        clock.t = next_tick
                        await node.tick()
                        next_tick += HEARTBEAT
                    clock.t = now
                    received[0] = time.perf_counter()
                    await node.receive(topic, payload)
                node_cpu += time.process_time() - c0
                c0 = time.process_time()
                for _now, _kind, topic, payload in frames:
                    with contextlib.suppress(WireError):
                        wire.decode(payload, fed=FED, fingerprint=task.fingerprint,
                                    n_actions=task.n_actions, q_bound=cfg.q_bound,
                                    max_payload=cfg.max_payload, max_entries=cfg.max_entries,
                                    verifier=baseline, topic=topic)
                base_cpu += time.process_time() - c0
                messages += len(frames)
                deltas += sum(1 for f in frames if f[1] == 1)
                if more:
                    done += 1
        except MemoryError:
            result["error"] = f"MemoryError after {done} fleet seconds"
        gen.stdout.close()
        gen.wait()
        status = node.status()
        await node.close()
    lat = np.array(latencies) * 1e3 if latencies else np.array([np.nan])
    view = np.array(to_view) * 1e3 if to_view else np.array([np.nan])
    fleet_s = max(done, 1)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    result.update({
        "fleet_seconds": done,
        "messages": messages, "deltas": deltas,
        "deltas_applied": status["counters"]["deltas_applied"],
        "rejected": status["counters"]["rejected"],
        "node_cpu_s_per_fleet_s": round(node_cpu / fleet_s, 5),
        "baseline_cpu_s_per_fleet_s": round(base_cpu / fleet_s, 5),
        "node_over_baseline": round(node_cpu / base_cpu, 2) if base_cpu else None,
        "receipt_to_view_ms": {"p50": round(float(np.percentile(view, 50)), 3),
                               "p99": round(float(np.percentile(view, 99)), 3)},
        "receipt_to_durable_ms": {"p50": round(float(np.percentile(lat, 50)), 3),
                                  "p99": round(float(np.percentile(lat, 99)), 3)},
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "table_cells": status["cells"], "origins": status["origins"],
        "generator_cpu_s": round(children.ru_utime + children.ru_stime, 2),
    })
    return result


def node_child(peers: int, seconds: int, seed: int, synchronous: str, limit_mb: int,
               relay: bool = True) -> None:
    if limit_mb > 0:  # a layout that cannot hold P fails here, not by taking the machine down
        resource.setrlimit(resource.RLIMIT_AS, (limit_mb << 20, limit_mb << 20))
    print(json.dumps(asyncio.run(run_node(peers, seconds, seed, synchronous, relay))), flush=True)


# ------------------------------------------------------------------ orchestration

def half_core(points: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [p for p in points if "error" not in p and p["fleet_seconds"] > 0]
    if not ok:
        return {"peers": None, "method": "no successful run"}
    xs = np.array([p["peers"] for p in ok], float)
    ys = np.array([p["node_cpu_s_per_fleet_s"] for p in ok], float)
    if len(ok) == 1:
        b, a, method = ys[0] / xs[0], 0.0, "linear through the origin and the one measured point"
    else:
        b, a = np.polyfit(xs, ys, 1)
        method = f"linear fit cpu = a + b*P through P = {[int(x) for x in xs]}"
    est = (0.5 - a) / b if b > 0 else None
    return {"peers": int(est) if est is not None else None, "method": method,
            "a_cpu_s": round(float(a), 5), "b_cpu_s_per_peer": round(float(b), 8)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", default="100,1000", help="comma-separated fleet sizes")
    ap.add_argument("--minutes", type=float, default=10.0, help="fleet time simulated (≥ 10)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"])
    ap.add_argument("--no-relay", action="store_true",
                    help="[gossip] relay = false: the node keeps no payloads to relay (its share)")
    ap.add_argument("--limit-mb", type=int, default=4096,
                    help="address-space limit of each node process (0: none)")
    ap.add_argument("--json", action="store_true", help="print only the JSON")
    ap.add_argument("--generator", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--node", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generator is not None:
        generate(args.generator, args.seconds, args.seed)
        return
    if args.node is not None:
        node_child(args.node, args.seconds, args.seed, args.synchronous, args.limit_mb,
                   not args.no_relay)
        return
    seconds = round(args.minutes * 60)
    points = []
    for p in (int(x) for x in args.peers.split(",")):
        proc = subprocess.run([sys.executable, __file__, "--node", str(p), "--seconds",
                               str(seconds), "--seed", str(args.seed), "--synchronous",
                               args.synchronous, "--limit-mb", str(args.limit_mb)]
                              + (["--no-relay"] if args.no_relay else []),
                              capture_output=True, text=True, env={**os.environ})
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            points.append({"peers": p, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]})
        else:
            points.append(json.loads(lines[-1]))
        if not args.json:
            print(json.dumps(points[-1]), file=sys.stderr)
    report = {
        "bench": "fleet", "cadence": {"interactions_per_s": 1, "publish_every": PUBLISH_EVERY,
                                      "states": STATES, "actions": len(ACTIONS),
                                      "heartbeat_s": HEARTBEAT, "signatures": SIGNATURES},
        "fleet_minutes": seconds / 60, "synchronous": args.synchronous,
        "relay": not args.no_relay, "runs": points,
        "targets_at_1000": {"cpu_s_per_fleet_s": 0.25, "rss_mb": 300},
        "half_core": half_core(points),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    print(json.dumps(report, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
