"""Operator tools: ``peerd status``, ``peerd peers``, ``peerd table STATE``, ``peerd keygen``.

``status``, ``peers`` and ``table`` ask the running daemon through its local
API (``peerd.client.PeerdClient``). ``status`` and ``peers`` can also answer
for a node that is stopped, or whose API is off: when the API cannot be
reached and a state directory is known (``--state-dir``, or ``[node]
state_dir`` of ``--config``), they read what the node left on disk.

Why that path uses the stdlib ``sqlite3`` and not ``peerd.store.Store`` (the
owner of aiosqlite): ``Store.open`` is a writer by design -- it sets WAL
journaling, runs migrations and records the node's identity in one write
transaction, and starts a writer task -- and it must be told the node id and
fingerprint it is opening, which are exactly what we want to read. A
diagnostic must change nothing, so this module opens the database with a
read-only URI (``mode=ro``), a different library used read-only. One more
care: a read-only connection to a WAL database whose ``-wal``/``-shm`` files
do not exist creates them, owned by whoever runs the tool (often root), which
would lock the daemon's own user out of them. After a clean stop there is no
``-wal`` file and the main file holds everything, so then we open it
``immutable=1``, which creates nothing; when a ``-wal`` exists (the node runs,
or crashed) it is read through it with plain ``mode=ro``. (A daemon starting
in the very moment of an immutable read can make it fail or look odd: run the
tool again.)

``table`` needs the daemon: turning a state into its key takes the
federation secret, and the merged view is computed by the running node.

``keygen`` creates a node key file (0600) with ``Identity.load_or_create``
and prints its public key hex, for ``[security] allowlist`` entries.

Exit status: 0 success, 1 the daemon or the state cannot be read (or keygen
refused to overwrite), 2 usage or configuration errors.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from peerd.errors import ConfigError, PeerdError, ToolError

__all__ = ["COMMANDS", "DEFAULT_API", "ToolError", "add_parser", "api_url", "main", "read_state"]

DEFAULT_API = "http://127.0.0.1:8765"
COMMANDS = ("status", "peers", "table", "keygen")
DB_NAME = "peerd.db"
KEY_NAME = "node.key"
#: Trust events shown by ``status`` from a state directory.
TRUST_EVENTS_SHOWN = 10


# ---------------------------------------------------------------- command line

def add_parser(subparsers: Any) -> None:
    """Register ``status``, ``peers``, ``table`` and ``keygen`` on a CLI's subparsers.

    Each sets ``func`` to its command: ``args.func(args)`` runs it and returns the exit status.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--api", metavar="URL",
                        help=f"the daemon's API (default: --config's [api] listen, else {DEFAULT_API})")
    common.add_argument("--config", metavar="FILE", help="the node's TOML config (api listen, state_dir)")
    common.add_argument("--json", action="store_true", help="print JSON instead of tables")
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument("--state-dir", metavar="DIR",
                       help="read this stopped node's state when the daemon is not reachable "
                            "(default: --config's state_dir)")

    p = subparsers.add_parser(
        "status", parents=[common, state], help="show a node's status (daemon or state directory)",
        description="Show the node's status from its local API, or, when the daemon is not "
                    "reachable, from its state directory (read-only): node id, version, cells "
                    "per origin, peers, last trust events.")
    p.set_defaults(func=_status)
    p = subparsers.add_parser(
        "peers", parents=[common, state], help="list a node's peers (daemon or state directory)",
        description="List the node's peers (status, trust, last seen, epoch) from its local API, "
                    "or from its state directory when the daemon is not reachable.")
    p.set_defaults(func=_peers)
    p = subparsers.add_parser(
        "table", parents=[common], help="show the merged values of one state",
        description="Ask the running daemon for one state's merged value, visits and own share "
                    "per action. STATE is JSON (e.g. '[3, 1]') or a plain string.")
    p.add_argument("state", metavar="STATE", help="the state: JSON, or a plain string")
    p.set_defaults(func=_table)
    p = subparsers.add_parser(
        "keygen", help="create a node key file and print its public key",
        description="Create an Ed25519 node key file (mode 0600) and print the public key hex, "
                    "for [security] allowlist entries. Refuses to replace an existing key "
                    "unless --force.")
    p.add_argument("--out", metavar="PATH",
                   help=f"key file (default: --config's state_dir/{KEY_NAME}, else ./{KEY_NAME})")
    p.add_argument("--config", metavar="FILE", help="the node's TOML config (state_dir, node id)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing key (peers that pinned the old one will reject the node)")
    p.set_defaults(func=_keygen)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m peerd.tools_cmd status --state-dir DIR``."""
    parser = argparse.ArgumentParser(prog="peerd")
    add_parser(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


Command = Callable[[argparse.Namespace], int]


def _tool(name: str) -> Callable[[Command], Command]:
    """Make ``fn`` the ``func`` of ``peerd NAME``: failures become one line on stderr and the
    exit status (``ToolError.code``; 2 for a config error; 1 otherwise)."""

    def register(fn: Command) -> Command:
        @functools.wraps(fn)
        def command(args: argparse.Namespace) -> int:
            try:
                return fn(args)
            except ToolError as exc:
                print(f"peerd {name}: {exc}", file=sys.stderr)
                return exc.code
            except ConfigError as exc:
                print(f"peerd {name}: {exc}", file=sys.stderr)
                return 2
            except PeerdError as exc:
                print(f"peerd {name}: {exc}", file=sys.stderr)
                return 1

        return command

    return register


# ---------------------------------------------------------------- where to look

class _Target:
    """Where a tool looks: the API URL (None = API off) and the state directory (or None)."""

    def __init__(self, args: argparse.Namespace) -> None:
        config = _load_config(getattr(args, "config", None))
        self.api: str | None = DEFAULT_API
        self.config_listen = False
        if args.api:
            self.api = args.api
        elif config is not None:
            self.api = api_url(config.api_listen) if config.api_listen else None
            self.config_listen = True
        state_dir = getattr(args, "state_dir", None) or (config.state_dir if config else "")
        self.state_dir = Path(state_dir) if state_dir else None


def _load_config(path: str | None) -> Any:
    if not path:
        return None
    from peerd.config import load_config

    return load_config(path)  # ConfigError → exit 2


def api_url(listen: str) -> str:
    """The URL a client uses for an ``[api] listen`` value: a wildcard bind is reached on loopback."""
    if listen.startswith("unix:"):
        return listen
    host, _, port = listen.rpartition(":")
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "[::]": "[::1]", "::": "[::1]"}.get(host, host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


class _Unreachable(Exception):
    """The daemon's API did not answer (as opposed to answering with an error)."""


def _api_call(url: str, method: str, *args: Any) -> Any:
    """``PeerdClient(url).<method>(*args)``; ``_Unreachable`` when nobody answers."""
    from peerd.client import ApiError, ApiUnreachable, PeerdClient

    try:
        client = PeerdClient(url)
    except ValueError as exc:
        raise ConfigError(f"--api: {exc}") from None
    try:
        return getattr(client, method)(*args)
    except ApiUnreachable as exc:
        raise _Unreachable(_connection_failure(exc) or str(exc)) from None
    except ApiError as exc:
        raise ToolError(f"{url} answered with an error: {exc}") from None


def _connection_failure(exc: BaseException) -> str | None:
    """A short reason (``connection refused``) from the OS error behind ``exc``, if any.

    ``PeerdClient`` raises ``ApiUnreachable ... from None``: the OS error is
    still its ``__context__``, and says it better than the URL-laden message.
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cur, FileNotFoundError):
            return f"no such socket {cur.filename}" if cur.filename else "no such socket"
        if isinstance(cur, TimeoutError):
            return "timed out"
        if isinstance(cur, OSError):
            return cur.strerror or str(cur) or type(cur).__name__
        cur = cur.__cause__ or cur.__context__
    return None


def _from_daemon_or_state(args: argparse.Namespace, method: str, tool: str
                          ) -> tuple[str, Any]:
    """``("api", answer)`` from the daemon, else ``("state", snapshot)`` from the state dir."""
    target = _Target(args)
    why = "the API is off ([api] listen is empty)"
    if target.api is not None:
        try:
            return "api", _api_call(target.api, method)
        except _Unreachable as exc:
            why = f"cannot reach {target.api}: {exc}"
    if target.state_dir is None:
        raise ToolError(f"{why}; pass --state-dir to read a stopped node's state")
    if target.api is not None:
        print(f"peerd {tool}: {why}; reading the state in {target.state_dir}", file=sys.stderr)
    return "state", read_state(target.state_dir)


# ---------------------------------------------------------------- the state directory

def read_state(state_dir: str | os.PathLike[str], *, trust_events: int = TRUST_EVENTS_SHOWN
               ) -> dict[str, Any]:
    """What a node's state directory holds, read-only (see the module docstring for how).

    Raises ``ToolError`` when there is no readable peerd database there.
    """
    directory = Path(state_dir)
    db = directory / DB_NAME
    if not db.is_file():
        raise ToolError(f"no peerd state in {directory}: {DB_NAME} not found")
    wal = db.with_name(db.name + "-wal")
    flags = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
    uri = f"file:{quote(str(db.resolve()))}?{flags}"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise ToolError(f"cannot open {db} read-only: {exc}") from None
    try:
        snapshot = _query_state(conn, trust_events)
    except sqlite3.Error as exc:
        raise ToolError(f"cannot read {db}: {exc} (not a peerd state, or damaged)") from None
    finally:
        conn.close()
    snapshot.update(source="state_dir", state_dir=str(directory), db_bytes=_size(db),
                    wal_bytes=_size(wal), public_key=_public_key(directory / KEY_NAME))
    return snapshot


def _query_state(conn: sqlite3.Connection, trust_events: int) -> dict[str, Any]:
    conn.execute("BEGIN")  # one snapshot for all queries, even while a daemon writes
    meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN "
                             "('node_id','federation','fingerprint','schema_version',"
                             "'epoch','published_version')").fetchall())
    node = meta.get("node_id")
    origins = [
        {"origin": o, "cells": c, "version": v, "visits": n}
        for o, c, v, n in conn.execute(
            "SELECT origin, count(*), max(version), sum(n) FROM cells GROUP BY origin "
            "ORDER BY origin = ? DESC, origin", (node,))]
    own = next((o for o in origins if o["origin"] == node), None)
    peers = [
        {"node": r[0], "status": r[1], "trust": r[2], "last_seen": r[3], "epoch": r[4],
         "seq": r[5], "known_version": r[6],
         "public_key": r[7].hex() if isinstance(r[7], bytes) else None}
        for r in conn.execute("SELECT node_id, status, trust, last_seen, epoch, seq, version, "
                              "public_key FROM peers ORDER BY node_id")]
    events = [
        {"peer": r[0], "ts": r[1], "old": r[2], "new": r[3], "reason": r[4]}
        for r in conn.execute("SELECT peer, ts, old, new, reason FROM trust_events "
                              "ORDER BY ts DESC, id DESC LIMIT ?", (trust_events,))]
    merged = conn.execute("SELECT count(*) FROM (SELECT DISTINCT key, action FROM cells)").fetchone()
    conn.rollback()
    return {
        "node": node, "federation": meta.get("federation"), "fingerprint": meta.get("fingerprint"),
        "schema_version": meta.get("schema_version"), "epoch": meta.get("epoch"),
        "version": own["version"] if own else 0,
        "published_version": meta.get("published_version"),
        "cells": sum(o["cells"] for o in origins), "merged_cells": merged[0],
        "origins": origins, "peers": peers, "trust_events": events,
    }


def _public_key(path: Path) -> str | None:
    """The node's public key hex from its key file, without ever creating one."""
    from peerd.identity import Identity

    try:
        seed = bytes.fromhex(path.read_text(encoding="ascii").strip())
        return Identity.from_seed(seed).public_key.hex()
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# ---------------------------------------------------------------- the tools

@_tool("status")
def _status(args: argparse.Namespace) -> int:
    source, data = _from_daemon_or_state(args, "status", "status")
    if source == "api":
        data = {"source": "api", **(data if isinstance(data, dict) else {"status": data})}
    if args.json:
        _print_json(data)
    elif source == "api":
        _render_api_status(data)
    else:
        _render_state_status(data)
    return 0


@_tool("peers")
def _peers(args: argparse.Namespace) -> int:
    source, data = _from_daemon_or_state(args, "peers", "peers")
    if source == "api":
        peers = data.get("peers", data) if isinstance(data, dict) else data
        data = {"source": "api", "peers": peers}
    else:
        data = {"source": "state_dir", "node": data["node"], "peers": data["peers"]}
    if args.json:
        _print_json(data)
    else:
        _render_peers(data["peers"], title=f"peers of {data['node']}" if data.get("node") else "peers")
    return 0


@_tool("table")
def _table(args: argparse.Namespace) -> int:
    target = _Target(args)
    if target.api is None:
        raise ToolError("the API is off ([api] listen is empty): 'table' needs the running daemon")
    try:
        state: Any = json.loads(args.state)  # the API's own rule: JSON, else a plain string
    except ValueError:
        state = args.state
    try:
        data = _api_call(target.api, "table", state)
    except _Unreachable as exc:
        raise ToolError(f"cannot reach {target.api}: {exc}; 'table' needs the running daemon "
                        "(it hashes the state with the federation secret)") from None
    if args.json:
        _print_json(data)
    else:
        _render_table(data)
    return 0


@_tool("keygen")
def _keygen(args: argparse.Namespace) -> int:
    from peerd.identity import Identity

    config = _load_config(args.config)
    if args.out:
        path = Path(args.out)
    elif config is not None and config.state_dir:
        path = Path(config.state_dir) / KEY_NAME
    else:
        path = Path(KEY_NAME)
    if path.exists() or path.is_symlink():
        old = _public_key(path)
        if not args.force:
            shown = f" (public key {old})" if old else ""
            raise ToolError(f"{path} already exists{shown}; pass --force to replace it "
                            "(peers that pinned the old key will then reject this node)")
        try:
            path.unlink()
        except OSError as exc:
            raise ToolError(f"cannot remove {path}: {exc.strerror or exc}") from None
    identity = Identity.load_or_create(path)  # 0600, atomic; StoreError → exit 1
    key = identity.public_key.hex()
    print(key)
    print(f"peerd keygen: wrote {path} (mode 0600)", file=sys.stderr)
    if config is not None:
        print(f'peerd keygen: allowlist entry: "{config.node}" = "{key}"', file=sys.stderr)
    return 0


# ---------------------------------------------------------------- output

def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=_jsonable))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.hex()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, emoji=False)


def _new_table(title: str, *columns: str) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for col in columns:
        table.add_column(col, overflow="fold")
    return table


def _fmt(value: Any) -> str:
    """One cell: floats short, missing values as a dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def _ago(ts: Any, now: float | None = None) -> str:
    """``12s ago`` for a Unix time; a dash for never."""
    if not isinstance(ts, (int, float)) or ts <= 0:
        return "never"
    delta = (time.time() if now is None else now) - ts
    for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60)):
        if abs(delta) >= seconds:
            return f"{delta / seconds:.1f}{unit} ago"
    return f"{delta:.1f}s ago"


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += _flatten(value, name + ".") if value else [(name, "–")]
        elif isinstance(value, list):
            rows.append((name, f"{len(value)} items"))
        else:
            rows.append((name, _fmt(value)))
    return rows


def _render_api_status(data: dict[str, Any]) -> None:
    table = _new_table(f"status of {data.get('node', '?')} (from its API)", "key", "value")
    for key, value in _flatten({k: v for k, v in data.items() if k != "source"}):
        table.add_row(key, value)
    _console().print(table)


def _render_state_status(data: dict[str, Any]) -> None:
    console = _console()
    info = _new_table(f"status of {data['node']} (from its state directory)", "key", "value")
    for key in ("node", "federation", "fingerprint", "public_key", "epoch", "version",
                "published_version", "cells", "merged_cells", "schema_version", "state_dir",
                "db_bytes", "wal_bytes"):
        info.add_row(key, _fmt(data.get(key)))
    console.print(info)
    console.print()
    origins = _new_table("cells per origin", "origin", "cells", "version", "visits")
    for o in data["origins"]:
        origins.add_row(o["origin"] + (" (own)" if o["origin"] == data["node"] else ""),
                        _fmt(o["cells"]), _fmt(o["version"]), _fmt(o["visits"]))
    console.print(origins)
    console.print()
    _render_peers(data["peers"], title="peers", console=console)
    console.print()
    events = _new_table(f"last {len(data['trust_events'])} trust events", "when", "peer",
                        "trust", "reason")
    for e in data["trust_events"]:
        events.add_row(_ago(e["ts"]), e["peer"], f"{e['old']:.3f} → {e['new']:.3f}", e["reason"])
    console.print(events)


def _render_peers(peers: list[dict[str, Any]], *, title: str, console: Any = None) -> None:
    columns = ["node", "status", "trust", "alignment", "epoch", "last_seen", "known_version",
               "held_version", "public_key"]
    present = [c for c in columns if any(c in p for p in peers)] or columns[:6]
    table = _new_table(f"{title} ({len(peers)})", *present)
    for p in peers:
        cells = []
        for c in present:
            v = p.get(c)
            if c == "last_seen":
                cells.append(_ago(v))
            elif c == "public_key" and isinstance(v, str):
                cells.append(v[:16] + "…")
            else:
                cells.append(_fmt(v))
        table.add_row(*cells)
    (console or _console()).print(table)


def _render_table(data: Any) -> None:
    if not isinstance(data, dict) or "values" not in data:
        _print_json(data)
        return
    actions = data.get("actions") or [str(i) for i in range(len(data["values"]))]
    visits = data.get("visits") or [None] * len(actions)
    share = data.get("own_share") or [None] * len(actions)
    table = _new_table(f"state {json.dumps(data.get('state'), ensure_ascii=False)}",
                       "action", "merged value", "visits", "own share")
    for i, name in enumerate(actions):
        own = share[i]
        table.add_row(f"{i} {name}", _fmt(data["values"][i]), _fmt(visits[i]),
                      f"{own:.0%}" if isinstance(own, (int, float)) and math.isfinite(own) else _fmt(own))
    _console().print(table)


if __name__ == "__main__":
    sys.exit(main())
