"""Presence without retained messages: when to ask for a rebirth, when to answer. Pure: no I/O.

DESIGN §4: presence must not depend on retained messages alone. Some brokers
keep none, or do not deliver them to wildcard subscriptions; a node started
after another then never sees the other's birth and rejects everything it
sends (``unknown_sender``). Two rules repair that (Sparkplug B's answer):

- a node that hears an unknown sender asks it for a fresh birth
  (``wire.Rebirth`` on ``peerd/v1/{f}/rebirth/{asker}``);
- a node that sees a new peer's *live* birth (or is asked) publishes its own
  birth, non-retained.

Both sides are rate-limited, with bounded memory, because the sender id of an
unauthenticated message is whatever an attacker puts in the topic:

- asks: at most one per sender per ``ask_interval``, and at most ``burst``
  per ``ask_interval`` in total (a token bucket); the per-sender memory is an
  LRU of ``max_tracked`` ids;
- answers: coalesced, at most one birth per ``answer_interval`` however many
  peers asked or were born; a live birth is answered once per (peer, epoch).
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["PresenceState"]


class PresenceState:
    """Rebirth requests out, births in answer: rate limits and memory bounds."""

    def __init__(self, *, ask_interval: float = 5.0, burst: int = 16,
                 answer_interval: float = 1.0, max_tracked: int = 1024) -> None:
        self.ask_interval = ask_interval
        self.burst = burst
        self.answer_interval = answer_interval
        self.max_tracked = max_tracked
        self._asked: OrderedDict[str, float] = OrderedDict()
        self._tokens = float(burst)
        self._refilled: float | None = None
        self._answered_births: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._answer_due = False
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
    def on_rebirth_request(self) -> None:
        """Someone asked this node for its birth: answer (coalesced with any other reason)."""
        self._answer_due = True

    def on_live_birth(self, peer: str, epoch: int) -> bool:
        """A peer's non-retained birth arrived; True if it is new and this node answers it."""
        key = (peer, epoch)
        if key in self._answered_births:
            return False
        self._answered_births[key] = None
        while len(self._answered_births) > self.max_tracked:
            self._answered_births.popitem(last=False)
        self._answer_due = True
        return True

    def take_answer(self, now: float) -> bool:
        """True when a birth should be published now (then it counts as sent)."""
        if not self._answer_due or now - self._last_answer < self.answer_interval:
            return False
        self._answer_due = False
        self._last_answer = now
        return True

    def answered(self, now: float) -> None:
        """A birth went out for another reason (a (re)connect): it answers whatever was due."""
        self._answer_due = False
        self._last_answer = now

    def retry_answer(self) -> None:
        """The birth could not be published: keep the answer due."""
        self._answer_due = True
