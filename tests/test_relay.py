"""Relayed catch-up: a late joiner gets a silent origin's cells, verifiably signed by that origin."""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import Any

import msgpack
import numpy as np
from support import eventually, fast_config
from test_registry import FED, SignedPeer, fresh_lw, open_node

from peerd import wire
from peerd.delta import Delta
from peerd.node import Node
from peerd.relay import RelayPlanner, RelayStore
from peerd.testing.broker import Broker
from peerd.transport import MqttTransport

_FEDS = itertools.count()

# -- the store and the planner alone -----------------------------------------------------------


def test_newer_payloads_supersede_older_ones_and_dead_payloads_are_dropped() -> None:
    """A payload is kept while it carries the latest version of at least one cell."""
    store = RelayStore()
    store.add_birth("x", (1, 1), b"birth")
    store.add_delta("x", (1, 2), b"d2", 2, [(1, 0, 1), (2, 0, 2)])
    store.add_delta("x", (1, 3), b"d3", 3, [(1, 0, 3)])  # supersedes cell (1, 0) only
    assert store.payloads("x") == [b"birth", b"d2", b"d3"]
    store.add_delta("x", (1, 4), b"d4", 4, [(2, 0, 4)])  # d2 has no live cell left
    assert store.payloads("x") == [b"birth", b"d3", b"d4"]
    assert store.payloads("x", since=3) == [b"birth", b"d4"]
    store.add_delta("x", (1, 1), b"old", 1, [(1, 0, 1)])  # late and stale: not kept
    assert b"old" not in store.payloads("x")


def test_only_a_delta_past_since_answers_a_sync_request() -> None:
    """A kept birth alone reaches past no version: nothing to relay for an origin that has
    published nothing (at a fleet's start, every holder relayed every birth otherwise)."""
    store = RelayStore()
    store.add_birth("x", (1, 1), b"birth")
    assert not store.reaches_past("x", 0) and not store.reaches_past("nobody", 0)
    store.add_delta("x", (1, 2), b"d3", 3, [(1, 0, 3)])
    assert store.reaches_past("x", 0) and store.reaches_past("x", 2)
    assert not store.reaches_past("x", 3)


async def test_a_sync_request_for_an_origin_that_published_nothing_plans_no_relay() -> None:
    """The node holds X's birth only: B's sync request for X since 0 plans nothing. Once X's
    delta is held, the same request (X gone silent) plans a relay."""
    node = await open_node()
    x, b = SignedPeer("X", node.task.fingerprint), SignedPeer("B", node.task.fingerprint)
    try:
        await x.birth(node)
        await b.birth(node)

        async def ask(since: int) -> None:
            msg = wire.SyncRequest(b.header(), origin="X", since=since)
            await node.receive(wire.topic(FED, "sync", "B"), b.payload(msg))

        await ask(0)
        assert node.relay_plan.pending() == 0
        await x.delta(node, 11, lw=fresh_lw(node))
        await x.death(node)
        await ask(0)
        assert node.relay_plan.pending() == 1
    finally:
        await node.close()


async def test_a_relay_of_the_nodes_own_delta_is_ignored_not_rejected() -> None:
    """Relays meant for others reach the origin too: it pins no key of its own, and used to
    count each one as unknown_sender. Now nothing is counted and nothing changes."""
    node = await open_node()
    b = SignedPeer("B", node.task.fingerprint)
    try:
        await b.birth(node)
        header = wire.Header(fed=FED, node=node.id, fp=node.task.fingerprint, epoch=1, seq=1,
                             ts=0.0)
        own = Delta.build(node.id, node.task.fingerprint, 0, 1, keys=[5], actions=[0], q=[9.0],
                          lw=[fresh_lw(node)], n=[1], succ=[0], fail=[0], version=[1])
        payload = wire.encode(wire.DeltaMsg(header, delta=own), node.identity)
        await node.receive(wire.topic(FED, "relay", "B"), payload)
        assert node.counters.rejected == {}
        assert node.table.size == 0 and node.table.version == 0
    finally:
        await node.close()


async def test_a_relayed_old_delta_does_not_anchor_the_origins_version_rate() -> None:
    """A relay of X's old delta (version 1) arrives before X's own catch-up answer (version
    100, past ``version_burst``) on a clock that has not moved: the answer is applied, not
    rejected as ``version_rate`` (a fresh sybil rejected honest tables so, and the simulation,
    whose clock stands still while it waits, stalled). The bound still holds from X's answer on."""
    node = await open_node(version_burst=10)
    fp = node.task.fingerprint
    x, b = SignedPeer("X", fp), SignedPeer("B", fp)
    lw = fresh_lw(node)

    def delta(since: int, upto: int, keys: list[int], versions: list[int]) -> bytes:
        d = Delta.build("X", fp, since, upto, keys=keys, actions=[0] * len(keys),
                        q=[0.5] * len(keys), lw=[lw] * len(keys), n=[1] * len(keys),
                        succ=[0] * len(keys), fail=[0] * len(keys), version=versions)
        return x.payload(wire.DeltaMsg(x.header(), delta=d))

    try:
        await x.birth(node)
        await b.birth(node)
        await node.receive(wire.topic(FED, "relay", "B"), delta(0, 1, [1], [1]))
        assert node.counters.relayed_deltas_applied == 1
        await node.receive(wire.topic(FED, "delta", "X"), delta(0, 100, [1, 2], [1, 100]))
        assert node.counters.rejected == {}
        assert node.known_version("X") == 100
        await node.receive(wire.topic(FED, "delta", "X"), delta(100, 200, [3], [200]))
        assert node.counters.rejected == {"version_rate": 1}
        assert node.known_version("X") == 100
    finally:
        await node.close()


class _Sent:
    """A transport that records what the node publishes (no broker)."""

    connected = True

    def __init__(self) -> None:
        self.topics: list[str] = []

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1,
                      retain: bool = False) -> bool:
        self.topics.append(topic)
        return True


async def test_an_origin_judged_out_is_not_relayed() -> None:
    """A quarantined origin, gone silent, is neither planned for a newcomer nor relayed when
    asked for; the same origin out of quarantine is (the relay itself works)."""
    node = await open_node()
    fp = node.task.fingerprint
    x, b = SignedPeer("X", fp), SignedPeer("B", fp)
    sent = _Sent()
    try:
        await x.birth(node)
        await x.delta(node, 11, lw=fresh_lw(node))
        await x.death(node)
        node.transport = sent  # type: ignore[assignment]
        node.quarantine.held["X"] = 1
        await b.birth(node)  # a newcomer: silent origins are offered to it
        assert node.relay_plan.pending() == 0
        await node.relay_desk.relay("X", 0)
        assert sent.topics == []
        del node.quarantine.held["X"]
        await node.relay_desk.relay("X", 0)
        assert sent.topics == [wire.topic(FED, "relay", node.id)] * 2  # X's birth and delta
    finally:
        node.transport = None
        await node.close()


def test_array_cells_with_many_actions_supersede_per_cell() -> None:
    """Cells given as arrays (as the node passes a delta's): the same key under different
    actions are different cells, a repeated cell counts once at its newest version, and a
    payload goes only when every one of its cells is superseded."""
    import numpy as np

    def cells(keys: list[int], acts: list[int], vers: list[int]) -> tuple[np.ndarray, ...]:
        return (np.array(keys, np.uint64), np.array(acts, np.uint16), np.array(vers, np.uint64))

    store = RelayStore()
    big = 2**64 - 5
    assert store.add_delta("x", (1, 1), b"a", 3, cells([big, big, 7, 7], [0, 1, 0, 0], [1, 2, 1, 3]))
    assert store.add_delta("x", (1, 2), b"b", 4, cells([big], [0], [4]))  # a keeps (big, 1), (7, 0)
    assert store.payloads("x") == [b"a", b"b"]
    assert store.add_delta("x", (1, 3), b"c", 6, cells([big, 7], [1, 0], [5, 6]))
    assert store.payloads("x") == [b"b", b"c"]  # a had no live cell left
    kept, dropped = store.add_delta("x", (1, 4), b"d", 3, cells([7], [0], [3]))  # stale
    assert not kept and dropped == []


def test_storage_is_bounded_per_origin() -> None:
    """Past the byte bound the oldest payloads go, and the eviction is counted."""
    store = RelayStore(max_bytes_per_origin=100)
    for i in range(10):
        store.add_delta("x", (1, i + 1), bytes(30), i + 1, [(i, 0, i + 1)])
    assert store.size("x") <= 100
    assert store.evicted == 7


def test_without_payloads_in_memory_the_index_and_the_bound_still_hold() -> None:
    """``keep_payloads=False`` (a node with a store): same stamps kept and dropped, no bytes held."""
    full, lean = RelayStore(max_bytes_per_origin=100), RelayStore(max_bytes_per_origin=100,
                                                                  keep_payloads=False)
    for store in (full, lean):
        store.add_birth("x", (1, 1), b"birth")
        for i in range(6):
            store.add_delta("x", (1, i + 2), bytes(30), i + 2, [(i % 4, 0, i + 2)])
    assert [(k, st) for k, st, _ in lean.kept("x")] == [(k, st) for k, st, _ in full.kept("x")]
    assert [p for k, _, p in lean.kept("x") if k == "delta"] == [None] * 3
    assert lean.payloads("x") == [b"birth"]  # the birth stays in memory (a relay starts with it)
    assert lean.size("x") == full.size("x") <= 100 and lean.evicted == full.evicted == 3


def test_a_relay_seen_from_someone_else_cancels_ours() -> None:
    """Plans come due after their delay; a relay by another node covering them cancels them."""
    plan = RelayPlanner(delay=1.0)
    plan.want("x", 5, now=0.0)
    plan.want("y", 0, now=0.0, wait=10.0)
    plan.covered("x", 3)  # someone sent x's cells from version 3 on: covers "after 5"
    assert plan.due(20.0) == [("y", 0)]
    assert plan.pending() == 0


def test_an_origin_is_relayed_at_most_once_per_min_interval() -> None:
    """However many newcomers are born, one origin's payloads go out once per min_interval."""
    plan = RelayPlanner(delay=0.0, min_interval=10.0)
    plan.want("x", 0, now=0.0)
    assert plan.due(0.0) == [("x", 0)]
    plan.want("x", 0, now=1.0)  # another newcomer, right after
    assert plan.due(5.0) == []
    assert plan.due(10.0) == [("x", 0)]



def test_a_node_behind_on_its_inbound_messages_holds_its_relays_back() -> None:
    """While unread messages may hold the origin's answer, a due plan waits (``hold``): the
    answer, once read, cancels it. A plan is held ``max_hold`` past its time at most."""
    plan = RelayPlanner(delay=0.0, max_hold=30.0)
    plan.want("x", 5, now=0.0, wait=6.0)
    plan.want("y", 0, now=0.0, wait=6.0)
    assert plan.due(10.0, hold=True) == []
    plan.covered("x", 5)  # x's own answer was in the backlog
    assert plan.due(20.0, hold=True) == []
    assert plan.due(36.0, hold=True) == [("y", 0)]  # held long enough: relayed anyway
    plan.want("z", 0, now=40.0)
    assert plan.due(41.0, hold=False) == [("z", 0)]

# -- over a real broker ---------------------------------------------------------------------------


def _cells(node: Node, origin: str) -> dict[tuple[int, int], tuple[int, int]]:
    d = node.table.delta_of(origin)
    return {(int(k), int(a)): (int(n), int(v))
            for k, a, n, v in zip(d.keys, d.actions, d.n, d.version, strict=True)}


async def _start(node: Node) -> Node:
    await node.start()
    assert node.transport is not None and await node.transport.wait_connected(30)
    return node


async def test_late_joiner_gets_an_offline_origins_cells_relayed(broker: Broker) -> None:
    """A learns and goes offline; C joins later and holds A's cells with A's exact visit counts."""
    fed = f"rl{next(_FEDS)}-{os.getpid()}"
    a = await _start(Node(fast_config("A", broker.url, fed)))
    b = await _start(Node(fast_config("B", broker.url, fed)))
    c: Node | None = None
    try:
        for i in range(40):
            s = f"a-{i % 7}"
            await a.learn(s, a.act(s), float(i % 3), next_state=f"a-{(i + 1) % 7}")
        await a.flush()
        own = _cells(a, "A")
        await eventually(lambda: _cells(b, "A") == own, what="B holds A's cells")
        await a.stop()
        await eventually(lambda: any(p["node"] == "A" and p["status"] == "offline"
                                     for p in b.peer_table()), what="B sees A offline")
        c = await _start(Node(fast_config("C", broker.url, fed)))
        await eventually(lambda: _cells(c, "A") == own, what="C holds A's cells, relayed")
        assert sum(n for n, _ in _cells(c, "A").values()) == 40  # A's exact visits
        assert b.counters.relays_sent >= 1 and c.counters.relayed_deltas_applied >= 1
        assert c.verifier.pinned("A") == a.identity.public_key  # from A's own relayed birth
        assert c.counters.rejected.get("bad_signature", 0) == 0
    finally:
        for nd in (a, b, c):
            if nd is not None:
                await nd.stop()


def _tamper(payload: bytes) -> bytes:
    """The same signed frame with one cell's q changed: what a lying relayer would send."""
    frame = wire.peek(payload)
    fields = dict(frame.fields)
    cells = dict(fields["cells"])
    q = dict(cells["q"])
    assert q["c"] == wire.CODEC_RAW
    values = np.frombuffer(q["d"], "<f4").copy()
    values[0] += 1.0
    q["d"] = values.tobytes()
    cells["q"] = q
    fields["cells"] = cells
    body = msgpack.packb(fields, use_bin_type=True)
    return msgpack.packb({"v": 1, "b": body, "s": frame.signature}, use_bin_type=True)


async def test_a_relayed_forgery_is_rejected_and_counted(broker: Broker) -> None:
    """A relay of A's delta with one altered cell fails A's signature: counted, nothing applied."""
    fed = f"rf{next(_FEDS)}-{os.getpid()}"
    a = await _start(Node(fast_config("A", broker.url, fed)))
    c = await _start(Node(fast_config("C", broker.url, fed)))
    liar = MqttTransport(broker.url, client_id=f"liar-{fed}", subscriptions=[])

    async def _noop_message(topic: str, payload: bytes, retain: bool) -> None:
        return None

    async def _noop_connect() -> None:
        return None

    runner = asyncio.create_task(liar.run(_noop_message, _noop_connect))
    try:
        await a.learn("s", 0, 1.0, done=True)
        await a.flush()
        await eventually(lambda: c.table.max_version("A") == 1, what="C got A's delta")
        delta_payload = c.relays.payloads("A")[-1]  # A's signed delta, kept by C for relaying
        before = c.table.view()
        assert await liar.wait_connected(20)
        forged = _tamper(delta_payload)
        assert await liar.publish(wire.topic(fed, "relay", "liar"), forged, qos=1)
        await eventually(lambda: c.counters.rejected.get("bad_signature", 0) >= 1,
                         what="forged relay rejected")
        after = c.table.view()
        assert all(np.array_equal(x, y) for x, y in zip(before, after, strict=True))
        assert c.trust_of("A") == 1.0  # the origin did not sign this: it loses nothing
    finally:
        await liar.disconnect()
        runner.cancel()
        await a.stop()
        await c.stop()


async def test_restarted_node_gets_what_an_offline_origin_published_while_it_was_away(
        broker: Broker, tmp_path: Any) -> None:
    """C knew A; while C was down A learned more and left; C's new life gets the rest, relayed."""
    fed = f"rr{next(_FEDS)}-{os.getpid()}"
    a = await _start(Node(fast_config("A", broker.url, fed)))
    b = await _start(Node(fast_config("B", broker.url, fed)))
    c: Node | None = await _start(Node(fast_config("C", broker.url, fed, state_dir=str(tmp_path / "c"))))
    again: Node | None = None
    try:
        for i in range(10):
            await a.learn(f"a-{i % 4}", i % 3, 1.0, done=True)
        await a.flush()
        await eventually(lambda: c.table.max_version("A") == 10, what="C got A's first cells")
        await c.stop()
        c = None
        for i in range(10, 30):
            await a.learn(f"a-{i % 6}", i % 3, 1.0, done=True)
        await a.flush()
        own = _cells(a, "A")
        await eventually(lambda: _cells(b, "A") == own, what="B holds all of A")
        await a.stop()
        await eventually(lambda: b.liveness_status("A") == "offline", what="B sees A offline")
        again = await _start(Node(fast_config("C", broker.url, fed, state_dir=str(tmp_path / "c"))))
        assert again.pinned_key("A") == a.identity.public_key  # not a newcomer: A was pinned
        await eventually(lambda: _cells(again, "A") == own, what="C's new life holds all of A")
        assert again.counters.relayed_deltas_applied >= 1
    finally:
        for nd in (a, b, c, again):
            if nd is not None:
                await nd.stop()


async def test_a_restarted_holder_still_relays_from_its_store(broker: Broker, tmp_path: Any) -> None:
    """B keeps A's signed payloads in SQLite: after B restarts, a newcomer still gets A's cells."""
    fed = f"rs{next(_FEDS)}-{os.getpid()}"
    a = await _start(Node(fast_config("A", broker.url, fed)))
    b: Node | None = await _start(Node(fast_config("B", broker.url, fed, state_dir=str(tmp_path / "b"))))
    again: Node | None = None
    c: Node | None = None
    try:
        for i in range(25):
            await a.learn(f"a-{i % 5}", i % 3, float(i % 2), done=True)
        await a.flush()
        own = _cells(a, "A")
        await eventually(lambda: _cells(b, "A") == own, what="B holds A's cells")
        await a.stop()
        await eventually(lambda: b.liveness_status("A") == "offline", what="B sees A offline")
        await b.stop()
        b = None
        again = await _start(Node(fast_config("B", broker.url, fed, state_dir=str(tmp_path / "b"))))
        assert [k for k, _st, _p in again.relays.kept("A")].count("delta") >= 1, \
            "A's delta payloads reindexed from the store"
        c = await _start(Node(fast_config("C", broker.url, fed)))
        await eventually(lambda: _cells(c, "A") == own, what="C holds A's cells, relayed by B")
        assert c.pinned_key("A") == a.identity.public_key
    finally:
        for nd in (a, b, again, c):
            if nd is not None:
                await nd.stop()


async def test_kept_payloads_are_compacted_in_the_store_too(tmp_path: Any) -> None:
    """A payload superseded in memory is deleted on disk: the store holds what a relay needs."""
    from peerd.store import Store

    async with await Store.open(tmp_path / "s.db", federation="f", node_id="n",
                                fingerprint="fp") as store:
        await store.keep_relay_payload("x", "birth", (1, 1), b"b1")
        await store.keep_relay_payload("x", "delta", (1, 2), b"d2")
        await store.keep_relay_payload("x", "delta", (1, 3), b"d3", drop=[(1, 2)])
        await store.keep_relay_payload("x", "birth", (2, 1), b"b2")
        rows = await store.load_relay_payloads()
        assert [(k, st, p) for _o, k, st, p in rows] == [("delta", (1, 3), b"d3"),
                                                         ("birth", (2, 1), b"b2")]
        await store.forget_peer("x")
        assert await store.load_relay_payloads() == []


async def test_relay_off_keeps_no_payloads(broker: Broker) -> None:
    """``[gossip] relay = false``: the node merges peers' deltas but keeps none of their payloads."""
    fed = f"ro{next(_FEDS)}-{os.getpid()}"
    a = await _start(Node(fast_config("A", broker.url, fed)))
    b = await _start(Node(fast_config("B", broker.url, fed, relay=False)))
    try:
        await a.learn("s", 0, 1.0, done=True)
        await a.flush()
        await eventually(lambda: b.table.max_version("A") == 1, what="B merged A's delta")
        assert b.relays.origins() == [] and b.relays.payloads("A") == []
    finally:
        await a.stop()
        await b.stop()


def test_the_index_matches_a_plain_model_over_random_deltas() -> None:
    """Per cell the newest version wins; a payload is kept iff it carries one (sorted, vectorised index)."""
    rng = np.random.default_rng(3)
    store = RelayStore()
    newest: dict[tuple[int, int], tuple[int, int]] = {}  # cell -> (version, payload seq)
    for seq in range(1, 300):
        n = int(rng.integers(1, 8))
        keys = rng.integers(0, 40, n).astype(np.uint64) * np.uint64(2**58)
        acts = rng.integers(0, 3, n).astype(np.uint16)
        vers = rng.integers(1, 1000, n).astype(np.uint64)
        store.add_delta("x", (1, seq), b"p%d" % seq, int(vers.max()), (keys, acts, vers))
        for k, a, v in zip(keys.tolist(), acts.tolist(), vers.tolist(), strict=True):
            if v > newest.get((k, a), (0, 0))[0]:
                newest[(k, a)] = (v, seq)
    live = sorted({seq for _v, seq in newest.values()})
    assert [st for kind, st, _p in store.kept("x") if kind == "delta"] == [(1, s) for s in live]
