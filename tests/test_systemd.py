"""The systemd notify protocol against real AF_UNIX datagram sockets, `peerd run` under a fake
service manager, and the unit file."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_daemon import REPO, DaemonProcess, new_federation, write_config

from peerd import systemd

UNIT = REPO / "config" / "peerd.service"


class FakeManager:
    """The service manager's end of $NOTIFY_SOCKET: collects the KEY=value lines received."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.lines: list[str] = []

    def expect(self, line: str, timeout: float = 15.0) -> list[str]:
        """Receive until ``line`` arrives (or fail after ``timeout``); return all lines so far."""
        deadline = time.monotonic() + timeout
        while line not in self.lines:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{line!r} not received within {timeout}s: {self.lines}")
            self.sock.settimeout(left)
            try:
                self.lines += self.sock.recv(4096).decode().splitlines()
            except TimeoutError:
                continue
        return self.lines

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[FakeManager, str]]:
    """A notify socket on the file system: (manager, value of NOTIFY_SOCKET)."""
    path = str(tmp_path / "notify")
    m = FakeManager(path)
    yield m, path
    m.close()


def test_notify_sends_each_state_as_a_datagram(manager: tuple[FakeManager, str]) -> None:
    """READY=1, WATCHDOG=1 and STOPPING=1 arrive on the socket named by NOTIFY_SOCKET."""
    m, path = manager
    env = {"NOTIFY_SOCKET": path}
    for state in ("READY=1", "WATCHDOG=1", "STOPPING=1"):
        assert systemd.notify(state, env=env)
        m.expect(state)
    assert m.lines == ["READY=1", "WATCHDOG=1", "STOPPING=1"]


def test_notify_reaches_an_abstract_socket() -> None:
    """A NOTIFY_SOCKET starting with @ names a socket in the abstract namespace."""
    name = f"peerd-test-{uuid.uuid4().hex}"
    m = FakeManager("\0" + name)
    try:
        assert systemd.notify("READY=1\nSTATUS=ok", env={"NOTIFY_SOCKET": "@" + name})
        assert m.expect("STATUS=ok") == ["READY=1", "STATUS=ok"]
    finally:
        m.close()


def test_notify_without_a_manager_is_a_no_op(tmp_path: Path) -> None:
    """No NOTIFY_SOCKET, an unusable one or a vanished socket: notify returns False, never raises."""
    assert systemd.notify("READY=1", env={}) is False
    assert systemd.notify("READY=1", env={"NOTIFY_SOCKET": "relative/path"}) is False
    assert systemd.notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False


def test_watchdog_interval_is_half_the_timeout_for_this_process() -> None:
    """WATCHDOG_USEC gives pings at half the timeout; off when unset, invalid or for another PID."""
    assert systemd.watchdog_interval(env={"WATCHDOG_USEC": "1000000"}) == 0.5
    assert systemd.watchdog_interval(env={"WATCHDOG_USEC": "30000000",
                                          "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert systemd.watchdog_interval(env={"WATCHDOG_USEC": "1000000",
                                          "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    for bad in ({}, {"WATCHDOG_USEC": ""}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "soon"}):
        assert systemd.watchdog_interval(env=bad) is None


def test_peerd_run_speaks_the_notify_protocol(tmp_path: Path,
                                              manager: tuple[FakeManager, str]) -> None:
    """`peerd run` under NOTIFY_SOCKET and WATCHDOG_USEC=1s: READY=1, WATCHDOG=1 pings, STATUS lines,
    then SIGTERM → STOPPING=1 and exit status 0."""
    m, path = manager
    d = DaemonProcess(write_config(tmp_path, "sd", fed=new_federation()),
                      env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    try:
        lines = m.expect("READY=1")
        d.client.healthz()  # READY means the API answers
        assert not any(line.startswith("WATCHDOG") for line in lines[:lines.index("READY=1")])
        m.lines.clear()
        m.expect("WATCHDOG=1")
        m.lines.remove("WATCHDOG=1")
        m.expect("WATCHDOG=1", timeout=3.0)  # every 0.5 s, not once
        assert any(line.startswith("STATUS=running; version 0") for line in m.lines)
        d.proc.send_signal(signal.SIGTERM)
        m.expect("STOPPING=1")
        assert d.proc.wait(20) == 0
    finally:
        d.close()


def test_unit_file_has_the_service_contract() -> None:
    """config/peerd.service is Type=notify with watchdog, state directory and the hardening asked for."""
    text = UNIT.read_text()
    settings = set(re.findall(r"(?m)^([A-Za-z]+=.*)$", text))
    for required in (
        "Type=notify", "ExecStart=/usr/local/bin/peerd run --config /etc/peerd/peerd.toml",
        "WatchdogSec=30", "Restart=on-failure", "StateDirectory=peerd", "DynamicUser=yes",
        "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "CapabilityBoundingSet=",
        "SystemCallFilter=@system-service", "MemoryDenyWriteExecute=yes", "TimeoutStopSec=20",
        "KillSignal=SIGTERM", "RestartPreventExitStatus=2",
    ):
        assert required in settings, required


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd-analyze verify accepts the unit (ExecStart pointed at an existing binary)."""
    unit = tmp_path / "peerd.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/peerd", sys.executable))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if "peerd.service" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr
