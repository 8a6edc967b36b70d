"""The durable store: SQLite in WAL mode through aiosqlite (DESIGN §7).

This is the only module of peerd that imports aiosqlite. It keeps what must
survive a restart: every origin's cells, the peers (key, epoch, seq, status,
last seen, trust), trust events, the merge log and the node's identity and
counters (``meta``).

Durability promise: when a write method returns, its transaction has
committed. With ``synchronous=FULL`` (the default) the WAL is fsynced at every
commit, so an acknowledged write survives SIGKILL *and* power loss;
``NORMAL`` still survives a killed process (the WAL is in the OS page cache)
but may lose the last commits on power loss.

Writes marked ``relaxed`` (peers' cells as received, the merge log, kept relay
payloads) do not need the power-loss half of that promise: nobody was told
they are on disk, and a node that lost them asks the peers again. A batch made
only of relaxed writes commits with ``synchronous=NORMAL`` — still safe from
SIGKILL, but without an fsync per received delta; any other batch commits at
the configured level, and its fsync covers the relaxed commits before it (the
WAL is one append-only file, recovered as a prefix of its commits).

Group commit keeps that promise cheap. Every write (cells, meta, peers, trust
events, merge log) is queued to one writer task, which drains the queue,
executes everything queued in one ``BEGIN IMMEDIATE .. COMMIT`` and only then
resolves each caller's future. Many concurrent callers therefore pay for one
fsync together, writes are applied in the order they were submitted, and there
is never more than one write transaction. The whole transaction of a batch
runs in one call on the SQLite thread (``_run_batch``), not one hop per
statement. Writes nobody waits for (``*_soon``) join the next batch. If a commit fails, every caller of
that batch gets a ``StoreError`` and none of the batch is kept; arguments are
validated *before* queueing so that one caller's bad input cannot fail a batch
shared with others.

Reads use the same connection, serialised with the writer by a lock so that a
reader never sees a half-applied batch.

SQLite integers are signed 64-bit: uint64 state keys are stored as their
int64 two's-complement view and turned back on load (``load_cells`` restores
unsigned ``(key, action)`` order).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from pathlib import Path
from typing import Any

import aiosqlite
import numpy as np
import structlog

from peerd.delta import CELL_DTYPES, CELL_FIELDS, MergeStats
from peerd.errors import (
    ConfigError,
    NonFiniteValue,
    ShapeMismatch,
    StoreError,
    ValueOutOfBounds,
)
from peerd.peers import PeerRecord, TrustEvent

__all__ = ["MERGE_LOG_KEPT", "MIGRATIONS", "TRUST_EVENTS_KEPT", "Migration", "Store"]

log = structlog.get_logger(__name__)

#: Trust events kept per peer (DESIGN §6); older ones go in the same transaction.
TRUST_EVENTS_KEPT = 100
#: Rows kept in the merge log.
MERGE_LOG_KEPT = 10_000

_INT64_MAX = 2**63 - 1
_CACHE_KIB = 16 * 1024
#: Deferred writes (``defer``) held before they are committed on their own.
_DEFERRED_MAX = 256
#: Cells converted between numpy and Python objects at a time (memory bound).
_CHUNK = 32_768
_SYNCHRONOUS = ("NORMAL", "FULL", "EXTRA")  # OFF would break the durability promise
#: meta keys the store manages itself; ``set_meta`` refuses them.
_IDENTITY = ("federation", "node_id", "fingerprint")
_RESERVED_META = frozenset({"schema_version", *_IDENTITY})

# --------------------------------------------------------------------------- schema

#: A migration moves the schema from version i to i + 1. It runs inside the
#: transaction that opens the store, so a failed migration changes nothing.
Migration = Callable[[aiosqlite.Connection], Awaitable[None]]


def _sql(*statements: str) -> Migration:
    """A migration made of plain SQL statements, run one by one.

    Not ``executescript``: Python's sqlite3 commits before a script, which would
    break the all-or-nothing migration transaction.
    """

    async def migrate(conn: aiosqlite.Connection) -> None:
        for statement in statements:
            await conn.execute(statement)

    return migrate


#: Applied in order; ``meta.schema_version`` is how many have run. Append, never edit.
MIGRATIONS: list[Migration] = [
    _sql(
        """CREATE TABLE cells (
            origin TEXT NOT NULL, key INTEGER NOT NULL, action INTEGER NOT NULL,
            q REAL NOT NULL, lw REAL NOT NULL,
            n INTEGER NOT NULL, succ INTEGER NOT NULL, fail INTEGER NOT NULL,
            version INTEGER NOT NULL,
            PRIMARY KEY (origin, key, action)) WITHOUT ROWID""",
        """CREATE TABLE peers (
            node_id TEXT PRIMARY KEY NOT NULL, public_key BLOB,
            epoch INTEGER NOT NULL, seq INTEGER NOT NULL, status TEXT NOT NULL,
            last_seen REAL NOT NULL, trust REAL NOT NULL, version INTEGER NOT NULL,
            extra TEXT NOT NULL DEFAULT '{}') WITHOUT ROWID""",
        """CREATE TABLE trust_events (
            id INTEGER PRIMARY KEY, peer TEXT NOT NULL, ts REAL NOT NULL,
            old REAL NOT NULL, new REAL NOT NULL, reason TEXT NOT NULL)""",
        "CREATE INDEX trust_events_by_peer ON trust_events (peer, ts, id)",
        """CREATE TABLE merge_log (
            id INTEGER PRIMARY KEY, ts REAL NOT NULL, origin TEXT NOT NULL,
            cells INTEGER NOT NULL, new INTEGER NOT NULL, updated INTEGER NOT NULL,
            conflicts INTEGER NOT NULL, rejected INTEGER NOT NULL,
            total_visits INTEGER NOT NULL, confidence REAL NOT NULL)""",
    ),
    # 2: origins' own signed payloads, kept to relay them verbatim (peerd.relay)
    _sql(
        """CREATE TABLE relay_payloads (
            origin TEXT NOT NULL, kind TEXT NOT NULL, epoch INTEGER NOT NULL,
            seq INTEGER NOT NULL, payload BLOB NOT NULL,
            PRIMARY KEY (origin, kind, epoch, seq)) WITHOUT ROWID""",
    ),
]

# Typeless ``value``: SQLite keeps str, int, float and bytes as given.
_CREATE_META = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY NOT NULL, value) WITHOUT ROWID"
_SET_META = ("INSERT INTO meta (key, value) VALUES (?, ?) "
             "ON CONFLICT (key) DO UPDATE SET value = excluded.value")
# Last writer wins by version, like the CRDT: replaying an older or equal cell is a no-op.
_UPSERT_CELL = (
    "INSERT INTO cells (origin, key, action, q, lw, n, succ, fail, version) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (origin, key, action) DO UPDATE SET q = excluded.q, lw = excluded.lw, "
    "n = excluded.n, succ = excluded.succ, fail = excluded.fail, version = excluded.version "
    "WHERE excluded.version > cells.version")
_UPSERT_PEER = (
    "INSERT INTO peers (node_id, public_key, epoch, seq, status, last_seen, trust, version, extra) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (node_id) DO UPDATE SET public_key = excluded.public_key, "
    "epoch = excluded.epoch, seq = excluded.seq, status = excluded.status, "
    "last_seen = excluded.last_seen, trust = excluded.trust, version = excluded.version, "
    "extra = excluded.extra")
_ADD_TRUST_EVENT = "INSERT INTO trust_events (peer, ts, old, new, reason) VALUES (?, ?, ?, ?, ?)"
_TRIM_TRUST_EVENTS = (
    "DELETE FROM trust_events WHERE peer = ?1 AND id NOT IN "
    "(SELECT id FROM trust_events WHERE peer = ?1 ORDER BY ts DESC, id DESC LIMIT ?2)")
_LOG_MERGE = (
    "INSERT INTO merge_log (ts, origin, cells, new, updated, conflicts, rejected, "
    "total_visits, confidence) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
# ids are contiguous (only the oldest rows are ever deleted), so this keeps the last N.
_TRIM_MERGE_LOG = "DELETE FROM merge_log WHERE id <= (SELECT max(id) FROM merge_log) - ?"
_TABLES = ("meta", "cells", "peers", "trust_events", "merge_log")

# Row layout of ``SELECT key, action, q, lw, n, succ, fail, version``: keys come
# back signed, q as a double (exactly the float32 that was stored).
_ROW_DTYPE = np.dtype([
    ("keys", "<i8"), ("actions", "<u2"), ("q", "<f8"), ("lw", "<f8"),
    ("n", "<u4"), ("succ", "<u4"), ("fail", "<u4"), ("version", "<u8"),
])

# --------------------------------------------------------------------------- writer

Params = Iterable[Sequence[Any]]


@dataclass(eq=False, slots=True)
class _Write:
    """One caller's writes, waiting in the queue for the writer task.

    ``steps`` run in order with ``executemany``; consecutive steps of the same
    SQL from different writes are chained into one call (equivalent, and one
    thread hop instead of thousands). ``trims`` are idempotent clean-ups
    (trust-event and merge-log caps) run once at the end of the batch.
    ``counted`` writes want their rowcount back and are never chained.
    """

    steps: tuple[tuple[str, Params], ...]
    future: asyncio.Future[int]
    trims: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    counted: bool = False
    relaxed: bool = False  # safe from SIGKILL is enough (module docstring)
    rowcount: int = field(default=0)


def _plan(batch: list[_Write]) -> list[tuple[str, list[Params], _Write | None]]:
    """Statements to run for a batch, chaining neighbours with the same SQL."""
    plan: list[tuple[str, list[Params], _Write | None]] = []
    for w in batch:
        for sql, params in w.steps:
            if not w.counted and plan and plan[-1][0] == sql and plan[-1][2] is None:
                plan[-1][1].append(params)
            else:
                plan.append((sql, [params], w if w.counted else None))
    return plan


async def _commit_batch(conn: aiosqlite.Connection, pragma: str | None,
                        plan: list[tuple[str, list[Params], _Write | None]],
                        trims: list[tuple[str, tuple[Any, ...]]]) -> list[int]:
    """Run ``_run_batch`` in the connection's own thread: one hop.

    aiosqlite hops to its thread and back for every statement (~30 µs of CPU
    each, and a loop iteration); a batch is 5-7 statements, received deltas
    come one batch each. ``Connection._execute`` and ``_conn`` are aiosqlite's
    own primitives (0.17-0.22); should an upgrade drop them, the batch runs through
    the public API instead, one hop per statement (slower, same transaction).
    """
    private = _private_api(conn)
    if private is not None:
        execute, raw = private
        return list(await execute(_run_batch, raw, pragma, plan, trims))
    return await _run_batch_public(conn, pragma, plan, trims)


def _private_api(conn: aiosqlite.Connection) -> tuple[Callable[..., Any], sqlite3.Connection] | None:
    """aiosqlite's ``(_execute, _conn)`` when this version has them, else None."""
    execute = getattr(conn, "_execute", None)
    raw = getattr(conn, "_conn", None)
    return (execute, raw) if callable(execute) and isinstance(raw, sqlite3.Connection) else None


async def _run_batch_public(conn: aiosqlite.Connection, pragma: str | None,
                            plan: list[tuple[str, list[Params], _Write | None]],
                            trims: list[tuple[str, tuple[Any, ...]]]) -> list[int]:
    """``_run_batch`` through aiosqlite's public API: the fallback of ``_in_thread``."""
    if pragma is not None:
        await conn.execute(pragma)
    await conn.execute("BEGIN IMMEDIATE")
    try:
        counts = []
        for sql, parts, _owner in plan:
            params = parts[0] if len(parts) == 1 else list(chain.from_iterable(parts))
            counts.append(max((await conn.executemany(sql, params)).rowcount, 0))
        for sql, args in trims:
            await conn.execute(sql, args)
        await conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                await conn.execute("ROLLBACK")
        raise
    return counts


def _run_batch(db: sqlite3.Connection, pragma: str | None,
               plan: list[tuple[str, list[Params], _Write | None]],
               trims: list[tuple[str, tuple[Any, ...]]]) -> list[int]:
    """One batch's transaction, in the connection's thread; the row count of each planned step.

    All or nothing: a failure rolls back before the exception reaches the writer.
    """
    if pragma is not None:  # outside any transaction, where SQLite takes it
        db.execute(pragma)
    db.execute("BEGIN IMMEDIATE")
    try:
        counts = []
        for sql, parts, _owner in plan:
            params = parts[0] if len(parts) == 1 else chain.from_iterable(parts)
            counts.append(max(db.executemany(sql, params).rowcount, 0))
        for sql, args in trims:
            db.execute(sql, args)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise
    return counts


def _retrieve(fut: asyncio.Future[int]) -> None:
    """Done callback of a write nobody awaits: its failure is the batch's (already logged)."""
    if not fut.cancelled():
        fut.exception()


def _retrieved_future() -> asyncio.Future[int]:
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    fut.add_done_callback(_retrieve)
    return fut


def _resolve(fut: asyncio.Future[int], result: int | BaseException) -> None:
    if fut.done():  # the caller was cancelled meanwhile
        return
    if isinstance(result, BaseException):
        fut.set_exception(result)
    else:
        fut.set_result(result)


# --------------------------------------------------------------------------- cells


def _cell_rows(origin: str, arrays: Mapping[str, np.ndarray]) -> tuple[int, Params]:
    """Check a caller's arrays and turn them into rows, before anything is queued.

    The arrays are copied now (sorted, or for one row by ``tolist``), so the
    caller may reuse its own as soon as ``write_cells`` is called.
    """
    if not isinstance(origin, str) or not origin:
        raise ShapeMismatch("origin must be a non-empty string")
    missing = [f for f in CELL_FIELDS if f not in arrays]
    if missing:
        raise ShapeMismatch(f"cells lack arrays {missing}")
    cols: dict[str, np.ndarray] = {}
    for f, dtype in CELL_DTYPES.items():
        a = np.asarray(arrays[f])
        if a.ndim != 1:
            raise ShapeMismatch(f"{f} must be a 1-d array")
        if a.dtype != dtype and not np.can_cast(a.dtype, dtype, "safe"):
            raise ShapeMismatch(f"{f} has dtype {a.dtype}, expected {dtype}")
        cols[f] = a.astype(dtype, copy=False)
    m = cols["keys"].shape[0]
    if any(a.shape[0] != m for a in cols.values()):
        raise ShapeMismatch(f"cell arrays differ in length: "
                            f"{ {f: a.shape[0] for f, a in cols.items()} }")
    if m == 0:
        return 0, ()
    # NaN would become NULL and fail the NOT NULL constraint -- and the whole batch.
    if not (np.isfinite(cols["q"]).all() and np.isfinite(cols["lw"]).all()):
        raise NonFiniteValue(f"cells of {origin!r} hold NaN or infinity")
    if int(cols["version"].max()) > _INT64_MAX:
        raise ValueOutOfBounds("a cell version does not fit SQLite's signed 64-bit INTEGER")
    columns = [cols["keys"].view("<i8"), *(cols[f] for f in CELL_FIELDS[1:])]
    if m > 1:  # in primary-key order, the B-tree is written page after page, not at random
        order = np.lexsort((columns[1], columns[0]))
        columns = [c[order] for c in columns]
    else:
        columns = [c.copy() for c in columns]
    return m, _rows(origin, columns, m)


def _rows(origin: str, columns: list[np.ndarray], m: int) -> Iterator[tuple[Any, ...]]:
    """Row tuples for ``executemany``, made ``_CHUNK`` rows at a time.

    ``tolist`` is the fast way from numpy to the Python objects sqlite3 binds;
    doing it per chunk bounds the memory a large snapshot needs for them.
    """
    for start in range(0, m, _CHUNK):
        yield from zip(repeat(origin), *(c[start:start + _CHUNK].tolist() for c in columns))


def _cells_from_table(table: np.ndarray) -> dict[str, np.ndarray]:
    """Arrays of one origin from ``_ROW_DTYPE`` rows ordered by signed ``(key, action)``."""
    # Signed order puts keys >= 2**63 (negative as int64) first: rotate them to the end.
    first_non_negative = int(np.searchsorted(table["keys"], 0))
    if first_non_negative:
        table = np.concatenate((table[first_non_negative:], table[:first_non_negative]))
    out = {f: np.ascontiguousarray(table[f], dtype=CELL_DTYPES[f]) for f in CELL_FIELDS[1:]}
    out["keys"] = np.ascontiguousarray(table["keys"]).view(CELL_DTYPES["keys"])
    return {f: out[f] for f in CELL_FIELDS}


# --------------------------------------------------------------------------- store


class Store:
    """The node's SQLite state; open with ``await Store.open(...)``, then ``close()``.

    ``commits`` counts committed write transactions and ``writes`` the write
    calls they carried: ``writes / commits`` is the group-commit factor.
    """

    def __init__(self, conn: aiosqlite.Connection, path: Path, *, federation: str,
                 node_id: str, fingerprint: str, synchronous: str, schema_version: int) -> None:
        """Use ``Store.open``: this only wires an already migrated connection."""
        self._conn = conn
        self.path = path
        self.federation = federation
        self.node_id = node_id
        self.fingerprint = fingerprint
        self.synchronous = synchronous
        #: the connection's current level (relaxed batches lower it); None: unknown
        self._sync_now: str | None = synchronous
        self.schema_version = schema_version
        self.commits = 0
        self.writes = 0
        self._queue: asyncio.Queue[_Write | None] = asyncio.Queue()
        self._deferred: list[_Write] = []  # ride with the next batch (``_defer``)
        self._lock = asyncio.Lock()  # one of: the writer's batch, or one read
        self._closing = False
        self._closed = False
        self._writer = asyncio.create_task(self._write_loop(), name="peerd-store-writer")

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(cls, path: str | os.PathLike[str], *, federation: str, node_id: str,
                   fingerprint: str, synchronous: str = "FULL") -> Store:
        """Open (creating if needed) the store at ``path`` and bring its schema up to date.

        Raises ``StoreError`` if the file is not usable, its schema is newer
        than this code, or it belongs to another federation, node or task
        fingerprint (a node must never mix another task's Q-values into its own).
        """
        sync = str(synchronous).upper()
        if sync not in _SYNCHRONOUS:
            raise ConfigError(f"synchronous must be one of {_SYNCHRONOUS}, not {synchronous!r}")
        p = Path(path)
        in_memory = str(path) == ":memory:"
        if not in_memory:
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create state directory {p.parent}: {exc}") from None
        try:
            conn = await aiosqlite.connect(p, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {p}: {exc}") from None
        try:
            mode = (await (await conn.execute("PRAGMA journal_mode=WAL")).fetchone() or ("",))[0]
            if mode != ("memory" if in_memory else "wal"):
                raise StoreError(f"{p} cannot use WAL journaling (journal_mode={mode})")
            await conn.execute(f"PRAGMA synchronous={sync}")
            await conn.execute("PRAGMA busy_timeout=5000")
            # 16 MiB page cache: bulk upserts of random keys slow down ~2x with the 2 MiB default.
            await conn.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
            version = await _migrate_and_check(conn, p, federation=federation, node_id=node_id,
                                               fingerprint=fingerprint)
        except BaseException as exc:
            await conn.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot use {p}: {exc}") from None
            raise
        log.debug("store_opened", path=str(p), schema_version=version, synchronous=sync)
        return cls(conn, p, federation=federation, node_id=node_id, fingerprint=fingerprint,
                   synchronous=sync, schema_version=version)

    async def close(self) -> None:
        """Commit every write queued so far, then close the database. Idempotent."""
        if self._closed:
            return
        self._closing = True
        self._queue.put_nowait(None)  # FIFO: everything queued before it commits first
        try:
            # wait() rather than await: a writer cancelled by loop shutdown must not make
            # close() raise CancelledError; its waiters were already failed.
            await asyncio.wait([self._writer])
        finally:
            self._closed = True
            await self._conn.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ writer internals

    async def _submit(self, steps: tuple[tuple[str, Params], ...], *,
                      trims: tuple[tuple[str, tuple[Any, ...]], ...] = (),
                      counted: bool = False, relaxed: bool = False) -> int:
        """Queue writes and wait until the transaction holding them has committed.

        A caller cancelled while waiting may or may not have its write committed.
        """
        if self._closing:
            raise StoreError(f"store {self.path} is closed")
        if self._writer.done():
            raise StoreError(f"store {self.path}: the writer task has stopped")
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Write(steps, fut, trims, counted, relaxed))
        return await fut

    def _defer(self, steps: tuple[tuple[str, Params], ...]) -> None:
        """Queue writes nobody waits for: they join the next batch instead of costing a commit
        (an fsync) of their own, in submission order before it; lost if the process dies first.

        Once ``_DEFERRED_MAX`` are held, they are committed without waiting for company.
        """
        if self._closing or self._writer.done():
            raise StoreError(f"store {self.path} is closed")
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieve)
        self._deferred.append(_Write(steps, fut, relaxed=True))
        if len(self._deferred) >= _DEFERRED_MAX:
            self._queue.put_nowait(_Write((), _retrieved_future()))

    async def _write_loop(self) -> None:
        """The single writer: one transaction per drained batch of queued writes."""
        try:
            while True:
                item = await self._queue.get()
                stop = item is None
                batch, self._deferred = self._deferred, []  # submitted before what is queued
                if item is not None:
                    batch.append(item)
                while not stop and not self._queue.empty():
                    item = self._queue.get_nowait()
                    if item is None:
                        stop = True
                    else:
                        batch.append(item)
                if batch:
                    await self._commit(batch)
                if stop:
                    return
        finally:  # cancelled or crashed: nobody may wait forever
            for w in self._deferred:
                _resolve(w.future, StoreError(f"store {self.path} writer stopped"))
            self._deferred = []
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if item is not None:
                    _resolve(item.future, StoreError(f"store {self.path} writer stopped"))

    async def _commit(self, batch: list[_Write]) -> None:
        live = [w for w in batch if not w.future.cancelled()]
        if not live:
            return
        sync = "NORMAL" if all(w.relaxed for w in live) else self.synchronous
        pragma = f"PRAGMA synchronous={sync}" if sync != self._sync_now else None
        plan = _plan(live)
        trims = list(dict.fromkeys(t for w in live for t in w.trims))
        async with self._lock:
            try:
                self._sync_now = None  # unknown until the batch returns
                counts = await _commit_batch(self._conn, pragma, plan, trims)
                self._sync_now = sync
                for (_sql, _parts, owner), n in zip(plan, counts, strict=True):
                    if owner is not None:
                        owner.rowcount += n
            except BaseException as exc:
                # The waiters first: nothing below (rollback, logging) may leave them waiting.
                for w in live:  # one exception object per waiter: each gets its own traceback
                    err = StoreError(f"commit of a batch of {len(live)} writes to "
                                     f"{self.path} failed: {exc!r}")
                    err.__cause__ = exc
                    _resolve(w.future, err)
                with contextlib.suppress(Exception):
                    await self._rollback_quietly()
                with contextlib.suppress(Exception):  # e.g. a log stream closed under us
                    log.error("store_commit_failed", path=str(self.path), writes=len(live),
                              error=repr(exc))
                if not isinstance(exc, Exception):
                    raise
                return
        self.commits += 1
        self.writes += len(live)
        for w in live:
            _resolve(w.future, w.rowcount)

    async def _rollback_quietly(self) -> None:
        try:
            if self._conn.in_transaction:
                await self._conn.execute("ROLLBACK")
        except Exception as exc:  # the connection may be gone; the error is already reported
            log.warning("store_rollback_failed", path=str(self.path), error=repr(exc))

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """One query on the shared connection, between (never inside) write batches."""
        if self._closed:
            raise StoreError(f"store {self.path} is closed")
        async with self._lock:
            try:
                return list(await self._conn.execute_fetchall(sql, params))
            except (sqlite3.Error, ValueError) as exc:
                raise StoreError(f"reading {self.path} failed: {exc}") from None

    # ------------------------------------------------------------------ meta

    async def get_meta(self, key: str, default: Any = None) -> Any:
        """A small value (str, int, float or bytes) stored under ``key``, or ``default``."""
        rows = await self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else default

    async def set_meta(self, key: str, value: str | int | float | bytes) -> None:
        """Store a small value durably (version counter, seq, signing key, ...)."""
        if key in _RESERVED_META:
            raise StoreError(f"meta key {key!r} is managed by the store")
        if isinstance(value, np.generic):  # numpy scalars do not bind: convert at the door
            value = value.item()
        if not isinstance(value, str | int | float | bytes):
            raise TypeError(f"meta values are str, int, float or bytes, not {type(value).__name__}")
        if isinstance(value, int) and not -(2**63) <= value <= _INT64_MAX:
            raise ValueOutOfBounds(f"meta {key!r}: {value} does not fit a signed 64-bit INTEGER")
        await self._submit(((_SET_META, ((key, value),)),))

    # ------------------------------------------------------------------ cells

    async def write_cells(self, origin: str, arrays: Mapping[str, np.ndarray], *,
                          relaxed: bool = False) -> None:
        """Upsert ``origin``'s cells, newer version wins; returns once committed.

        ``arrays`` holds every field of ``CELL_DTYPES`` (e.g. ``Delta.arrays()``);
        other dtypes are accepted only if they cast safely. Replaying cells is
        harmless: a cell whose version is not greater than the stored one is
        ignored, exactly as in the in-memory merge. ``relaxed``: cells received
        from a peer, which a power loss may take back (module docstring); a
        node's own cells never are.
        """
        m, rows = _cell_rows(origin, arrays)
        if m:
            await self._submit(((_UPSERT_CELL, rows),), relaxed=relaxed)

    async def load_cells(self) -> dict[str, dict[str, np.ndarray]]:
        """Every origin's cells as ``CELL_DTYPES`` arrays, sorted by unsigned ``(key, action)``."""
        if self._closed:
            raise StoreError(f"store {self.path} is closed")
        out: dict[str, dict[str, np.ndarray]] = {}
        async with self._lock:  # one snapshot: no batch commits between the queries
            try:
                origins = await self._conn.execute_fetchall(
                    "SELECT DISTINCT origin FROM cells ORDER BY origin")
                for (origin,) in origins:
                    cursor = await self._conn.execute(
                        "SELECT key, action, q, lw, n, succ, fail, version FROM cells "
                        "WHERE origin = ? ORDER BY key, action", (origin,))
                    parts = [np.empty(0, _ROW_DTYPE)]
                    while chunk := await cursor.fetchmany(_CHUNK):  # bounded Python objects
                        parts.append(np.array(chunk, dtype=_ROW_DTYPE))
                    await cursor.close()
                    out[origin] = _cells_from_table(np.concatenate(parts))
            except (sqlite3.Error, ValueError) as exc:
                raise StoreError(f"reading cells from {self.path} failed: {exc}") from None
        return out

    async def delete_origin(self, origin: str) -> int:
        """Forget every cell of ``origin`` (``origin_ttl`` expiry); returns how many."""
        return await self._submit((("DELETE FROM cells WHERE origin = ?", ((origin,),)),),
                                  counted=True)

    # ------------------------------------------------------------------ peers and trust

    async def upsert_peer(self, rec: PeerRecord) -> None:
        """Insert or replace everything stored about ``rec.node_id``."""
        extra = json.dumps(rec.extra, sort_keys=True, separators=(",", ":"))
        # Plain Python types now (a numpy scalar would fail the whole shared batch later).
        row = (str(rec.node_id), rec.public_key, int(rec.epoch), int(rec.seq), str(rec.status),
               float(rec.last_seen), float(rec.trust), int(rec.version), extra)
        await self._submit(((_UPSERT_PEER, (row,)),))

    async def upsert_peers(self, recs: Sequence[PeerRecord]) -> None:
        """``upsert_peer`` for many records in one statement and one transaction."""
        if not recs:
            return
        rows = []
        for rec in recs:
            extra = json.dumps(rec.extra, sort_keys=True, separators=(",", ":"))
            rows.append((str(rec.node_id), rec.public_key, int(rec.epoch), int(rec.seq),
                         str(rec.status), float(rec.last_seen), float(rec.trust),
                         int(rec.version), extra))
        await self._submit(((_UPSERT_PEER, tuple(rows)),))

    async def forget_peer(self, node_id: str) -> int:
        """Delete everything stored about a peer (``origin_ttl`` expiry): cells, record, trust
        history, kept payloads, in one transaction; returns the rows deleted."""
        one = ((node_id,),)
        return await self._submit((("DELETE FROM cells WHERE origin = ?", one),
                                   ("DELETE FROM peers WHERE node_id = ?", one),
                                   ("DELETE FROM trust_events WHERE peer = ?", one),
                                   ("DELETE FROM relay_payloads WHERE origin = ?", one)),
                                  counted=True)

    # ------------------------------------------------------------------ relayable payloads

    async def keep_relay_payload(self, origin: str, kind: str, stamp: tuple[int, int],
                                 payload: bytes, *,
                                 drop: Sequence[tuple[int, int]] = ()) -> None:
        """Keep an origin's signed payload (``kind`` birth or delta), and forget ``drop``
        (payloads of that kind superseded by it); one transaction. A birth replaces the
        origin's earlier ones."""
        await self._submit(_relay_steps(origin, kind, stamp, payload, drop))

    def keep_relay_payload_soon(self, origin: str, kind: str, stamp: tuple[int, int],
                                payload: bytes, *, drop: Sequence[tuple[int, int]] = ()) -> None:
        """``keep_relay_payload`` without waiting: it joins the next commit (``_defer``).

        For payloads a crash may lose (a relay is then smaller, never wrong): a
        node keeping every received delta pays no fsync of its own for them.
        """
        self._defer(_relay_steps(origin, kind, stamp, payload, drop))

    def drop_relay_payloads_soon(self, origin: str, kind: str,
                                 stamps: Sequence[tuple[int, int]]) -> None:
        """Forget kept payloads that newer ones made unnecessary; joins the next commit."""
        if stamps:
            self._defer(_drop_relay_steps(origin, kind, stamps))

    async def relay_payloads(self, origin: str, kind: str,
                             stamps: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """The kept payloads of ``origin`` of that kind among ``stamps``, by stamp (missing: left out)."""
        want = {(int(e), int(q)) for e, q in stamps}
        if not want:
            return {}
        rows = await self._read("SELECT epoch, seq, payload FROM relay_payloads "
                                "WHERE origin = ? AND kind = ?", (str(origin), str(kind)))
        return {(int(r[0]), int(r[1])): bytes(r[2]) for r in rows if (int(r[0]), int(r[1])) in want}

    async def load_relay_payloads(self) -> list[tuple[str, str, tuple[int, int], bytes]]:
        """Every kept payload as ``(origin, kind, (epoch, seq), payload)``, oldest first per origin."""
        rows = await self._read("SELECT origin, kind, epoch, seq, payload FROM relay_payloads "
                                "ORDER BY origin, epoch, seq")
        return [(r[0], r[1], (int(r[2]), int(r[3])), bytes(r[4])) for r in rows]

    async def load_peers(self) -> dict[str, PeerRecord]:
        """Every stored peer by node id."""
        rows = await self._read(
            "SELECT node_id, public_key, epoch, seq, status, last_seen, trust, version, extra "
            "FROM peers ORDER BY node_id")
        return {r[0]: PeerRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], json.loads(r[8]))
                for r in rows}

    async def add_trust_events(self, events: list[TrustEvent]) -> None:
        """Append trust changes; only the last ``TRUST_EVENTS_KEPT`` per peer are kept."""
        if not events:
            return
        rows = [(str(e.peer), float(e.ts), float(e.old), float(e.new), str(e.reason))
                for e in events]
        trims = tuple((_TRIM_TRUST_EVENTS, (peer, TRUST_EVENTS_KEPT))
                      for peer in dict.fromkeys(e.peer for e in events))
        await self._submit(((_ADD_TRUST_EVENT, rows),), trims=trims)

    async def trust_events(self, peer: str, limit: int = TRUST_EVENTS_KEPT) -> list[TrustEvent]:
        """The last ``limit`` trust events of ``peer``, oldest first."""
        rows = await self._read(
            "SELECT ts, old, new, reason FROM trust_events WHERE peer = ? "
            "ORDER BY ts DESC, id DESC LIMIT ?", (peer, limit))
        return [TrustEvent(peer, *r) for r in reversed(rows)]

    # ------------------------------------------------------------------ merge log

    async def log_merge(self, ts: float, stats: MergeStats) -> None:
        """Record what one merge did; only the last ``MERGE_LOG_KEPT`` rows are kept."""
        row = (float(ts), str(stats.origin), int(stats.cells), int(stats.new), int(stats.updated),
               int(stats.conflicts), int(stats.rejected), int(stats.total_visits),
               float(stats.confidence))
        await self._submit(((_LOG_MERGE, (row,)),), relaxed=True,
                           trims=((_TRIM_MERGE_LOG, (MERGE_LOG_KEPT,)),))

    # ------------------------------------------------------------------ status

    async def stats(self) -> dict[str, Any]:
        """Row counts per table, origins, file sizes and commit counters, for status output."""
        counts = await self._read(
            "SELECT " + ", ".join(f"(SELECT count(*) FROM {t})" for t in _TABLES)
            + ", (SELECT count(DISTINCT origin) FROM cells)")
        out: dict[str, Any] = dict(zip(_TABLES, counts[0], strict=False))
        out["origins"] = counts[0][-1]
        out["file_bytes"] = _size(self.path)
        out["wal_bytes"] = _size(self.path.with_name(self.path.name + "-wal"))
        out.update(schema_version=self.schema_version, synchronous=self.synchronous,
                   commits=self.commits, writes=self.writes)
        return out


def _relay_steps(origin: str, kind: str, stamp: tuple[int, int], payload: bytes,
                 drop: Sequence[tuple[int, int]]) -> tuple[tuple[str, Params], ...]:
    """The statements of ``keep_relay_payload`` (arguments converted now, before queueing)."""
    origin, kind = str(origin), str(kind)
    steps: list[tuple[str, Params]] = []
    if kind == "birth":
        steps.append(("DELETE FROM relay_payloads WHERE origin = ? AND kind = 'birth'",
                      ((origin,),)))
    if drop:
        steps.extend(_drop_relay_steps(origin, kind, drop))
    steps.append(("INSERT OR IGNORE INTO relay_payloads (origin, kind, epoch, seq, payload) "
                  "VALUES (?, ?, ?, ?, ?)",
                  ((origin, kind, int(stamp[0]), int(stamp[1]), bytes(payload)),)))
    return tuple(steps)


def _drop_relay_steps(origin: str, kind: str,
                      stamps: Sequence[tuple[int, int]]) -> tuple[tuple[str, Params], ...]:
    return (("DELETE FROM relay_payloads WHERE origin = ? AND kind = ? AND epoch = ? AND seq = ?",
             tuple((str(origin), str(kind), int(e), int(s)) for e, s in stamps)),)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


async def _migrate_and_check(conn: aiosqlite.Connection, path: Path, *, federation: str,
                             node_id: str, fingerprint: str) -> int:
    """Check version and identity, run pending migrations, all in one transaction.

    A store that is refused (too new, someone else's) is left untouched.
    """
    migrations = list(MIGRATIONS)  # read at call time so tests can extend it
    await conn.execute("BEGIN IMMEDIATE")
    try:
        await conn.execute(_CREATE_META)
        meta = dict(await conn.execute_fetchall(
            "SELECT key, value FROM meta WHERE key IN (?, ?, ?, ?)",
            ("schema_version", *_IDENTITY)))
        version = int(meta.get("schema_version", 0))
        if version > len(migrations):
            raise StoreError(
                f"{path} has schema version {version}, but this peerd only knows versions "
                f"up to {len(migrations)}: upgrade peerd or use another state directory")
        wanted = {"federation": federation, "node_id": node_id, "fingerprint": fingerprint}
        wrong = [f"{k} {meta[k]!r} (expected {v!r})"
                 for k, v in wanted.items() if k in meta and meta[k] != v]
        if wrong:
            raise StoreError(f"{path} belongs to another node or task: it holds "
                             + ", ".join(wrong))
        for i in range(version, len(migrations)):
            await migrations[i](conn)
        await conn.executemany(_SET_META, [("schema_version", len(migrations)), *wanted.items()])
        await conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            await conn.execute("ROLLBACK")
        raise
    return len(migrations)
