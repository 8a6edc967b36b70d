"""A multi-process federation: N real ``peerd run`` daemons, driven through their local APIs.

The end-to-end version of ``peerd sim``: every node is its own process with
its own state directory, configuration and HTTP API, talking through a real
broker. The script starts a broker when asked (``--start-broker``), writes one
TOML config per node, starts the daemons, drives a contextual-bandit routing
task through ``peerd.client.PeerdClient`` (each node serves its own share of
request classes), waits until every node's merged table holds every node's
interactions, then stops the daemons with SIGTERM and checks they exit 0.
Prints a JSON summary.

    python scripts/cluster.py --nodes 4 --start-broker
    python scripts/cluster.py --nodes 3 --broker mqtt://127.0.0.1:1883 --keep
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peerd.client import ApiError, PeerdClient
from peerd.testing.broker import Broker, free_port

ROUTES = ["route0", "route1", "route2", "route3"]


def write_config(dir_: Path, node: str, fed: str, broker_url: str, port: int) -> Path:
    state = dir_ / node
    state.mkdir(parents=True, exist_ok=True)
    path = dir_ / f"{node}.toml"
    path.write_text(
        f'[node]\nfederation = "{fed}"\nid = "{node}"\nsecret = "cluster-secret"\n'
        f'state_dir = "{state}"\n'
        f'[task]\nactions = {json.dumps(ROUTES)}\ngamma = 0.0\nname = "routing"\n'
        f'[broker]\nurl = "{broker_url}"\n'
        f'[learning]\npolicy = "thompson"\n'
        f'[gossip]\npublish_every = 10\npublish_interval = 1.0\nheartbeat_interval = 1.0\n'
        f'sync_interval = 0.5\n'
        f'[api]\nlisten = "127.0.0.1:{port}"\n'
        f'[log]\nlevel = "warning"\njson = "true"\n')
    return path


def start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "peerd.cli", "run", "--config", str(config)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("wb"))


def wait_healthy(client: PeerdClient, proc: subprocess.Popen[bytes], timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode} before it was ready")
        try:
            client.healthz()
            return time.monotonic() - t0
        except ApiError:
            time.sleep(0.05)  # polling the readiness condition, with a deadline
    raise RuntimeError(f"daemon not healthy within {timeout}s")


def drive(clients: list[PeerdClient], interactions: int, seed: int) -> int:
    """Each node routes requests of its own classes; success probabilities are hidden."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.1, 0.9, size=(8 * len(clients), len(ROUTES)))
    done = 0
    for i in range(interactions):
        for k, c in enumerate(clients):
            ctx = f"class-{k * 8 + i % 8}"
            a = c.act(ctx)
            ok = bool(rng.random() < p[k * 8 + i % 8, a])
            c.learn(ctx, a, float(ok), done=True, success=ok)
            done += 1
    return done


def total_visits(client: PeerdClient, n_nodes: int) -> int:
    tot = 0
    for k in range(n_nodes):
        for j in range(8):
            tot += int(sum(client.table(f"class-{k * 8 + j}")["visits"]))
    return tot


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--interactions", type=int, default=100, help="per node")
    p.add_argument("--broker", default=None, help="mqtt://host:port of a running broker")
    p.add_argument("--start-broker", nargs="?", const="auto", default=None,
                   choices=["auto", "mosquitto", "amqtt"], help="start a broker on a free port")
    p.add_argument("--dir", type=Path, default=None, help="state and configs (default: temp)")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    if not args.broker and not args.start_broker:
        p.error("give --broker URL or --start-broker")
    broker = Broker(args.start_broker).start() if args.start_broker else None
    url = broker.url if broker else args.broker
    tmp = None if args.dir else tempfile.TemporaryDirectory(prefix="peerd-cluster-")
    root = args.dir or Path(tmp.name)  # type: ignore[union-attr]
    fed = f"cluster{os.getpid()}"
    procs: list[subprocess.Popen[bytes]] = []
    out: dict[str, Any] = {"nodes": args.nodes, "broker": url, "dir": str(root)}
    try:
        clients = []
        for k in range(args.nodes):
            port = free_port()
            cfg = write_config(root, f"node{k}", fed, url, port)
            procs.append(start(cfg, root / f"node{k}.log"))
            clients.append(PeerdClient(f"http://127.0.0.1:{port}", timeout=10.0))
        out["ready_s"] = round(max(wait_healthy(c, pr, args.timeout)
                                   for c, pr in zip(clients, procs, strict=True)), 2)
        t0 = time.monotonic()
        out["interactions"] = drive(clients, args.interactions, args.seed)
        out["drive_s"] = round(time.monotonic() - t0, 2)
        t0 = time.monotonic()
        want = out["interactions"]
        seen = [0] * args.nodes
        while time.monotonic() - t0 < args.timeout:
            seen = [total_visits(c, args.nodes) for c in clients]
            if all(s == want for s in seen):
                break
            time.sleep(0.2)  # polling the convergence condition, with a deadline
        out["visits_per_node"] = seen
        out["converged"] = all(s == want for s in seen)
        out["converge_s"] = round(time.monotonic() - t0, 2)
        out["peers_online"] = [sum(1 for q in c.peers() if q["status"] == "online") for c in clients]
    finally:
        codes = []
        for pr in procs:
            if pr.poll() is None:
                pr.send_signal(signal.SIGTERM)
        for pr in procs:
            try:
                codes.append(pr.wait(timeout=30))
            except subprocess.TimeoutExpired:
                pr.kill()
                codes.append(None)
        out["exit_codes"] = codes
        if broker:
            broker.close()
        if tmp:
            tmp.cleanup()
    out["ok"] = bool(out.get("converged")) and all(c == 0 for c in codes)
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
