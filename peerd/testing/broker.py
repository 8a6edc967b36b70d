"""A real MQTT broker on a free loopback port, for tests, the simulation and scripts.

DESIGN §9: claims about the system are shown over a real broker that the test
session starts itself, never the system broker on 1883, so that fault tests can
kill and restart theirs. Two kinds, driven the same way:

- ``mosquitto``: the binary, with a generated config in a temp directory;
- ``amqtt``: the pure-Python broker, run in a *subprocess* (this module with
  the internal ``--serve-amqtt`` flag) so that its event loop never competes
  with the nodes' and ``kill()``/``restart()`` behave exactly as for mosquitto.

Command line (blocks until SIGTERM/SIGINT)::

    python -m peerd.testing.broker --port 18830 [--kind auto|mosquitto|amqtt]

The amqtt subprocess patches two amqtt 0.12.1 bugs (``_patch_amqtt``):

- it never disconnects a client silent past its keep-alive (the broker-side
  read-timeout handler is a no-op), so a half-open connection never produces
  the client's Will. Patched: silent for 1.5 × keep-alive → connection closed →
  Will published, as MQTT-3.1.2-24 requires and mosquitto does;
- on every CONNECT it sends the client the retained messages matching *any*
  client's subscriptions. Patched: only the client's own.

Test mode ``Broker("amqtt", deliver_retained=False)``: the broker accepts
retained publishes but never delivers them to a later subscriber, like the
brokers DESIGN §4 warns about (no retained store, or none for wildcard
subscriptions). For a mosquitto that refuses retained messages outright, pass
``config_lines=["retain_available false"]``.

This module does not import aiomqtt; amqtt is imported only inside the broker
subprocess.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from peerd.errors import ConfigError, TransportError

__all__ = ["Broker", "BrokerKind", "available_kinds", "find_mosquitto", "free_port"]

BrokerKind = Literal["mosquitto", "amqtt"]
LOOPBACK = "127.0.0.1"
_POLL_INTERVAL = 0.02
_MOSQUITTO_FALLBACKS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
#: Every broker process this interpreter started and has not stopped yet.
_LIVE: weakref.WeakSet[Broker] = weakref.WeakSet()


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago (the kernel picks it; races are unlikely)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary: PATH first, then the sbin dirs PATH often lacks."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in _MOSQUITTO_FALLBACKS:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def available_kinds() -> list[BrokerKind]:
    """Broker kinds this machine can run; the test session runs its suite on each."""
    return ["mosquitto", "amqtt"] if find_mosquitto() else ["amqtt"]


def _resolve_kind(kind: str) -> BrokerKind:
    if kind == "auto":
        return "mosquitto" if find_mosquitto() else "amqtt"
    if kind == "mosquitto":
        if find_mosquitto() is None:
            raise ConfigError("broker kind 'mosquitto' requested but no mosquitto binary found")
        return "mosquitto"
    if kind == "amqtt":
        return "amqtt"
    raise ConfigError(f"unknown broker kind {kind!r} (expected auto, mosquitto or amqtt)")


def _port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """preexec_fn: SIGTERM the broker when this process dies, even by SIGKILL (Linux).

    PR_SET_PDEATHSIG fires when the *thread* that forked exits, so it is only
    safe when starting from the main thread; elsewhere we rely on atexit.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None

    def preexec() -> None:
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent_pid:  # parent died before prctl took effect
            os._exit(1)

    return preexec


class Broker:
    """One broker process on ``host:port``; stop/kill/restart keep the port.

    ``config_lines`` (mosquitto only) are appended to the generated config;
    an option they set (``allow_anonymous``, ``persistence``,
    ``set_tcp_nodelay``, ``user``) replaces our default instead of being
    repeated. ``config_file`` is appended likewise. Without persistence,
    retained messages do not survive a restart.
    """

    def __init__(
        self,
        kind: str = "auto",
        *,
        port: int | None = None,
        host: str = LOOPBACK,
        config_lines: Sequence[str] = (),
        config_file: str | Path | None = None,
        ready_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        deliver_retained: bool = True,
    ) -> None:
        self.kind: BrokerKind = _resolve_kind(kind)
        if self.kind == "amqtt" and (config_lines or config_file):
            raise ConfigError("config_lines/config_file apply to mosquitto only")
        if self.kind != "amqtt" and not deliver_retained:
            raise ConfigError("deliver_retained=False is an amqtt test mode")
        self.deliver_retained = deliver_retained
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self._config_lines = list(config_lines)
        self._config_file = Path(config_file) if config_file is not None else None
        self._workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def start_new(cls, kind: str = "auto", **kwargs: Any) -> Self:
        """Construct and start: ``with Broker.start_new() as b: ...``."""
        return cls(kind, **kwargs).start()

    @classmethod
    def stop_all(cls) -> None:
        """Stop every broker this process started (session teardown, atexit)."""
        for broker in list(_LIVE):
            broker.stop()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def workdir(self) -> Path:
        """Temp directory with the generated config and the log (made on first use)."""
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix=f"peerd-{self.kind}-{self.port}-"))
        return self._workdir

    @property
    def log_path(self) -> Path:
        """The broker's stdout+stderr, appended across restarts."""
        return self.workdir / "broker.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<Broker {self.kind} {self.url} {state}>"

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> Self:
        """Start the process and return once the port accepts TCP connections.

        Raises ``TransportError`` with the log tail if the broker dies or the
        port stays closed until ``ready_timeout``.
        """
        if self.is_running():
            return self
        if _port_accepts(self.host, self.port):
            raise TransportError(f"port {self.host}:{self.port} is already taken by someone else")
        cmd = self._command()
        with open(self.log_path, "ab") as log:
            log.write(f"--- starting: {' '.join(cmd)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self._env(),
                preexec_fn=_die_with_parent(os.getpid()),
            )
        _LIVE.add(self)
        self._wait_port_open(time.monotonic() + self.ready_timeout)
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Graceful stop: SIGTERM, then SIGKILL if it is still alive after ``timeout``."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None
        _LIVE.discard(self)

    def kill(self) -> None:
        """SIGKILL, for fault tests: clients see their connection drop, no goodbye."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._proc = None
        _LIVE.discard(self)

    def restart(self) -> Self:
        """Stop (if running) and start again on the same port; returns when it accepts."""
        self.stop()
        return self.start()

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def close(self) -> None:
        """Stop and remove the temp directory (config and log)."""
        self.stop()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- readiness -----------------------------------------------------------------

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait, without blocking the event loop, until the port accepts connections."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            self._raise_if_dead()
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), timeout=0.5
                )
            except (OSError, TimeoutError):
                if asyncio.get_running_loop().time() >= deadline:
                    raise TransportError(self._failure("did not open its port in time")) from None
                await asyncio.sleep(_POLL_INTERVAL)
            else:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return

    def _wait_port_open(self, deadline: float) -> None:
        while not _port_accepts(self.host, self.port):
            self._raise_if_dead()
            if time.monotonic() >= deadline:
                self.kill()
                raise TransportError(self._failure("did not open its port in time"))
            time.sleep(_POLL_INTERVAL)

    def _raise_if_dead(self) -> None:
        if self._proc is None:
            raise TransportError(self._failure("is not started"))
        code = self._proc.poll()
        if code is not None:
            self._proc = None
            _LIVE.discard(self)
            raise TransportError(self._failure(f"exited with code {code}"))

    def _failure(self, what: str) -> str:
        return f"{self.kind} broker on {self.url} {what}; log tail:\n{self.log_tail()}"

    def log_tail(self, lines: int = 30) -> str:
        """Last lines of the broker's log, for error messages and failing tests."""
        if self._workdir is None:
            return "(no log)"
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- commands and config ----------------------------------------------------------

    def _command(self) -> list[str]:
        if self.kind == "amqtt":
            cmd = [sys.executable, "-m", "peerd.testing.broker", "--serve-amqtt",
                   "--host", self.host, "--port", str(self.port)]
            return cmd if self.deliver_retained else [*cmd, "--no-retained"]
        binary = find_mosquitto()
        if binary is None:  # pragma: no cover - resolved in __init__
            raise ConfigError("mosquitto binary disappeared")
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self._mosquitto_config())
        return [binary, "-c", str(conf)]

    @staticmethod
    def _env() -> dict[str, str]:
        """Our environment, with peerd importable even when it is not installed."""
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        return env

    def _mosquitto_config(self) -> str:
        extra = list(self._config_lines)
        if self._config_file is not None:
            extra += self._config_file.read_text().splitlines()
        overridden = {line.split(maxsplit=1)[0] for line in extra if line.strip()
                      and not line.lstrip().startswith("#")}
        defaults = {
            "allow_anonymous": "true",
            "persistence": "false",
            "set_tcp_nodelay": "true",  # deltas are small writes that must leave at once
            # As root mosquitto drops to user "mosquitto" unless told otherwise, and
            # then cannot read files in our 0700 temp dir; as anyone else it is a no-op.
            "user": pwd.getpwuid(os.getuid()).pw_name,
        }
        lines = [
            "# generated by peerd.testing.broker",
            f"listener {self.port} {self.host}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
        ]
        lines += [f"{key} {value}" for key, value in defaults.items() if key not in overridden]
        lines += extra
        return "\n".join(lines) + "\n"


@atexit.register
def _reap_all() -> None:
    Broker.stop_all()


# -- the amqtt broker process -----------------------------------------------------------


def _amqtt_config(host: str, port: int) -> dict[str, Any]:
    """Loopback TCP listener, anonymous clients, no $SYS publishing, no packet logging."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 0}},
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
        },
    }


def _patch_amqtt(*, deliver_retained: bool = True) -> None:
    """Work around two amqtt 0.12.1 bugs that break peerd's assumptions (see each function)."""
    _enforce_amqtt_keepalive()
    if deliver_retained:
        _retained_only_for_own_subscriptions()
    else:
        _never_deliver_retained()


def _never_deliver_retained() -> None:
    """Test mode: keep accepting retained publishes, never send them to a new subscriber."""
    from amqtt.broker import Broker as AmqttBroker

    async def publish_retained(self: Any, subscription: tuple[str, int], session: Any) -> None:
        return None

    AmqttBroker._publish_retained_messages_for_subscription = publish_retained  # type: ignore[method-assign]


def _retained_only_for_own_subscriptions() -> None:
    """Send a connecting client retained messages for *its* subscriptions only.

    amqtt 0.12.1, on every CONNECT, walks ``self._subscriptions`` -- the filters of
    *all* clients -- and sends the new client every retained message matching any
    of them: a node would receive other federations' retained presence it never
    subscribed to. We skip filters the session does not hold. (The transport also
    drops messages matching none of its filters, whatever the broker.)
    """
    import logging

    from amqtt.broker import Broker as AmqttBroker

    original = getattr(AmqttBroker, "_publish_retained_messages_for_subscription", None)
    if original is None:
        logging.getLogger("peerd.testing.broker").warning(
            "amqtt internals changed; retained-message fix not installed")
        return

    async def publish_retained(self: Any, subscription: tuple[str, int], session: Any) -> None:
        holders = self._subscriptions.get(subscription[0], [])
        if any(held.client_id == session.client_id for held, _qos in holders):
            await original(self, subscription, session)

    AmqttBroker._publish_retained_messages_for_subscription = publish_retained  # type: ignore[method-assign]


def _enforce_amqtt_keepalive() -> None:
    """Make amqtt drop clients silent for 1.5 × keep-alive (MQTT-3.1.2-24), so Wills fire.

    amqtt 0.12.1 waits ``keep_alive`` seconds for each packet and then calls
    ``BrokerProtocolHandler.handle_read_timeout``, which does nothing: a client
    whose host vanished without closing its socket stays "connected" forever
    and its Will is never published. We stretch the wait to 1.5 × keep-alive
    (the spec's grace) and close the session when it expires, which runs the
    broker's own abnormal-disconnect path (Will, retained if asked).
    Patched in the broker subprocess only; skipped if amqtt's internals moved.
    """
    import logging

    from amqtt.broker import Broker as AmqttBroker
    from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler

    log = logging.getLogger("peerd.testing.broker")
    original_init = getattr(AmqttBroker, "_initialize_client_session", None)
    if original_init is None or not hasattr(BrokerProtocolHandler, "handle_read_timeout"):
        log.warning("amqtt internals changed; keep-alive enforcement not installed")
        return
    closing: set[asyncio.Task[None]] = set()

    async def initialize(self: Any, *args: Any, **kwargs: Any) -> Any:
        handler, session = await original_init(self, *args, **kwargs)
        if session.keep_alive and session.keep_alive > 0:
            session.keep_alive = session.keep_alive * 1.5
        return handler, session

    def on_read_timeout(self: Any) -> None:
        log.info("keep-alive expired for %s, closing its connection", self.session.client_id)
        task = asyncio.ensure_future(self.handle_connection_closed())
        closing.add(task)
        task.add_done_callback(closing.discard)

    AmqttBroker._initialize_client_session = initialize  # type: ignore[method-assign]
    BrokerProtocolHandler.handle_read_timeout = on_read_timeout  # type: ignore[method-assign]


async def _serve_amqtt(host: str, port: int, *, deliver_retained: bool = True) -> None:
    """Run amqtt in this process until SIGTERM/SIGINT, then shut it down."""
    from amqtt.broker import Broker as AmqttBroker

    _patch_amqtt(deliver_retained=deliver_retained)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    broker = AmqttBroker(_amqtt_config(host, port))
    await broker.start()
    await stop.wait()
    await broker.shutdown()


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m peerd.testing.broker",
        description="Run an MQTT broker on a loopback port until SIGTERM/SIGINT.",
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--kind", default="auto", choices=["auto", "mosquitto", "amqtt"])
    parser.add_argument("--serve-amqtt", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-retained", action="store_true",
                        help="amqtt test mode: accept retained messages, never deliver them")
    args = parser.parse_args(argv)

    if args.serve_amqtt:  # the subprocess Broker(kind="amqtt") starts
        import logging

        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr,
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
        )
        logging.getLogger("transitions").setLevel(logging.WARNING)
        asyncio.run(_serve_amqtt(args.host, args.port, deliver_retained=not args.no_retained))
        return 0

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with Broker(args.kind, host=args.host, port=args.port,
                deliver_retained=not args.no_retained) as broker:
        print(f"{broker.kind} broker ready on {broker.url} (log: {broker.log_path})", flush=True)
        while not stop.is_set() and broker.is_running():
            stop.wait(0.5)
        if not broker.is_running():
            print(broker.log_tail(), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
