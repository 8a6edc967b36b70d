"""Gossip bookkeeping, pure: when to publish, what we hold of each origin, when to ask.

Unpublished changes are never queued: what must go out is computed from
versions (``QTable.delta(since=published_version)``), so a broker outage or a
crash loses nothing that a later publish cannot recompute.

Catch-up (anti-entropy): ``known[origin]`` is the version up to which this node
holds *everything* of that origin. A delta whose ``from_version`` lies beyond it
leaves a gap; a heartbeat or birth that advertises a newer version shows we are
behind. Either way we ask the origin for everything after ``known`` — at most
once per ``sync_interval`` per origin, so a storm of adverts costs one request.

``GossipState`` holds only this node's own publish state. The per-origin
cursor (``Cursor``: known, last ask, deferred ask) lives in the origin's
registry entry (``peerd.registry.Peer.cursor``) and the catch-up functions
below work on the cursor they are handed, so forgetting an origin frees its
cursor with everything else.

A heartbeat ahead of what we hold is usually not a loss: heartbeats are QoS 0,
and a broker sends QoS 0 at once while the QoS 1 delta that carries the
version waits in the subscriber's in-flight window. Asking at once then makes
the origin broadcast an answer nobody needs, which loads every node, which
lengthens the queues, which makes the next heartbeat overtake again: with 50
daemons on two cores that loop multiplied the deltas each node applied ~6
times. So ``on_advert(..., wait=s)`` asks only if the delta has not arrived
``s`` seconds later; a gap in the deltas themselves is still asked at once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Cursor:
    """What this node holds of one origin, and when it last asked that origin."""

    #: version up to which this node holds everything of the origin
    known: int = 0
    #: when a sync was last asked (None: never)
    last_sync: float | None = None
    #: newest version wanted but not asked yet because of the rate limit (0: none)
    deferred: int = 0
    #: a patient (heartbeat) advert is not asked before this time (None: no such wait)
    not_before: float | None = None


@dataclass
class GossipState:
    """Publish triggers and pending sync answers of this node."""

    publish_every: int = 10
    publish_interval: float = 60.0
    sync_interval: float = 2.0
    published_version: int = 0
    last_publish: float = 0.0
    #: lowest ``since`` asked of us and not answered yet (None: nothing asked)
    pending_answer: int | None = None

    # ---------------------------------------------------------------- publish
    def should_publish(self, version: int, now: float) -> bool:
        """True after ``publish_every`` own updates, or ``publish_interval`` with any change."""
        unpublished = version - self.published_version
        if unpublished <= 0:
            return False
        return unpublished >= self.publish_every or now - self.last_publish >= self.publish_interval

    def mark_published(self, version: int, now: float) -> None:
        self.published_version = max(self.published_version, version)
        self.last_publish = now

    # ---------------------------------------------------------------- answers
    def on_sync_request(self, since: int) -> None:
        """Someone asked for our cells after ``since``: answer once for all askers."""
        self.pending_answer = since if self.pending_answer is None else min(self.pending_answer, since)

    def take_answer(self) -> int | None:
        since, self.pending_answer = self.pending_answer, None
        return since


# ------------------------------------------------------------------ catch-up
def on_delta(cur: Cursor, from_version: int, to_version: int, now: float,
             sync_interval: float) -> int | None:
    """Record a delta of the cursor's origin; return the version to ask a sync from, or None."""
    have = cur.known
    if from_version <= have:
        cur.known = max(have, to_version)
        if cur.deferred <= cur.known:
            cur.deferred = 0
            cur.not_before = None
        return None
    return _ask(cur, have, from_version, now, sync_interval)


def on_advert(cur: Cursor, version: int, now: float, sync_interval: float, *,
              wait: float = 0.0) -> int | None:
    """The origin advertised its published version (heartbeat, birth).

    ``wait`` > 0: if we already hold some of the origin, give the delta in
    flight ``wait`` seconds before asking (module docstring); ``due_ask`` asks
    then if we are still behind. An origin we hold nothing of is asked at once.
    """
    if version <= cur.known:
        return None
    if wait > 0 and cur.known > 0:
        cur.deferred = max(version, cur.deferred)
        if cur.not_before is None:
            cur.not_before = now + wait
        return None
    return _ask(cur, cur.known, version, now, sync_interval)


def on_retained_birth(cur: Cursor, version: int, now: float, sync_interval: float, *,
                      wait: float) -> int | None:
    """The origin's *retained* birth: the version it had published when it connected.

    That may be long ago, so an origin we hold nothing of is worth asking even
    at the version the birth says. At once when the birth advertises a version
    (there is something to fetch); after ``wait`` when it advertises 0, and only
    if nothing of the origin arrived meanwhile (``on_delta`` cancels the ask).
    Asked at once, a fleet starting together asked every origin whose birth was
    retained before it subscribed, ~N²/2 requests, each broadcast to the N nodes
    (the sync topic is heard by every potential relayer), each answered with
    nothing: 127,000 deliveries at N = 64, two minutes of a simulation's time
    before its first delta could arrive. A live origin's next delta shows a gap
    at once (``on_delta``) and its heartbeat its version, so waiting costs at most
    one heartbeat interval, and only for an origin that is not publishing.
    """
    if version > cur.known:
        return on_advert(cur, version, now, sync_interval)
    if cur.known == 0 and not cur.deferred:
        cur.deferred = 1
        cur.not_before = now + wait
    return None


def _ask(cur: Cursor, since: int, wanted: int, now: float, sync_interval: float) -> int | None:
    if cur.last_sync is not None and now - cur.last_sync < sync_interval:
        # not dropped: asked again once the interval has passed, if still behind
        cur.deferred = max(wanted, cur.deferred)
        return None
    cur.last_sync = now
    cur.deferred = 0
    cur.not_before = None
    return since


def on_overheard(cur: Cursor, since: int, now: float, sync_interval: float) -> None:
    """Another node asked the cursor's origin for everything after ``since``.

    The answer is broadcast, so when it covers what we lack (``since`` ≤
    ``known``) our own ask can wait: it is deferred as if we had just asked,
    and still goes out one ``sync_interval`` later if we are still behind.
    Without this, N nodes behind the same origin each asked, and each request
    went to all N: O(N²) deliveries for one answer. At most once per two
    intervals, so a node repeating requests cannot hold our asks back for more
    than one interval.
    """
    if since > cur.known:
        return
    if cur.last_sync is None or now - cur.last_sync >= 2 * sync_interval:
        cur.last_sync = now


def due_ask(cur: Cursor, now: float, sync_interval: float) -> int | None:
    """A deferred ask whose rate limit has passed and that is still needed: its ``since``."""
    if not cur.deferred:
        return None
    last = -1e18 if cur.last_sync is None else cur.last_sync
    if now - last < sync_interval:
        return None
    if cur.not_before is not None and now < cur.not_before:
        return None
    wanted, cur.deferred = cur.deferred, 0
    cur.not_before = None
    if cur.known >= wanted:
        return None
    cur.last_sync = now
    return cur.known
