"""A real NATS cluster with an MQTT listener on every server, on free loopback ports.

For tests, ``scripts/prove.py --only cluster`` and anyone who wants to see
peerd survive the loss of a broker member. ``NatsCluster(3).start()`` runs
three ``nats-server`` processes, each with:

- its own client, cluster-route, monitoring and MQTT port (all free loopback ports);
- JetStream on, each server its own store directory (NATS keeps MQTT sessions,
  retained messages and QoS 1 deliveries in JetStream streams, so MQTT
  needs it; ``server_name`` is required for JetStream in a cluster);
- routes to every other server, so the cluster forms whoever starts first.

Readiness is a condition, never a sleep: every running server's ``/routez``
shows a route to every other running server, its ``/healthz`` says its
JetStream is current, and its MQTT listener admits a session (CONNACK
accepted: NATS opens the port before it can, and the first sessions of a
fresh cluster create the MQTT streams). ``kill(i)`` SIGKILLs one member
(clients see their connection drop), ``restart(i)`` brings it back on the same
ports and store.

Only the standard library is imported: this module is safe to import where
``nats-server`` is missing (``find_nats_server()`` returns None; tests skip).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["NatsCluster", "NatsMember", "find_nats_server", "mqtt_session_accepted",
           "render_config"]

LOOPBACK = "127.0.0.1"
_POLL = 0.05


def find_nats_server() -> str | None:
    """Path of the ``nats-server`` binary, or None (PATH, then the sbin dirs PATH often lacks)."""
    found = shutil.which("nats-server")
    if found:
        return found
    for candidate in ("/usr/sbin/nats-server", "/usr/local/sbin/nats-server"):
        if Path(candidate).is_file():
            return candidate
    return None


def _free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def mqtt_session_accepted(host: str, port: int, timeout: float = 5.0) -> bool:
    """Whether an MQTT 3.1.1 CONNECT gets CONNACK "accepted" (then DISCONNECT).

    The readiness that matters: NATS opens its MQTT port before it can admit a
    session (it first needs its JetStream streams), and the first sessions of a
    fresh cluster create those streams.
    """
    client_id = f"peerd-probe-{port}".encode()
    var = b"\x00\x04MQTT\x04\x02\x00\x1e"  # protocol name, level 4, clean session, keepalive 30
    body = var + len(client_id).to_bytes(2, "big") + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(bytes([0x10, len(body)]) + body)
            ack = b""
            while len(ack) < 4:
                chunk = sock.recv(4 - len(ack))
                if not chunk:
                    return False
                ack += chunk
            accepted = ack[0] == 0x20 and ack[3] == 0
            with contextlib.suppress(OSError):
                sock.sendall(b"\xe0\x00")  # DISCONNECT: no Will, session closed cleanly
            return accepted
    except OSError:
        return False


def _port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class NatsMember:
    """One server of the cluster: its name, ports, store and (while running) process."""

    name: str
    host: str
    client_port: int
    cluster_port: int
    http_port: int
    mqtt_port: int
    store_dir: Path
    config_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The MQTT URL peers connect to."""
        return f"mqtt://{self.host}:{self.mqtt_port}"

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def monitor(self, path: str) -> dict[str, object] | None:
        """GET a monitoring endpoint (``/routez``, ``/healthz``...) as JSON; None if unreachable."""
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.http_port}{path}",
                                        timeout=1.0) as resp:
                data = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # /healthz answers 503 with a JSON body
            try:
                data = json.loads(exc.read())
            except ValueError:
                return None
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


def render_config(member: NatsMember, routes: list[str], cluster_name: str) -> str:
    """The ``nats-server`` config of one member (the same shape as config/nats-cluster/)."""
    replicas = min(3, len(routes) + 1)
    route_lines = "\n".join(f'    "nats-route://{r}"' for r in routes)
    return f"""# generated by peerd.testing.natscluster
server_name: "{member.name}"
listen: "{member.host}:{member.client_port}"
http: "{member.host}:{member.http_port}"

jetstream {{
  store_dir: "{member.store_dir}"
  max_memory_store: 64MB
  max_file_store: 256MB
}}

cluster {{
  name: "{cluster_name}"
  listen: "{member.host}:{member.cluster_port}"
  routes: [
{route_lines}
  ]
}}

mqtt {{
  listen: "{member.host}:{member.mqtt_port}"
  # NATS sizes the MQTT streams (sessions, retained messages, QoS 1 messages) by
  # the servers it sees when the first MQTT client connects: 2 of a forming 3-server
  # cluster, which cannot lose a member. Ask for {replicas} replicas, so it can lose one.
  stream_replicas: {replicas}
}}
"""


#: Starts tried when a member loses the race for one of its free ports.
_START_ATTEMPTS = 3


class NatsCluster:
    """``size`` nats-server processes forming one cluster, each with an MQTT listener."""

    def __init__(self, size: int = 3, *, host: str = LOOPBACK, workdir: str | Path | None = None,
                 binary: str | None = None, ready_timeout: float = 30.0,
                 name: str = "peerd") -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one server")
        found = binary or find_nats_server()
        if found is None:
            raise FileNotFoundError("nats-server not found on PATH")
        self.binary = found
        self.host = host
        self.ready_timeout = ready_timeout
        self.name = name
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="peerd-nats-"))
        self.size = size
        self.members: list[NatsMember] = []
        self._assign_ports(0)

    def _assign_ports(self, attempt: int) -> None:
        """Fresh, distinct free ports and store directories for every member, and their configs.

        A port found free can be taken by another process before the server binds it
        (a busy CI machine): ``start`` then calls this again with the next attempt.
        """
        host, name = self.host, self.name
        taken: set[int] = set()

        def port() -> int:
            while True:
                p = _free_port(host)
                if p not in taken:
                    taken.add(p)
                    return p

        self.members = []
        for i in range(self.size):
            mdir = self.workdir / (f"n{i + 1}" if attempt == 0 else f"n{i + 1}-retry{attempt}")
            mdir.mkdir(parents=True, exist_ok=True)
            self.members.append(NatsMember(
                name=f"{name}-n{i + 1}", host=host, client_port=port(), cluster_port=port(),
                http_port=port(), mqtt_port=port(), store_dir=mdir / "jetstream",
                config_path=mdir / "nats.conf", log_path=mdir / "nats.log"))
        for m in self.members:
            routes = [f"{o.host}:{o.cluster_port}" for o in self.members if o is not m]
            m.config_path.write_text(render_config(m, routes, name))

    def __repr__(self) -> str:
        up = sum(m.is_running() for m in self.members)
        return f"<NatsCluster {up}/{len(self.members)} up {self.urls}>"

    @property
    def urls(self) -> list[str]:
        """MQTT URLs of every member, in member order (for ``[broker] urls``)."""
        return [m.url for m in self.members]

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> Self:
        """Start every member, then wait until the whole cluster is ready (or stop them all)."""
        for attempt in range(_START_ATTEMPTS):
            try:
                for i in range(len(self.members)):
                    self._spawn(i)
                self.wait_ready()
                return self
            except BaseException as exc:
                for i in range(len(self.members)):
                    self.stop(i)
                lost_race = isinstance(exc, RuntimeError) and (
                    "address already in use" in str(exc) or "is taken by someone else" in str(exc))
                if not lost_race or attempt + 1 >= _START_ATTEMPTS:
                    raise
                self._assign_ports(attempt + 1)  # a port went to someone else: new ports
        return self

    def _spawn(self, i: int) -> None:
        m = self.members[i]
        if m.is_running():
            return
        if _port_accepts(m.host, m.mqtt_port):
            raise RuntimeError(f"{m.name}: MQTT port {m.mqtt_port} is taken by someone else")
        with open(m.log_path, "ab") as log:
            m.proc = subprocess.Popen([self.binary, "-c", str(m.config_path)],
                                      stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT, cwd=m.config_path.parent)

    def kill(self, i: int) -> None:
        """SIGKILL member ``i``: its clients see the connection drop, with no goodbye."""
        m = self.members[i]
        if m.proc is not None and m.proc.poll() is None:
            m.proc.send_signal(signal.SIGKILL)
            m.proc.wait()
        m.proc = None

    def stop(self, i: int, timeout: float = 5.0) -> None:
        """Graceful stop of member ``i`` (SIGTERM, SIGKILL after ``timeout``)."""
        m = self.members[i]
        if m.proc is not None and m.proc.poll() is None:
            m.proc.terminate()
            try:
                m.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait()
        m.proc = None

    def restart(self, i: int) -> None:
        """Start member ``i`` again (same ports and store) and wait until the cluster is ready."""
        self._spawn(i)
        self.wait_ready()

    def close(self) -> None:
        """Stop every member and remove the work directory if we made it."""
        for i in range(len(self.members)):
            self.stop(i)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- readiness -----------------------------------------------------------------

    def member_ready(self, m: NatsMember) -> bool:
        """A route to every other running member, JetStream current, an MQTT session admitted."""
        if not m.is_running() or not _port_accepts(m.host, m.mqtt_port):
            return False
        routez = m.monitor("/routez")
        peers = sum(o.is_running() for o in self.members if o is not m)
        if routez is None or int(routez.get("num_routes", 0)) < peers:  # type: ignore[call-overload]
            return False
        # JetStream meta layer current; per-stream health would wait for every
        # replica of the MQTT streams, which a restarted member catches up lazily.
        health = m.monitor("/healthz?js-server-only=true")
        if health is None or health.get("status") != "ok":
            return False
        return mqtt_session_accepted(m.host, m.mqtt_port)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until every running member is ready; RuntimeError with log tails if not."""
        deadline = time.monotonic() + (self.ready_timeout if timeout is None else timeout)
        while True:
            dead = [m for m in self.members if m.proc is not None and m.proc.poll() is not None]
            if dead:
                raise RuntimeError(self._failure(f"{dead[0].name} exited"))
            running = [m for m in self.members if m.is_running()]
            if running and all(self.member_ready(m) for m in running):
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(self._failure("cluster not ready in time"))
            time.sleep(_POLL)

    def _failure(self, what: str) -> str:
        tails = []
        for m in self.members:
            try:
                lines = m.log_path.read_text(errors="replace").splitlines()[-15:]
            except OSError:
                lines = []
            tails.append(f"--- {m.name} ({m.log_path}):\n" + "\n".join(lines))
        return f"NATS cluster: {what}\n" + "\n".join(tails)
