"""``peerd run``: one node as a long-running service (DESIGN §8).

Lifecycle of ``Daemon.serve``::

    open the node (store, identity, state) → run it (broker loop, publisher,
    heartbeat) → bind the local API → READY=1 → ... → SIGTERM/SIGINT →
    STOPPING=1 → stop the API (in-flight requests finish) → the node publishes
    its final delta and death, flushes, closes the store → exit 0

The shutdown is bounded (``stop_timeout``, below systemd's ``TimeoutStopSec``):
whatever has not finished by then is cancelled and the exit status is 1.
Signals only set an event; tests inject their own ``shutdown_trigger`` instead
(the hypercorn pattern), which also leaves the process's signal handlers alone.

systemd (``peerd.systemd``): ``READY=1`` once the node runs *and* the API
listens, ``WATCHDOG=1`` every half ``WATCHDOG_USEC`` together with a one-line
``STATUS=``, ``RELOADING=1``/``READY=1`` around a reload, ``STOPPING=1`` when
the shutdown begins.

SIGHUP re-reads the config file (and ``PEERD_*`` variables) and applies what a
running node can change safely (``RELOADABLE``): log level and format, trust
(``[security] strict`` and ``allowlist``), the gossip cadence
(``publish_every``, ``publish_interval``, ``sync_interval``, ``signatures``)
and peer ageing (``suspect_after``, ``peer_timeout``, ``origin_ttl``,
``max_origins``). Any
other changed key is reported as ``config_restart_required`` and keeps its
running value; an invalid file is reported as ``config_reload_failed`` and
changes nothing. ``--log-level``/``--json-logs`` on the command line keep
winning over the file.

Identity is stable only with a state directory (``[node] state_dir``, which
holds ``node.key`` and ``peerd.db``): without one every restart would be a new
key at epoch 1 and version 0, which peers reject (key mismatch, replay) or
ignore. So ``peerd run`` refuses to start without it (exit 2), unless
``--ephemeral`` asks for a throwaway node: a fresh key under a fresh node id
``<id>-<random hex>``, nothing kept, said loudly in the log.

Exit status: 0 after a clean stop, 1 when the node or the API failed or the
stop timed out, 2 for a configuration error (systemd: ``RestartPreventExitStatus=2``,
since restarting cannot fix a typo).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import secrets
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peerd import logs, systemd
from peerd.config import NodeConfig, load_config
from peerd.errors import ConfigError, PeerdError
from peerd.logs import get_logger

if TYPE_CHECKING:
    from peerd.api import ApiServer
    from peerd.node import Node

__all__ = ["RELOADABLE", "STOP_TIMEOUT", "Daemon", "add_parser", "main", "run", "serve"]

#: Seconds from the stop request to exit, below the unit's TimeoutStopSec=20 so
#: that systemd never has to SIGKILL a node that is merely slow to flush.
STOP_TIMEOUT = 15.0
#: Seconds between ``STATUS=`` updates when systemd asked for no watchdog.
STATUS_PERIOD = 30.0
#: ``NodeConfig`` fields that SIGHUP applies to a running node.
RELOADABLE = frozenset({
    "log_level", "log_json", "strict", "allowlist", "publish_every", "publish_interval",
    "sync_interval", "signatures", "suspect_after", "peer_timeout", "origin_ttl", "max_origins",
})
LOG_LEVELS = ("debug", "info", "warning", "error")

ShutdownTrigger = Callable[[], Awaitable[Any]]


def _json_setting(value: str) -> bool | None:
    """``[log] json`` → the ``json=`` of ``logs.configure`` (None: decide from the terminal)."""
    return {"true": True, "false": False}.get(value)


class Daemon:
    """One node, its API and its conversation with systemd (module docstring)."""

    def __init__(self, config: NodeConfig, *, config_path: str | Path | None = None,
                 log_level: str | None = None, json_logs: bool | None = None,
                 stop_timeout: float = STOP_TIMEOUT) -> None:
        self.config = config
        self.config_path = Path(config_path) if config_path is not None else None
        self.log_level = log_level  # command-line overrides, kept across reloads
        self.json_logs = json_logs
        self.stop_timeout = stop_timeout
        from peerd.node import Node  # here, so that `peerd --help` stays instant

        self.node: Node = Node(config)
        self.api: ApiServer | None = None
        self.running = False
        self.reloads = 0
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self._background: set[asyncio.Task[Any]] = set()
        self._log = get_logger(node=self.node.id, fed=self.node.fed)

    # ------------------------------------------------------------- control
    def request_stop(self, reason: str = "requested") -> None:
        """Begin the shutdown (idempotent): what the SIGTERM/SIGINT handlers call."""
        if self._stop.is_set():
            self._log.info("shutdown_already_requested", reason=reason)
            return
        self._stop_reason = reason
        self._stop.set()

    async def serve(self, shutdown_trigger: ShutdownTrigger | None = None,
                    ready: asyncio.Event | None = None) -> int:
        """Run until a signal (or ``shutdown_trigger`` returns); return the exit status."""
        loop = asyncio.get_running_loop()
        handled = self._install_signals(loop) if shutdown_trigger is None else []
        if shutdown_trigger is not None:
            self._spawn(self._watch_trigger(shutdown_trigger), "shutdown-trigger")
        try:
            return await self._serve(ready)
        finally:
            if self.api is not None:  # already stopped unless the node failed
                await self.api.stop()
            for task in self._background:
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
            for sig in handled:
                loop.remove_signal_handler(sig)

    async def _serve(self, ready: asyncio.Event | None) -> int:
        node = self.node
        systemd.notify("STATUS=opening state")
        try:
            await node.open()
        except PeerdError as exc:  # StoreError: another node's database, unreadable key ...
            return self._failed("node_open_failed", exc)
        started = asyncio.Event()
        node_task = asyncio.create_task(node.run(self._node_trigger(started)), name="node")
        await _first(started.wait(), node_task)
        if node_task.done():
            return self._failed("node_failed", node_task.exception())
        if self.config.api_listen:
            from peerd.api import ApiServer  # aiohttp stays out of processes without an API

            self.api = ApiServer(node, running=lambda: self.running)
            try:
                await self.api.start()
            except (OSError, ValueError) as exc:
                self.api = None
                self.request_stop("api_bind_failed")
                await self._wait_stopped(node_task)
                return self._failed("api_bind_failed", exc)
        if not self._stop.is_set():  # stopped while starting: never claim READY
            self.running = True
            systemd.notify(f"READY=1\nSTATUS={self.status_line()}")
            self._log.info("daemon_ready", api=self.api.addresses if self.api else [],
                           broker=self.config.broker_members or None, version=node.table.version)
            if ready is not None:
                ready.set()
            self._spawn(self._supervise(), "supervise")
            await _first(self._stop.wait(), node_task)
        status = await self._wait_stopped(node_task)
        if node_task.done() and not node_task.cancelled() and node_task.exception() is not None:
            return self._failed("node_failed", node_task.exception())
        self._log.info("daemon_stopped", status=status, reason=self._stop_reason or None)
        return status

    def _node_trigger(self, started: asyncio.Event) -> ShutdownTrigger:
        """The node's shutdown trigger: marks it running, waits for the stop, stops the API first.

        The API stops before the node shuts down so that a ``learn`` in flight
        is committed and then included in the final delta.
        """

        async def trigger() -> None:
            started.set()
            try:
                await self._stop.wait()
            finally:
                self.running = False
                systemd.notify("STOPPING=1\nSTATUS=stopping")
                self._log.info("daemon_stopping", reason=self._stop_reason or "node_failed")
                if self.api is not None:
                    await self.api.stop()

        return trigger

    async def _wait_stopped(self, node_task: asyncio.Task[None]) -> int:
        """Wait for the node to finish its shutdown, at most ``stop_timeout``."""
        done, _ = await asyncio.wait({node_task}, timeout=self.stop_timeout)
        if done:
            return 0
        node_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await node_task
        self._log.error("shutdown_timeout", seconds=self.stop_timeout)
        return 1

    def _failed(self, event: str, exc: BaseException | None) -> int:
        leaves = _leaves(exc)
        error = "; ".join(str(e) or type(e).__name__ for e in leaves)
        systemd.notify(f"STATUS={event}: {error}")
        if leaves and all(isinstance(e, ConfigError) for e in leaves):
            self._log.error("config_error", error=error)
            return 2
        self._log.error(event, error=error, error_type=[type(e).__name__ for e in leaves])
        return 1

    async def _watch_trigger(self, trigger: ShutdownTrigger) -> None:
        try:
            await trigger()
        finally:  # a trigger that fails must stop the daemon too, not leave it unstoppable
            self.request_stop("shutdown_trigger")

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------- signals
    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        handled: list[int] = []
        actions: list[tuple[signal.Signals, Callable[[], None]]] = [
            (signal.SIGTERM, lambda: self.request_stop("SIGTERM")),
            (signal.SIGINT, lambda: self.request_stop("SIGINT")),
            (signal.SIGHUP, lambda: self._spawn(self.reload(), "reload")),
        ]
        for sig, action in actions:
            try:
                loop.add_signal_handler(sig, action)
            except (ValueError, RuntimeError, NotImplementedError) as exc:  # not the main thread
                self._log.warning("signal_handler_unavailable", signal=sig.name, error=str(exc))
            else:
                handled.append(sig)
        return handled

    # -------------------------------------------------------------- reload
    async def reload(self) -> bool:
        """Re-read the config file and apply what can change at run time (SIGHUP)."""
        if self.config_path is None:
            self._log.warning("config_reload_unavailable", reason="no config file")
            return False
        running = self.running  # a reload during start-up must not claim READY early
        if running:
            systemd.notify(f"RELOADING=1\nMONOTONIC_USEC={systemd.monotonic_usec()}")
        try:
            new = await asyncio.to_thread(load_config, self.config_path)
            applied, restart = self.apply_config(new)
        except ConfigError as exc:
            self._log.error("config_reload_failed", path=str(self.config_path), error=str(exc))
            return False
        finally:
            if running:
                systemd.notify(f"READY=1\nSTATUS={self.status_line()}")
        self.reloads += 1
        if restart:
            self._log.warning("config_restart_required", keys=restart)
        self._log.info("config_reloaded", path=str(self.config_path), applied=applied,
                       log_level=self.log_level or self.node.config.log_level)
        return True

    def apply_config(self, new: NodeConfig) -> tuple[list[str], list[str]]:
        """Apply the reloadable changes of ``new``; return (applied, restart-required) keys."""
        node = self.node
        old = node.config
        changed = [f.name for f in dataclasses.fields(NodeConfig)
                   if getattr(old, f.name) != getattr(new, f.name)]
        applied = [k for k in changed if k in RELOADABLE]
        restart = [k for k in changed if k not in RELOADABLE]
        if not applied:
            return applied, restart
        cfg = old.replace(**{k: getattr(new, k) for k in applied})  # validates the mix
        self.config = cfg
        node.reconfigure(cfg)
        if {"log_level", "log_json"} & set(applied):
            self._configure_logs()
        return applied, restart

    def _configure_logs(self) -> None:
        cfg = self.node.config
        json_logs = self.json_logs if self.json_logs is not None else _json_setting(cfg.log_json)
        logs.configure(self.log_level or cfg.log_level, json=json_logs)
        # structlog fixes a bound logger's level filter when it is created: rebind
        # the long-lived loggers so that the new level applies to them too.
        node = self.node
        self._log = get_logger(node=node.id, fed=node.fed)
        node.rebind_logger()

    # ---------------------------------------------------------- supervision
    def status_line(self) -> str:
        """One line for ``systemctl status``: what an operator checks first."""
        node = self.node
        t = node.transport
        peers = node.liveness_counts()
        broker = ("connected" if t is not None and t.connected else "disconnected") \
            if self.config.broker_members else "none"
        return (f"{'running' if self.running else 'starting'}; version {node.table.version}, "
                f"{node.table.size} cells; broker {broker}; peers {peers['online']} online, "
                f"{peers['suspect']} suspect, {peers['offline']} offline")

    async def _supervise(self) -> None:
        """Watchdog pings (half of WATCHDOG_USEC) with a fresh STATUS line; nothing without systemd.

        The ping comes from the event loop itself, so a loop blocked by a
        runaway computation stops pinging and systemd restarts the service.
        """
        interval = systemd.watchdog_interval()
        if not systemd.notify(f"STATUS={self.status_line()}"):
            return  # not under systemd (or its socket is gone): nobody to talk to
        period = interval if interval is not None else STATUS_PERIOD
        if interval is not None:
            systemd.notify("WATCHDOG=1")
        while True:
            await asyncio.sleep(period)
            ping = "WATCHDOG=1\n" if interval is not None else ""
            systemd.notify(f"{ping}STATUS={self.status_line()}")


def _leaves(exc: BaseException | None) -> list[BaseException]:
    """The exceptions inside (nested) groups: a TaskGroup wraps what actually went wrong."""
    if exc is None:
        return []
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


async def _first(*aws: Awaitable[Any]) -> None:
    """Wait until the first of ``aws`` completes; cancel the others that were wrapped here."""
    tasks = [a if isinstance(a, asyncio.Future) else asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task, aw in zip(tasks, aws, strict=True):
            if task is not aw:
                task.cancel()


async def serve(config: NodeConfig, *, shutdown_trigger: ShutdownTrigger | None = None,
                ready: asyncio.Event | None = None, config_path: str | Path | None = None,
                log_level: str | None = None, json_logs: bool | None = None,
                stop_timeout: float = STOP_TIMEOUT) -> int:
    """Run a daemon for ``config`` in the current event loop; return its exit status.

    Without ``shutdown_trigger`` SIGTERM/SIGINT stop it and SIGHUP reloads
    ``config_path``; with one (tests), it stops when the trigger returns and
    signals are left alone. ``ready`` is set once the node runs and the API
    listens.
    """
    daemon = Daemon(config, config_path=config_path, log_level=log_level, json_logs=json_logs,
                    stop_timeout=stop_timeout)
    return await daemon.serve(shutdown_trigger, ready)


# ------------------------------------------------------------------ command line
#: Why ``peerd run`` will not start without a state directory (one line, names the fixes).
NO_STATE_DIR = (
    "[node] state_dir is empty (set it, or PEERD_NODE_STATE_DIR; the systemd unit's "
    "StateDirectory=peerd provides /var/lib/peerd): without it every restart is a new key at "
    "epoch 1 that peers reject; pass --ephemeral for a throwaway test node")
#: Hex digits appended to the configured id of an ``--ephemeral`` node.
EPHEMERAL_SUFFIX_HEX = 8


def ephemeral_config(config: NodeConfig) -> NodeConfig:
    """``config`` for a throwaway node: id ``<id>-<random hex>`` (so no peer has its old key
    pinned under that id) and no state directory (so a new key is generated in memory)."""
    from peerd.wire import MAX_ID_LEN  # here: numpy stays out of `peerd --help`

    suffix = secrets.token_hex(EPHEMERAL_SUFFIX_HEX // 2)
    base = config.node[: MAX_ID_LEN - len(suffix) - 1]
    return config.replace(node_id=f"{base}-{suffix}", state_dir="")


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", required=True, metavar="FILE",
                   help="TOML config file (PEERD_<SECTION>_<KEY> variables override it)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default=None,
                   help="log level (default: [log] level of the config)")
    p.add_argument("--json-logs", action="store_true", default=None,
                   help="log JSON lines even on a terminal (default: [log] json of the config)")
    p.add_argument("--ephemeral", action="store_true",
                   help="throwaway node for tests: a fresh key under a fresh node id "
                   "(<id>-<random hex>), no state directory, nothing survives the process")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``run`` on a CLI's subparsers (``peerd/cli.py``)."""
    p = sub.add_parser(
        "run", help="run this node as a daemon: gossip, learn, serve the local API",
        description="Run one peerd node until SIGTERM/SIGINT: connect to the broker, gossip and "
        "merge, serve the local HTTP API, keep state in the state directory. SIGHUP reloads the "
        "config file (log level, trust, gossip cadence). Speaks the systemd notify protocol "
        "(Type=notify, watchdog). A state directory ([node] state_dir) is required unless "
        "--ephemeral. Exit status: 0 clean stop, 1 failure, 2 config error.")
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """``peerd run``: load the config, set up logs, serve until stopped; return the exit status."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"peerd: config error: {exc}", file=sys.stderr)
        return 2
    ephemeral = bool(getattr(args, "ephemeral", False))
    if ephemeral:
        config = ephemeral_config(config)
    elif not config.state_dir:
        print(f"peerd: config error: {NO_STATE_DIR}", file=sys.stderr)
        return 2
    json_logs = True if args.json_logs else None
    daemon_json = json_logs if json_logs is not None else _json_setting(config.log_json)
    logs.configure(args.log_level or config.log_level, json=daemon_json)
    if ephemeral:
        get_logger(node=config.node, fed=config.federation).warning(
            "ephemeral_node", node=config.node,
            warning="EPHEMERAL: fresh key and node id, no state directory; "
            "nothing this node learns survives the process")
    try:
        return asyncio.run(serve(config, config_path=args.config, log_level=args.log_level,
                                 json_logs=json_logs))
    except KeyboardInterrupt:  # a SIGINT before the handlers were installed
        return 130


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m peerd.daemon --config FILE``."""
    p = argparse.ArgumentParser(prog="peerd run")
    _add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
