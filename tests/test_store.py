"""Tests of ``peerd.store`` against real SQLite files in ``tmp_path``."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import peerd.store as store_module
from peerd.delta import CELL_DTYPES, CELL_FIELDS, MergeStats
from peerd.errors import ConfigError, NonFiniteValue, ShapeMismatch, StoreError, ValueOutOfBounds
from peerd.peers import PeerRecord, TrustEvent
from peerd.store import MERGE_LOG_KEPT, TRUST_EVENTS_KEPT, Store

REPO = Path(__file__).resolve().parent.parent
IDENTITY = {"federation": "fed", "node_id": "node-a", "fingerprint": "fp1"}
BIG = 2**63  # first uint64 key that is negative as int64


def cells(keys, actions=None, version=1, q=None) -> dict[str, np.ndarray]:
    """Cells for ``keys`` with values derived from key, action and version."""
    keys = np.asarray(keys, dtype=np.uint64)
    m = keys.shape[0]
    actions = np.zeros(m) if actions is None else np.asarray(actions)
    versions = np.broadcast_to(np.asarray(version, np.uint64), (m,))
    mix = (keys % np.uint64(1000)).astype(np.float64) + actions + versions.astype(np.float64)
    return {
        "keys": keys,
        "actions": actions.astype(CELL_DTYPES["actions"]),
        "q": (mix / 7 if q is None else np.broadcast_to(q, (m,))).astype(CELL_DTYPES["q"]),
        "lw": np.log1p(mix),
        "n": (versions + np.uint64(2)).astype(CELL_DTYPES["n"]),
        "succ": np.ones(m, CELL_DTYPES["succ"]),
        "fail": np.ones(m, CELL_DTYPES["fail"]),
        "version": versions.astype(CELL_DTYPES["version"]),
    }


def sorted_cells(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    order = np.lexsort((arrays["actions"], arrays["keys"]))
    return {f: arrays[f][order] for f in CELL_FIELDS}


def assert_cells_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    for f in CELL_FIELDS:
        assert got[f].dtype == CELL_DTYPES[f], f
        np.testing.assert_array_equal(got[f], want[f], err_msg=f)


async def open_store(path: Path, **kw) -> Store:
    return await Store.open(path, **{**IDENTITY, **kw})


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "peerd.db"


async def test_cells_round_trip_for_several_origins_with_keys_above_2_63(db: Path) -> None:
    """Cells of several origins come back exactly, with uint64 keys >= 2**63, sorted unsigned."""
    rng = np.random.default_rng(3)
    data = {
        "a": cells(rng.integers(0, 2**64 - 1, 500, np.uint64, endpoint=True),
                   rng.integers(0, 4, 500), version=rng.integers(1, 1000, 500)),
        "b": cells([0, 1, BIG - 1, BIG, 2**64 - 1], [3, 2, 1, 0, 3]),
        "c": cells(np.repeat(np.array([BIG + 5, 7], np.uint64), 3), [0, 1, 2] * 2),
    }
    async with await open_store(db) as store:
        for origin, arrays in data.items():
            await store.write_cells(origin, arrays)
        loaded = await store.load_cells()
    assert sorted(loaded) == ["a", "b", "c"]
    for origin, arrays in data.items():
        assert_cells_equal(loaded[origin], sorted_cells(arrays))
    assert loaded["a"]["keys"][-1] >= BIG > loaded["a"]["keys"][0]  # unsigned order, not signed


async def test_upsert_keeps_the_newest_version(db: Path) -> None:
    """Last writer wins by version: older or equal versions never overwrite a stored cell."""
    async with await open_store(db) as store:
        await store.write_cells("o", cells([1, 2, BIG], version=5, q=1.0))
        await store.write_cells("o", cells([1, 2, BIG], version=[4, 5, 6], q=2.0))
        await store.write_cells("o", cells([1, 2, BIG], version=[3, 3, 3], q=3.0))
        got = (await store.load_cells())["o"]
    np.testing.assert_array_equal(got["version"], [5, 5, 6])
    np.testing.assert_array_equal(got["q"], [1.0, 1.0, 2.0])


@pytest.mark.parametrize("m", [1, 50])
async def test_caller_may_reuse_its_arrays_once_write_cells_is_called(db: Path, m: int) -> None:
    """write_cells snapshots its arrays: changing them while the write waits changes nothing."""
    arrays = cells(np.arange(m), q=1.0)

    async def scribble() -> None:  # runs after write_cells queued, before the writer commits
        for a in arrays.values():
            a[...] = 0

    async with await open_store(db) as store:
        await asyncio.gather(store.write_cells("o", arrays), scribble())
        got = (await store.load_cells())["o"]
    assert got["q"].tolist() == [1.0] * m and got["keys"].tolist() == list(range(m))


async def test_concurrent_writers_share_transactions(db: Path) -> None:
    """Many concurrent write_cells calls are committed in far fewer transactions, all rows kept."""
    async with await open_store(db) as store:
        before = store.commits
        await asyncio.gather(*(store.write_cells(f"o{i % 3}", cells([i + BIG * (i % 2)]))
                               for i in range(1000)))
        commits = store.commits - before
        loaded = await store.load_cells()
    assert commits < 1000 / 10
    assert sum(len(c["keys"]) for c in loaded.values()) == 1000


async def test_writes_of_all_kinds_share_one_transaction_in_order(db: Path) -> None:
    """Meta, cells, peers and trust events queued together commit together, in order."""
    async with await open_store(db) as store:
        before = store.commits
        await asyncio.gather(
            store.set_meta("version", 1),
            store.write_cells("o", cells([1])),
            store.set_meta("version", 2),
            store.upsert_peer(PeerRecord("p")),
            store.add_trust_events([TrustEvent("p", 1.0, 1.0, 1.05, "agree")]),
        )
        assert store.commits == before + 1
        assert await store.get_meta("version") == 2


async def test_batches_commit_through_the_public_api_when_aiosqlite_internals_are_gone(
        db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without aiosqlite's private ``_execute`` the same batch commits, statement by statement."""
    public = []
    fallback = store_module._run_batch_public

    async def counting(*args: object) -> list[int]:
        public.append(1)
        return await fallback(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(store_module, "_run_batch_public", counting)
    monkeypatch.setattr(store_module, "_private_api", lambda conn: None)
    async with await open_store(db) as store:
        await asyncio.gather(store.set_meta("version", 7),
                             store.write_cells("o", cells([1, 2, BIG], version=3, q=1.5)))
        await store.write_cells("o", cells([1, 2, BIG], version=[2, 4, 3], q=2.5))
        got = (await store.load_cells())["o"]
        assert await store.get_meta("version") == 7
    assert len(public) >= 2
    np.testing.assert_array_equal(got["version"], [3, 4, 3])
    np.testing.assert_allclose(got["q"], [1.5, 2.5, 1.5])


async def test_reopening_gives_the_same_data(db: Path) -> None:
    """Everything written before close is there after reopening: cells, meta, peers, trust, log."""
    data = cells([5, BIG + 9, 2**64 - 1], [0, 1, 2], version=[1, 2, 3])
    peer = PeerRecord("p", b"\x01" * 32, epoch=3, seq=9, status="online", last_seen=12.5,
                      trust=1.2, version=44, extra={"addr": "x"})
    async with await open_store(db) as store:
        await store.write_cells("me", data)
        await store.set_meta("seq", 17)
        await store.upsert_peer(peer)
        await store.add_trust_events([TrustEvent("p", 1.0, 1.0, 1.05, "agree")])
        await store.log_merge(2.0, MergeStats(origin="p", cells=3, new=3))
    async with await open_store(db) as store:
        assert_cells_equal((await store.load_cells())["me"], sorted_cells(data))
        assert await store.get_meta("seq") == 17
        assert await store.load_peers() == {"p": peer}
        assert await store.trust_events("p") == [TrustEvent("p", 1.0, 1.0, 1.05, "agree")]
        stats = await store.stats()
    assert stats["merge_log"] == 1 and stats["cells"] == 3 and stats["origins"] == 1


@pytest.mark.parametrize("field", ["federation", "node_id", "fingerprint"])
async def test_store_of_another_federation_node_or_task_is_refused(db: Path, field: str) -> None:
    """Opening with another federation, node id or fingerprint raises StoreError naming both."""
    async with await open_store(db) as store:
        await store.write_cells("o", cells([1]))
    with pytest.raises(StoreError) as err:
        await open_store(db, **{field: "intruder"})
    assert IDENTITY[field] in str(err.value) and "intruder" in str(err.value)
    async with await open_store(db) as store:  # and the refused open changed nothing
        assert len((await store.load_cells())["o"]["keys"]) == 1


async def test_a_file_that_is_not_a_database_is_refused(db: Path) -> None:
    """Garbage at the database path raises StoreError, not a raw sqlite3 error."""
    db.parent.mkdir(parents=True)
    db.write_bytes(b"definitely not sqlite" * 100)
    with pytest.raises(StoreError, match="not a database"):
        await open_store(db)


async def test_schema_newer_than_the_code_is_refused(db: Path) -> None:
    """A database migrated by a newer peerd raises StoreError instead of being misread."""
    await (await open_store(db)).close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(StoreError, match="schema version 99"):
        await open_store(db)


async def test_pending_migrations_run_in_order_once(db: Path, monkeypatch) -> None:
    """Migrations added after a database was created run on the next open, in order, once."""
    ran: list[int] = []

    def migration(i: int):
        async def migrate(conn) -> None:
            ran.append(i)
            await conn.execute(f"CREATE TABLE extra{i} (x)")
        return migrate

    await (await open_store(db)).close()
    base = len(store_module.MIGRATIONS)
    monkeypatch.setattr(store_module, "MIGRATIONS",
                        [*store_module.MIGRATIONS, migration(base + 1), migration(base + 2)])
    async with await open_store(db) as store:
        assert store.schema_version == base + 2
    async with await open_store(db) as store:
        assert await store.get_meta("schema_version") == base + 2
    assert ran == [base + 1, base + 2]


async def test_failed_migration_leaves_the_database_untouched(db: Path, monkeypatch) -> None:
    """A migration that fails rolls back the whole upgrade: version and tables unchanged."""
    async def bad(conn) -> None:
        await conn.execute("CREATE TABLE half (x)")
        await conn.execute("THIS IS NOT SQL")

    await (await open_store(db)).close()
    monkeypatch.setattr(store_module, "MIGRATIONS", [*store_module.MIGRATIONS, bad])
    with pytest.raises(StoreError):
        await open_store(db)
    with sqlite3.connect(db) as conn:
        version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert version == (len(store_module.MIGRATIONS) - 1,) and "half" not in tables


async def test_wal_mode_and_synchronous_setting(db: Path) -> None:
    """The database is in WAL mode and the synchronous option is applied; OFF is refused."""
    for name, level in (("FULL", 2), ("normal", 1)):
        async with await open_store(db, synchronous=name) as store:
            assert await store._read("PRAGMA synchronous") == [(level,)]
            assert await store._read("PRAGMA journal_mode") == [("wal",)]
    with pytest.raises(ConfigError):
        await open_store(db, synchronous="OFF")


async def test_trust_events_are_capped_per_peer(db: Path) -> None:
    """Only the newest TRUST_EVENTS_KEPT events per peer survive; other peers keep theirs."""
    async with await open_store(db) as store:
        for start in range(0, 250, 50):
            await store.add_trust_events(
                [TrustEvent("a", float(t), 1.0, 1.0 + t / 1000, f"r{t}") for t in
                 range(start, start + 50)] + [TrustEvent("b", float(start), 1.0, 0.9, "x")])
        events = await store.trust_events("a", limit=1000)
        assert [e.ts for e in events] == [float(t) for t in range(150, 250)]
        assert len(await store.trust_events("b")) == 5
        assert [e.ts for e in await store.trust_events("a", limit=3)] == [247.0, 248.0, 249.0]
        assert (await store.stats())["trust_events"] == TRUST_EVENTS_KEPT + 5


async def test_peers_round_trip_and_upsert_replaces(db: Path) -> None:
    """Peer records come back equal, including None keys and JSON extra; upsert replaces."""
    p1 = PeerRecord("p1", None, extra={"nested": [1, 2], "s": "x"})
    p2 = PeerRecord("p2", b"\x00\xff" * 16, epoch=2, seq=5, status="suspect",
                    last_seen=1700000000.25, trust=0.4, version=2**40)
    async with await open_store(db) as store:
        await store.upsert_peer(p1)
        await store.upsert_peer(p2)
        await store.upsert_peer(p1.replace(status="offline", seq=3))
        peers = await store.load_peers()
    assert peers == {"p1": p1.replace(status="offline", seq=3), "p2": p2}


async def test_merge_log_keeps_only_the_last_rows(db: Path) -> None:
    """The merge log is trimmed to its newest MERGE_LOG_KEPT rows."""
    async with await open_store(db) as store:
        await asyncio.gather(*(store.log_merge(float(i), MergeStats(origin="o", cells=i))
                               for i in range(MERGE_LOG_KEPT + 50)))
        assert (await store.stats())["merge_log"] == MERGE_LOG_KEPT
        oldest = await store._read("SELECT min(ts), max(ts) FROM merge_log")
    assert oldest == [(50.0, float(MERGE_LOG_KEPT + 49))]


async def test_meta_values_keep_their_types(db: Path) -> None:
    """Meta stores str, int, float and bytes as given; store-managed keys cannot be set."""
    values = {"s": "text", "i": -(2**63), "f": 0.125, "b": b"\x00\x01"}
    async with await open_store(db) as store:
        for k, v in values.items():
            await store.set_meta(k, v)
        assert {k: await store.get_meta(k) for k in values} == values
        assert await store.get_meta("missing", 7) == 7
        assert await store.get_meta("federation") == "fed"
        with pytest.raises(StoreError):
            await store.set_meta("schema_version", 5)
        with pytest.raises(TypeError):
            await store.set_meta("x", [1])


async def test_bad_cells_are_rejected_before_they_reach_a_batch(db: Path) -> None:
    """Malformed arrays fail only their caller, at once; a concurrent good write still commits."""
    nan = cells([1], q=np.nan)
    short = {**cells([1, 2]), "n": np.ones(1, np.uint32)}
    signed = {**cells([1]), "keys": np.array([1], np.int64)}
    huge = cells([1], version=np.uint64(2**63))
    async with await open_store(db) as store:
        results = await asyncio.gather(
            store.write_cells("o", nan), store.write_cells("o", short),
            store.write_cells("o", signed), store.write_cells("o", huge),
            store.write_cells("o", cells([9])), return_exceptions=True)
        assert [type(r) for r in results] == [NonFiniteValue, ShapeMismatch, ShapeMismatch,
                                             ValueOutOfBounds, type(None)]
        assert (await store.load_cells())["o"]["keys"].tolist() == [9]


async def test_numpy_scalars_are_converted_before_queueing(db: Path) -> None:
    """numpy scalars (which sqlite3 cannot bind) in stats, peers and meta are stored as numbers."""
    stats = MergeStats(origin="p", cells=np.int64(3), total_visits=np.uint64(9),
                       confidence=np.float32(0.5))
    async with await open_store(db) as store:
        await asyncio.gather(
            store.log_merge(np.float64(1.5), stats),
            store.upsert_peer(PeerRecord("p", epoch=np.int64(2), trust=np.float32(1.25))),
            store.set_meta("n", np.uint32(7)), store.write_cells("o", cells([1])))
        assert await store.get_meta("n") == 7
        assert (await store.load_peers())["p"].trust == 1.25
        assert await store._read("SELECT cells, total_visits, confidence FROM merge_log") == [
            (3, 9, 0.5)]


async def test_failed_commit_fails_every_waiter_of_the_batch(db: Path) -> None:
    """A batch that cannot commit raises StoreError in all its callers, keeps nothing, and the
    store goes on working."""
    await (await open_store(db)).close()
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON cells WHEN NEW.key = 666 "
                     "BEGIN SELECT RAISE(ABORT, 'refused by test'); END")
    conn.close()
    async with await open_store(db) as store:
        before = store.commits
        results = await asyncio.gather(
            *(store.write_cells("o", cells([k])) for k in [1, 2, 666, 3]),
            store.set_meta("x", 1), return_exceptions=True)
        assert all(isinstance(r, StoreError) for r in results), results
        assert store.commits == before
        assert await store.load_cells() == {} and await store.get_meta("x") is None
        await store.write_cells("o", cells([4]))
        assert (await store.load_cells())["o"]["keys"].tolist() == [4]


async def test_close_commits_queued_writes_then_refuses_new_ones(db: Path) -> None:
    """close() waits for every queued write to commit; writing after close raises StoreError."""
    store = await open_store(db)
    tasks = [asyncio.create_task(store.write_cells("o", cells([k]))) for k in range(100)]
    # created last, so it runs after every write task has queued its write (FIFO scheduling)
    await asyncio.gather(*tasks, asyncio.create_task(store.close()))
    with pytest.raises(StoreError):
        await store.write_cells("o", cells([1]))
    await store.close()  # idempotent
    async with await open_store(db) as store:
        assert len((await store.load_cells())["o"]["keys"]) == 100


async def test_delete_origin_and_stats(db: Path) -> None:
    """delete_origin removes one origin's cells and returns how many; stats counts rows."""
    async with await open_store(db) as store:
        await store.write_cells("gone", cells([1, 2, 3]))
        await store.write_cells("kept", cells([1]))
        assert await store.delete_origin("gone") == 3
        assert await store.delete_origin("gone") == 0
        assert list(await store.load_cells()) == ["kept"]
        stats = await store.stats()
    assert stats["cells"] == 1 and stats["origins"] == 1 and stats["meta"] == 4
    assert stats["file_bytes"] > 0 and stats["writes"] == 4


@settings(max_examples=25, deadline=None)
@given(
    writes=st.lists(st.tuples(st.sampled_from([0, 7, BIG, 2**64 - 1]), st.integers(0, 2),
                              st.integers(1, 6)), min_size=1, max_size=25),
    seed=st.integers(0, 2**32 - 1),
)
def test_stored_state_does_not_depend_on_write_order(writes, seed) -> None:
    """Like the CRDT, the stored cells are the max-version cell per (key, action), in any order."""
    shuffled = writes[:]
    random.Random(seed).shuffle(shuffled)

    async def final_state(order) -> dict[str, np.ndarray]:
        with tempfile.TemporaryDirectory() as tmp:
            async with await open_store(Path(tmp) / "s.db") as store:
                await asyncio.gather(*(store.write_cells("o", cells([k], [a], v))
                                       for k, a, v in order))
                return (await store.load_cells())["o"]

    first, second = asyncio.run(final_state(writes)), asyncio.run(final_state(shuffled))
    assert_cells_equal(first, second)
    newest: dict[tuple[int, int], int] = {}
    for k, a, v in writes:
        newest[k, a] = max(v, newest.get((k, a), 0))
    want = [newest[ka] for ka in sorted(newest)]
    assert first["version"].tolist() == want


CHILD = r"""
import asyncio, sys
import numpy as np
from peerd.delta import CELL_DTYPES
from peerd.store import Store

async def writer(store, w):
    for i in range(10**9):
        key = (2**63 if w % 2 else 0) + w * 10**6 + i
        values = (key, w % 4, 0.5, 0.25, 1, 1, 0, i + 1)
        await store.write_cells(f"o{w % 3}", {f: np.array([v], CELL_DTYPES[f])
                                                for f, v in zip(CELL_DTYPES, values)})
        if w == 0:
            await store.set_meta("counter", i)
        print(f"ack o{w % 3} {key} {i}", flush=True)

async def main():
    store = await Store.open(sys.argv[1], federation="fed", node_id="node-a",
                             fingerprint="fp1", synchronous=sys.argv[2])
    await asyncio.gather(*(writer(store, w) for w in range(8)))

asyncio.run(main())
"""


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
async def test_acknowledged_writes_survive_sigkill(db: Path, synchronous: str) -> None:
    """Every write acknowledged before the process is SIGKILLed is in the database afterwards."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(db), synchronous, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    acks: list[list[str]] = []
    try:
        async with asyncio.timeout(20):
            while len(acks) < 400:  # wait for a condition: this many acknowledged writes
                line = await proc.stdout.readline()
                if not line:
                    pytest.fail(f"child died: {(await proc.stderr.read()).decode()[-2000:]}")
                if line.startswith(b"ack "):
                    acks.append(line.split()[1:])
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    rest = await proc.stdout.read()  # acknowledged after our last read, before the kill
    complete = rest.split(b"\n")[:-1]  # a line cut by the kill has no newline
    acks += [ln.split()[1:] for ln in complete if ln.startswith(b"ack ")]
    acks = [[a.decode() for a in ack] for ack in acks if len(ack) == 3]

    async with await open_store(db) as store:
        loaded = await store.load_cells()
        counter = await store.get_meta("counter")
    held = {(o, int(k)) for o, arrays in loaded.items() for k in arrays["keys"].tolist()}
    missing = [(o, k) for o, k, _ in acks if (o, int(k)) not in held]
    assert not missing, f"{len(missing)} of {len(acks)} acknowledged writes lost"
    last_counter = max(int(i) for o, k, i in acks if int(k) < 10**6)  # writer 0 is o0, key < 1e6
    assert counter >= last_counter


async def test_deferred_writes_cost_no_commit_of_their_own(db: Path) -> None:
    """A payload kept "soon" is committed with the next write (one commit, not two), and at close."""
    async with await open_store(db) as store:
        store.keep_relay_payload_soon("x", "delta", (1, 2), b"d2")
        assert await store.load_relay_payloads() == []  # not committed: nothing woke the writer
        commits = store.commits
        await store.set_meta("seq", 1)
        assert store.commits == commits + 1
        assert [r[3] for r in await store.load_relay_payloads()] == [b"d2"]
        store.keep_relay_payload_soon("x", "delta", (1, 3), b"d3", drop=[(1, 2)])
    async with await open_store(db) as store:  # close committed what was still deferred
        assert [(r[2], r[3]) for r in await store.load_relay_payloads()] == [((1, 3), b"d3")]
        assert await store.relay_payloads("x", "delta", [(1, 3), (9, 9)]) == {(1, 3): b"d3"}


async def test_relaxed_batches_commit_without_fsync_and_others_at_the_configured_level(db: Path) -> None:
    """Peers' cells alone commit at NORMAL (SIGKILL-safe); a batch with own cells at FULL again."""
    async with await open_store(db, synchronous="FULL") as store:
        await store.write_cells("peer", cells([1], version=[1]), relaxed=True)
        assert await store._read("PRAGMA synchronous") == [(1,)]
        await asyncio.gather(store.write_cells("peer", cells([2], version=[2]), relaxed=True),
                             store.write_cells("me", cells([3], version=[1])))
        assert await store._read("PRAGMA synchronous") == [(2,)]
        assert sorted((await store.load_cells()).keys()) == ["me", "peer"]
