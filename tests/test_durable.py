"""A node publishes only up to its durable watermark, so peers never hold a cell a crash erased."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from support import eventually

from peerd.config import NodeConfig
from peerd.durable import DurableWatermark
from peerd.errors import StoreError
from peerd.node import Node
from peerd.qtable import QTable
from peerd.task import Task
from peerd.testing.broker import Broker

# -- the watermark alone ---------------------------------------------------------------------


def test_watermark_is_below_the_lowest_open_version_whatever_the_commit_order() -> None:
    """Commits returning out of order move the watermark only over a contiguous durable prefix."""
    w = DurableWatermark()
    for v in (1, 2, 3, 4):
        w.begin(v)
    assert w.value(4) == 0
    w.committed(3)
    w.committed(4)
    assert w.value(4) == 0  # 1 and 2 are still open
    w.committed(1)
    assert w.value(4) == 1
    w.committed(2)
    assert w.value(4) == 4
    assert w.open == 0


def test_failed_commit_holds_the_watermark_until_repaired() -> None:
    """A failed version stays open (later commits do not pass it) until a rewrite covering it commits."""
    w = DurableWatermark()
    for v in (1, 2, 3):
        w.begin(v)
    w.committed(1)
    w.failed(2)
    w.committed(3)
    assert w.needs_repair and w.value(3) == 1
    w.begin(4)
    w.repaired(3)  # a rewrite taken at version 3
    assert not w.needs_repair
    assert w.value(4) == 3  # 4 is still pending
    w.committed(4)
    assert w.value(4) == 4


def test_delta_upto_leaves_out_cells_changed_after_the_watermark() -> None:
    """``delta(since, upto)`` holds only cells with since < version <= upto, and says so in its range."""
    table = QTable(Task(["a", "b"]), "me", secret="s")
    for i in range(6):
        table.learn(f"s{i % 3}", 0, 1.0, done=True)  # versions 1..6 on three cells
    full = table.delta(since=0)
    capped = table.delta(since=0, upto=5)
    assert sorted(full.version.tolist()) == [4, 5, 6]
    assert sorted(capped.version.tolist()) == [4, 5]
    assert (capped.from_version, capped.to_version) == (0, 5)


# -- a node whose commits stall or fail -------------------------------------------------------


def _config(node_id: str, broker: Broker | None, fed: str, state: Path | None = None) -> NodeConfig:
    return NodeConfig(federation=fed, node_id=node_id, actions=["a", "b"], secret="s",
                      broker_url=broker.url if broker else "",
                      state_dir=str(state) if state else "", api_listen="",
                      heartbeat_interval=0.3, sync_interval=0.2, publish_every=1)


async def test_in_process_node_does_not_publish_past_a_stalled_commit(
        broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the commit of version 3 stalls, a peer gets versions 1–2 only; then everything."""
    fed = f"dur-{os.getpid()}-{broker.kind}"
    peer = Node(_config("peer", broker, fed))
    node = Node(_config("node", broker, fed, tmp_path / "node"))
    for nd in (peer, node):
        await nd.start()
        assert await nd.transport.wait_connected(20)
    release = asyncio.Event()
    assert node.store is not None
    real_write = node.store.write_cells

    async def stalling_write(origin: str, arrays: dict[str, np.ndarray]) -> None:
        if origin == "node" and 3 in arrays["version"].tolist():
            await release.wait()
        await real_write(origin, arrays)

    monkeypatch.setattr(node.store, "write_cells", stalling_write)
    try:
        tasks = [asyncio.create_task(node.learn(f"s{i}", 0, 1.0, done=True)) for i in range(6)]
        await eventually(lambda: sum(t.done() for t in tasks) == 5, what="5 commits returned")
        assert node.watermark == 2 and node.table.version == 6
        await node.flush()
        await eventually(lambda: peer.table.max_version("node") == 2, what="peer got 1..2")
        assert node.published_version == 2
        release.set()
        await asyncio.gather(*tasks)
        assert node.watermark == 6
        await node.flush()
        await eventually(lambda: peer.table.max_version("node") == 6, what="peer got the rest")
        assert int(peer.table.total_visits()) == 6
    finally:
        release.set()
        await node.stop()
        await peer.stop()


async def test_failed_commit_is_repaired_before_its_cell_is_published(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed own commit raises to the caller, holds the watermark, and a rewrite releases it."""
    node = Node(_config("node", None, "dur-fail", tmp_path / "node"))
    await node.start()
    assert node.store is not None
    real_write = node.store.write_cells
    broken = {"on": True}

    async def failing_write(origin: str, arrays: dict[str, np.ndarray]) -> None:
        if broken["on"]:
            raise StoreError("disk full (injected)")
        await real_write(origin, arrays)

    try:
        await node.learn("s0", 0, 1.0, done=True)
        monkeypatch.setattr(node.store, "write_cells", failing_write)
        with pytest.raises(StoreError):
            await node.learn("s1", 1, 1.0, done=True)
        assert node.watermark == 1 and node.table.version == 2
        await node._repair_durability()  # still broken: stays put
        assert node.watermark == 1
        broken["on"] = False
        await eventually(lambda: node.watermark == 2, what="publisher repaired the failed commit")
    finally:
        broken["on"] = False
        await node.stop()
    again = Node(_config("node", None, "dur-fail", tmp_path / "node"))
    await again.open()
    assert again.table.version == 2  # the repaired cell is on disk
    assert int(again.table.visits("s1")[1]) == 1
    await again._close_store()


CHILD = textwrap.dedent("""
    import asyncio, sys
    from peerd import logs
    from peerd.config import NodeConfig
    from peerd.errors import StoreError
    from peerd.node import Node
    from peerd.store import Store

    STALL, FAIL, N = 38, 12, 40  # 38: the last change of its cell
    real_write = Store.write_cells
    failed = set()

    async def write_cells(self, origin, arrays):
        versions = arrays["version"].tolist()
        if origin == "A" and STALL in versions:
            await asyncio.Event().wait()       # this commit never returns
        if origin == "A" and FAIL in versions and FAIL not in failed:
            failed.add(FAIL)
            raise StoreError("injected commit failure")
        await real_write(self, origin, arrays)

    Store.write_cells = write_cells

    async def main():
        logs.configure("warning")
        url, state, fed = sys.argv[1:4]
        node = Node(NodeConfig(federation=fed, node_id="A", actions=["a", "b"], secret="s",
                               state_dir=state, broker_url=url, api_listen="",
                               heartbeat_interval=0.3, sync_interval=0.2, publish_every=1))
        await node.start()
        await node.transport.wait_connected(20)
        async def one(i):
            try:
                await node.learn(f"s{i % 5}", i % 2, float(i), done=True)
            except StoreError:
                pass
        # Phase 1: version FAIL fails once; the publisher's repair rewrites it.
        await asyncio.gather(*(one(i) for i in range(N // 2)))
        while node.watermark != N // 2:
            await asyncio.sleep(0.02)
        # Phase 2: the commit of version STALL never returns; the later ones do.
        tasks = [asyncio.create_task(one(i)) for i in range(N // 2, N)]
        while sum(t.done() for t in tasks) < N // 2 - 1:
            await asyncio.sleep(0.02)
        while node.watermark != STALL - 1:
            await asyncio.sleep(0.02)
        await node.flush()
        print("flushed", node.watermark, node.table.version, flush=True)
        await asyncio.Event().wait()
    asyncio.run(main())
""")


async def test_peers_hold_no_cell_the_restarted_node_lacks(broker: Broker, tmp_path: Path) -> None:
    """Commits stall (v38) and fail (v12), the process is SIGKILLed: peers hold nothing it lost."""
    fed = f"durk-{os.getpid()}-{broker.kind}"
    peer = Node(_config("B", broker, fed))
    await peer.start()
    assert await peer.transport.wait_connected(20)
    state = tmp_path / "A"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, broker.url, str(state), fed,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line.split()[:3] == [b"flushed", b"37", b"40"], line
        await eventually(lambda: peer.table.max_version("A") >= 37, what="peer got A's cells")
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    # The Will (A's death) is queued after everything A published: once B has it, B has it all.
    await eventually(lambda: any(p["node"] == "A" and p["status"] == "offline"
                                 for p in peer.peer_table()), what="A's death seen")
    await peer.stop()
    assert peer.table.max_version("A") == 37  # nothing past the watermark went out

    again = Node(_config("A", None, fed, state))
    await again.open()
    try:
        held = peer.table.delta_of("A")
        mine = again.table.delta(since=0)
        mine_at = {(int(k), int(a)): i for i, (k, a) in enumerate(zip(mine.keys, mine.actions,
                                                                        strict=True))}
        for j, (k, a) in enumerate(zip(held.keys, held.actions, strict=True)):
            i = mine_at.get((int(k), int(a)))
            assert i is not None, f"peer holds cell {(int(k), int(a))} the restarted node lacks"
            assert int(mine.version[i]) >= int(held.version[j])
            if int(mine.version[i]) == int(held.version[j]):
                assert int(mine.n[i]) == int(held.n[j])
                assert abs(float(mine.q[i]) - float(held.q[j])) <= 1e-6 * (1 + abs(float(held.q[j])))
        assert again.table.version == 40  # the stalled 38 is lost, 39 and 40 committed
    finally:
        await again._close_store()
