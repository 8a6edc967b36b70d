"""A fleet of real processes: N ``peerd run`` daemons on one broker, driven through their local APIs.

The end-to-end version of ``peerd sim``: every node is its own process with
its own state directory, configuration and HTTP API, talking through a real
broker (a mosquitto started on a free port with ``--start-broker``, or any
``--broker URL``). The script writes one TOML config per node
(``publish_every = 1``: every ``learn`` is published at once), starts the
daemons, drives a contextual-bandit routing task through
``peerd.client.PeerdClient`` (round robin, one request at a time; each node
serves its own request classes), waits until every node holds every other
node's last version, lets the fleet idle, stops the daemons with SIGTERM and
checks that they exit 0. It prints one JSON object:

- ``ready_s``; ``settle_s`` (until every node sees every other online and
  receives no more than twice its heartbeat traffic: the start-up exchange
  of births and catch-up requests is worked off);
  ``drive_s``, ``learns_per_s``, ``converge_s`` (last ``learn``
  acknowledged → every node holds every origin's final version, polled on
  ``/v1/peers`` every 0.1 s);
- ``propagation_ms`` {p50, p90, p99, max, n}: for each ``learn``, the time from
  its acknowledgement (the driver's ``time.time()`` when the HTTP response has
  been read) until the *last* of the other nodes holds it. The nodes report
  it themselves: they run at ``[log] level = "debug"`` and each logs
  ``delta_applied`` with the delta's version range and a microsecond UTC
  timestamp after the merged cells are committed to its SQLite store (so the
  figure includes the receiver's durable write; its view held the cells a
  little earlier). All processes share the machine's clock; the resolution
  is that of the log timestamps (1 µs), the accuracy a few scheduler ticks;
- ``rss_mb`` {ready: {median, max}, idle: {median, max}} from ``VmRSS`` of
  ``/proc/PID/status`` (after start-up, and after the fleet has idled
  ``--idle`` seconds), plus ``pss_mb`` (proportional share: the shared
  libraries counted once across the fleet, from ``/proc/PID/smaps_rollup``);
- ``idle_cpu_pct`` {median, max}: CPU per daemon during the idle window;
- ``fleet_cpu_s``: CPU of all daemons from the first ``learn`` to convergence,
  and ``cpu_ms_per_apply``, the same per delivered delta (learns × (N-1));
- ``loadavg`` (1 min) at the end of the drive and at the end of the idle window.

    python scripts/cluster.py --nodes 4 --start-broker
    python scripts/cluster.py --nodes 50 --interactions 20 --start-broker > fleet.json
    python scripts/cluster.py --nodes 3 --broker mqtt://127.0.0.1:1883 --keep
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peerd.client import ApiError, PeerdClient

ROUTES = ["route0", "route1", "route2", "route3"]
CLASSES_PER_NODE = 8
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Ack:
    """One acknowledged ``learn``: which node, the version it returned, when the driver had it."""

    node: int
    version: int
    at: float


# ------------------------------------------------------------------ processes
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port free now and not handed out before in this run.

    The kernel may give the same free port twice while the first daemon has
    not bound it yet; two daemons configured with one API port then share it,
    and the second's readiness check is answered by the first.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def start_mosquitto(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A private mosquitto on a free loopback port (never 1883)."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = root / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "set_tcp_nodelay true\nlog_dest stderr\nlog_type error\nlog_type warning\n"
                    "max_queued_messages 100000\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=(root / "mosquitto.log").open("wb"))
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"mqtt://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)  # polling the listening condition, with a deadline
    proc.kill()
    raise RuntimeError("mosquitto did not listen within 10 s")


def write_config(dir_: Path, node: str, fed: str, broker_url: str, port: int,
                 heartbeat: float) -> Path:
    state = dir_ / node
    state.mkdir(parents=True, exist_ok=True)
    path = dir_ / f"{node}.toml"
    path.write_text(
        f'[node]\nfederation = "{fed}"\nid = "{node}"\nsecret = "cluster-secret"\n'
        f'state_dir = "{state}"\n'
        f'[task]\nactions = {json.dumps(ROUTES)}\ngamma = 0.0\nname = "routing"\n'
        f'[broker]\nurl = "{broker_url}"\n'
        f'[learning]\npolicy = "thompson"\n'
        f'[gossip]\npublish_every = 1\nheartbeat_interval = {heartbeat}\n'
        f'[api]\nlisten = "127.0.0.1:{port}"\n'
        # debug: every node reports when it applied which versions (delta_applied)
        f'[log]\nlevel = "debug"\njson = "true"\n')
    return path


def start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "peerd.cli", "run", "--config", str(config)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("wb"))


class BindLost(RuntimeError):
    """The daemon's API port, free when picked, was taken before the daemon bound it."""


def wait_healthy(client: PeerdClient, proc: subprocess.Popen[bytes], log: Path,
                 deadline: float) -> None:
    """Until the daemon answers on its API port, as itself (the log's name is its node id)."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text(errors="replace")
            if "api_bind_failed" in text:
                raise BindLost(f"{log.stem}: its API port was taken")
            tail = " | ".join(text.strip().splitlines()[-2:])
            raise RuntimeError(f"daemon exited with {proc.returncode} before it was ready: {tail}")
        try:
            client.healthz()
            if client.status()["node"] == log.stem:
                return
        except ApiError:
            pass
        # polling the readiness condition, with a deadline; another daemon answering on the
        # port means ours lost the bind: it exits with api_bind_failed, handled above
        time.sleep(0.1)
    raise RuntimeError("daemon not healthy in time")


def launch(root: Path, node: str, fed: str, url: str, heartbeat: float,
           log: Path) -> tuple[subprocess.Popen[bytes], PeerdClient]:
    port = free_port()
    cfg = write_config(root, node, fed, url, port, heartbeat)
    return start(cfg, log), PeerdClient(f"http://127.0.0.1:{port}", timeout=30.0)


def settle(clients: list[PeerdClient], heartbeat: float, deadline: float) -> bool:
    """Until every node sees all others online and has worked off the start-up exchange.

    A fleet starting together first exchanges births and catch-up requests,
    each verified by every node; driving into that backlog would measure it.
    CPU is no guide (on a saturated machine a starved daemon looks idle), so
    this waits until no node receives more than twice its heartbeat traffic.
    """
    want = len(clients) - 1
    while time.monotonic() < deadline:
        if all(sum(q["status"] == "online" for q in c.peers()) == want for c in clients):
            break
        time.sleep(0.5)  # polling the presence condition, with a deadline
    quiet = 2.0 * want / heartbeat + 1.0  # messages per second per node
    before, t0 = received(clients), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(2.0)  # the rate measurement window
        now, t1 = received(clients), time.monotonic()
        if max(b - a for a, b in zip(before, now, strict=True)) <= quiet * (t1 - t0):
            return True
        before, t0 = now, t1
    return False


def received(clients: list[PeerdClient]) -> list[int]:
    return [int(c.status()["counters"]["messages_received"]) for c in clients]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pss_mb(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return float("nan")
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def spread(values: list[float], digits: int = 1) -> dict[str, float]:
    return {"median": round(statistics.median(values), digits), "max": round(max(values), digits)}


# ------------------------------------------------------------------ workload
def drive(clients: list[PeerdClient], interactions: int, seed: int, rate: float = 0.0) -> list[Ack]:
    """Round robin over the nodes, one request at a time; success probabilities are hidden.

    ``rate`` > 0: at most that many ``learn`` calls per second across the fleet.
    """
    rng = random.Random(seed)
    n_classes = CLASSES_PER_NODE * len(clients)
    p = [[rng.uniform(0.1, 0.9) for _ in ROUTES] for _ in range(n_classes)]
    acks: list[Ack] = []
    t0 = time.monotonic()
    for i in range(interactions):
        for k, c in enumerate(clients):
            if rate > 0:
                ahead = t0 + len(acks) / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)  # pacing the load generator, not synchronising
            cls = k * CLASSES_PER_NODE + i % CLASSES_PER_NODE
            ctx = f"class-{cls}"
            a = c.act(ctx)
            ok = rng.random() < p[cls][a]
            version = c.learn(ctx, a, float(ok), done=True, success=ok)
            acks.append(Ack(k, int(version), time.time()))
    return acks


def wait_converged(clients: list[PeerdClient], final: dict[str, int], timeout: float) -> bool:
    """Until every node holds every other node's final version (``held_version`` of /v1/peers)."""
    deadline = time.monotonic() + timeout
    pending = set(range(len(clients)))
    while pending and time.monotonic() < deadline:
        for k in sorted(pending):
            held = {p["node"]: p["held_version"] for p in clients[k].peers()}
            if all(held.get(n, 0) >= v for n, v in final.items() if n != f"node{k}"):
                pending.discard(k)
        if pending:
            time.sleep(0.1)  # polling the convergence condition, with a deadline
    return not pending


def total_visits(client: PeerdClient, n_nodes: int) -> int:
    return sum(int(sum(client.table(f"class-{c}")["visits"]))
               for c in range(CLASSES_PER_NODE * n_nodes))


# --------------------------------------------------------------- propagation
def applied_at(log: Path) -> dict[str, list[tuple[float, int, int]]]:
    """The node's own report: origin → [(time, from_version, to_version)] of applied deltas."""
    out: dict[str, list[tuple[float, int, int]]] = {}
    with log.open("rb") as f:
        for raw in f:
            if b'"delta_applied"' not in raw:
                continue
            try:
                rec = json.loads(raw)
                t = datetime.fromisoformat(rec["timestamp"]).timestamp()
                out.setdefault(rec["peer"], []).append((t, int(rec["since"]), int(rec["version"])))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by the SIGTERM, or an older daemon without the fields
    return out


def propagation(acks: list[Ack], logs: list[Path]) -> tuple[list[float], int]:
    """Seconds from each ack until the last other node held that version; and how many never did."""
    applied = [applied_at(p) for p in logs]
    delays, missing = [], 0
    for ack in acks:
        origin = f"node{ack.node}"
        last = -float("inf")
        for j, seen in enumerate(applied):
            if j == ack.node:
                continue
            times = [t for t, lo, hi in seen.get(origin, ()) if lo < ack.version <= hi]
            if not times:
                last = float("nan")
                break
            last = max(last, min(times))
        if last != last:  # nan: some node never reported it
            missing += 1
        else:
            delays.append(last - ack.at)
    return delays, missing


def percentiles(delays: list[float]) -> dict[str, float]:
    if not delays:
        return {"n": 0}
    qs = statistics.quantiles(delays, n=100, method="inclusive") if len(delays) > 1 else delays * 99
    return {"p50": round(1000 * qs[49], 1), "p90": round(1000 * qs[89], 1),
            "p99": round(1000 * qs[98], 1), "max": round(1000 * max(delays), 1), "n": len(delays)}


# ------------------------------------------------------------------- main
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--interactions", type=int, default=20, help="per node")
    p.add_argument("--broker", default=None, help="mqtt://host:port of a running broker")
    p.add_argument("--start-broker", action="store_true", help="start mosquitto on a free port")
    p.add_argument("--rate", type=float, default=0.0,
                   help="learns per second across the fleet (default 0: as fast as one client goes)")
    p.add_argument("--heartbeat", type=float, default=15.0, help="[gossip] heartbeat_interval")
    p.add_argument("--idle", type=float, default=20.0,
                   help="seconds the converged fleet idles before RSS and idle CPU are read")
    p.add_argument("--dir", type=Path, default=None, help="state, configs, logs (default: temp)")
    p.add_argument("--keep", action="store_true", help="keep the directory (with the logs)")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    if not args.broker and not args.start_broker:
        p.error("give --broker URL or --start-broker")
    if args.dir:
        args.dir.mkdir(parents=True, exist_ok=True)
    root = args.dir or Path(tempfile.mkdtemp(prefix="peerd-cluster-"))
    broker, url = start_mosquitto(root) if args.start_broker else (None, args.broker)
    fed = f"cluster{os.getpid()}"
    procs: list[subprocess.Popen[bytes]] = []
    logs = [root / f"node{k}.log" for k in range(args.nodes)]
    out: dict[str, Any] = {"nodes": args.nodes, "broker": url, "publish_every": 1,
                           "heartbeat_interval": args.heartbeat, "rate": args.rate or None}
    codes: list[int | None] = []
    acks: list[Ack] = []
    try:
        clients = []
        t0 = time.monotonic()
        for k in range(args.nodes):
            pr, c = launch(root, f"node{k}", fed, url, args.heartbeat, logs[k])
            procs.append(pr)
            clients.append(c)
        for k in range(args.nodes):
            # A port picked free here can be taken (by another daemon's broker connection, an
            # ephemeral port from the same range) before the daemon binds it: it then exits with
            # api_bind_failed. Start that one again on a fresh port, up to 3 times.
            for attempt in range(4):
                try:
                    wait_healthy(clients[k], procs[k], logs[k], t0 + args.timeout)
                    break
                except BindLost:
                    if attempt == 3:
                        raise
                    procs[k], clients[k] = launch(root, f"node{k}", fed, url, args.heartbeat,
                                                  logs[k])
        out["ready_s"] = round(time.monotonic() - t0, 2)
        pids = [pr.pid for pr in procs]
        out["settled"] = settle(clients, args.heartbeat, time.monotonic() + 4 * args.timeout)
        out["settle_s"] = round(time.monotonic() - t0 - out["ready_s"], 2)
        rss_ready = [rss_mb(pid) for pid in pids]
        cpu_ready = sum(cpu_s(pid) for pid in pids)
        t0 = time.monotonic()
        acks = drive(clients, args.interactions, args.seed, args.rate)
        out["interactions"] = len(acks)
        out["drive_s"] = round(time.monotonic() - t0, 2)
        out["learns_per_s"] = round(len(acks) / max(out["drive_s"], 1e-9), 1)
        out["loadavg_drive"] = round(os.getloadavg()[0], 2)
        final = {f"node{a.node}": a.version for a in acks}  # the last ack of each node wins
        t0 = time.monotonic()
        out["converged"] = wait_converged(clients, final, args.timeout)
        out["converge_s"] = round(time.monotonic() - t0, 2)
        cpu0 = [cpu_s(pid) for pid in pids]
        busy = sum(cpu0) - cpu_ready  # the whole fleet's CPU from the first learn to convergence
        out["fleet_cpu_s"] = round(busy, 1)
        out["cpu_ms_per_apply"] = round(1000 * busy / max(len(acks) * (args.nodes - 1), 1), 2)
        t0 = time.monotonic()
        time.sleep(args.idle)  # the measurement window itself, not a synchronisation
        window = max(time.monotonic() - t0, 1e-3)
        idle_cpu = [100 * (cpu_s(pid) - c) / window for pid, c in zip(pids, cpu0, strict=True)]
        out["loadavg_idle"] = round(os.getloadavg()[0], 2)
        out["rss_mb"] = {"ready": spread(rss_ready), "idle": spread([rss_mb(pid) for pid in pids])}
        out["pss_mb"] = spread([pss_mb(pid) for pid in pids])
        out["idle_cpu_pct"] = spread(idle_cpu, 2)
        # Visits over HTTP cost nodes × classes requests per node: check a few nodes.
        sample = sorted({0, args.nodes // 2, args.nodes - 1})
        out["visits_checked"] = {f"node{k}": total_visits(clients[k], args.nodes) for k in sample}
        out["peers_online"] = [sum(1 for q in c.peers() if q["status"] == "online") for c in clients]
    finally:
        for pr in procs:
            if pr.poll() is None:
                pr.send_signal(signal.SIGTERM)
        for pr in procs:
            try:
                codes.append(pr.wait(timeout=60))
            except subprocess.TimeoutExpired:
                pr.kill()
                codes.append(None)
        if broker is not None:
            broker.terminate()
            broker.wait(timeout=10)
    delays, missing = propagation(acks, logs)
    out["propagation_ms"] = percentiles(delays) | {"never": missing}
    out["exit_codes"] = codes
    out["dir"] = str(root) if args.keep or args.dir else None
    if not args.keep and not args.dir:
        shutil.rmtree(root, ignore_errors=True)
    out["ok"] = (bool(out.get("converged")) and missing == 0 and all(c == 0 for c in codes)
                 and all(v == out["interactions"] for v in out.get("visits_checked", {None: -1}).values()))
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
