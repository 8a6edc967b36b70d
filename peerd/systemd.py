"""The two pieces of the systemd service protocol peerd speaks, in the standard library only.

- ``notify(state)``: one ``sd_notify(3)`` datagram (``READY=1``, ``WATCHDOG=1``,
  ``STATUS=...``, ``STOPPING=1``, ``RELOADING=1``) to ``$NOTIFY_SOCKET``. A
  leading ``@`` names a Linux abstract socket. Without the variable (not under
  systemd, or ``Type=simple``) it does nothing and returns ``False``, so the
  daemon calls it unconditionally.
- ``watchdog_interval()``: how often to send ``WATCHDOG=1`` — half of
  ``$WATCHDOG_USEC`` as ``sd_watchdog_enabled(3)`` recommends, or ``None`` when
  the watchdog is off or meant for another process (``$WATCHDOG_PID``).

Why not a library: the protocol is one ``sendto`` on a datagram socket, and a
dependency for it would be one more thing to audit on every edge node.
Failures never raise: a daemon must not die because its supervisor's socket
went away; ``notify`` returns ``False`` instead.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

__all__ = ["monotonic_usec", "notify", "watchdog_interval"]


def _address(raw: str) -> str | None:
    """``$NOTIFY_SOCKET`` as an ``AF_UNIX`` address: ``@name`` → abstract ``\\0name``."""
    if raw.startswith("@"):
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    return None  # systemd also allows vsock: addresses; peerd's units never set one


def notify(state: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (one or more ``KEY=value`` lines) to systemd; ``True`` if it was sent."""
    env = os.environ if env is None else env
    raw = env.get("NOTIFY_SOCKET", "")
    address = _address(raw) if raw else None
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError:
        return False
    return True


def watchdog_interval(*, env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half the watchdog timeout), or ``None`` if off.

    ``$WATCHDOG_PID``, when set, names the process the watchdog is for: a child
    that inherited the environment must not ping on its parent's behalf.
    """
    env = os.environ if env is None else env
    raw = env.get("WATCHDOG_USEC", "")
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 2e6


def monotonic_usec() -> int:
    """``CLOCK_MONOTONIC`` in microseconds: the ``MONOTONIC_USEC=`` of a ``RELOADING=1`` message."""
    return time.monotonic_ns() // 1000
