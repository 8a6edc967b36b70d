"""Gossip bookkeeping (DESIGN §4): publish triggers, anti-entropy cursors, rate-limited asks. Pure."""

from __future__ import annotations

import itertools
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from peerd import gossip
from peerd.gossip import Cursor, GossipState


def make(**kw: float) -> GossipState:
    base: dict[str, Any] = dict(publish_every=10, publish_interval=60.0, sync_interval=2.0)
    base.update(kw)
    return GossipState(**base)


class Origins:
    """Cursors by origin, as the node's registry entries hold them, over the pure functions."""

    def __init__(self, sync_interval: float = 2.0) -> None:
        self.sync_interval = sync_interval
        self.cursors: dict[str, Cursor] = {}

    def _cur(self, origin: str) -> Cursor:
        return self.cursors.setdefault(origin, Cursor())

    def on_delta(self, origin: str, lo: int, hi: int, now: float) -> int | None:
        return gossip.on_delta(self._cur(origin), lo, hi, now, self.sync_interval)

    def on_advert(self, origin: str, version: int, now: float, wait: float = 0.0) -> int | None:
        return gossip.on_advert(self._cur(origin), version, now, self.sync_interval, wait=wait)

    def due_asks(self, now: float) -> list[tuple[str, int]]:
        """``gossip.due_ask`` over every cursor, as the node's publisher does."""
        out = []
        for origin, cur in self.cursors.items():
            since = gossip.due_ask(cur, now, self.sync_interval)
            if since is not None:
                out.append((origin, since))
        return out

    def known(self, origin: str) -> int:
        cur = self.cursors.get(origin)
        return cur.known if cur else 0

    def forget(self, origin: str) -> None:
        self.cursors.pop(origin, None)


# ------------------------------------------------------------------ publish

def test_publish_after_publish_every_versions() -> None:
    """A publish is due once ``publish_every`` own updates are unpublished, not before."""
    g = make()
    g.mark_published(0, now=0.0)
    assert not g.should_publish(9, now=1.0)
    assert g.should_publish(10, now=1.0)
    g.mark_published(10, now=1.0)
    assert not g.should_publish(19, now=2.0)
    assert g.should_publish(20, now=2.0)


def test_publish_after_interval_with_changes() -> None:
    """With fewer than ``publish_every`` changes, a publish is due once ``publish_interval`` has passed."""
    g = make()
    g.mark_published(0, now=100.0)
    assert not g.should_publish(1, now=159.9)
    assert g.should_publish(1, now=160.0)


def test_never_publish_without_changes() -> None:
    """However long it has been, nothing is due when nothing changed since the last publish."""
    g = make()
    g.mark_published(5, now=0.0)
    assert not g.should_publish(5, now=1e9)
    assert not g.should_publish(3, now=1e9)  # an older version is not a change either


def test_mark_published_never_goes_back() -> None:
    """Marking an older version published (a late answer) does not rewind ``published_version``."""
    g = make()
    g.mark_published(20, now=1.0)
    g.mark_published(12, now=2.0)
    assert g.published_version == 20
    assert g.last_publish == 2.0


# ----------------------------------------------------------------- catch-up

def test_contiguous_delta_advances_known() -> None:
    """A delta starting at or before ``known`` advances it to the delta's end and asks nothing."""
    g = Origins()
    assert g.on_delta("o", 0, 10, now=0.0) is None
    assert g.known("o") == 10
    assert g.on_delta("o", 10, 15, now=0.0) is None
    assert g.known("o") == 15
    assert g.on_delta("o", 3, 12, now=0.0) is None  # overlapping, older: no regression
    assert g.known("o") == 15
    assert g.on_delta("o", 12, 30, now=0.0) is None  # overlapping, newer: advances
    assert g.known("o") == 30


def test_gap_asks_from_known_and_does_not_advance() -> None:
    """A delta leaving a gap asks for everything after ``known`` and leaves ``known`` where it was."""
    g = Origins()
    g.on_delta("o", 0, 10, now=0.0)
    assert g.on_delta("o", 20, 30, now=1.0) == 10
    assert g.known("o") == 10
    assert g.on_delta("x", 5, 6, now=1.0) == 0  # never heard of x: ask from 0
    assert g.known("x") == 0


def test_advert_asks_when_behind() -> None:
    """A heartbeat/birth advertising a newer version asks from ``known``; an older or equal one does not."""
    g = Origins()
    g.on_delta("o", 0, 10, now=0.0)
    assert g.on_advert("o", 10, now=1.0) is None
    assert g.on_advert("o", 4, now=1.0) is None
    assert g.on_advert("o", 11, now=1.0) == 10
    assert g.on_advert("new", 3, now=1.0) == 0
    assert g.on_advert("empty", 0, now=1.0) is None


def test_patient_advert_waits_for_the_delta_in_flight() -> None:
    """A heartbeat ahead of a held origin asks only if its delta has not landed ``wait`` s later."""
    g = Origins(sync_interval=2.0)
    g.on_delta("o", 0, 10, now=0.0)
    assert g.on_advert("o", 11, now=1.0, wait=15.0) is None
    assert g.due_asks(now=15.9) == []
    assert g.on_delta("o", 10, 11, now=3.0) is None  # it landed: nothing to ask, ever
    assert g.due_asks(now=100.0) == []
    assert g.on_advert("o", 12, now=20.0, wait=15.0) is None
    assert g.on_advert("o", 13, now=30.0, wait=15.0) is None  # does not push the deadline back
    assert g.due_asks(now=34.9) == []
    assert g.due_asks(now=35.0) == [("o", 11)]  # still behind: ask from what we hold
    assert g.on_advert("new", 3, now=35.0, wait=15.0) == 0  # nothing held of it: ask at once


def test_ask_is_rate_limited_per_origin() -> None:
    """A second ask of the same origin within ``sync_interval`` returns None; after it, the version."""
    g = Origins(sync_interval=2.0)
    assert g.on_advert("o", 5, now=100.0) == 0
    assert g.on_advert("o", 6, now=101.0) is None
    assert g.on_delta("o", 3, 7, now=101.9) is None
    assert g.on_advert("other", 5, now=101.0) == 0  # the limit is per origin
    assert g.on_advert("o", 7, now=102.0) == 0
    assert g.on_advert("o", 7, now=103.0) is None


def test_fresh_cursor_is_asked_from_zero_at_once() -> None:
    """A dropped cursor (an expired origin's entry) starts over: asked from 0, at once."""
    g = Origins()
    g.on_delta("o", 0, 10, now=0.0)
    g.on_advert("o", 12, now=0.0)
    g.forget("o")
    assert g.known("o") == 0
    assert g.on_advert("o", 12, now=0.1) == 0


def test_deferred_ask_is_due_after_the_interval_if_still_behind() -> None:
    """An ask held back by the rate limit comes out of ``due_ask`` once, after the interval."""
    cur = Cursor()
    assert gossip.on_advert(cur, 5, 100.0, 2.0) == 0
    assert gossip.on_advert(cur, 9, 101.0, 2.0) is None  # rate-limited: deferred
    assert cur.deferred == 9
    assert gossip.due_ask(cur, 101.5, 2.0) is None  # not yet
    assert gossip.due_ask(cur, 102.0, 2.0) == 0
    assert gossip.due_ask(cur, 110.0, 2.0) is None  # asked once, not again
    done = Cursor()
    gossip.on_advert(done, 5, 0.0, 2.0)
    gossip.on_advert(done, 9, 0.5, 2.0)
    gossip.on_delta(done, 0, 9, 1.0, 2.0)  # caught up meanwhile
    assert done.deferred == 0 and gossip.due_ask(done, 5.0, 2.0) is None


def test_retained_birth_at_zero_asks_one_heartbeat_later_unless_a_delta_came() -> None:
    """A retained birth advertising 0 asks nothing at once: after ``wait`` from 0 if nothing of the
    origin arrived; its first delta cancels the ask. A birth advertising a version asks at once."""
    quiet = Cursor()  # an origin that published long ago, and nothing since: asked after the wait
    assert gossip.on_retained_birth(quiet, 0, 100.0, 2.0, wait=15.0) is None
    assert gossip.due_ask(quiet, 114.9, 2.0) is None
    assert gossip.due_ask(quiet, 115.0, 2.0) == 0
    assert gossip.due_ask(quiet, 200.0, 2.0) is None  # once
    live = Cursor()  # a fleet starting together: the first delta comes, nobody asks
    assert gossip.on_retained_birth(live, 0, 100.0, 2.0, wait=15.0) is None
    assert gossip.on_delta(live, 0, 10, 105.0, 2.0) is None
    assert gossip.due_ask(live, 1000.0, 2.0) is None
    assert gossip.on_retained_birth(Cursor(), 7, 100.0, 2.0, wait=15.0) == 0  # data to fetch
    held = Cursor(known=7)
    assert gossip.on_retained_birth(held, 3, 100.0, 2.0, wait=15.0) is None  # nothing new
    assert gossip.due_ask(held, 1000.0, 2.0) is None


def test_fleet_starting_together_asks_nobody_at_once() -> None:
    """N nodes started one after the other each see the earlier ones' retained births (at 0):
    no sync request at once (before: one per retained birth, N(N-1)/2, each sent to all N)."""
    n, asks = 64, 0
    cursors = [[Cursor() for _ in range(n)] for _ in range(n)]
    for i in range(n):
        for j in range(i):  # node i subscribes after j's retained birth
            asks += gossip.on_retained_birth(cursors[i][j], 0, float(i), 2.0, wait=60.0) is not None
    assert asks == 0
    for i in range(n):  # every origin's first delta (from 0) arrives within the wait
        for j in range(n):
            if i != j:
                assert gossip.on_delta(cursors[i][j], 0, 10, 30.0, 2.0) is None
    assert sum(gossip.due_ask(c, 1e6, 2.0) is not None for row in cursors for c in row) == 0


def test_pending_answers_coalesce_to_min_since() -> None:
    """Several sync requests before the publisher runs yield one answer from the lowest ``since``."""
    g = make()
    assert g.take_answer() is None
    g.on_sync_request(7)
    g.on_sync_request(3)
    g.on_sync_request(9)
    assert g.pending_answer == 3
    assert g.take_answer() == 3
    assert g.take_answer() is None
    g.on_sync_request(0)
    assert g.take_answer() == 0  # 0 is a real "since", not "nothing pending"


# ---------------------------------------------------------------- property

@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[tuple[int, int]], list[int], list[float]]:
    """Contiguous deltas of one origin, a delivery order with duplicates, and time steps."""
    sizes = draw(st.lists(st.integers(1, 5), min_size=1, max_size=12))
    bounds = [0]
    for s in sizes:
        bounds.append(bounds[-1] + s)
    deltas = list(itertools.pairwise(bounds))
    order = draw(st.permutations(range(len(deltas))))
    dups = draw(st.lists(st.integers(0, len(deltas) - 1), max_size=10))
    seq = list(order)
    for d in dups:
        seq.insert(draw(st.integers(0, len(seq))), d)
    steps = draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.5]), min_size=len(seq),
                          max_size=len(seq)))
    return deltas, seq, steps


@settings(max_examples=300, deadline=None)
@given(deliveries(), st.randoms(use_true_random=False))
def test_known_reaches_max_whatever_the_order(
    case: tuple[list[tuple[int, int]], list[int], list[float]], rnd: random.Random
) -> None:
    """Contiguous deltas in any order, duplicated, plus the answers to the asks bring ``known`` to the max."""
    deltas, seq, steps = case
    top = deltas[-1][1]
    g = Origins(sync_interval=2.0)
    asks: list[int] = []
    now = 0.0
    for i, step in zip(seq, steps, strict=True):
        now += step
        lo, hi = deltas[i]
        since = g.on_delta("o", lo, hi, now)
        assert g.known("o") <= top
        if since is not None:
            asks.append(since)
    assert (g.known("o") == top) or asks, "a gap was left without any ask"
    answers = list(asks) * 2  # the origin's answers, duplicated and shuffled as the broker may
    rnd.shuffle(answers)
    for since in answers:  # the origin answers with one delta (since, its version]
        now += 0.1
        assert g.on_delta("o", since, top, now) is None
    assert g.known("o") == top


def test_an_overheard_ask_that_covers_our_need_defers_ours_once() -> None:
    """Another node's request for everything after ``since`` ≤ known: its broadcast answer covers
    us, so our ask waits one interval (and still goes out then); a repeater cannot hold it longer."""
    cur = gossip.Cursor(known=5)
    gossip.on_overheard(cur, 7, 10.0, 2.0)  # after 7: would not cover versions 6-7
    assert cur.last_sync is None
    assert gossip.on_delta(cur, 9, 9, 10.0, 2.0) == 5  # a gap: asked at once
    cur = gossip.Cursor(known=5)
    gossip.on_overheard(cur, 3, 10.0, 2.0)
    assert gossip.on_delta(cur, 9, 9, 10.5, 2.0) is None and cur.deferred == 9  # deferred
    gossip.on_overheard(cur, 3, 11.5, 2.0)  # a repeat within two intervals: no further wait
    assert gossip.due_ask(cur, 11.9, 2.0) is None
    assert gossip.due_ask(cur, 12.0, 2.0) == 5  # one interval after the first overheard ask
    cur = gossip.Cursor(known=5)
    gossip.on_overheard(cur, 3, 10.0, 2.0)
    assert gossip.on_delta(cur, 8, 9, 10.5, 2.0) is None and cur.deferred == 8  # a gap: waits
    assert gossip.on_delta(cur, 3, 12, 11.0, 2.0) is None  # the broadcast answer (3, 12] came
    assert cur.known == 12 and cur.deferred == 0 and gossip.due_ask(cur, 13.0, 2.0) is None
