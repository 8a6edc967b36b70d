"""Operator tools: ``keygen``, and ``status``/``peers``/``table`` from the API or a stopped node's state."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import pytest

from peerd import tools_cmd
from peerd.config import NodeConfig
from peerd.identity import Identity
from peerd.node import Node
from peerd.testing.broker import free_port
from peerd.testing.memory import MemoryBus

ACTIONS = ["up", "down", "wait"]


def _dead_api() -> str:
    """An API URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


def _config(node_id: str, state_dir: Path | None = None, api_listen: str = "") -> NodeConfig:
    return NodeConfig(federation="tools", node_id=node_id, actions=ACTIONS, secret="s",
                      state_dir=str(state_dir) if state_dir else "", api_listen=api_listen,
                      heartbeat_interval=0.3)


# ---------------------------------------------------------------- keygen

def test_keygen_creates_a_private_key_file_and_prints_its_public_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """keygen writes a 0600 key file and prints exactly its 64-hex-digit public key."""
    path = tmp_path / "keys" / "node.key"
    assert tools_cmd.main(["keygen", "--out", str(path)]) == 0
    printed = capsys.readouterr().out.strip()
    assert len(printed) == 64 and int(printed, 16) >= 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Identity.load_or_create(path).public_key.hex() == printed


def test_keygen_refuses_to_overwrite_unless_forced(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """An existing key is never replaced silently: exit 1 and the file unchanged; --force replaces."""
    path = tmp_path / "node.key"
    assert tools_cmd.main(["keygen", "--out", str(path)]) == 0
    first = capsys.readouterr().out.strip()
    before = path.read_bytes()

    assert tools_cmd.main(["keygen", "--out", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "already exists" in captured.err and "--force" in captured.err and first in captured.err
    assert path.read_bytes() == before

    assert tools_cmd.main(["keygen", "--out", str(path), "--force"]) == 0
    second = capsys.readouterr().out.strip()
    assert second != first and Identity.load_or_create(path).public_key.hex() == second
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# ---------------------------------------------------------------- a stopped node's state

@pytest.fixture
async def stopped_state(tmp_path: Path) -> Path:
    """State dir of node "alpha" after it learned 5 interactions and merged "beta"'s 3, then stopped."""
    bus = MemoryBus()
    alpha = Node(_config("alpha", tmp_path / "alpha"), transport_factory=bus.transport)
    beta = Node(_config("beta", tmp_path / "beta"), transport_factory=bus.transport)
    await alpha.start()
    await beta.start()
    for i in range(5):
        await alpha.learn(f"a{i % 3}", i % 3, 1.0)
    for i in range(3):
        await beta.learn(f"b{i}", 0, 0.5)
    await beta.flush()
    async with asyncio.timeout(10):
        while alpha.table.max_version("beta") < 3:
            alpha.applied_event.clear()
            await alpha.applied_event.wait()
    await alpha.stop()
    await beta.stop()
    return tmp_path / "alpha"


def _files(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir()}


def test_status_reads_a_stopped_nodes_state_read_only(stopped_state: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """With the daemon down, status --state-dir shows node id, version and cells per origin,
    and leaves the state directory exactly as it was."""
    before = _files(stopped_state)
    code = tools_cmd.main(["status", "--api", _dead_api(), "--state-dir", str(stopped_state),
                           "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "cannot reach" in captured.err and "reading the state" in captured.err
    status = json.loads(captured.out)
    assert status["source"] == "state_dir"
    assert status["node"] == "alpha" and status["federation"] == "tools"
    assert status["version"] == 5
    origins = {o["origin"]: o for o in status["origins"]}
    assert origins["alpha"]["cells"] == 3 and origins["alpha"]["version"] == 5
    assert origins["alpha"]["visits"] == 5
    assert origins["beta"]["cells"] == 3 and origins["beta"]["version"] == 3
    assert status["cells"] == 6
    key = Identity.load_or_create(stopped_state / "node.key").public_key.hex()
    assert status["public_key"] == key
    assert _files(stopped_state) == before  # nothing created, nothing written

    assert tools_cmd.main(["status", "--api", _dead_api(), "--state-dir", str(stopped_state)]) == 0
    table = capsys.readouterr().out
    assert "alpha" in table and "beta" in table and "cells per origin" in table


def test_peers_reads_a_stopped_nodes_peers(stopped_state: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """peers --state-dir lists the peers the node stored, with trust and epoch."""
    assert tools_cmd.main(["peers", "--api", _dead_api(), "--state-dir", str(stopped_state),
                           "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["node"] == "alpha"
    (beta,) = data["peers"]
    assert beta["node"] == "beta" and beta["epoch"] == 1 and beta["trust"] == pytest.approx(1.0)
    assert beta["known_version"] == 3 and len(beta["public_key"]) == 64

    assert tools_cmd.main(["peers", "--api", _dead_api(), "--state-dir", str(stopped_state)]) == 0
    assert "beta" in capsys.readouterr().out


def test_config_with_api_off_goes_straight_to_the_state_dir(
        stopped_state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--config: an empty [api] listen means no API to try; its state_dir is read directly."""
    conf = tmp_path / "peerd.toml"
    conf.write_text(f'[node]\nfederation = "tools"\nid = "alpha"\nstate_dir = "{stopped_state}"\n'
                    f'[task]\nactions = {json.dumps(ACTIONS)}\n[api]\nlisten = ""\n')
    assert tools_cmd.main(["status", "--config", str(conf), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["node"] == "alpha"
    assert "cannot reach" not in captured.err


# ---------------------------------------------------------------- errors

def test_unreachable_api_without_state_dir_is_exit_1_with_a_hint(
        capsys: pytest.CaptureFixture[str]) -> None:
    """No daemon and no state dir: exit 1, naming the URL, the reason and --state-dir."""
    url = _dead_api()
    for tool in ("status", "peers"):
        assert tools_cmd.main([tool, "--api", url]) == 1
        err = capsys.readouterr().err
        assert f"peerd {tool}: cannot reach {url}: connection refused" in err
        assert "--state-dir" in err
    assert tools_cmd.main(["table", "s", "--api", url]) == 1
    assert f"cannot reach {url}" in capsys.readouterr().err


def test_missing_state_and_bad_config_are_reported(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A state dir without peerd.db is exit 1; an invalid config file is a usage error (2)."""
    assert tools_cmd.main(["status", "--api", _dead_api(), "--state-dir", str(tmp_path)]) == 1
    assert "peerd.db not found" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[node]\nnope = 1\n")
    assert tools_cmd.main(["status", "--config", str(bad)]) == 2
    assert "unknown setting" in capsys.readouterr().err
    assert tools_cmd.main(["status", "--api", "ftp://x"]) == 2


# ---------------------------------------------------------------- a running node

async def test_status_peers_and_table_ask_the_running_daemon(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With the API up, the tools report the live node: status, peers and a state's row."""
    from peerd.api import ApiServer

    node = Node(_config("live", api_listen=f"127.0.0.1:{free_port()}"))
    await node.start()
    api = ApiServer(node)
    await api.start()
    try:
        for _ in range(4):
            await node.learn(["room", 2], "down", 1.0)
        run = tools_cmd.main  # blocking HTTP: off the event loop that serves it
        assert await asyncio.to_thread(run, ["status", "--api", api.url, "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["source"] == "api" and status["node"] == "live" and status["version"] == 4
        assert await asyncio.to_thread(run, ["peers", "--api", api.url, "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == {"source": "api", "peers": []}
        assert await asyncio.to_thread(run, ["table", '["room", 2]', "--api", api.url,
                                             "--json"]) == 0
        row = json.loads(capsys.readouterr().out)
        assert row["actions"] == ACTIONS and row["visits"] == [0, 4, 0]
        assert row["own_share"][1] == pytest.approx(1.0)
        assert await asyncio.to_thread(run, ["table", '["room", 2]', "--api", api.url]) == 0
        assert "down" in capsys.readouterr().out
    finally:
        await api.stop()
        await node.stop()


def test_api_url_from_listen() -> None:
    """A wildcard [api] listen is reached on loopback; unix sockets pass through."""
    assert tools_cmd.api_url("127.0.0.1:8765") == "http://127.0.0.1:8765"
    assert tools_cmd.api_url("0.0.0.0:9000") == "http://127.0.0.1:9000"
    assert tools_cmd.api_url("[::1]:9000") == "http://[::1]:9000"
    assert tools_cmd.api_url("unix:/run/peerd/api.sock") == "unix:/run/peerd/api.sock"
