"""One entry per peer (``peerd.registry``): round-trips, admission, expiry once, batched trust."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from peerd import liveness, wire
from peerd.config import NodeConfig
from peerd.delta import Delta, PatternSignature
from peerd.identity import Identity, Verifier
from peerd.liveness import OFFLINE, ONLINE
from peerd.node import Node
from peerd.peers import PeerRecord
from peerd.registry import Peer, PeerRegistry
from peerd.store import Store
from peerd.testing.broker import Broker

ACTIONS = ["a", "b", "c"]
FED = "reg"


class Clock:
    """A virtual wall clock the node reads (``Node(clock=...)``)."""

    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class SignedPeer:
    """A peer with a real key that hands the node correctly signed messages, no broker."""

    def __init__(self, node_id: str, fingerprint: str, *, epoch: int = 1) -> None:
        self.id, self.fp, self.epoch = node_id, fingerprint, epoch
        self.identity = Identity.generate()
        self.seq = 0
        self.version = 0

    def header(self) -> wire.Header:
        self.seq += 1
        return wire.Header(fed=FED, node=self.id, fp=self.fp, epoch=self.epoch, seq=self.seq,
                           ts=0.0)

    def payload(self, msg: Any) -> bytes:
        return wire.encode(msg, self.identity)

    async def birth(self, node: Node) -> None:
        msg = wire.Birth(self.header(), public_key=self.identity.public_key, version=self.version)
        await node.receive(wire.topic(FED, "presence", self.id), self.payload(msg))

    async def death(self, node: Node) -> None:
        await node.receive(wire.topic(FED, "presence", self.id),
                           self.payload(wire.Death(self.header())))

    async def delta(self, node: Node, key: int, *, lw: float,
                    signatures: tuple[PatternSignature, ...] = ()) -> None:
        self.version += 1
        d = Delta.build(self.id, self.fp, self.version - 1, self.version, keys=[key], actions=[0],
                        q=[0.5], lw=[lw], n=[1], succ=[0], fail=[0], version=[self.version])
        msg = wire.DeltaMsg(self.header(), delta=d, signatures=signatures)
        await node.receive(wire.topic(FED, "delta", self.id), self.payload(msg))


def make_config(node_id: str = "me", **kw: Any) -> NodeConfig:
    base: dict[str, Any] = dict(federation=FED, node_id=node_id, actions=ACTIONS, secret="s",
                                api_listen="", heartbeat_interval=15.0, peer_timeout=300.0,
                                origin_ttl=3600.0)
    base.update(kw)
    return NodeConfig(**base)


async def open_node(tmp_path: Path | None = None, clock: Clock | None = None, **kw: Any) -> Node:
    cfg = make_config(state_dir=str(tmp_path) if tmp_path else "", **kw)
    node = Node(cfg, clock=clock or Clock())
    await node.open()
    return node


def fresh_lw(node: Node) -> float:
    """The log-weight of one visit now (what a peer's own update produces)."""
    return node.clock() / node.config.half_life


# ------------------------------------------------------------------ pure: entries and records

def test_entry_round_trips_through_its_record() -> None:
    """Key, replay window, liveness, cursor and trust survive ``record`` / ``from_record``."""
    p = Peer("p", public_key=bytes(range(32)), replay={"delta": (3, 41), "birth": (3, 1),
                                                       "death": (2, 9)},
             trust=1.35, extra={"note": "x"})
    liveness.on_birth(p.life, 3, 500.0)
    p.cursor.known = 17
    rec = p.record()
    assert (rec.epoch, rec.seq, rec.status, rec.version) == (3, 41, ONLINE, 17)
    back = Peer.from_record(rec)
    assert back.public_key == p.public_key and back.replay == p.replay
    assert back.trust == pytest.approx(1.35) and back.cursor.known == 17
    assert (back.life.status, back.life.epoch, back.life.last_seen) == (ONLINE, 3, 500.0)
    assert back.extra == {"note": "x"}


def test_damaged_replay_window_in_a_record_is_dropped_not_fatal() -> None:
    rec = PeerRecord("p", extra={"replay": {"delta": "garbage", "birth": [1, 2]}})
    assert Peer.from_record(rec).replay == {"birth": (1, 2)}


async def test_registry_round_trips_through_the_store(tmp_path: Path) -> None:
    """``records`` → ``Store.upsert_peers`` → ``load_peers`` → ``load`` rebuilds equal entries."""
    reg = PeerRegistry()
    for i in range(5):
        p = reg.admit(f"p{i}")
        p.public_key = bytes([i]) * 32
        p.replay["delta"] = (1, 10 + i)
        p.trust = 0.5 + i / 10
        p.cursor.known = i
        liveness.on_birth(p.life, 1, 100.0 + i)
    async with await Store.open(tmp_path / "db", federation=FED, node_id="me",
                                fingerprint="f" * 16) as store:
        await store.upsert_peers(reg.records())
        again = PeerRegistry()
        again.load(await store.load_peers())
    assert again.ids() == reg.ids()
    for p in reg:
        q = again.get(p.node_id)
        assert q is not None and q.record() == p.record()


def test_legacy_verifier_snapshot_is_folded_into_entries() -> None:
    """A state dir of before the registry (pins in a "verifier" meta snapshot) keeps its pins."""
    old = Verifier()
    old._pins["p"] = b"k" * 32
    old._last[("p", "delta")] = (2, 7)
    reg = PeerRegistry()
    reg.load({}, old.snapshot())
    assert reg.verifier.pinned("p") == b"k" * 32
    assert reg.verifier.last_accepted("p", "delta") == (2, 7)


# ------------------------------------------------------------------ pure: admission

def test_admission_bounds_peers_but_not_allowlisted_ones() -> None:
    """Past ``max_origins`` a new id is not admitted; held and allowlisted ids always are."""
    reg = PeerRegistry(allowlist={"vip": b"v" * 32}, max_origins=2)
    reg.admit("a")
    assert reg.admits("b")
    reg.admit("b")
    assert not reg.admits("c")
    assert reg.admits("a") and reg.admits("vip")
    reg.remove("a")
    assert reg.admits("c")  # a freed entry frees its place


def test_the_verifier_keeps_pins_and_windows_in_the_entries() -> None:
    """A committed birth pins its key in the peer's entry; removing the entry unpins it."""
    reg = PeerRegistry()
    ident = Identity.generate()
    birth = wire.Birth(wire.Header(FED, "p", "f" * 16, 1, 1, 0.0), public_key=ident.public_key)
    reg.verifier.commit(birth)
    entry = reg.get("p")
    assert entry is not None and entry.public_key == ident.public_key
    assert entry.replay == {"birth": (1, 1)}
    reg.remove("p")
    assert reg.verifier.pinned("p") is None and reg.verifier.last_accepted("p", "birth") is None


# ------------------------------------------------------------------ node: lifecycle

async def test_a_heartbeat_writes_only_the_peers_that_changed(tmp_path: Path) -> None:
    """Saving costs per peer that spoke since the last heartbeat, not per peer of the fleet."""
    clock = Clock()
    node = await open_node(tmp_path, clock)
    peers = [SignedPeer(f"p{i:02d}", node.task.fingerprint) for i in range(20)]
    for peer in peers:
        await peer.birth(node)
    assert node.store is not None
    written: list[list[str]] = []
    real_upsert = node.store.upsert_peers

    async def spying_upsert(recs: Any) -> None:
        written.append(sorted(r.node_id for r in recs))
        await real_upsert(recs)

    node.store.upsert_peers = spying_upsert  # type: ignore[method-assign]
    await node.tick()
    assert written[-1] == [p.id for p in peers]  # all new
    await node.tick()
    assert written[-1] == []  # nothing changed: nothing written
    await peers[3].delta(node, node.table.key("s"), lw=fresh_lw(node))
    await node.tick()
    assert written[-1] == ["p03"]
    await node.close()

    again = await open_node(tmp_path, clock)
    assert again.store is not None
    stored = await again.store.load_peers()
    assert stored["p03"].version == 1 and stored["p04"].version == 0
    assert sorted(stored) == [p.id for p in peers]
    await again.close()


async def test_expiry_frees_cells_records_and_pins_exactly_once(tmp_path: Path) -> None:
    """After ``origin_ttl`` offline a peer's cells, rows, entry and pin go, once; it may come back."""
    clock = Clock()
    node = await open_node(tmp_path, clock)
    peer = SignedPeer("p", node.task.fingerprint)
    await peer.birth(node)
    await peer.delta(node, node.table.key("s"), lw=fresh_lw(node))
    await node.tick()  # persists the record
    assert node.table.origin_cells("p") == 1 and node.pinned_key("p") is not None
    assert node.store is not None
    assert "p" in await node.store.load_peers() and "p" in await node.store.load_cells()
    await peer.death(node)
    assert node.liveness_status("p") == OFFLINE

    forgotten: list[str] = []
    real_forget = node.table.forget

    def counting_forget(origin: str) -> int:
        forgotten.append(origin)
        return real_forget(origin)

    node.table.forget = counting_forget  # type: ignore[method-assign]
    clock.t += node.config.origin_ttl - 1
    await node.tick()
    assert forgotten == [] and "p" in node.peer_ids()
    clock.t += 2
    with capture_logs() as logs:
        node.rebind_logger()
        await node.tick()
        await node.tick()  # a second round finds nothing to free
    assert forgotten == ["p"]
    assert [e["peer"] for e in logs if e["event"] == "origin_expired"] == ["p"]
    assert node.table.origin_cells("p") == 0 and node.table.max_version("p") == 0
    assert "p" not in node.peer_ids() and node.pinned_key("p") is None
    assert "p" not in await node.store.load_peers()
    assert "p" not in await node.store.load_cells()

    # It comes back later: admitted as new, its birth pins its (new) key, its cells come in again.
    back = SignedPeer("p", node.task.fingerprint, epoch=2)
    await back.birth(node)
    await back.delta(node, node.table.key("s"), lw=fresh_lw(node))
    assert node.pinned_key("p") == back.identity.public_key
    assert node.liveness_status("p") == ONLINE and node.table.origin_cells("p") == 1
    assert node.trust_of("p") == 1.0
    await node.close()


async def test_max_origins_refuses_a_new_peer_counted_logged_once_changing_nothing() -> None:
    """The (max+1)-th peer is refused as ``origin_limit`` (logged once); an allowlisted one is not."""
    vip = SignedPeer("vip", "")
    node = await open_node(max_origins=2, allowlist={"vip": vip.identity.public_key.hex()})
    vip.fp = node.task.fingerprint
    peers = [SignedPeer(f"p{i}", node.task.fingerprint) for i in range(4)]
    for p in peers[:2]:
        await p.birth(node)
    assert node.peer_ids() == ["p0", "p1"]
    before = node.table.view()
    with capture_logs() as logs:
        node.rebind_logger()
        for p in peers[2:]:
            await p.birth(node)
            await p.delta(node, node.table.key("x"), lw=fresh_lw(node))
    assert node.counters.rejected == {"origin_limit": 4}
    assert node.peer_ids() == ["p0", "p1"] and node.pinned_key("p2") is None
    assert node.table.size == before[0].size
    assert len([e for e in logs if e.get("reason") == "origin_limit"]) == 1  # rate-limited
    await vip.birth(node)
    await vip.delta(node, node.table.key("v"), lw=fresh_lw(node))
    assert "vip" in node.peer_ids() and node.table.origin_cells("vip") == 1
    assert node.counters.rejected == {"origin_limit": 4}


async def test_stranger_rejection_log_state_stays_bounded() -> None:
    """Rejections from thousands of invented sender ids do not grow the node's state."""
    node = await open_node()
    for i in range(3000):
        await node.receive(wire.topic(FED, "delta", f"x{i}"), b"\x00garbage")
    assert sum(node.counters.rejected.values()) == 3000
    assert len(node._stranger_logged) <= 256
    assert node.peer_ids() == []


# ------------------------------------------------------------------ node: batched trust

def sigs(key: int, action: int) -> tuple[PatternSignature, ...]:
    return (PatternSignature(key, action, 1.0, 50),)


async def test_trust_round_pushes_all_changes_in_one_batched_call() -> None:
    """A round judging several peers calls ``QTable.set_trusts`` once, and never ``set_trust``."""
    node = await open_node(probation_rounds=0)  # signatures only: probation would weigh them 0.1
    key = node.table.key("shared")
    peers = [SignedPeer(n, node.task.fingerprint) for n in ("h1", "h2", "h3", "liar")]
    for p in peers:
        await p.birth(node)
        await p.delta(node, key, lw=fresh_lw(node), signatures=sigs(key, 1 if p.id == "liar" else 0))
    calls: list[dict[str, float]] = []
    real = node.table.set_trusts
    node.table.set_trusts = lambda m: (calls.append(dict(m)), real(m))[1]  # type: ignore[method-assign]

    def no_single(*_: Any) -> None:
        raise AssertionError("per-peer set_trust in a trust round")

    node.table.set_trust = no_single  # type: ignore[method-assign]
    judged = await node.trust_round()
    assert set(judged) >= {"h1", "h2", "h3", "liar"}
    assert len(calls) == 1 and set(calls[0]) == {"h1", "h2", "h3", "liar"}
    assert node.trust_of("liar") < 1.0 < node.trust_of("h1")
    assert node.table.trust("liar") == pytest.approx(node.trust_of("liar"))
    assert node.alignments()["liar"] == 0.0
    assert await node.trust_round() == {}  # nothing fresh: no second batch
    assert len(calls) == 1


async def test_startup_pushes_stored_trust_in_one_batch(tmp_path: Path) -> None:
    """``open`` loads every stored peer's trust into the table with one ``set_trusts`` call."""
    async with await Store.open(tmp_path / "peerd.db", federation=FED, node_id="me",
                                fingerprint=Node(make_config()).task.fingerprint) as store:
        await store.upsert_peers([PeerRecord(f"p{i}", trust=0.5 + i / 10) for i in range(6)])
    calls: list[int] = []
    real = Node.__init__

    def patched(self: Node, *a: Any, **kw: Any) -> None:
        real(self, *a, **kw)
        inner = self.table.set_trusts
        self.table.set_trusts = lambda m: (calls.append(len(m)), inner(m))[1]  # type: ignore

    node_cls = type("CountingNode", (Node,), {"__init__": patched})
    node = node_cls(make_config(state_dir=str(tmp_path)), clock=Clock())
    await node.open()
    assert calls == [6]
    assert node.table.trust("p3") == pytest.approx(0.8) and node.trust_of("p3") == pytest.approx(0.8)
    await node.close()


# ------------------------------------------------------------------ over a real broker

async def test_admission_over_a_real_broker(broker: Broker) -> None:
    """With ``max_origins = 1`` a node holds the first peer it hears and refuses the second."""
    fed = f"adm-{id(broker)}"

    def cfg(nid: str, **kw: Any) -> NodeConfig:
        return NodeConfig(federation=fed, node_id=nid, actions=ACTIONS, secret="s",
                          broker_url=broker.url, api_listen="", heartbeat_interval=0.3, **kw)

    host = Node(cfg("host", max_origins=1))
    first = Node(cfg("first"))
    second = Node(cfg("second"))
    try:
        await host.start()
        await first.start()
        async with asyncio.timeout(20):
            while host.peer_ids() != ["first"]:
                await asyncio.sleep(0.02)
        await second.start()
        async with asyncio.timeout(20):
            while host.counters.rejected.get("origin_limit", 0) < 1:
                await asyncio.sleep(0.02)
        assert host.peer_ids() == ["first"] and host.pinned_key("second") is None
        assert "host" in second.peer_ids()  # the bound is the host's, not the federation's
    finally:
        for nd in (second, first, host):
            await nd.stop()
