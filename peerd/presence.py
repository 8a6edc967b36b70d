"""Presence without retained messages: when to ask for a rebirth, when to answer. Pure: no I/O.

DESIGN §4: presence must not depend on retained messages alone. Some brokers
keep none, or do not deliver them to wildcard subscriptions; a node started
after another then never sees the other's birth and rejects everything it
sends (``unknown_sender``). Two rules repair that (Sparkplug B's answer):

- a node that hears an unknown sender asks it for a fresh birth
  (``wire.Rebirth`` on ``peerd/v1/{f}/rebirth/{asker}``);
- a node that sees a new peer's *live* birth (or is asked) publishes its own
  birth, non-retained (not for a life whose retained birth it saw first).

Both sides are rate-limited, with bounded memory, because the sender id of an
unauthenticated message is whatever an attacker puts in the topic:

- asks: at most one per sender per ``ask_interval``, and at most ``burst``
  per ``ask_interval`` in total (a token bucket); the per-sender memory is an
  LRU of ``max_tracked`` ids;
- answers: coalesced, at most one birth per ``answer_interval`` however many
  peers asked or were born; a live birth is answered once per (peer, epoch).

Answers wait until no new reason came for ``answer_delay`` (but at most
``answer_max_delay`` after the first reason) before going out. One
birth on the broadcast presence topic answers every peer that appeared
meanwhile, and peers appear in bursts: a fleet starting together sees N live
births within a moment. Answered on the leading edge, every node sent one
birth per ``answer_interval`` for as long as births kept arriving (N = 64:
349 births, each verified by 64 nodes, 7.5 s to meet), and each answer is
itself a live birth that makes the nodes that had only seen the retained one
answer again. Waiting for the burst to pass gathers it into one answer per node,
and a peer whose retained birth this node has seen needs no answer at all
(``on_retained_birth``).
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["PresenceState"]


class PresenceState:
    """Rebirth requests out, births in answer: rate limits and memory bounds."""

    def __init__(self, *, ask_interval: float = 5.0, burst: int = 16,
                 answer_interval: float = 1.0, answer_delay: float = 1.0,
                 answer_max_delay: float = 5.0, max_tracked: int = 1024) -> None:
        self.ask_interval = ask_interval
        self.burst = burst
        self.answer_interval = answer_interval
        self.answer_delay = answer_delay
        self.answer_max_delay = max(answer_delay, answer_max_delay)
        self.max_tracked = max_tracked
        self._asked: OrderedDict[str, float] = OrderedDict()
        self._tokens = float(burst)
        self._refilled: float | None = None
        self._answered_births: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._retained_births: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._answer_due = False
        self._due_since: float | None = None  # the first reason of the pending answer
        self._last_reason: float | None = None  # the latest one
        self._last_answer = -1e18
        #: asks refused by the rate limits (metrics, tests)
        self.asks_suppressed = 0

    # ---------------------------------------------------------------- asks out
    def may_ask(self, peer: str, now: float) -> bool:
        """True if ``peer`` (heard from, but unknown) may be sent a rebirth request now."""
        last = self._asked.get(peer)
        if last is not None and now - last < self.ask_interval:
            self.asks_suppressed += 1
            return False
        self._refill(now)
        if self._tokens < 1.0:
            self.asks_suppressed += 1
            return False
        self._tokens -= 1.0
        self._asked[peer] = now
        self._asked.move_to_end(peer)
        while len(self._asked) > self.max_tracked:
            self._asked.popitem(last=False)
        return True

    def _refill(self, now: float) -> None:
        if self._refilled is not None:
            rate = self.burst / self.ask_interval
            self._tokens = min(float(self.burst), self._tokens + (now - self._refilled) * rate)
        self._refilled = now

    def known(self, peer: str) -> None:
        """``peer``'s key is pinned now: no need to remember having asked it."""
        self._asked.pop(peer, None)

    # ------------------------------------------------------------- answers out
    def on_rebirth_request(self, now: float) -> None:
        """Someone asked this node for its birth: answer (coalesced with any other reason)."""
        self._due(now)

    def on_live_birth(self, peer: str, epoch: int, now: float) -> bool:
        """A peer's non-retained birth arrived; True the first time for this (peer, epoch).

        The first sighting makes a birth answer due, unless that life's
        retained birth was seen (``on_retained_birth``).
        """
        key = (peer, epoch)
        if key in self._answered_births:
            return False
        _remember(self._answered_births, key, self.max_tracked)
        if key not in self._retained_births:
            self._due(now)
        return True

    def on_retained_birth(self, peer: str, epoch: int) -> None:
        """A peer's *retained* birth arrived: a live birth of that life needs no answer.

        The broker kept that birth, so it was published before this node
        subscribed, and its sender had subscribed before publishing it: this
        node's own birth, published after subscribing, reached it live. A
        live birth of the same life is then the peer answering someone else;
        answering it too made every answer set off one from each node that had
        only seen the retained birth (N = 64: 1,259 births to meet, not 64).
        A peer of a broker that keeps nothing is never seen retained: unchanged.
        """
        _remember(self._retained_births, (peer, epoch), self.max_tracked)

    def _due(self, now: float) -> None:
        if not self._answer_due:
            self._answer_due = True
            self._due_since = now
        self._last_reason = now

    def answer_at(self) -> float | None:
        """When the pending answer may go out (None: nothing due): wake the publisher then."""
        if not self._answer_due:
            return None
        if self._due_since is None or self._last_reason is None:  # a retry: no delay
            return self._last_answer + self.answer_interval
        quiet = min(self._last_reason + self.answer_delay, self._due_since + self.answer_max_delay)
        return max(quiet, self._last_answer + self.answer_interval)

    def take_answer(self, now: float) -> bool:
        """True when a birth should be published now (then it counts as sent)."""
        at = self.answer_at()
        if at is None or now < at:
            return False
        self._answer_due = False
        self._due_since = self._last_reason = None
        self._last_answer = now
        return True

    def answered(self, now: float) -> None:
        """A birth went out for another reason (a (re)connect): it answers whatever was due."""
        self._answer_due = False
        self._due_since = self._last_reason = None
        self._last_answer = now

    def retry_answer(self) -> None:
        """The birth could not be published: keep the answer due (at once, the delay is spent)."""
        self._answer_due = True


def _remember(lru: OrderedDict[tuple[str, int], None], key: tuple[str, int], cap: int) -> None:
    """Add ``key`` to a bounded insertion-ordered set, dropping the oldest past ``cap``."""
    lru[key] = None
    while len(lru) > cap:
        lru.popitem(last=False)
