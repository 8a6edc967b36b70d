"""Proof suite: faults, hostile input, poisoners, partitions — with nothing lost.

Every scenario runs against real processes and real brokers and measures the
claims of DESIGN §4–7 instead of asserting them in a unit test:

- ``crash``: a ``peerd run`` daemon (no broker: this is about the store) under
  8 client threads learning through its HTTP API is SIGKILLed at random
  moments and restarted; afterwards no acknowledged interaction may be missing.
- ``outage``: nodes keep learning while their broker is killed, reconnect when
  it is back on the same port, and converge to identical views with exact counts.
  ``--no-retained`` runs it on an amqtt broker that never delivers retained
  messages (DESIGN §4: presence must not depend on them).
- ``partition``: two Mosquitto sites joined by the shipped bridge, whose link
  runs through a TCP proxy of this script that cuts it and restores it; both
  sides learn meanwhile and converge afterwards, and a node that was offline
  for the whole run catches up.
- ``hostile``: a foreign client floods the federation's topics with garbage,
  mutants, forgeries, replays, impersonations and a "mallory" node's invalid
  deltas; honest nodes must stay up, change no cell and count every message.
- ``poisoners``: ``scripts/prove_poisoners.py``: validly signed liars of every attack of
  ``peerd sim --attack``; a table attack × count → slowdown, rounds to quarantine.
- ``cluster``: nodes spread over a 3-server NATS cluster (MQTT listener on
  each) learn while the member some of them use is SIGKILLed and later
  restarted: each of those must be back on another member within 10 s, and
  no interaction may be lost, before or after the member's return (skipped
  without nats-server).
- ``soak`` (only with ``--soak MINUTES``): 50 nodes for MINUTES; memory, file
  descriptors and tasks must not grow.

    python scripts/prove.py [--quick] [--json] [--only NAME,...] [--soak MINUTES] [--no-retained]

prints one JSON report (``--json``) or a summary: per scenario its figures, its
targets and ``"pass"``; exit status 0 iff every scenario that ran passed (a
skipped one, ``"pass": null``, does not fail the run). ``--quick`` variants are
what ``tests/test_prove.py`` runs.

Waiting is always on a condition with a deadline. The only sleeps are the
experiment itself (how long the broker stays dead, how long the bridge stays
cut, the random moment of a kill) and the pacing of the learners.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import inspect
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import msgpack
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from peerd import logs, wire  # noqa: E402
from peerd.client import ApiError, PeerdClient  # noqa: E402
from peerd.config import NodeConfig  # noqa: E402
from peerd.delta import Delta  # noqa: E402
from peerd.identity import Identity  # noqa: E402
from peerd.node import Node  # noqa: E402
from peerd.testing.broker import LOOPBACK, Broker, find_mosquitto, free_port  # noqa: E402
from peerd.transport import MqttTransport, OnConnect, OnMessage  # noqa: E402

SCENARIOS = ("crash", "outage", "partition", "hostile", "poisoners", "cluster")
ACTIONS = ["a", "b", "c"]
SECRET = "prove"
SEED = 20240611
#: Private states per node: every merged cell has exactly one origin, so views are
#: identical across nodes whatever trust each node gives the others (trust only
#: weighs origins against each other within a cell; quarantine aside).
STATES_PER_NODE = 40
BRIDGE_CONF = REPO / "config" / "mosquitto" / "bridge-site-b.conf"
POISONERS = REPO / "scripts" / "prove_poisoners.py"
FUZZ = REPO / "scripts" / "fuzz_wire.py"

Figures = dict[str, Any]


# ============================================================ shared helpers


def broker_kind() -> str:
    """Mosquitto when installed (what production runs), else the embedded amqtt."""
    return "mosquitto" if find_mosquitto() else "amqtt"


def rss_mb() -> float:
    """This process's resident set size in MB (VmRSS of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def federation(name: str) -> str:
    """A federation of its own per run: brokers keep retained presence of earlier runs."""
    return f"prove-{name}-{os.getpid()}-{random.randrange(16**6):06x}"


def load_script(path: Path, name: str) -> ModuleType:
    """Import a script of this directory by path (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def progress(message: str) -> None:
    """One line on stderr, so that a long full run shows where it is (stdout stays JSON)."""
    print(f"# prove: {message}", file=sys.stderr, flush=True)


async def eventually(pred: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until ``pred()`` holds (checked every 20 ms), or None after ``timeout``."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not pred():
        if loop.time() - t0 > timeout:
            return None
        await asyncio.sleep(0.02)
    return loop.time() - t0


def wait_until(pred: Callable[[], bool], timeout: float) -> float | None:
    """``eventually`` for threads and plain code: seconds until ``pred()``, or None."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(0.02)
    return time.monotonic() - t0


def r3(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def node_config(fed: str, node_id: str, broker_url: str, **kw: Any) -> NodeConfig:
    """Fast gossip (heartbeat 0.5 s, sync asks every 0.3 s) so that catch-up takes seconds."""
    base: dict[str, Any] = dict(
        federation=fed, node_id=node_id, actions=ACTIONS, secret=SECRET, broker_url=broker_url,
        api_listen="", heartbeat_interval=0.5, sync_interval=0.3, publish_every=10,
        publish_interval=0.5, seed=sum(node_id.encode()) % 10_000)
    base.update(kw)
    return NodeConfig(**base)


async def start_nodes(nodes: list[Node], timeout: float = 30.0) -> None:
    """Start every node and wait until each is connected to its broker."""
    for nd in nodes:
        await nd.start()
    for nd in nodes:
        assert nd.transport is not None
        if not await nd.transport.wait_connected(timeout):
            raise RuntimeError(f"node {nd.id} did not connect within {timeout}s")


async def stop_nodes(nodes: list[Node]) -> None:
    await asyncio.gather(*(nd.stop() for nd in nodes), return_exceptions=True)


def same_views(nodes: list[Node]) -> bool:
    """Identical merged views: same keys and visits, values allclose (rtol 1e-9)."""
    k0, q0, n0 = nodes[0].table.view()
    for nd in nodes[1:]:
        k, q, n = nd.table.view()
        if not (np.array_equal(k, k0) and np.array_equal(n, n0)
                and np.allclose(q, q0, rtol=1e-9, atol=0.0)):
            return False
    return True


def converged(nodes: list[Node], total: int) -> bool:
    """Every node holds exactly ``total`` visits (the true count) and all views are identical."""
    return all(nd.table.total_visits() == total for nd in nodes) and same_views(nodes)


def convergence_state(nodes: list[Node], total: int) -> Figures:
    """What a failed convergence looked like: each node's visit total against the truth."""
    return {"true_total": total, "visits": {nd.id: nd.table.total_visits() for nd in nodes},
            "identical_views": same_views(nodes)}


class Learners:
    """One task per node doing ``act``/``learn`` at ``rate`` per second on its private states.

    ``counts`` is the truth the merged views must add up to. The sleep between
    interactions is the load's pacing, not a synchronisation.
    """

    def __init__(self, nodes: list[Node], rate: float) -> None:
        self.nodes = nodes
        self.period = 1.0 / rate
        self.counts: Counter[str] = Counter({nd.id: 0 for nd in nodes})
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._learn(nd), name=f"learner-{nd.id}")
                       for nd in self.nodes]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    async def _learn(self, node: Node) -> None:
        rng = random.Random(f"{SEED}-{node.id}")
        loop = asyncio.get_running_loop()
        due = loop.time()
        i = 0
        while not self._stop.is_set():
            await learn_one(node, i, rng)
            self.counts[node.id] += 1
            i += 1
            due += self.period
            await asyncio.sleep(max(0.0, due - loop.time()))


async def learn_one(node: Node, i: int, rng: random.Random) -> None:
    """One interaction on the node's private states (episodes of STATES_PER_NODE steps)."""
    k = i % STATES_PER_NODE
    state, nxt = f"{node.id}/s{k}", f"{node.id}/s{(k + 1) % STATES_PER_NODE}"
    await node.learn(state, node.act(state), rng.uniform(-1.0, 1.0), next_state=nxt,
                     done=k == STATES_PER_NODE - 1)


# ============================================================ 1. crash


class DaemonProcess:
    """A ``peerd run`` subprocess: start (until /healthz), SIGKILL, clean stop; stderr to a log."""

    def __init__(self, config: Path, url: str, log: Path) -> None:
        self.config = config
        self.client = PeerdClient(url, timeout=1.0)
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> float:
        """Launch and return the seconds until /healthz answers ok; raise if it never does."""
        t0 = time.monotonic()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "peerd.cli", "run", "--config", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=env,
                cwd=REPO)
        if wait_until(self._healthy, timeout) is None:
            self.kill()
            raise RuntimeError(f"peerd run not healthy within {timeout}s; log:\n{self.log_tail()}")
        return time.monotonic() - t0

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"peerd run exited with {self.proc.returncode}; log:\n{self.log_tail()}")
        try:
            return self.client.healthz().get("status") == "ok"
        except ApiError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait: the exit status (0 = clean stop), None if it had to be killed."""
        assert self.proc is not None
        self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"


class ApiLoad:
    """Client threads learning unique states through the API, each ack recorded right after ``learn``.

    ``up`` gates the threads while the daemon is down (they would only collect
    connection refusals). Every attempt uses a fresh state, so afterwards a
    cell's visits say exactly whether that attempt was committed.
    """

    def __init__(self, url: str, threads: int) -> None:
        self.url = url
        self.up = threading.Event()
        self.done = threading.Event()
        self.acked: list[list[tuple[str, int]]] = [[] for _ in range(threads)]
        self.unacked: list[list[tuple[str, int]]] = [[] for _ in range(threads)]
        self._threads = [threading.Thread(target=self._worker, args=(t,), daemon=True,
                                          name=f"api-load-{t}") for t in range(threads)]

    def start(self) -> None:
        for th in self._threads:
            th.start()

    def stop(self) -> None:
        self.done.set()
        self.up.set()
        for th in self._threads:
            th.join(30)

    def acked_count(self) -> int:
        return sum(len(a) for a in self.acked)

    def _worker(self, t: int) -> None:
        client = PeerdClient(self.url, timeout=5.0)
        i = 0
        while not self.done.is_set():
            if not self.up.wait(0.1):
                continue
            state, action = f"c{t}-{i}", i % len(ACTIONS)
            i += 1
            try:
                client.learn(state, action, 1.0, done=True)
            except ApiError:
                self.unacked[t].append((state, action))
                continue
            self.acked[t].append((state, action))


def crash_toml(fed: str, state_dir: Path, port: int) -> str:
    """The daemon's config: no broker (``url = ""``): the crash scenario is about the store."""
    return "\n".join([
        "[node]", f'federation = "{fed}"', 'id = "crash"', f'secret = "{SECRET}"',
        f'state_dir = "{state_dir}"', "[task]", f"actions = {json.dumps(ACTIONS)}",
        "[broker]", 'url = ""', "[api]", f'listen = "127.0.0.1:{port}"',
        "[log]", 'level = "warning"', 'json = "true"', ""])


def crash(quick: bool, fig: Figures) -> bool:
    """SIGKILL a loaded ``peerd run`` N times at random moments; no acknowledged interaction is lost."""
    kills, threads = (3, 8) if quick else (20, 8)
    rng = random.Random(SEED)
    fed = federation("crash")
    with tempfile.TemporaryDirectory(prefix="peerd-prove-crash-") as tmp:
        port = free_port()
        config = Path(tmp) / "crash.toml"
        state_dir = Path(tmp) / "state"
        config.write_text(crash_toml(fed, state_dir, port))
        daemon = DaemonProcess(config, f"http://127.0.0.1:{port}", Path(tmp) / "daemon.log")
        load = ApiLoad(f"http://127.0.0.1:{port}", threads)
        fig.update(broker="none (broker_url empty: durability of the store alone)",
                   client_threads=threads, kills=0)
        restarts: list[float] = []
        t0 = time.monotonic()
        fig["first_start_s"] = r3(daemon.start())
        load.start()
        load.up.set()
        try:
            for _ in range(kills):
                base = load.acked_count()
                if wait_until(lambda b=base: load.acked_count() >= b + threads, 30) is None:
                    raise RuntimeError("no acknowledgements under load within 30s")
                time.sleep(rng.uniform(0.0, 0.8))  # the random moment of the kill: the experiment
                daemon.kill()
                load.up.clear()
                fig["kills"] += 1
                restarts.append(daemon.start())
                load.up.set()
            base = load.acked_count()  # the last incarnation works under load too
            if wait_until(lambda: load.acked_count() >= base + threads, 30) is None:
                raise RuntimeError("no acknowledgements after the last restart")
        finally:
            load.stop()
            fig["run_s"] = r3(time.monotonic() - t0)
            fig["clean_stop_exit_status"] = daemon.stop()
        acked = [x for per in load.acked for x in per]
        unacked = [x for per in load.unacked for x in per]
        fig.update(restart_s={"min": r3(min(restarts)), "median": r3(statistics.median(restarts)),
                              "max": r3(max(restarts)), "each": [r3(t) for t in restarts]}
                   if restarts else None,
                   attempted=len(acked) + len(unacked), acknowledged=len(acked),
                   unacknowledged=len(unacked))
        cfg = NodeConfig(federation=fed, node_id="crash", actions=ACTIONS, secret=SECRET,
                         state_dir=str(state_dir), api_listen="")
        fig.update(asyncio.run(count_committed(cfg, acked, unacked)))
    fig["targets"] = {"lost == 0": fig["lost"] == 0,
                      f"kills == {kills}": fig["kills"] == kills,
                      "clean stop exits 0": fig["clean_stop_exit_status"] == 0,
                      "no phantom interactions (unaccounted == 0, duplicated == 0)":
                          fig["unaccounted"] == 0 and fig["duplicated"] == 0}
    return all(fig["targets"].values())


async def count_committed(cfg: NodeConfig, acked: list[tuple[str, int]],
                          unacked: list[tuple[str, int]]) -> Figures:
    """Open the daemon's state in-process and compare every attempt with its cell's visits."""
    node = Node(cfg)
    await node.open()
    try:
        def visits(s: str, a: int) -> int:
            return int(node.table.visits(s)[a])

        lost = [x for x in acked if visits(*x) < 1]
        extra = sum(1 for x in unacked if visits(*x) >= 1)
        duplicated = sum(1 for x in [*acked, *unacked] if visits(*x) > 1)
        total = node.table.total_visits()
        return {"lost": len(lost), "lost_examples": lost[:5],
                "extra_committed_unacknowledged": extra, "duplicated": duplicated,
                "visits_in_store": total, "own_version": node.table.version,
                # every committed visit must be one of our attempts
                "unaccounted": total - (len(acked) - len(lost) + extra)}
    finally:
        if node.store is not None:
            await node.store.close()


# ============================================================ 2. outage


#: False (``--no-retained``): the outage runs on a broker that never delivers retained messages.
DELIVER_RETAINED = True


async def outage(quick: bool, fig: Figures) -> bool:
    """Kill the broker under load, restart it on the same port: reconnect, catch up, converge."""
    n, down_s, rate = (3, 2.0, 20.0) if quick else (10, 30.0, 20.0)
    fed = federation("outage")
    kind = broker_kind() if DELIVER_RETAINED else "amqtt"
    fig.update(broker=kind, nodes=n, outage_s=down_s, learn_rate_per_node=rate,
               retained_delivered=DELIVER_RETAINED)
    with Broker(kind, deliver_retained=DELIVER_RETAINED) as broker:
        nodes = [Node(node_config(fed, f"o{i}", broker.url)) for i in range(n)]
        try:
            await start_nodes(nodes)
            learners = Learners(nodes, rate)
            learners.start()
            try:
                if await eventually(lambda: min(learners.counts.values()) >= 20, 30) is None:
                    raise RuntimeError("learners did not get going")
                loop = asyncio.get_running_loop()
                at_kill = learners.total
                broker.kill()
                if await eventually(lambda: not any(nd.transport.connected for nd in nodes), 15) is None:
                    raise RuntimeError("nodes did not notice the dead broker")
                await asyncio.sleep(down_s)  # the outage itself: the experiment
                fig["interactions_during_outage"] = learners.total - at_kill
                broker.start()
                t_up = loop.time()
                times = await asyncio.gather(*(_reconnect_time(nd, t_up, 90.0) for nd in nodes))
                done = [t for t in times if t is not None]
                fig["reconnect_s"] = {"max": r3(max(done, default=None)),
                                      "median": r3(statistics.median(done)) if done else None,
                                      "not_reconnected": len(times) - len(done),
                                      "per_node": {nd.id: r3(t) for nd, t in zip(nodes, times, strict=True)}}
                mark = dict(learners.counts)
                await eventually(lambda: all(learners.counts[k] >= mark[k] + 10 for k in mark), 30)
            finally:
                await learners.stop()
            for nd in nodes:
                await nd.flush()
            took = await eventually(lambda: converged(nodes, learners.total), 60)
            fig.update(interactions=learners.total, converge_s=r3(took),
                       recovered_after_restart_s=r3(loop.time() - t_up) if took is not None else None,
                       cells=nodes[0].table.size)
            if took is None:
                fig["diagnostic"] = convergence_state(nodes, learners.total)
        finally:  # whatever failed, no node outlives its scenario
            await stop_nodes(nodes)
    fig["targets"] = {"every node reconnected": fig["reconnect_s"]["not_reconnected"] == 0,
                      "converged (identical views, exact counts) within 60 s of the flush":
                          took is not None,
                      "learning went on during the outage": fig["interactions_during_outage"] > 0}
    return all(fig["targets"].values())


async def _reconnect_time(node: Node, t0: float, timeout: float) -> float | None:
    assert node.transport is not None
    if not await node.transport.wait_connected(timeout):
        return None
    return asyncio.get_running_loop().time() - t0


# ============================================================ 3. partition


class LinkProxy:
    """A TCP relay for the bridge's link: ``cut()`` drops its connections and refuses new ones.

    A real network partition, as the bridge sees it: connections reset, dialling
    fails, until ``restore()``.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.accepted = 0
        self.refused = 0
        self._cut = False
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, LOOPBACK, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    @property
    def links(self) -> int:
        return len(self._links)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        if me is not None:  # so that close() can wait for it: no handler outlives the loop
            self._handlers.add(me)
            me.add_done_callback(self._handlers.discard)
        if self._cut:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        link = (writer, up_writer)
        self._links.add(link)
        self.accepted += 1
        pumps = [asyncio.create_task(_pump(reader, up_writer)),
                 asyncio.create_task(_pump(up_reader, writer))]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for p in pumps:
                p.cancel()
            self._links.discard(link)
            for w in link:
                w.transport.abort()

    def cut(self) -> None:
        self._cut = True
        for link in list(self._links):
            for w in link:
                w.transport.abort()

    def restore(self) -> None:
        self._cut = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=5.0)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


def bridge_lines(host: str, port: int) -> list[str]:
    """bridge-site-b.conf as shipped, dialling ``host:port`` over plain loopback MQTT.

    Dropped: the TLS settings (``bridge_*`` but the protocol version) and the
    remote account (the test's site A is anonymous). Shortened: keepalive and
    the redial backoff (1–2 s; mosquitto 2.0 then redials every ~3 s), so that
    a restored link is used within seconds, not a minute.
    """
    out = []
    for line in BRIDGE_CONF.read_text().splitlines():
        key = line.split(maxsplit=1)[0] if line.strip() and not line.lstrip().startswith("#") else ""
        if (key.startswith("bridge_") and key != "bridge_protocol_version") \
                or key in ("remote_username", "remote_password"):
            continue
        if key == "address":
            line = f"address {host}:{port}"
        elif key == "restart_timeout":
            line = "restart_timeout 1 2"
        elif key == "keepalive_interval":
            line = "keepalive_interval 5"
        out.append(line)
    if not any(line.startswith("topic peerd/v1/# both") for line in out):
        raise RuntimeError(f"{BRIDGE_CONF} no longer bridges peerd/v1/# both ways")
    return out


def held_lag(readers: list[Node], writers: list[Node]) -> int:
    """Smallest gap between what a writer published and what a reader holds of it."""
    return min(w.published_version - r.table.max_version(w.id)
               for r in readers for w in writers)


async def partition(quick: bool, fig: Figures) -> bool | None:
    """Cut the bridge between two sites while both learn; restore; converge; a late joiner catches up."""
    if find_mosquitto() is None:
        fig["skipped"] = "needs mosquitto (bridges): not installed"
        return None
    per_site, cut_s, rate = (2, 3.0, 10.0) if quick else (5, 120.0, 10.0)
    fed = federation("partition")
    fig.update(broker="mosquitto x2, bridge-site-b.conf through a cuttable TCP proxy",
               nodes_per_site=per_site, cut_s=cut_s, learn_rate_per_node=rate)
    site_a = Broker("mosquitto").start()
    proxy = LinkProxy(site_a.host, site_a.port)
    await proxy.start()
    site_b = Broker("mosquitto", config_lines=bridge_lines(LOOPBACK, proxy.port)).start()
    loop = asyncio.get_running_loop()
    nodes: list[Node] = []  # everything started here, stopped in the finally
    try:
        a = [Node(node_config(fed, f"a{i}", site_a.url)) for i in range(per_site)]
        b = [Node(node_config(fed, f"b{i}", site_b.url)) for i in range(per_site)]
        nodes.extend(a + b)
        await start_nodes(nodes)
        late = Node(node_config(fed, "late", site_a.url))
        await late.open()
        rng = random.Random(SEED)
        for i in range(25):  # learned while it was offline: the federation must get it too
            await learn_one(late, i, rng)
        learners = Learners(nodes, rate)
        learners.start()
        try:
            bridged = await eventually(
                lambda: min(learners.counts.values()) >= 20
                and all(x.table.max_version(y.id) > 0 for x in a for y in b)
                and all(y.table.max_version(x.id) > 0 for x in a for y in b), 30)
            if bridged is None:
                raise RuntimeError("the bridge did not carry deltas between the sites")
            proxy.cut()
            at_cut = learners.total
            await asyncio.sleep(cut_s)  # the partition itself: the experiment
            fig["interactions_during_cut"] = learners.total - at_cut
            fig["refused_bridge_dials_during_cut"] = proxy.refused
            # Proof that the cut was real: published versions that did not cross.
            fig["lag_a_behind_b"] = held_lag(a, b)
            fig["lag_b_behind_a"] = held_lag(b, a)
            proxy.restore()
            t_restore = loop.time()
        finally:
            await learners.stop()
        for nd in nodes:
            await nd.flush()
        took = await eventually(lambda: converged(nodes, learners.total), 60)
        fig.update(interactions=learners.total,
                   converge_after_restore_s=r3(loop.time() - t_restore) if took is not None else None)
        if took is None:
            fig["diagnostic"] = convergence_state(nodes, learners.total)
        await late.start()
        nodes.append(late)
        total = learners.total + late.table.version
        t_late = loop.time()
        late_took = await eventually(lambda: converged(nodes, total), 30)
        fig.update(late_joiner_site="a", late_joiner_offline_interactions=late.table.version,
                   late_joiner_converge_s=r3(loop.time() - t_late) if late_took is not None else None,
                   cells=late.table.size)
        if late_took is None:
            fig["late_diagnostic"] = convergence_state(nodes, total)
    finally:
        await stop_nodes(nodes)
        await proxy.close()
        site_b.close()
        site_a.close()
    fig["targets"] = {
        "the cut was real (published versions did not cross while cut)":
            fig["lag_a_behind_b"] > 0 and fig["lag_b_behind_a"] > 0,
        "converged (identical views, exact counts) within 60 s of the restore": took is not None,
        "late joiner converged within 30 s": late_took is not None}
    return all(fig["targets"].values())


# ============================================================ 4. hostile


@dataclass
class Ledger:
    """What one honest node was handed during the attack, and what became of each message."""

    node: Node | None = None
    armed: bool = False
    expected: Counter[int] = field(default_factory=Counter)  # hostile payloads on their way
    kinds: dict[int, str] = field(default_factory=dict)  # their generator, while on their way
    hostile_sent: int = 0  # hostile messages on topics this node counts (not its own)
    valid_sent: int = 0  # of which genuinely valid (mallory's birth)
    hostile_delivered: int = 0
    hostile_accepted: int = 0
    honest_delivered: int = 0
    honest_accepted: int = 0
    honest_rejected: int = 0
    own_topic_skipped: int = 0  # on its own topics (its echoes, forgeries): not counted, by design
    accepted: int = 0
    errors: int = 0
    hostile_accepted_by_kind: Counter[str] = field(default_factory=Counter)

    def figures(self) -> Figures:
        out = {k: v for k, v in vars(self).items() if k not in ("node", "armed", "expected", "kinds")}
        out["hostile_accepted_by_kind"] = dict(self.hostile_accepted_by_kind)
        return out


class TapTransport(MqttTransport):
    """A node's MQTT transport that also records, per delivered message, whether it was accepted.

    Plugged in through ``Node(transport_factory=...)``. A message is hostile
    when its payload is one the attacker sent and this node has not been
    handed yet (a replay of an honest message is sent long after the original
    arrived, so the first copy counts as honest and the replay as hostile).
    """

    def __init__(self, url: str, *, ledger: Ledger, **kw: Any) -> None:
        super().__init__(url, **kw)
        self.ledger = ledger

    async def run(self, on_message: OnMessage, on_connect: OnConnect) -> None:
        await super().run(self._tapped(on_message), on_connect)

    def _tapped(self, on_message: OnMessage) -> OnMessage:
        led = self.ledger

        async def tapped(topic: str, payload: bytes, retain: bool) -> None:
            node = led.node
            if not led.armed or node is None:
                await on_message(topic, payload, retain)
                return
            parsed = wire.parse_topic(topic)
            if parsed is None or parsed[2] == node.id or parsed[0] != node.fed:
                led.own_topic_skipped += 1  # the node does not count these (MQTT 3.1.1: no no-local)
                await on_message(topic, payload, retain)
                return
            # keyed by topic too: an honest relayer re-sends captured payloads verbatim
            # on its relay topic, and those are not the attacker's replays
            h = hash((topic, payload))
            hostile = led.expected[h] > 0
            kind = ""
            if hostile:
                led.expected[h] -= 1
                kind = led.kinds[h]
                if not led.expected[h]:
                    del led.expected[h]
                    del led.kinds[h]
                led.hostile_delivered += 1
            else:
                led.honest_delivered += 1
            before = sum(node.counters.rejected.values())
            try:
                await on_message(topic, payload, retain)
            except Exception:
                led.errors += 1
                raise
            if sum(node.counters.rejected.values()) > before:
                led.honest_rejected += not hostile
            else:
                led.accepted += 1
                led.hostile_accepted += hostile
                led.honest_accepted += not hostile
                if hostile:
                    led.hostile_accepted_by_kind[kind] += 1

        return tapped


class Attacker:
    """Makes hostile messages for a federation from captured real ones; ``next()`` picks a kind.

    Kinds (DESIGN §5 lists what each must trip): random bytes, byte mutants of
    captured messages (bit flips, truncations, splices... from fuzz_wire), wrong
    wire versions, forgeries (another key signs a node's message: a stranger's
    or another member's), replays, impersonation (another node's id in the
    header), unknown senders, births announcing another key, NaN arrays or
    absurd header fields (NaN time, negative counters) under a forged
    signature, and "mallory": a node with a pinned key (its valid birth is sent
    first) whose validly signed deltas are invalid: NaN/inf, |q| above the
    bound, huge log-weight or visit claims, unknown actions, cells of another
    origin, plus fuzz_wire's semantic mutations re-signed with its key.
    """

    def __init__(self, *, fed: str, fingerprint: str, captured: list[tuple[str, bytes]],
                 honest: dict[str, Identity], half_life: float, seed: int) -> None:
        self.fz = load_script(FUZZ, "peerd_prove_fuzz_wire")
        self.rnd = random.Random(seed)
        self.rng = np.random.default_rng(seed)
        self.fed, self.fp, self.half_life = fed, fingerprint, half_life
        self.captured = captured
        self.captured_deltas = [(t, p) for t, p in captured if "/delta/" in t]
        self.honest = honest
        self.ids = sorted(honest)
        self.stranger = Identity.from_seed(self.rnd.randbytes(32))
        self.mallory = Identity.from_seed(self.rnd.randbytes(32))
        self.mallory_seq = 0
        self.mallory_birth_payload = b""
        self.kinds: list[tuple[str, Callable[[], tuple[str, bytes]]]] = [
            ("random_bytes", self.random_bytes), ("byte_mutant", self.byte_mutant),
            ("wrong_version", self.wrong_version), ("forged_signature", self.forged),
            ("replay", self.replay), ("impersonation", self.impersonation),
            ("unknown_sender", self.unknown_sender), ("key_mismatch", self.key_mismatch),
            ("nan_forgery", self.nan_forgery), ("forged_bad_header", self.forged_bad_header),
            ("mallory_invalid_delta", self.mallory_invalid),
            ("mallory_invalid_delta", self.mallory_invalid), ("mallory_fuzzed", self.mallory_fuzzed),
            ("mallory_replay", self.mallory_replay)]

    def next(self) -> tuple[str, str, bytes]:
        kind, make = self.rnd.choice(self.kinds)
        topic, payload = make()
        return kind, topic, payload

    # -- helpers
    def _topic(self, kind: str, node: str) -> str:
        return wire.topic(self.fed, kind, node)

    def _random_topic(self) -> str:
        sender = self.rnd.choice([*self.ids, "mallory", f"stranger{self.rnd.randrange(5)}"])
        return self._topic(self.rnd.choice(wire.KINDS), sender)

    def _captured(self) -> tuple[str, bytes]:
        return self.rnd.choice(self.captured)

    def _fields(self, payload: bytes) -> dict[str, Any]:
        return self.fz.body_fields(payload)

    def _sign(self, fields: dict[str, Any], signer: Identity) -> bytes:
        return self.fz.frame(fields, signer)

    # -- kinds
    def random_bytes(self) -> tuple[str, bytes]:
        return self._random_topic(), self.fz.m_random_bytes(b"", self.rnd)

    def byte_mutant(self) -> tuple[str, bytes]:
        topic, payload = self._captured()
        names = [n for n in self.fz.BYTE_MUTATIONS if n not in ("oversized", "random_bytes")]
        # Oversized payloads (>128 KiB) are rare: they prove a limit, not volume.
        name = "oversized" if self.rnd.random() < 0.002 else self.rnd.choice(names)
        return topic, self.fz.BYTE_MUTATIONS[name](payload, self.rnd)

    def wrong_version(self) -> tuple[str, bytes]:
        topic, payload = self._captured()
        if self.rnd.random() < 0.5:  # the frame's version, body and signature intact
            outer = msgpack.unpackb(payload, raw=False)
            outer["v"] = self.rnd.choice([0, 2, 99, 2**32])
            return topic, msgpack.packb(outer, use_bin_type=True)
        fields = self._fields(payload)
        fields["v"] = self.rnd.choice([0, 2, 99])
        return topic, self._sign(fields, self.stranger)

    def forged(self) -> tuple[str, bytes]:
        topic, payload = self._captured()
        fields = self._fields(payload)
        fields["seq"] = int(fields["seq"]) + 1_000_000  # fresh, so only the signature can tell
        others = [i for i in self.ids if i != fields["node"]]
        signer = self.honest[self.rnd.choice(others)] if others and self.rnd.random() < 0.5 \
            else self.stranger
        return topic, self._sign(fields, signer)

    def replay(self) -> tuple[str, bytes]:
        return self._captured()

    def impersonation(self) -> tuple[str, bytes]:
        topic, payload = self._captured()
        fields = self._fields(payload)
        victim = self.rnd.choice([i for i in self.ids if i != fields["node"]] or self.ids)
        fields["node"] = victim
        fields["seq"] = int(fields["seq"]) + 1_000_000
        kind = wire.parse_topic(topic)[1]  # type: ignore[index]
        topic = topic if self.rnd.random() < 0.5 else self._topic(kind, victim)
        return topic, self._sign(fields, self.stranger)

    def _header(self, node: str, seq: int) -> wire.Header:
        return wire.Header(fed=self.fed, node=node, fp=self.fp, epoch=1, seq=seq, ts=time.time())

    def unknown_sender(self) -> tuple[str, bytes]:
        node = f"stranger{self.rnd.randrange(5)}"
        msg = wire.Heartbeat(self._header(node, self.rnd.randrange(1, 10**6)), version=10, size=1)
        return self._topic("heartbeat", node), wire.encode(msg, self.stranger)

    def key_mismatch(self) -> tuple[str, bytes]:
        node = self.rnd.choice([*self.ids, "mallory"])
        msg = wire.Birth(self._header(node, 10**7 + self.rnd.randrange(10**6)),
                         public_key=self.stranger.public_key, version=0)
        return self._topic("presence", node), wire.encode(msg, self.stranger)

    def nan_forgery(self) -> tuple[str, bytes]:
        topic, payload = self.rnd.choice(self.captured_deltas or self.captured)
        fields = self._fields(payload)
        fields["seq"] = int(fields["seq"]) + 1_000_000
        if not self.fz.s_non_finite(fields, self.rnd):
            fields["ts"] = float("nan")
        return topic, self._sign(fields, self.stranger)

    def forged_bad_header(self) -> tuple[str, bytes]:
        """A node's message with an absurd header (NaN time, negative or 2^64-1 counters), forged.

        Nothing here is signed by the node whose topic it uses, so nothing here
        may cost that node trust.
        """
        topic, payload = self._captured()
        fields = self._fields(payload)
        name, value = self.rnd.choice([("ts", float("nan")), ("ts", float("inf")), ("epoch", -1),
                                       ("seq", 2**64 - 1), ("seq", 2**63)])
        fields[name] = value
        return topic, self._sign(fields, self.stranger)

    # -- mallory
    def mallory_birth(self) -> tuple[str, bytes]:
        """Mallory's one genuinely valid message: it pins its key with every honest node."""
        self.mallory_seq += 1
        msg = wire.Birth(self._header("mallory", self.mallory_seq),
                         public_key=self.mallory.public_key, version=0)
        self.mallory_birth_payload = wire.encode(msg, self.mallory)
        return self._topic("presence", "mallory"), self.mallory_birth_payload

    def _mallory_delta(self, origin: str = "mallory") -> tuple[Delta, float]:
        """A delta that would be valid (lw within the evidence guard) before it is spoiled."""
        m = self.rnd.randint(1, 6)
        lo = self.rnd.randrange(0, 1000)
        now_lw = time.time() / self.half_life
        cells = dict(keys=self.rng.integers(0, 2**63, m, dtype=np.uint64),
                     actions=self.rng.integers(0, len(ACTIONS), m), q=self.rng.normal(0, 1, m),
                     lw=now_lw + self.rng.uniform(0, 3, m), n=self.rng.integers(1, 5, m),
                     succ=np.zeros(m), fail=np.zeros(m), version=lo + 1 + np.arange(m))
        return Delta.build(origin, self.fp, lo, lo + m, **cells), now_lw

    def _mallory_msg(self, delta: Delta) -> bytes:
        self.mallory_seq += 1
        return wire.encode(wire.DeltaMsg(self._header("mallory", self.mallory_seq), delta=delta),
                           self.mallory)

    def mallory_invalid(self) -> tuple[str, bytes]:
        how = self.rnd.choice(["nan", "inf_lw", "huge_lw", "huge_visits", "q_out_of_bounds",
                               "unknown_action", "origin_mismatch", "zero_visits",
                               "version_outside"])
        delta, now_lw = self._mallory_delta(
            origin=self.rnd.choice(self.ids) if how == "origin_mismatch" else "mallory")
        c = {f: np.array(a) for f, a in delta.arrays().items()}
        if how == "nan":
            c["q"][0] = np.nan
        elif how == "inf_lw":
            c["lw"][0] = np.inf
        elif how == "huge_lw":  # 2^50 fresh visits
            c["lw"][0] = now_lw + 50.0
        elif how == "huge_visits":  # 4e9 visits, with the log-weight that goes with them
            c["n"][0] = 2**32 - 1
            c["lw"][0] = now_lw + 32.0
        elif how == "q_out_of_bounds":
            c["q"][0] = 1e7
        elif how == "unknown_action":
            c["actions"][0] = len(ACTIONS) + self.rnd.randrange(100)
        elif how == "zero_visits":
            c["n"][0] = 0
        elif how == "version_outside":
            c["version"][0] = delta.to_version + 5
        spoiled = Delta.build(delta.origin, self.fp, delta.from_version, delta.to_version, **c)
        return self._topic("delta", "mallory"), self._mallory_msg(spoiled)

    def mallory_fuzzed(self) -> tuple[str, bytes]:
        """fuzz_wire's semantic mutations of a valid mallory message, re-signed with mallory's key."""
        delta, _ = self._mallory_delta()
        base = self._mallory_msg(delta)
        for _ in range(10):
            name = self.rnd.choice(list(self.fz.SEMANTIC_MUTATIONS))
            fields = self._fields(base)
            if self.fz.SEMANTIC_MUTATIONS[name](fields, self.rnd):
                mutant = self._sign(fields, self.mallory)
                if mutant != base:  # some mutations are no-ops on empty arrays (as in fuzz_wire)
                    return self._topic("delta", "mallory"), mutant
        return self.mallory_invalid()

    def mallory_replay(self) -> tuple[str, bytes]:
        return self._topic("presence", "mallory"), self.mallory_birth_payload


class Capture:
    """A plain MQTT client on the federation's topics: records real messages to mutate and replay."""

    def __init__(self, url: str, fed: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.transport = MqttTransport(url, client_id=f"prove-capture-{fed}",
                                       subscriptions=[(f, 1) for f in wire.subscriptions(fed)])
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.transport.run(self._record, _nothing))
        if not await self.transport.wait_connected(20):
            raise RuntimeError("capture client did not connect")

    async def _record(self, topic: str, payload: bytes, retain: bool) -> None:
        self.messages.append((topic, payload))

    async def stop(self) -> None:
        await self.transport.disconnect()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


async def _nothing() -> None:
    return None


def _snapshot(node: Node) -> tuple[tuple[np.ndarray, ...], dict[str, int]]:
    return node.table.view(), {o: node.table.max_version(o) for o in node.table.origins}


def _cells_changed(before: tuple[tuple[np.ndarray, ...], dict[str, int]], node: Node) -> Figures:
    (k0, q0, n0), v0 = before
    (k1, q1, n1), v1 = _snapshot(node)
    versions = sum(v0.get(o, 0) != v1.get(o, 0) for o in set(v0) | set(v1))
    if not np.array_equal(k0, k1):
        return {"cells_changed": int(abs(k0.size - k1.size)) or -1, "versions_changed": versions}
    diff = (n0 != n1) | ~np.isclose(q0, q1, rtol=1e-12, atol=0.0)
    return {"cells_changed": int(diff.sum()), "versions_changed": int(versions)}


async def hostile(quick: bool, fig: Figures) -> bool:
    """Flood the federation's topics with hostile messages; honest nodes change nothing, count all."""
    total, window = (3_000, 500) if quick else (100_000, 500)
    fed = federation("hostile")
    kind = broker_kind()
    logs.configure("error")  # thousands of expected message_rejected warnings: counted below instead
    fig.update(broker=kind, honest_nodes=3, messages_target=total, round_trip_every=window)
    with Broker(kind) as broker:
        capture = Capture(broker.url, fed)
        await capture.start()
        ledgers = {f"h{i}": Ledger() for i in range(3)}
        nodes = []
        for nid, led in ledgers.items():
            def factory(led: Ledger = led, **kw: Any) -> TapTransport:
                return TapTransport(broker.url, ledger=led, **kw)
            nd = Node(node_config(fed, nid, broker.url, max_payload=64 * 1024),
                      transport_factory=factory)
            led.node = nd
            nodes.append(nd)
        try:
            await start_nodes(nodes)
            rng = random.Random(SEED)
            for nd in nodes:
                for i in range(30):
                    await learn_one(nd, i, rng)
                await nd.flush()
            if await eventually(lambda: converged(nodes, 90) and len(capture.messages) >= 12, 30) is None:
                raise RuntimeError("honest nodes did not converge before the attack")
            await capture.stop()
            attacker = Attacker(fed=fed, fingerprint=nodes[0].task.fingerprint,
                                captured=list(capture.messages),
                                honest={nd.id: nd.identity for nd in nodes},
                                half_life=nodes[0].config.half_life, seed=SEED)
            fig["captured_real_messages"] = len(attacker.captured)
            before = {nd.id: _snapshot(nd) for nd in nodes}
            trust0 = {nd.id: _honest_trust(nd, nodes) for nd in nodes}
            received0 = {nd.id: nd.counters.messages_received for nd in nodes}
            rejected0 = {nd.id: Counter(nd.counters.rejected) for nd in nodes}
            for led in ledgers.values():
                led.armed = True
            rss0, t0 = rss_mb(), time.monotonic()
            sent: Counter[str] = Counter()
            foe = MqttTransport(broker.url, client_id=f"prove-hostile-{fed}", subscriptions=[])
            foe_task = asyncio.create_task(foe.run(_nothing_message, _nothing))
            try:
                if not await foe.wait_connected(20):
                    raise RuntimeError("hostile client did not connect")
                delivered = await _send(foe, ledgers, [("mallory_birth", *attacker.mallory_birth())],
                                        sent, valid=True)
                fig["mallory_pinned"] = delivered and all(
                    nd.pinned_key("mallory") == attacker.mallory.public_key for nd in nodes)
                n_sent = 1
                while delivered and n_sent < total:
                    batch = [attacker.next() for _ in range(min(window, total - n_sent))]
                    delivered = await _send(foe, ledgers, batch, sent)
                    n_sent += len(batch)
                    if n_sent % 20_000 < window:
                        progress(f"hostile: {n_sent} messages sent")
            finally:
                await foe.disconnect()
                foe_task.cancel()
                await asyncio.gather(foe_task, return_exceptions=True)
            fig.update(messages_sent=sum(sent.values()), sent_by_kind=dict(sorted(sent.items())),
                       attack_s=r3(time.monotonic() - t0), all_delivered=delivered,
                       rss_mb_before=round(rss0, 1), rss_mb_after=round(rss_mb(), 1))
            for led in ledgers.values():
                led.armed = False
            alive = {t.get_name() for t in asyncio.all_tasks() if not t.done()}
            per_node: dict[str, Figures] = {}
            for nd in nodes:
                led = ledgers[nd.id]
                rejected = Counter(nd.counters.rejected)
                rejected.subtract(rejected0[nd.id])
                rej = {k: v for k, v in sorted(rejected.items()) if v}
                received = nd.counters.messages_received - received0[nd.id]
                per_node[nd.id] = {
                    "runner_alive": f"node-{nd.id}" in alive, "connected": nd.transport.connected,
                    **_cells_changed(before[nd.id], nd), "received": received,
                    "rejected_total": sum(rej.values()), "accepted": led.accepted,
                    "rejected_by_reason": rej, **led.figures(),
                    "trust_of_mallory": round(nd.table.trust("mallory"), 3),
                    "trust_of_honest_peers_before": trust0[nd.id],
                    "trust_of_honest_peers_after": _honest_trust(nd, nodes)}
            fig["per_node"] = per_node
            fig["rejected_by_reason_all_nodes"] = dict(sorted(
                sum((Counter(p["rejected_by_reason"]) for p in per_node.values()), Counter()).items()))
            # Still a working federation: fresh honest learning reaches everyone.
            for i in range(30, 40):
                await learn_one(nodes[0], i, rng)
            await nodes[0].flush()
            fig["gossip_after_attack_s"] = r3(await eventually(lambda: converged(nodes, 100), 20))
        finally:  # whatever failed, no node outlives its scenario
            await stop_nodes(nodes)
    logs.configure("warning")
    p = per_node.values()
    fig["targets"] = {
        f"at least {total} messages sent": fig["messages_sent"] >= total,
        "every hostile message reached every node (paced: the broker dropped none)":
            bool(fig["all_delivered"]) and all(x["hostile_delivered"] == x["hostile_sent"] for x in p),
        "nodes stayed up (runner task alive, connected)":
            all(x["runner_alive"] and x["connected"] for x in p),
        "cells changed == 0 and origin versions unchanged":
            all(x["cells_changed"] == 0 and x["versions_changed"] == 0 for x in p),
        "received == sum(rejected by reason) + accepted, for every node":
            all(x["received"] == x["rejected_total"] + x["accepted"]
                and x["received"] == x["hostile_delivered"] + x["honest_delivered"]
                and x["errors"] == 0 for x in p),
        "accepted hostile messages == the genuinely valid ones (mallory's birth, pinned)":
            bool(fig["mallory_pinned"]) and all(x["hostile_accepted"] == x["valid_sent"] == 1 for x in p),
        "no honest message rejected": all(x["honest_rejected"] == 0 for x in p),
        "no honest peer framed (forgeries on its topics leave its trust alone)":
            all(x["trust_of_honest_peers_after"] == x["trust_of_honest_peers_before"] for x in p),
        "no decoder crash (reason 'internal')": "internal" not in fig["rejected_by_reason_all_nodes"],
        "RSS growth < 100 MB": fig["rss_mb_after"] - fig["rss_mb_before"] < 100,
        "gossip still works after the attack": fig["gossip_after_attack_s"] is not None}
    return all(fig["targets"].values())


async def _nothing_message(topic: str, payload: bytes, retain: bool) -> None:
    return None


def _honest_trust(node: Node, nodes: list[Node]) -> dict[str, float]:
    """The trust ``node`` gives each other honest node (no trust round runs during the attack)."""
    return {o.id: round(node.table.trust(o.id), 6) for o in nodes if o is not node}


async def _send(foe: MqttTransport, ledgers: dict[str, Ledger], batch: list[tuple[str, str, bytes]],
                sent: Counter[str], *, valid: bool = False) -> bool:
    """Publish a batch, then wait until every node has been handed all of it (the pacing round trip)."""
    for kind, topic, payload in batch:
        sender = wire.parse_topic(topic)
        for nid, led in ledgers.items():
            if sender is not None and sender[2] != nid:
                led.expected[hash((topic, payload))] += 1
                led.kinds[hash((topic, payload))] = kind
                led.hostile_sent += 1
                led.valid_sent += valid
        if not await foe.publish(topic, payload, qos=1):
            raise RuntimeError("the hostile client lost its connection")
        sent[kind] += 1
    return await eventually(lambda: all(led.hostile_delivered == led.hostile_sent
                                        for led in ledgers.values()), 60) is not None


# ============================================================ 5. poisoners


def poisoners(quick: bool, fig: Figures) -> bool | None:
    """Validly signed liars (scripts/prove_poisoners.py): attack × count → slowdown, rounds to quarantine."""
    if not POISONERS.exists():
        fig["skipped"] = "prove_poisoners.py not present"
        return None
    module = load_script(POISONERS, "peerd_prove_poisoners")
    result = dict(module.run(quick))
    fig.update(result)
    return result.get("pass")


# ============================================================ 6. soak


# ============================================================ 6. cluster

#: Correctness bound on failover (issue 13): back on another member within this, after the kill.
FAILOVER_BOUND_S = 10.0


async def cluster(quick: bool, fig: Figures) -> bool | None:
    """Kill the NATS member some nodes use, under load: they fail over, nothing is lost."""
    from peerd.testing.natscluster import NatsCluster, find_nats_server

    if find_nats_server() is None:
        fig["skipped"] = "needs nats-server: not installed"
        return None
    n, rate, after = (3, 10.0, 10) if quick else (9, 20.0, 40)
    fed = federation("cluster")
    fig.update(broker="nats-server 3-member cluster (MQTT, JetStream)", nodes=n,
               learn_rate_per_node=rate)
    nc = NatsCluster(3)
    nodes: list[Node] = []
    try:
        await asyncio.to_thread(nc.start)
        urls = nc.urls
        # node i starts on member i mod 3 (each lists the members from its own): spread evenly
        nodes = [Node(node_config(fed, f"k{i}", "", broker_urls=urls[i % 3:] + urls[:i % 3],
                                  subscribe_qos=0)) for i in range(n)]
        await start_nodes(nodes)
        victim = urls[1]
        affected = [nd for nd in nodes if nd.status()["broker"] == victim]
        fig["killed_member"] = victim
        fig["affected_nodes"] = [nd.id for nd in affected]
        learners = Learners(nodes, rate)
        learners.start()
        loop = asyncio.get_running_loop()
        try:
            if await eventually(lambda: min(learners.counts.values()) >= 20, 30) is None:
                raise RuntimeError("learners did not get going")
            at_kill = learners.total
            t_kill = loop.time()
            nc.kill(1)
            times = await asyncio.gather(*(_failover_time(nd, victim, t_kill, 60.0)
                                           for nd in affected))
            # A failover can be quicker than one interaction (a probe without a retained Will
            # connects while the cluster still elects leaders): what counts is that learning
            # went on after the kill, so wait (bounded) for one if the failover beat it.
            await eventually(lambda: learners.total > at_kill, 10)
            fig["interactions_during_failover"] = learners.total - at_kill
            done = [t for t in times if t is not None]
            fig["reconnect_s"] = {"max": r3(max(done, default=None)),
                                  "median": r3(statistics.median(done)) if done else None,
                                  "not_reconnected": len(times) - len(done),
                                  "per_node": {nd.id: r3(t) for nd, t in zip(affected, times,
                                                                             strict=True)}}
            reconnects = {nd.id: nd.transport.reconnects for nd in nodes}
            await asyncio.to_thread(nc.restart, 1)  # the member comes back...
            mark = dict(learners.counts)
            await eventually(lambda: all(learners.counts[k] >= mark[k] + after for k in mark), 60)
        finally:
            await learners.stop()
        for nd in nodes:
            await nd.flush()
        took = await eventually(lambda: converged(nodes, learners.total), 60)
        held = {nd.id: nd.table.total_visits() for nd in nodes}
        fig.update(interactions=learners.total, converge_s=r3(took),
                   interactions_lost=max(learners.total - v for v in held.values()),
                   interactions_double_counted=max(v - learners.total for v in held.values()),
                   # informational: NATS 2.9 may drop a client whose QoS 1 publish times
                   # out while the returning member makes JetStream re-elect leaders
                   reconnected_after_return=sorted(nd.id for nd in nodes
                                                   if nd.transport.reconnects != reconnects[nd.id]),
                   connected_at_end=sum(bool(nd.transport.connected) for nd in nodes))
        if took is None:
            fig["diagnostic"] = convergence_state(nodes, learners.total)
    finally:  # whatever failed, no node and no server outlives its scenario
        await stop_nodes(nodes)
        await asyncio.to_thread(nc.close)
    rec = fig["reconnect_s"]
    fig["targets"] = {
        "the killed member had nodes on it": bool(fig["affected_nodes"]),
        f"every affected node on another member within {FAILOVER_BOUND_S:g} s":
            rec["not_reconnected"] == 0 and (rec["max"] or 0.0) <= FAILOVER_BOUND_S,
        "no interaction lost (exact counts, identical views)":
            took is not None and fig["interactions_lost"] == 0,
        "nothing counted twice": fig["interactions_double_counted"] <= 0,
        "after the member's return: all connected, converged, nothing lost":
            fig["connected_at_end"] == n and took is not None,
        "learning went on during the failover": fig["interactions_during_failover"] > 0}
    return all(fig["targets"].values())


async def _failover_time(node: Node, lost: str, t0: float, timeout: float) -> float | None:
    """Seconds from ``t0`` until ``node`` is connected to a member other than ``lost``."""
    took = await eventually(lambda: node.status()["broker"] not in (None, lost), timeout)
    return None if took is None else asyncio.get_running_loop().time() - t0


def _sample(nodes: list[Node], t0: float) -> Figures:
    sizes = [nd.table.size for nd in nodes]
    return {"t_s": round(time.monotonic() - t0, 1), "rss_mb": round(rss_mb(), 1), "fds": open_fds(),
            "tasks": len(asyncio.all_tasks()), "table_cells_min": min(sizes),
            "table_cells_max": max(sizes)}


async def soak(minutes: float, fig: Figures) -> bool:
    """50 nodes on one mosquitto for ``minutes``: RSS, fds and tasks must not grow."""
    n, rate = 50, 5.0
    fed = federation("soak")
    kind = broker_kind()
    fig.update(broker=kind, nodes=n, learn_rate_per_node=rate, minutes=minutes)
    with Broker(kind) as broker:
        nodes = [Node(node_config(fed, f"s{i:02d}", broker.url, heartbeat_interval=5.0,
                                  publish_every=25, publish_interval=5.0, sync_interval=2.0))
                 for i in range(n)]
        await start_nodes(nodes, timeout=60)
        learners = Learners(nodes, rate)
        learners.start()
        t0 = time.monotonic()
        samples = [_sample(nodes, t0)]
        try:
            while time.monotonic() - t0 < minutes * 60:
                await asyncio.sleep(10.0)  # the sampling period: what is measured, not awaited
                samples.append(_sample(nodes, t0))
        finally:
            await learners.stop()
        for nd in nodes:
            await nd.flush()
        took = await eventually(lambda: converged(nodes, learners.total), 120)
        fig.update(interactions=learners.total, converge_at_end_s=r3(took))
        await stop_nodes(nodes)
    after_1 = [s for s in samples if s["t_s"] >= 60] or samples[-1:]
    first, last = after_1[0], samples[-1]
    span_min = max((last["t_s"] - first["t_s"]) / 60.0, 1e-9)
    slope = float(np.polyfit([s["t_s"] / 60 for s in after_1], [s["rss_mb"] for s in after_1], 1)[0]) \
        if len(after_1) >= 2 else 0.0
    fig.update(start=samples[0], after_first_minute=first, end=last,
               rss_growth_mb_per_min=round(slope, 2), span_after_first_minute_min=round(span_min, 2),
               samples=samples)
    fig["targets"] = {
        "RSS growth after the first minute < 5 MB/min": slope < 5.0,
        "fds do not grow (end <= after first minute + 2)": last["fds"] <= first["fds"] + 2,
        "tasks do not grow (end <= after first minute + 10 %)":
            last["tasks"] <= first["tasks"] * 1.1 + 2,
        "converged at the end": took is not None}
    return all(fig["targets"].values())


# ============================================================ running


ScenarioFn = Callable[[bool, Figures], "bool | Coroutine[Any, Any, bool | None] | None"]
RUNNERS: dict[str, ScenarioFn] = {"crash": crash, "outage": outage, "partition": partition,
                                  "hostile": hostile, "poisoners": poisoners, "cluster": cluster}


def run_scenario(name: str, quick: bool = False, *, soak_minutes: float | None = None,
                 deliver_retained: bool = True) -> Figures:
    """Run one scenario; its figures with ``pass`` (True/False, None = skipped) and ``wall_s``.

    An exception is a failed proof, not a crash of the suite: it is reported
    with the figures gathered until then. ``deliver_retained=False`` runs the
    outage on a broker that never delivers retained messages.
    """
    global DELIVER_RETAINED
    DELIVER_RETAINED = deliver_retained
    if name not in RUNNERS and name != "soak":
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}, soak")
    if name == "soak" and soak_minutes is None:
        raise ValueError("soak needs soak_minutes (--soak MINUTES)")
    logs.configure("warning")
    fig: Figures = {}
    t0 = time.monotonic()
    try:
        if name == "soak":
            ok: bool | None = asyncio.run(soak(float(soak_minutes or 0), fig))
        else:
            out = RUNNERS[name](quick, fig)
            ok = asyncio.run(out) if inspect.iscoroutine(out) else out
    except Exception as exc:
        fig["error"] = f"{type(exc).__name__}: {exc}"
        ok = False
    finally:
        logs.configure("warning")
    fig["wall_s"] = round(time.monotonic() - t0, 1)
    fig["pass"] = None if ok is None else bool(ok)
    return {"pass": fig.pop("pass"), **fig}


def report(names: list[str], quick: bool, soak_minutes: float | None, argv: list[str],
           deliver_retained: bool = True) -> Figures:
    """Run the scenarios in order; the one JSON document of the suite."""
    out: Figures = {
        "command": " ".join(["python", "scripts/prove.py", *argv]),
        "quick": quick, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"python": platform.python_version(), "cpus": os.cpu_count(),
                 "mosquitto": find_mosquitto()},
        "scenarios": {}}
    for name in names:
        progress(f"{name} ...")
        res = run_scenario(name, quick, soak_minutes=soak_minutes,
                           deliver_retained=deliver_retained)
        progress(f"{name}: pass={res['pass']} ({res['wall_s']} s)")
        out["scenarios"][name] = res
    ran = [s["pass"] for s in out["scenarios"].values() if s["pass"] is not None]
    out["skipped"] = [n for n, s in out["scenarios"].items() if s["pass"] is None]
    out["pass"] = bool(ran) and all(ran)
    return out


def _summary(doc: Figures) -> str:
    lines = []
    for name, res in doc["scenarios"].items():
        lines.append(f"{name:10s} pass={res['pass']}  ({res['wall_s']} s)")
        for target, met in res.get("targets", {}).items():
            lines.append(f"    [{'x' if met else ' '}] {target}")
        if "error" in res:
            lines.append(f"    error: {res['error']}")
        if "skipped" in res:
            lines.append(f"    skipped: {res['skipped']}")
    lines.append(f"pass={doc['pass']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the small variants (what the tests run)")
    p.add_argument("--json", action="store_true", help="print the JSON report (default: a summary)")
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(SCENARIOS)},soak")
    p.add_argument("--soak", type=float, default=None, metavar="MINUTES",
                   help="also run the soak for MINUTES (never in CI)")
    p.add_argument("--no-retained", action="store_true",
                   help="outage on an amqtt broker that never delivers retained messages")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(SCENARIOS)
    if args.soak is not None and "soak" not in names:
        names.append("soak")
    unknown = [n for n in names if n not in (*SCENARIOS, "soak")]
    if unknown:
        p.error(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}, soak")
    if "soak" in names and args.soak is None:
        p.error("soak needs --soak MINUTES")
    doc = report(names, args.quick, args.soak, argv, deliver_retained=not args.no_retained)
    print(json.dumps(doc, indent=2, default=str) if args.json else _summary(doc))
    return 0 if doc["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
