"""``PeerdClient``: the local API from Python, with the standard library only.

Applications on a node talk to their daemon through this client so that they
need neither aiohttp nor an event loop::

    from peerd.client import PeerdClient

    peerd = PeerdClient()                      # http://127.0.0.1:8765, or "unix:/run/peerd/api.sock"
    a = peerd.act(state)
    peerd.learn(state, a, reward, next_state=nxt, done=done)   # returns once durable

Errors (defined in ``peerd.errors``, re-exported here)::

    PeerdError
    └── ApiError(status, message)      the server answered 4xx/5xx; ``code`` is its error code
        └── ApiUnreachable             no answer at all (status 0): daemon down, wrong address

Each call opens its own connection (loopback or Unix socket: cheap), so one
client may be shared by threads.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any
from urllib.parse import quote, urlsplit

from peerd.errors import ApiError, ApiUnreachable

__all__ = ["DEFAULT_URL", "ApiError", "ApiUnreachable", "PeerdClient"]

DEFAULT_URL = "http://127.0.0.1:8765"


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket: the host name only fills the ``Host`` header."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _jsonable(obj: Any) -> Any:
    """numpy scalars and arrays as states: what applications most often pass besides JSON types."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"state of type {type(obj).__name__} is not JSON serialisable")


class PeerdClient:
    """Blocking client of one daemon's local API (module docstring)."""

    def __init__(self, url: str = DEFAULT_URL, *, timeout: float = 5.0) -> None:
        self.url = url
        self.timeout = timeout
        if url.startswith("unix:"):
            self._unix: str | None = url[len("unix:"):]
            if not self._unix:
                raise ValueError("unix: URL needs a socket path")
            self._host, self._port = "localhost", 0
        else:
            parts = urlsplit(url)
            if parts.scheme != "http" or not parts.hostname:
                raise ValueError(f"{url!r}: expected http://host:port or unix:/path")
            self._unix = None
            self._host, self._port = parts.hostname, parts.port or 80

    def __repr__(self) -> str:
        return f"PeerdClient({self.url!r})"

    # ----------------------------------------------------------------- API
    def act(self, state: Any, explore: bool = True) -> int:
        """The action index the node's policy chooses for ``state`` on the merged view."""
        return int(self.request("POST", "/v1/act", {"state": state, "explore": explore})["action"])

    def act_details(self, state: Any, explore: bool = True) -> dict[str, Any]:
        """``act`` with the action's name and the state's merged values."""
        return self.request("POST", "/v1/act", {"state": state, "explore": explore})

    def learn(self, state: Any, action: int | str, reward: float, next_state: Any = None,
              done: bool = False, success: bool | None = None) -> int:
        """Report one interaction; returns the node's own version once it is durable."""
        body: dict[str, Any] = {"state": state, "action": action, "reward": reward, "done": done}
        if next_state is not None:
            body["next_state"] = next_state
        if success is not None:
            body["success"] = success
        return int(self.request("POST", "/v1/learn", body)["version"])

    def status(self) -> dict[str, Any]:
        return self.request("GET", "/v1/status")

    def peers(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/v1/peers")["peers"])

    def table(self, state: Any) -> dict[str, Any]:
        """Merged ``values``, ``visits`` and ``own_share`` per action (names in ``actions``)."""
        encoded = json.dumps(state, default=_jsonable, separators=(",", ":"))
        return self.request("GET", "/v1/table?state=" + quote(encoded, safe=""))

    def healthz(self) -> dict[str, Any]:
        """``{"status": "ok", "connected": ...}``; raises ``ApiError`` (503) while not running."""
        return self.request("GET", "/healthz")

    def metrics(self) -> str:
        """The Prometheus text exposition."""
        return self._exchange("GET", "/metrics", None)[1].decode()

    # ------------------------------------------------------------ plumbing
    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One JSON request; the decoded JSON answer, or ``ApiError``."""
        payload = None
        if body is not None:
            payload = json.dumps(body, default=_jsonable, separators=(",", ":")).encode()
        status, raw = self._exchange(method, path, payload)
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError(status, f"answer is not JSON: {raw[:200]!r}") from None

    def _connection(self) -> http.client.HTTPConnection:
        if self._unix is not None:
            return _UnixConnection(self._unix, self.timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

    def _exchange(self, method: str, path: str, payload: bytes | None) -> tuple[int, bytes]:
        conn = self._connection()
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ApiUnreachable(0, f"{method} {self.url}{path}: {exc or type(exc).__name__}") from None
        finally:
            conn.close()
        if response.status >= 400:
            try:
                err = json.loads(raw)
                code, message = str(err.get("error", "")), str(err.get("detail", err))
            except (ValueError, AttributeError):
                code, message = "", raw[:200].decode(errors="replace") or response.reason
            raise ApiError(response.status, message, code=code)
        return response.status, raw
