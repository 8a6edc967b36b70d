"""Gossip bookkeeping, pure: when to publish, what we hold of each origin, when to ask.

Unpublished changes are never queued: what must go out is computed from
versions (``QTable.delta(since=published_version)``), so a broker outage or a
crash loses nothing that a later publish cannot recompute.

Catch-up (anti-entropy): ``known[origin]`` is the version up to which this node
holds *everything* of that origin. A delta whose ``from_version`` lies beyond it
leaves a gap; a heartbeat or birth that advertises a newer version shows we are
behind. Either way we ask the origin for everything after ``known`` — at most
once per ``sync_interval`` per origin, so a storm of adverts costs one request.

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

from dataclasses import dataclass, field


@dataclass
class GossipState:
    """Publish triggers and anti-entropy cursors of one node."""

    publish_every: int = 10
    publish_interval: float = 60.0
    sync_interval: float = 2.0
    published_version: int = 0
    last_publish: float = 0.0
    known: dict[str, int] = field(default_factory=dict)
    _last_sync: dict[str, float] = field(default_factory=dict)
    _deferred: dict[str, int] = field(default_factory=dict)
    #: origin → time before which a patient (heartbeat) advert may not be asked
    _not_before: dict[str, float] = field(default_factory=dict)
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

    # -------------------------------------------------------------- catch-up
    def on_delta(self, origin: str, from_version: int, to_version: int, now: float) -> int | None:
        """Record a delta; return the version to ask a sync from, or None."""
        have = self.known.get(origin, 0)
        if from_version <= have:
            self.known[origin] = max(have, to_version)
            if self._deferred.get(origin, 0) <= self.known[origin]:
                self._deferred.pop(origin, None)
                self._not_before.pop(origin, None)
            return None
        return self._ask(origin, have, from_version, now)

    def on_advert(self, origin: str, version: int, now: float, *, wait: float = 0.0) -> int | None:
        """An origin advertised its published version (heartbeat, birth).

        ``wait`` > 0: if we already hold some of the origin, give the delta in
        flight ``wait`` seconds before asking (module docstring); ``due_asks``
        asks then if we are still behind. An origin we hold nothing of is asked at once.
        """
        have = self.known.get(origin, 0)
        if version <= have:
            return None
        if wait > 0 and have > 0:
            self._deferred[origin] = max(version, self._deferred.get(origin, 0))
            self._not_before.setdefault(origin, now + wait)
            return None
        return self._ask(origin, have, version, now)

    def _ask(self, origin: str, since: int, wanted: int, now: float) -> int | None:
        last = self._last_sync.get(origin)
        if last is not None and now - last < self.sync_interval:
            # not dropped: asked again once the interval has passed, if still behind
            self._deferred[origin] = max(wanted, self._deferred.get(origin, 0))
            return None
        self._last_sync[origin] = now
        self._deferred.pop(origin, None)
        self._not_before.pop(origin, None)
        return since

    def due_asks(self, now: float) -> list[tuple[str, int]]:
        """Deferred asks whose rate limit has passed and that are still needed: (origin, since)."""
        out = []
        for origin, wanted in list(self._deferred.items()):
            if now - self._last_sync.get(origin, -1e18) < self.sync_interval:
                continue
            if now < self._not_before.get(origin, -1e18):
                continue
            del self._deferred[origin]
            self._not_before.pop(origin, None)
            have = self.known.get(origin, 0)
            if have < wanted:
                self._last_sync[origin] = now
                out.append((origin, have))
        return out

    def on_sync_request(self, since: int) -> None:
        """Someone asked for our cells after ``since``: answer once for all askers."""
        self.pending_answer = since if self.pending_answer is None else min(self.pending_answer, since)

    def take_answer(self) -> int | None:
        since, self.pending_answer = self.pending_answer, None
        return since

    def forget(self, origin: str) -> None:
        self.known.pop(origin, None)
        self._last_sync.pop(origin, None)
        self._deferred.pop(origin, None)
        self._not_before.pop(origin, None)
