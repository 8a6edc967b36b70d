"""The relay desk: what a node keeps, plans and re-sends for silent origins, and which relays it accepts."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from peerd import wire
from peerd.delta import Delta
from peerd.errors import MalformedMessage, OriginLimit, OriginMismatch, StoreError
from peerd.liveness import OFFLINE, ONLINE
from peerd.relay_desk import (
    Keep,
    RelayDesk,
    check_relayed,
    judged_out,
    relay_payloads,
    sync_wait,
    to_keep,
)

FED = "fed"
FP = "fp0"


def header(node: str, seq: int, epoch: int = 1) -> wire.Header:
    return wire.Header(fed=FED, node=node, fp=FP, epoch=epoch, seq=seq, ts=0.0)


def delta_msg(sender: str, seq: int, cells: list[tuple[int, int, int]], *,
              origin: str | None = None) -> wire.DeltaMsg:
    """A delta of ``origin`` (default: the sender) with cells ``(key, action, version)``."""
    keys, acts, vers = (list(c) for c in zip(*cells, strict=True)) if cells else ([], [], [])
    top = max(vers, default=0)
    d = Delta.build(origin or sender, FP, 0, top, keys=keys, actions=acts, q=[0.5] * len(keys),
                    lw=[1.0] * len(keys), n=[1] * len(keys), succ=[0] * len(keys),
                    fail=[0] * len(keys), version=vers)
    return wire.DeltaMsg(header(sender, seq), delta=d)


def birth(node: str, seq: int) -> wire.Birth:
    return wire.Birth(header(node, seq), public_key=bytes(32))


# -- the pure decisions ---------------------------------------------------------------------------


def test_only_births_and_non_empty_deltas_of_the_senders_own_cells_are_kept() -> None:
    """A relayer can re-send only what the origin itself signed: its birth, its own cells."""
    assert to_keep(birth("X", 3)) == Keep("birth", "X", (1, 3))
    k = to_keep(delta_msg("X", 4, [(7, 0, 2), (9, 1, 5)]))
    assert k is not None and (k.kind, k.origin, k.stamp, k.to_version) == ("delta", "X", (1, 4), 5)
    assert k.cells is not None
    assert [c.tolist() for c in k.cells] == [[7, 9], [0, 1], [2, 5]]
    assert to_keep(delta_msg("X", 5, [(7, 0, 2)], origin="Y")) is None  # someone else's cells
    assert to_keep(delta_msg("X", 6, [])) is None  # nothing in it to re-send
    assert to_keep(wire.Heartbeat(header("X", 7), version=1, size=1)) is None


def test_a_relay_carries_only_an_admitted_origins_births_and_own_deltas() -> None:
    """Other types, a delta of another origin's cells, and an origin past max_origins are refused."""
    def admits(origin: str) -> bool:
        return origin == "X"

    check_relayed(birth("X", 1), own="me", admits=admits, max_origins=4)
    check_relayed(delta_msg("X", 2, [(1, 0, 1)]), own="me", admits=admits, max_origins=4)
    check_relayed(birth("me", 1), own="me", admits=admits, max_origins=4)  # own: the node ignores it
    with pytest.raises(MalformedMessage, match="heartbeat of 'X' cannot be relayed"):
        check_relayed(wire.Heartbeat(header("X", 3), version=1, size=1), own="me", admits=admits,
                      max_origins=4)
    with pytest.raises(OriginMismatch):
        check_relayed(delta_msg("X", 4, [(1, 0, 1)], origin="Y"), own="me", admits=admits,
                      max_origins=4)
    with pytest.raises(OriginLimit, match="max_origins = 4"):
        check_relayed(birth("Z", 1), own="me", admits=admits, max_origins=4)


def test_judged_out_is_quarantined_or_trusted_below_the_threshold() -> None:
    """Quarantine always judges out; low trust only when a threshold is set, strictly below it."""
    assert judged_out(True, 2.0, 0.0)
    assert judged_out(False, 0.2, 0.5)
    assert not judged_out(False, 0.5, 0.5)
    assert not judged_out(False, 0.1, 0.0)  # no threshold: trust alone never judges out


def test_a_live_origin_gets_a_few_sync_intervals_to_answer_itself() -> None:
    assert sync_wait(True, 2.0) == pytest.approx(0.0)
    assert sync_wait(False, 2.0) == pytest.approx(6.0)


def test_relay_payloads_come_from_memory_else_the_store_in_kept_order() -> None:
    """A payload neither in memory nor read back (its write did not commit) is left out."""
    kept = [("birth", (1, 1), b"b"), ("delta", (1, 2), None), ("delta", (1, 3), b"d3"),
            ("delta", (1, 4), None)]
    assert relay_payloads(kept, {(1, 2): b"d2", (9, 9): b"other"}) == [b"b", b"d2", b"d3"]
    assert relay_payloads([], {}) == []


# -- the desk, through a host in memory ----------------------------------------------------------


class Archive:
    """The store's relay rows in memory; ``fail`` makes reads raise ``StoreError``."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, tuple[int, int]], bytes] = {}
        self.fail = False

    def keep_relay_payload_soon(self, origin: str, kind: str, stamp: tuple[int, int],
                                payload: bytes, *, drop: Any = ()) -> None:
        if kind == "birth":
            self.rows = {k: v for k, v in self.rows.items() if k[:2] != (origin, "birth")}
        self.drop_relay_payloads_soon(origin, kind, drop)
        self.rows[(origin, kind, stamp)] = payload

    def drop_relay_payloads_soon(self, origin: str, kind: str, stamps: Any) -> None:
        for st in stamps:
            self.rows.pop((origin, kind, st), None)

    async def relay_payloads(self, origin: str, kind: str,
                             stamps: Any) -> dict[tuple[int, int], bytes]:
        if self.fail:
            raise StoreError("disk gone")
        return {st: self.rows[(origin, kind, st)] for st in stamps
                if (origin, kind, st) in self.rows}


class Counters:
    relays_sent = 0
    relayed_payloads_sent = 0
    bytes_sent = 0


class Transport:
    """Records publishes; refuses every one after ``accept`` of them."""

    connected = True

    def __init__(self, accept: int = 1000) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.accept = accept

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1,
                      retain: bool = False) -> bool:
        if len(self.sent) >= self.accept:
            return False
        self.sent.append((topic, payload))
        return True


class Table:
    quarantine_below = 0.5


class Config:
    relay = True


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    warning = info
    debug = info


class Host:
    """The few public members of a node the desk uses (``RelayHost``)."""

    id = "me"
    fed = FED

    def __init__(self) -> None:
        self.config = Config()
        self.counters = Counters()
        self.store: Archive | None = Archive()
        self.transport: Transport | None = Transport()
        self.quarantine: set[str] = set()
        self.table = Table()
        self.log = Log()
        self.status: dict[str, str] = {}
        self.trust: dict[str, float] = {}
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def liveness_status(self, peer: str) -> str:
        return self.status.get(peer, "unknown")

    def trust_of(self, peer: str) -> float:
        return self.trust.get(peer, 1.0)


def desk_with(host: Host, *, keep_payloads: bool = True) -> RelayDesk:
    return RelayDesk(host, keep_payloads=keep_payloads, delay=0.0)  # no jitter: plans are exact


def test_keeping_follows_the_config_and_compacts_the_store_too() -> None:
    """``relay = false`` keeps nothing; otherwise a superseded payload goes from the store too."""
    host = Host()
    desk = desk_with(host)
    host.config.relay = False
    desk.keep(birth("X", 1), b"b1")
    assert desk.relays.origins() == [] and host.store is not None and host.store.rows == {}
    host.config.relay = True
    desk.keep(birth("X", 1), b"b1")
    desk.keep(delta_msg("X", 2, [(1, 0, 1)]), b"d1")
    desk.keep(delta_msg("X", 3, [(1, 0, 2)]), b"d2")  # supersedes d1's only cell
    desk.keep(delta_msg("X", 4, [(1, 0, 1)]), b"stale")  # nothing newer in it: not kept
    assert desk.relays.payloads("X") == [b"b1", b"d2"]
    assert sorted(host.store.rows.values()) == [b"b1", b"d2"]


async def test_a_relay_sends_birth_then_deltas_and_counts_what_went() -> None:
    """Verbatim on the relay topic, payloads the store holds included; a refused publish ends it."""
    host = Host()
    desk = desk_with(host, keep_payloads=False)  # deltas in the store only
    desk.keep(birth("X", 1), b"b1")
    desk.keep(delta_msg("X", 2, [(1, 0, 1)]), b"d1")
    desk.keep(delta_msg("X", 3, [(2, 0, 2)]), b"d2")
    await desk.relay("X", 0)
    assert host.transport is not None
    assert host.transport.sent == [(wire.topic(FED, "relay", "me"), p) for p in (b"b1", b"d1", b"d2")]
    assert (host.counters.relays_sent, host.counters.relayed_payloads_sent,
            host.counters.bytes_sent) == (1, 3, 6)
    assert host.log.events[-1] == ("origin_relayed", {"peer": "X", "since": 0, "payloads": 3})

    host.transport = Transport(accept=1)
    await desk.relay("X", 1)  # after version 1: the birth and d2; only the birth goes
    assert [p for _t, p in host.transport.sent] == [b"b1"]
    assert host.counters.relayed_payloads_sent == 4

    assert host.store is not None
    host.store.fail = True
    host.transport = Transport()
    await desk.relay("X", 0)  # the store cannot be read: what is in memory still goes
    assert [p for _t, p in host.transport.sent] == [b"b1"]
    assert ("relay_payloads_unreadable", {"peer": "X", "error": "disk gone"}) in host.log.events


async def test_nothing_is_relayed_for_a_judged_out_origin_or_a_birth_alone() -> None:
    host = Host()
    desk = desk_with(host)
    desk.keep(birth("X", 1), b"b1")
    desk.keep(birth("Y", 1), b"y1")
    desk.keep(delta_msg("Y", 2, [(1, 0, 1)]), b"y2")
    host.trust["Y"] = 0.2  # below quarantine_below
    await desk.relay("X", 0)
    await desk.relay("Y", 0)
    assert host.transport is not None and host.transport.sent == []
    host.trust["Y"] = 1.0
    await desk.relay("Y", 0)
    assert [p for _t, p in host.transport.sent] == [b"y1", b"y2"]


def test_a_newcomer_is_offered_the_silent_origins_not_judged_out() -> None:
    host = Host()
    desk = desk_with(host)
    for origin in ("live", "gone", "liar", "new"):
        desk.keep(delta_msg(origin, 1, [(1, 0, 1)]), origin.encode())
    host.status = {"live": ONLINE, "gone": OFFLINE, "liar": OFFLINE}  # "new": never seen live
    host.quarantine = {"liar"}
    desk.offer("new")
    assert desk.plan.due(0.0) == [("gone", 0)]


def test_a_sync_request_plans_a_relay_only_past_what_is_kept_and_waits_for_a_live_origin() -> None:
    host = Host()
    desk = desk_with(host)
    desk.keep(delta_msg("X", 1, [(1, 0, 4)]), b"d4")
    desk.on_sync_request("X", 4, sync_interval=1.0)  # asks past all we hold: nothing to add
    desk.on_sync_request("Z", 0, sync_interval=1.0)  # holds nothing of Z
    assert desk.plan.pending() == 0
    host.status["X"] = ONLINE
    desk.on_sync_request("X", 2, sync_interval=1.0)
    assert desk.plan.due(2.9) == []  # a live origin gets three sync intervals to answer
    desk.covered("X", 2)  # ... and it did
    assert desk.plan.pending() == 0
    host.status["X"] = OFFLINE
    host.now = 100.0
    desk.on_sync_request("X", 2, sync_interval=1.0)
    assert desk.plan.due(100.0) == [("X", 2)]


def test_the_kept_index_matches_numpy_cells_given_as_arrays() -> None:
    """``to_keep`` hands the delta's own arrays to the store (no per-cell Python on this path)."""
    msg = delta_msg("X", 1, [(2**64 - 5, 1, 3)])
    k = to_keep(msg)
    assert k is not None and k.cells is not None
    assert k.cells[0] is msg.delta.keys and k.cells[0].dtype == np.uint64
