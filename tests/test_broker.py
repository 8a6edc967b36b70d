"""peerd.testing.broker: test brokers start on free ports, stop, die and come back on the same port."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from peerd.errors import ConfigError, TransportError
from peerd.testing.broker import Broker, available_kinds, find_mosquitto, free_port

REPO = Path(__file__).resolve().parents[1]


def accepts(b: Broker) -> bool:
    try:
        with socket.create_connection((b.host, b.port), timeout=0.5):
            return True
    except OSError:
        return False


def test_free_port_is_bindable_and_not_1883() -> None:
    """free_port hands out a loopback port we can bind, never the system broker's."""
    port = free_port()
    assert port != 1883
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_auto_kind_prefers_mosquitto() -> None:
    """kind='auto' picks mosquitto when its binary exists, amqtt otherwise."""
    expected = "mosquitto" if find_mosquitto() else "amqtt"
    assert Broker("auto").kind == expected
    assert available_kinds()[0] == expected


def test_bad_kind_or_options_are_config_errors() -> None:
    """An unknown kind, or mosquitto config lines for amqtt, fail before anything starts."""
    with pytest.raises(ConfigError):
        Broker("rabbitmq")
    with pytest.raises(ConfigError):
        Broker("amqtt", config_lines=["max_keepalive 10"])


def test_lifecycle_stop_kill_restart_same_port(fresh_broker: Callable[..., Broker]) -> None:
    """stop, kill and restart keep the port; restart returns only once the port accepts again."""
    b = fresh_broker()
    port, url = b.port, b.url
    assert b.is_running() and accepts(b) and url == f"mqtt://127.0.0.1:{port}"

    b.kill()
    assert not b.is_running() and not accepts(b)
    b.restart()
    assert b.is_running() and accepts(b) and b.port == port

    b.stop()
    assert not b.is_running() and not accepts(b)
    b.start()
    assert accepts(b)


@pytest.mark.parametrize("kind", available_kinds())
def test_context_manager_cleans_up(kind: str) -> None:
    """Leaving the with-block stops the process and removes its temp directory."""
    with Broker.start_new(kind) as b:
        workdir, pid = b.log_path.parent, b.pid
        assert b.is_running() and workdir.is_dir() and pid is not None
    assert not b.is_running() and not workdir.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_wait_ready_does_not_block_the_loop(fresh_broker: Callable[..., Broker]) -> None:
    """wait_ready returns at once for a running broker and raises TransportError for a dead one."""
    b = fresh_broker()
    await asyncio.wait_for(b.wait_ready(2), 5)
    b.kill()
    with pytest.raises(TransportError):
        await b.wait_ready(0.5)


@pytest.mark.skipif(find_mosquitto() is None, reason="needs the mosquitto binary")
def test_mosquitto_that_dies_at_start_reports_its_log() -> None:
    """A broker that exits during start raises TransportError carrying its log tail."""
    b = Broker("mosquitto", config_lines=["no_such_option 1"])
    try:
        with pytest.raises(TransportError, match="no_such_option"):
            b.start()
        assert not b.is_running()
    finally:
        b.close()


@pytest.mark.skipif(find_mosquitto() is None, reason="needs the mosquitto binary")
def test_mosquitto_config_lines_override_defaults() -> None:
    """Extra config lines are appended and replace our default for the options they set."""
    with Broker("mosquitto", config_lines=["allow_anonymous true", "max_keepalive 60"]) as b:
        conf = (b.log_path.parent / "mosquitto.conf").read_text().splitlines()
    assert conf.count("allow_anonymous true") == 1 and "max_keepalive 60" in conf
    assert f"listener {b.port} 127.0.0.1" in conf and "persistence false" in conf


def test_two_brokers_cannot_share_a_port(fresh_broker: Callable[..., Broker]) -> None:
    """Starting on a port someone already listens on fails fast instead of hanging."""
    b = fresh_broker()
    with pytest.raises(TransportError, match="already taken"):
        Broker(b.kind, port=b.port).start()


@pytest.mark.parametrize("kind", available_kinds())
async def test_command_line_runs_until_sigterm(kind: str) -> None:
    """`python -m peerd.testing.broker --port N --kind K` serves on N and exits 0 on SIGTERM."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                                    os.environ.get("PYTHONPATH")]))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "peerd.testing.broker", "--port", str(port), "--kind", kind,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )
    try:
        ready = f"{kind} broker ready on mqtt://127.0.0.1:{port}".encode()
        while ready not in (line := await asyncio.wait_for(proc.stdout.readline(), 15)):  # type: ignore[union-attr]
            assert line, "broker command exited before it was ready"
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
