"""``peerd run`` as a process: config errors, the in-process ``serve``, SIGTERM's retained death,
SIGHUP's reload, and the example config that documents every setting.

The helpers here (``write_config``, ``DaemonProcess``, ``wait_until``) are also
used by ``test_api.py`` and ``test_systemd.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from peerd import daemon, wire
from peerd.client import ApiError, ApiUnreachable, PeerdClient
from peerd.config import describe_settings, load_config
from peerd.task import Task
from peerd.testing.broker import Broker, free_port
from peerd.transport import MqttTransport

if TYPE_CHECKING:
    from conftest import Recorder

REPO = Path(__file__).resolve().parents[1]
ACTIONS = ["a", "b", "c"]
#: Settings the example config deliberately sets to something else than the default.
EXAMPLE_VALUES = {("node", "state_dir"), ("task", "actions"), ("broker", "url")}


# -- helpers shared with test_api.py and test_systemd.py -----------------------------------------


def new_federation() -> str:
    """A federation no other test uses: the session broker keeps retained presence."""
    return f"t{uuid.uuid4().hex[:10]}"


def write_config(tmp_path: Path, node_id: str, *, fed: str, broker: Broker | None = None,
                 listen: str | None = None, level: str = "info", **sections: dict[str, Any]) -> Path:
    """A TOML config for one daemon with fast gossip; ``sections`` add or override keys."""
    body: dict[str, dict[str, Any]] = {
        "node": {"federation": fed, "id": node_id, "secret": "s",
                 "state_dir": str(tmp_path / node_id)},
        "task": {"actions": ACTIONS},
        "broker": {"url": broker.url if broker else ""},
        "gossip": {"heartbeat_interval": 0.3, "publish_every": 5, "publish_interval": 0.2,
                   "sync_interval": 0.2},
        "api": {"listen": listen if listen is not None else f"127.0.0.1:{free_port()}"},
        "log": {"level": level, "json": "true"},
    }
    for section, values in sections.items():
        body.setdefault(section, {}).update(values)
    path = tmp_path / f"{node_id}.toml"
    path.write_text(_toml(body))
    return path


def _toml(body: dict[str, dict[str, Any]]) -> str:
    lines = []
    for section, values in body.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def run_command(config: Path) -> list[str]:
    """``peerd run`` through the console script once the CLI has it, else the module."""
    from peerd.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    exe = shutil.which("peerd")
    if exe and "run" in sub.choices:
        return [exe, "run", "--config", str(config)]
    return [sys.executable, "-m", "peerd.daemon", "--config", str(config)]


def wait_until(pred: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    """Poll ``pred`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.02)


class DaemonProcess:
    """A ``peerd run`` subprocess with its log in a file and a client for its API."""

    def __init__(self, config: Path, *, env: dict[str, str] | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.config = config
        cfg = load_config(config, env={})
        self.node_id = cfg.node
        self.client = PeerdClient(_url(cfg.api_listen), timeout=5.0)
        self.log_path = config.with_suffix(".log")
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen([*run_command(config), *extra_args], stdout=subprocess.DEVNULL,
                                     stderr=self._log, env={**os.environ, **(env or {})})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far."""
        out = []
        for line in self.log().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def wait_ready(self, timeout: float = 20.0, connected: bool = False) -> dict[str, Any]:
        """Poll ``/healthz`` until it answers 200 (and the broker is connected, if asked)."""

        def healthy() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"peerd exited with {self.proc.returncode}:\n{self.log()}")
            try:
                health = self.client.healthz()
                if self.client.status()["pid"] != self.proc.pid:
                    return None  # another session's daemon holds the port: ours will exit
            except ApiError:
                return None
            return health if health["connected"] or not connected else None

        return wait_until(healthy, timeout, f"{self.node_id} ready; log:\n{self.log()[-3000:]}")

    def wait_event(self, event: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        """The first JSON log line with ``event`` and ``fields``, once written."""

        def find() -> dict[str, Any] | None:
            return next((e for e in self.events() if e.get("event") == event
                         and all(e.get(k) == v for k, v in fields.items())), None)

        return wait_until(find, timeout, f"log event {event} {fields}; log:\n{self.log()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def _url(listen: str) -> str:
    return listen if listen.startswith("unix:") else f"http://{listen}"


@pytest.fixture
def daemons() -> Any:
    """Factory of ``DaemonProcess``es; each is killed after the test if still running."""
    made: list[DaemonProcess] = []

    def start(config: Path, **kw: Any) -> DaemonProcess:
        d = DaemonProcess(config, **kw)
        made.append(d)
        return d

    yield start
    for d in made:
        d.close()


# -- the example configuration --------------------------------------------------------------------


def test_example_config_documents_every_setting_with_its_default() -> None:
    """config/peerd.example.toml loads, sets every key of describe_settings, and at its default."""
    path = REPO / "config" / "peerd.example.toml"
    data = tomllib.loads(path.read_text())
    load_config(path, env={})
    for s in describe_settings():
        section = data.get(s["section"], {})
        assert s["key"] in section, f"[{s['section']}] {s['key']} missing from the example"
        if (s["section"], s["key"]) not in EXAMPLE_VALUES:
            assert section[s["key"]] == s["default"], f"[{s['section']}] {s['key']}"
    documented = {(s["section"], s["key"]) for s in describe_settings()}
    extra = {(sec, k) for sec, table in data.items() for k in table} - documented
    assert not extra, f"the example sets unknown keys {extra}"


# -- configuration errors ------------------------------------------------------------------------


def test_config_error_exits_2_with_the_message(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A bad config file makes `peerd run` print `peerd: config error: ...` and exit 2."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[task]\nactions = ["a"]\n[gossip]\npublish_evry = 3\n')
    args = argparse.Namespace(config=str(bad), log_level=None, json_logs=None)
    assert daemon.run(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("peerd: config error: [gossip] publish_evry: unknown setting")
    args.config = str(tmp_path / "missing.toml")
    assert daemon.run(args) == 2
    assert "does not exist" in capsys.readouterr().err


def test_run_without_a_state_dir_refuses_to_start(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """No [node] state_dir → one line naming the key, PEERD_NODE_STATE_DIR, the unit's
    StateDirectory and --ephemeral; exit 2 before anything is created."""
    config = write_config(tmp_path, "nostate", fed=new_federation(), node={"state_dir": ""})
    args = argparse.Namespace(config=str(config), log_level=None, json_logs=None, ephemeral=False)
    assert daemon.run(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    for needle in ("state_dir", "PEERD_NODE_STATE_DIR", "StateDirectory", "--ephemeral"):
        assert needle in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nostate.toml"]


def test_ephemeral_config_is_a_fresh_id_without_state() -> None:
    """--ephemeral: the configured id plus random hex (a new one each time), no state dir,
    and the id stays a valid wire id even when the configured one is at the length limit."""
    base = load_config(None, env={}, node_id="edge", actions=ACTIONS, state_dir="/var/lib/peerd")
    first, second = daemon.ephemeral_config(base), daemon.ephemeral_config(base)
    assert first.state_dir == "" and first.node.startswith("edge-")
    assert first.node != second.node
    long = daemon.ephemeral_config(base.replace(node_id="x" * wire.MAX_ID_LEN))
    assert wire.is_safe_id(long.node) and long.node != base.node


def test_ephemeral_daemon_runs_without_state_and_says_so(tmp_path: Path, daemons: Any) -> None:
    """`peerd run --ephemeral` starts without a state dir under `<id>-<hex>`, logs
    ephemeral_node as a warning, writes no state, and stops cleanly."""
    config = write_config(tmp_path, "temp", fed=new_federation(), node={"state_dir": ""})
    d = daemons(config, extra_args=("--ephemeral",))
    d.wait_ready()
    node_id = d.client.healthz()["node"]
    assert node_id.startswith("temp-") and len(node_id) == len("temp-") + 8
    event = d.wait_event("ephemeral_node")
    assert event["level"] == "warning" and event["node"] == node_id
    assert d.stop() == 0
    assert not (tmp_path / "temp").exists()


# -- in process ---------------------------------------------------------------------------------


async def test_serve_in_process_on_a_unix_socket(tmp_path: Path) -> None:
    """serve() sets `ready` once the API answers, stops on its trigger with 0, removes the socket."""
    sock = tmp_path / "api.sock"
    cfg = load_config(write_config(tmp_path, "u", fed=new_federation(), listen=f"unix:{sock}"),
                      env={})
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(daemon.serve(cfg, shutdown_trigger=stop.wait, ready=ready))
    await asyncio.wait_for(ready.wait(), 10)
    client = PeerdClient(f"unix:{sock}")
    health = await asyncio.to_thread(client.healthz)
    assert health["status"] == "ok" and health["node"] == "u"
    version = await asyncio.to_thread(client.learn, "s", "b", 1.0, done=True)
    assert version == 1
    stop.set()
    assert await asyncio.wait_for(task, 20) == 0
    assert not sock.exists()
    with pytest.raises(ApiUnreachable):
        client.healthz()


async def test_api_port_in_use_fails_with_status_1(tmp_path: Path) -> None:
    """When the API cannot bind, serve() shuts the node down cleanly and returns 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = load_config(write_config(tmp_path, "p", fed=new_federation(),
                                       listen=f"127.0.0.1:{port}"), env={})
        assert await asyncio.wait_for(daemon.serve(cfg, shutdown_trigger=asyncio.Event().wait),
                                      20) == 1
    # the store was closed: a second daemon can open the same state directory
    again = cfg.replace(api_listen="")
    assert await asyncio.wait_for(daemon.serve(again, shutdown_trigger=_at_once), 20) == 0


async def _at_once() -> None:
    return None


async def test_config_error_found_at_start_exits_2(tmp_path: Path) -> None:
    """A setting that only fails when used (an unreadable password_file) still means status 2."""
    cfg = load_config(write_config(tmp_path, "pw", fed=new_federation()), env={},
                      broker_url="mqtt://127.0.0.1:1", password_file=str(tmp_path / "nope"))
    assert await asyncio.wait_for(daemon.serve(cfg, shutdown_trigger=asyncio.Event().wait),
                                  20) == 2


# -- signals -------------------------------------------------------------------------------------


async def test_sigterm_exits_0_and_leaves_the_death_retained(
        broker: Broker, tmp_path: Path, daemons: Any, recorder: type[Recorder],
        run_transport: Any) -> None:
    """SIGTERM → exit 0, and the node's death (its current epoch) stays retained on its presence topic."""
    fed = new_federation()
    d = daemons(write_config(tmp_path, "dying", fed=fed, broker=broker))
    await asyncio.to_thread(d.wait_ready, connected=True)
    epoch = (await asyncio.to_thread(d.client.status))["epoch"]
    assert await asyncio.to_thread(d.stop) == 0
    assert d.events()[-1]["event"] == "daemon_stopped"

    topic = wire.topic(fed, "presence", "dying")
    rec = recorder()
    watcher = MqttTransport(broker.url, client_id=f"watch-{fed}", subscriptions=[(topic, 1)])
    run_transport(watcher, rec)
    await rec.wait_for(lambda r: bool(r.payloads(topic)), timeout=10)
    _, payload, retained = rec.messages[-1]
    msg = wire.decode(payload, fed=fed, fingerprint=Task(ACTIONS).fingerprint,
                      n_actions=len(ACTIONS))
    assert retained and isinstance(msg, wire.Death)
    assert msg.header.epoch == epoch
    await watcher.disconnect()


def test_sighup_reloads_the_log_level_and_keeps_running(tmp_path: Path, daemons: Any) -> None:
    """SIGHUP applies a new log level at once, reports restart-only keys, survives a broken file."""
    config = write_config(tmp_path, "hup", fed=new_federation(), level="info")
    d = daemons(config)
    d.wait_ready()
    d.client.status()
    assert not any(e["event"] == "api_request" for e in d.events())  # debug: filtered

    text = config.read_text()
    config.write_text(text.replace('level = "info"', 'level = "debug"')
                      .replace('actions = ["a", "b", "c"]', 'actions = ["a", "b", "c", "d"]'))
    d.proc.send_signal(signal.SIGHUP)
    reloaded = d.wait_event("config_reloaded")
    assert reloaded["applied"] == ["log_level"] and reloaded["log_level"] == "debug"
    assert d.wait_event("config_restart_required")["keys"] == ["actions"]
    d.client.status()
    d.wait_event("api_request", path="/v1/status")  # the long-lived API logger obeys

    config.write_text("[task\n")
    d.proc.send_signal(signal.SIGHUP)
    assert "not valid TOML" in d.wait_event("config_reload_failed")["error"]
    assert d.client.healthz()["status"] == "ok"
    assert d.stop() == 0
