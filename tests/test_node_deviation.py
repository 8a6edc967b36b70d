"""The deviation round scores off the event loop: the loop runs meanwhile, verdicts equal the inline
ones, a peer forgotten meanwhile stays forgotten, and rounds do not overlap."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

import peerd.node as node_mod
from peerd import wire
from peerd.config import NodeConfig
from peerd.delta import Delta
from peerd.identity import Identity
from peerd.node import Node
from peerd.qtable import cells_room
from peerd.quarantine import MAX_MATRIX_ENTRIES, gather_cells, gather_origins
from peerd.task import state_key

ACTIONS = ["a", "b", "c", "d"]
FED = "offloop"
T0 = 1_800_000_000.0
PEERS = [f"p{i}" for i in range(7)] + ["liar"]


async def _node(peers: list[str] = PEERS, *, states: int = 120, seed: int = 3) -> Node:
    """A node holding the cells of ``peers`` (signed births: registry entries); "liar" inverts."""
    cfg = NodeConfig(federation=FED, node_id="host", actions=ACTIONS, secret="s", api_listen="",
                     q_bound=100.0, half_life=600.0, seed=1)
    node = Node(cfg, clock=lambda: T0, monotonic=lambda: T0)
    await node.open()
    fp = cfg.task.fingerprint
    rng = np.random.default_rng(seed)
    keys = np.array([state_key(f"s{j}", "s") for j in range(states)], np.uint64)
    truth = rng.uniform(0.0, 10.0, (states, len(ACTIONS)))
    for pid in peers:
        ident = Identity.from_seed(pid.encode().ljust(32, b"."))
        birth = wire.Birth(wire.Header(fed=FED, node=pid, fp=fp, epoch=1, seq=1, ts=T0),
                           public_key=ident.public_key, version=0)
        await node.receive(wire.topic(FED, "presence", pid), wire.encode(birth, ident))
        held = np.flatnonzero(rng.random(truth.size) < 0.6)
        s, a = np.divmod(held, len(ACTIONS))
        q = truth[s, a] + rng.normal(0.0, 0.2, held.size)
        if pid == "liar":
            q = -q
        order = np.lexsort((a, keys[s]))
        m = held.size
        n = rng.integers(1, 9, m)
        node.table.apply(Delta.build(
            pid, fp, 0, m, keys=keys[s][order], actions=a[order], q=q[order],
            lw=T0 / 600.0 + np.log2(n[order]), n=n[order], succ=np.zeros(m), fail=np.zeros(m),
            version=np.arange(1, m + 1)))
    assert node.peer_count() == len(peers)
    return node


class Gate:
    """Wraps the node's scoring (``_judge_cells``): it reports entering and waits for ``go``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = node_mod._judge_cells
        self.entered = threading.Event()
        self.go = threading.Event()
        self.calls: list[str] = []  # "enter"/"exit", in order
        self.threads: set[int] = set()
        self.results: list[Any] = []
        self.lock = threading.Lock()
        monkeypatch.setattr(node_mod, "_judge_cells", self)

    def __call__(self, *args: Any, **kw: Any) -> Any:
        with self.lock:
            self.calls.append("enter")
            self.threads.add(threading.get_ident())
        self.entered.set()
        released = self.go.wait(30)
        try:
            out = self.real(*args, **kw)
            self.results.append((released, out))
            return out
        finally:
            with self.lock:
                self.calls.append("exit")

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 30), "the round never reached its scoring"


def _same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for p, x in a.items():
        y = b[p]
        if x.quarantined != y.quarantined or x.cells != y.cells or (x.score is None) != (y.score is None):
            return False
        if x.score is not None and not np.isclose(x.score, y.score, rtol=1e-12, atol=0.0):
            return False
    return True


async def test_a_snapshot_holds_the_cells_delta_of_gives_even_after_a_forget() -> None:
    node = await _node()
    node.table.forget("p3")  # freed entries: not cells of anyone
    origins = [o for o in node.table.origins if node.table.max_version(o) > 0]
    want = gather_origins([node.table.delta_of(o) for o in origins], shared_only=True,
                          max_entries=MAX_MATRIX_ENTRIES)
    n = node.table.stored_entries
    for room in (None, cells_room(n), cells_room(n // 2)):  # touched room; too small: a copy
        snap = node.table.snapshot_cells(origins, room=room)
        got = gather_cells(snap.origins, *snap.arrays(), shared_only=True,
                           max_entries=MAX_MATRIX_ENTRIES)
        assert got.origins == want.origins and got.q.shape == want.q.shape
        assert np.array_equal(got.keys, want.keys) and np.array_equal(got.actions, want.actions)
        assert np.array_equal(got.n, want.n)
        np.testing.assert_allclose(got.q, want.q, rtol=1e-12, atol=0.0)
        np.testing.assert_allclose(got.lw, want.lw, rtol=1e-12, atol=0.0)
    await node.close()


async def test_the_snapshot_is_taken_when_the_round_starts() -> None:
    """Cells merged while the round is scored are not in its matrix (the copy is not the table)."""
    node = await _node()
    origins = [o for o in node.table.origins if node.table.max_version(o) > 0]
    snap = node.table.snapshot_cells(origins)
    before = snap.rec.copy()
    node.table.forget("p1")
    node.table.forget("p2")
    assert np.array_equal(snap.rec.view(np.uint8), before.view(np.uint8))
    await node.close()


async def test_verdicts_off_the_loop_equal_the_inline_ones() -> None:
    inline, threaded = await _node(), await _node()
    inline.off_loop_cells = 1 << 62
    threaded.off_loop_cells = 0
    for _ in range(2):  # the second round starts from the first's quarantine and trusts
        a = await inline.deviation_round()
        b = await threaded.deviation_round()
        assert _same(a, b)
        assert dict(inline.quarantine.held) == dict(threaded.quarantine.held)
        assert inline.trusts() == pytest.approx(threaded.trusts())
    assert "liar" in threaded.quarantine and threaded.excluded("liar")
    assert threaded.counters.quarantined == inline.counters.quarantined == 1
    await inline.close()
    await threaded.close()


async def _gated_node(monkeypatch: pytest.MonkeyPatch) -> tuple[Node, Gate]:
    """A node whose every deviation round goes off the loop, scoring behind a ``Gate``."""
    node = await _node()
    node.off_loop_cells = 0
    return node, Gate(monkeypatch)

async def test_the_loop_runs_while_a_round_is_scored(monkeypatch: pytest.MonkeyPatch) -> None:
    node, gate = await _gated_node(monkeypatch)

    async def other() -> None:  # runs only if the loop is free while the scoring waits for it
        await gate.wait_entered()
        gate.go.set()

    async with asyncio.timeout(60):
        verdicts, _ = await asyncio.gather(node.deviation_round(), other())
    assert gate.results and gate.results[0][0], "scoring ran without the loop getting a turn"
    assert threading.get_ident() not in gate.threads
    assert verdicts["liar"].quarantined
    await node.close()


async def test_small_rounds_stay_inline(monkeypatch: pytest.MonkeyPatch) -> None:
    node = await _node()
    node.off_loop_cells = 1 << 62
    gate = Gate(monkeypatch)
    gate.go.set()
    await node.deviation_round()
    assert gate.threads == {threading.get_ident()}
    await node.close()


async def test_a_peer_forgotten_during_a_round_is_not_brought_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    node, gate = await _gated_node(monkeypatch)
    async with asyncio.timeout(60):
        task = asyncio.create_task(node.deviation_round())
        await gate.wait_entered()
        await node._expire("liar")  # what the heartbeat does to a peer offline for origin_ttl
        gate.go.set()
        verdicts = await task
    _, (judged, entered, _left) = gate.results[0]
    assert "liar" in entered and judged["liar"].quarantined  # the copy judged it ...
    assert "liar" not in node.quarantine and "liar" not in verdicts  # ... the node forgot it
    assert not node.excluded("liar") and node.counters.quarantined == 0
    assert "liar" not in node.peer_ids()
    await node.close()


async def test_overlapping_rounds_do_not_both_run(monkeypatch: pytest.MonkeyPatch) -> None:
    node, gate = await _gated_node(monkeypatch)
    async with asyncio.timeout(60):
        first = asyncio.create_task(node.deviation_round())
        await gate.wait_entered()
        # an extra (probation) round while one is in flight: not run, the last verdicts returned
        assert await node.deviation_round(periodic=False) == {}
        gate.entered.clear()
        second = asyncio.create_task(node.deviation_round())  # periodic: waits for the first
        assert not await asyncio.to_thread(gate.entered.wait, 0.5), "a second round ran alongside"
        assert not second.done()
        gate.go.set()
        await first
        await second
    assert gate.calls == ["enter", "exit", "enter", "exit"]
    assert node._round is None
    await node.close()


async def test_an_extra_round_on_receipt_does_not_hold_the_receiver(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``wait=False`` (``Node._merge``): the caller goes on, the verdicts land when scored."""
    node, gate = await _gated_node(monkeypatch)
    async with asyncio.timeout(60):
        assert await node.deviation_round(periodic=False, wait=False) == {}
        await gate.wait_entered()
        assert "liar" not in node.quarantine  # not concluded: still scoring
        gate.go.set()
        task = node._round
        assert task is not None
        await task
    assert "liar" in node.quarantine and node.deviation["liar"].quarantined
    await node.close()


async def test_closing_cancels_a_round_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    node, gate = await _gated_node(monkeypatch)
    async with asyncio.timeout(60):
        await node.deviation_round(wait=False)
        await gate.wait_entered()
        task = node._round
        closing = asyncio.create_task(node.close())
        await asyncio.wait([task])
        assert task.cancelled()
        gate.go.set()  # the thread finishes; its verdicts go nowhere
        await closing
    assert "liar" not in node.quarantine and node._round is None
