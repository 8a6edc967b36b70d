"""The local HTTP API of a node: how applications on the same machine act and learn.

This is the only module of peerd that imports aiohttp. It serves, on loopback
TCP or a Unix socket (``[api] listen``), JSON in and JSON out:

=======  ====================  ===========================================================
POST     ``/v1/act``           ``{"state", "explore"?}`` → ``{"action", "action_name", "values"}``
POST     ``/v1/learn``         ``{"state", "action", "reward", "next_state"?, "done"?,
                               "success"?}`` → ``{"version"}``, once the interaction is durable
GET      ``/v1/status``        ``Node.status()`` plus ``store`` statistics
GET      ``/v1/peers``         ``{"peers": Node.peer_table()}``
GET      ``/v1/table``         ``?state=<JSON or plain string>`` → merged values, visits and
                               own share per action
GET      ``/healthz``          200 while the node runs (with the broker ``connected`` flag), 503
GET      ``/metrics``          Prometheus text (``peerd.metrics``)
=======  ====================  ===========================================================

Every error is JSON ``{"error": <stable snake_case code>, "detail": <for humans>}``
with its status: 400 (``malformed_json``, ``missing_field``, ``invalid_field``,
``invalid_state``, ``unknown_action``, ``invalid_reward``), 404 ``not_found``,
405 ``method_not_allowed``, 413 ``body_too_large``, 503 ``store_unavailable`` /
``not_running``, 500 ``internal_error`` — whose detail never carries a
traceback (that goes to the daemon's log as ``api_internal_error``).

States travel as JSON: a tuple becomes a list, which ``peerd.task`` encodes
exactly like the tuple, so an application gets the same key over HTTP as in
process. ``NaN``/``Infinity`` literals are refused, not silently accepted.

There is no authentication: the API must only be reachable by the node's own
applications. A TCP address that is not loopback is served (the operator said
so explicitly in ``[api] listen``) but logged as ``api_not_loopback``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import os
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from peerd.errors import InvalidState, StoreError, UnknownAction
from peerd.logs import get_logger

__all__ = ["ApiServer", "make_app", "parse_listen"]

#: Seconds that in-flight requests get to finish when the server stops.
SHUTDOWN_TIMEOUT = 5.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Problem(Exception):
    """A request that cannot be served: becomes ``{"error": code, "detail": detail}``."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def parse_listen(listen: str) -> tuple[str, str | int]:
    """``"unix:/path"`` → ``("unix", "/path")``; ``"host:port"`` → ``(host, port)``.

    IPv6 hosts may be bracketed (``[::1]:8765``). Raises ``ValueError``.
    """
    if listen.startswith("unix:"):
        path = listen[len("unix:"):]
        if not path:
            raise ValueError("unix: needs a socket path")
        return "unix", path
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{listen!r} is not host:port or unix:/path")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses; names are not resolved (no DNS at start)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=_jsonable, separators=(",", ":"))


def _jsonable(obj: Any) -> Any:
    """numpy scalars/arrays and bytes in status output: the only non-JSON types the node holds."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, bytes):
        return obj.hex()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _error(status: int, code: str, detail: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status, dumps=_dumps,
                             headers=headers)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_json(raw: bytes | str) -> Any:
    return json.loads(raw, parse_constant=_reject_constant)


_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
               413: "body_too_large"}


class _Routes:
    """The handlers, bound to one node (module docstring lists them)."""

    def __init__(self, node: Any, *, max_body: int, registry: Any,
                 running: Callable[[], bool]) -> None:
        self.node = node
        self.max_body = max_body
        self._registry = registry
        self.running = running

    @property
    def log(self) -> Any:
        """Looked up per use, so that a reloaded log level applies (SIGHUP)."""
        return get_logger(node=self.node.id)

    # ------------------------------------------------------------ middleware
    @web.middleware
    async def errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every failure becomes a JSON error; unexpected ones are logged, never echoed."""
        started = time.perf_counter()
        try:
            response = await handler(request)
        except Problem as p:
            response = _error(p.status, p.code, p.detail)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            code = _HTTP_CODES.get(exc.status, (exc.reason or "error").lower().replace(" ", "_"))
            detail = f"{request.method} {request.path}: {exc.reason}"
            response = _error(exc.status, code, detail, headers)
        except Exception as exc:  # a bug: the client learns that, the log learns what
            self.log.exception("api_internal_error", method=request.method, path=request.path,
                               error=type(exc).__name__)
            response = _error(500, "internal_error", "internal error; see the daemon's log")
        self.log.debug("api_request", method=request.method, path=request.path,
                       status=response.status, ms=round((time.perf_counter() - started) * 1e3, 3))
        return response

    # --------------------------------------------------------------- helpers
    async def body(self, request: web.Request) -> dict[str, Any]:
        """The request's JSON object, within ``max_body``."""
        if request.content_length is not None and request.content_length > self.max_body:
            raise Problem(413, "body_too_large",
                          f"body of {request.content_length} bytes exceeds {self.max_body}")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise Problem(413, "body_too_large", f"body exceeds {self.max_body} bytes") from None
        try:
            data = _parse_json(raw)
        except (ValueError, RecursionError) as exc:
            raise Problem(400, "malformed_json", f"body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise Problem(400, "malformed_json", "body must be a JSON object")
        return data

    @staticmethod
    def field(body: dict[str, Any], name: str) -> Any:
        if name not in body:
            raise Problem(400, "missing_field", f"field {name!r} is required")
        return body[name]

    @staticmethod
    def flag(body: dict[str, Any], name: str, default: bool | None) -> bool | None:
        value = body.get(name, default)
        if value is not None and not isinstance(value, bool):
            raise Problem(400, "invalid_field", f"field {name!r} must be true or false")
        if value is None and default is not None:
            raise Problem(400, "invalid_field", f"field {name!r} must be true or false")
        return value

    def reply(self, data: Any, status: int = 200) -> web.Response:
        return web.json_response(data, status=status, dumps=_dumps)

    # -------------------------------------------------------------- handlers
    async def act(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        state = self.field(body, "state")
        explore = self.flag(body, "explore", True)
        try:
            action = self.node.act(state, explore=bool(explore))
            values = self.node.table.values(state)
        except InvalidState as exc:
            raise Problem(400, "invalid_state", str(exc)) from None
        except RecursionError:
            raise Problem(400, "invalid_state", "state is nested too deeply") from None
        return self.reply({"action": int(action), "action_name": self.node.task.actions[action],
                          "values": values.tolist()})

    async def learn(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        state = self.field(body, "state")
        action = self.field(body, "action")
        reward = self.field(body, "reward")
        if isinstance(action, bool) or not isinstance(action, (int, str)):
            raise Problem(400, "invalid_field", "field 'action' must be an index or a name")
        if isinstance(reward, bool) or not isinstance(reward, (int, float)):
            raise Problem(400, "invalid_field", "field 'reward' must be a number")
        try:
            reward = float(reward)
        except OverflowError:
            reward = math.inf
        if not math.isfinite(reward):
            raise Problem(400, "invalid_reward", "reward must be a finite number")
        next_state = body.get("next_state")
        done = self.flag(body, "done", False)
        success = self.flag(body, "success", None)
        try:
            version = await self.node.learn(state, action, reward, next_state, bool(done), success)
        except UnknownAction as exc:
            raise Problem(400, "unknown_action", str(exc)) from None
        except InvalidState as exc:
            raise Problem(400, "invalid_state", str(exc)) from None
        except RecursionError:
            raise Problem(400, "invalid_state", "state is nested too deeply") from None
        except ValueError as exc:  # the TD target exceeds q_bound
            raise Problem(400, "invalid_reward", str(exc)) from None
        except StoreError as exc:
            raise Problem(503, "store_unavailable", str(exc)) from None
        return self.reply({"version": int(version)})

    async def status(self, request: web.Request) -> web.Response:
        out = dict(self.node.status())
        store = self.node.store
        if store is None:
            out["store"] = None
        else:
            try:
                out["store"] = await store.stats()
            except StoreError as exc:  # closing, or the disk failed: status must still answer
                out["store"] = {"error": str(exc)}
        out["running"] = self.running()
        return self.reply(out)

    async def peers(self, request: web.Request) -> web.Response:
        return self.reply({"peers": self.node.peer_table()})

    async def table(self, request: web.Request) -> web.Response:
        raw = request.query.get("state")
        if raw is None:
            raise Problem(400, "missing_field", "query parameter 'state' is required")
        try:
            state = _parse_json(raw)
        except (ValueError, RecursionError):
            state = raw  # a plain string: ?state=idle means the state "idle"
        table = self.node.table
        try:
            values, visits, share = table.values(state), table.visits(state), table.own_share(state)
        except InvalidState as exc:
            raise Problem(400, "invalid_state", str(exc)) from None
        except RecursionError:
            raise Problem(400, "invalid_state", "state is nested too deeply") from None
        return self.reply({"state": state, "actions": list(self.node.task.actions),
                          "values": values.tolist(), "visits": visits.tolist(),
                          "own_share": share.tolist()})

    async def healthz(self, request: web.Request) -> web.Response:
        transport = self.node.transport
        connected = bool(transport is not None and transport.connected)
        if not self.running():
            return self.reply({"error": "not_running", "detail": "the node is starting or stopping",
                              "status": "not_running", "connected": connected}, status=503)
        return self.reply({"status": "ok", "node": self.node.id, "connected": connected,
                          "version": int(self.node.table.version)})

    async def metrics(self, request: web.Request) -> web.Response:
        from peerd import metrics  # prometheus-client loads on the first scrape, not in every daemon

        if self._registry is None:
            self._registry = metrics.make_registry(self.node, process=True)
        return web.Response(body=metrics.render(self._registry),
                            headers={"Content-Type": metrics.CONTENT_TYPE})


def make_app(node: Any, *, max_body: int | None = None, registry: Any = None,
             running: Callable[[], bool] | None = None) -> web.Application:
    """The aiohttp application of a node's API (``ApiServer`` binds and runs it).

    ``registry``: the node's Prometheus registry (default: a fresh one with the
    process collectors, made on the first scrape). ``running``: whether the node runs, for ``/healthz``
    (default: always).
    """
    limit = int(max_body if max_body is not None else node.config.api_max_body)
    routes = _Routes(node, max_body=limit,
                     registry=registry,
                     running=running or (lambda: True))
    # client_max_size also covers chunked bodies, which carry no Content-Length
    app = web.Application(middlewares=[routes.errors], client_max_size=limit)
    app.router.add_post("/v1/act", routes.act)
    app.router.add_post("/v1/learn", routes.learn)
    app.router.add_get("/v1/status", routes.status, allow_head=False)
    app.router.add_get("/v1/peers", routes.peers, allow_head=False)
    app.router.add_get("/v1/table", routes.table, allow_head=False)
    app.router.add_get("/healthz", routes.healthz)
    app.router.add_get("/metrics", routes.metrics)
    return app


class ApiServer:
    """Binds a node's API to ``[api] listen`` (loopback TCP or a Unix socket) and runs it.

    ``start()`` returns once the socket listens; ``stop()`` stops accepting,
    gives in-flight requests ``SHUTDOWN_TIMEOUT`` seconds (a ``learn`` waiting
    for its commit finishes before the node closes the store), and removes
    the Unix socket file.
    """

    def __init__(self, node: Any, *, listen: str | None = None, max_body: int | None = None,
                 registry: Any = None, running: Callable[[], bool] | None = None) -> None:
        self.node = node
        self.listen = node.config.api_listen if listen is None else listen
        self.app = make_app(node, max_body=max_body, registry=registry, running=running)
        self._runner: web.AppRunner | None = None
        self._unix_path: Path | None = None

    @property
    def _log(self) -> Any:
        return get_logger(node=self.node.id)

    @property
    def addresses(self) -> list[str]:
        """Where the API listens, as ``host:port`` or ``unix:/path`` (after ``start``)."""
        if self._unix_path is not None:
            return [f"unix:{self._unix_path}"]
        out = []
        for addr in self._runner.addresses if self._runner else []:
            host, port = addr[0], addr[1]
            out.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        return out

    @property
    def url(self) -> str:
        """A URL that ``peerd.client.PeerdClient`` accepts."""
        first = self.addresses[0]
        return first if first.startswith("unix:") else f"http://{first}"

    async def start(self) -> None:
        host, where = parse_listen(self.listen)
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                               shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            site: web.BaseSite
            if host == "unix":
                path = Path(str(where))
                _remove_stale_socket(path)
                site = web.UnixSite(runner, path)
                await site.start()
                self._unix_path = path
                os.chmod(path, 0o660)  # owner and group: the node's applications
            else:
                if not is_loopback(host):
                    self._log.warning("api_not_loopback", host=host,
                                      hint="the API has no authentication: expose it only "
                                           "to the node's own applications")
                site = web.TCPSite(runner, host, int(where), reuse_address=True)
                await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._log.info("api_listening", addresses=self.addresses)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        await runner.cleanup()
        if self._unix_path is not None:
            _remove_stale_socket(self._unix_path)
        self._log.info("api_stopped")


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket file left by a killed daemon; refuse to touch anything else."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
