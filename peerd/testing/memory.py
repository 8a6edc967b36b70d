"""An in-memory MQTT bus for unit tests: ``MemoryBus`` and its ``MemoryTransport``.

Nothing here imports aiomqtt: the gossip logic can be unit-tested against
``MemoryBus``/``MemoryTransport`` without a broker (DESIGN §9), and the real
``peerd.transport.MqttTransport`` shares ``BaseTransport`` with it, so both
count, deliver and report connection state the same way.

What the memory bus models, and what it does not:

- topic filters with ``+`` and ``#``, ``$``-topics hidden from leading wildcards;
- retained messages (an empty retained payload clears the topic) delivered
  with ``retain=True`` to each new subscription, live messages with ``False``;
- the Will, published (and retained if asked) by ``bus.kill(transport)``,
  which drops the connection abruptly; ``bus.reconnect(transport)`` brings it
  back (re-subscribe, ``on_connect`` again), a clean ``disconnect()`` sends no Will;
- clean sessions: a disconnected transport misses what is published meanwhile.
- not modelled: QoS (delivery is reliable and in publish order), client-id
  takeover, broker restarts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from peerd.transport_api import (
    BaseTransport,
    OnConnect,
    OnMessage,
    Will,
    topic_matches,
    validate_qos,
    validate_topic,
)

__all__ = ["MemoryBus", "MemoryTransport"]

_DROP = object()  # queue sentinel: the connection was dropped


class MemoryBus:
    """A broker in a dict: routes publishes to matching connected transports, synchronously."""

    def __init__(self) -> None:
        self._connected: list[MemoryTransport] = []
        #: topic → (payload, qos) of each retained message.
        self.retained: dict[str, tuple[bytes, int]] = {}

    def transport(
        self,
        *,
        client_id: str,
        subscriptions: Sequence[tuple[str, int]],
        will: Will | None = None,
    ) -> MemoryTransport:
        """A new transport on this bus (same as ``MemoryTransport(bus, ...)``)."""
        return MemoryTransport(self, client_id=client_id, subscriptions=subscriptions, will=will)

    @property
    def client_ids(self) -> list[str]:
        """Ids of the transports connected now."""
        return [t.client_id for t in self._connected]

    def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> None:
        """Route a message as the broker would (also usable directly by tests)."""
        validate_topic(topic)
        validate_qos(qos)
        if retain:
            if payload:
                self.retained[topic] = (bytes(payload), qos)
            else:
                self.retained.pop(topic, None)
        for transport in self._connected:
            if any(topic_matches(f, topic) for f, _ in transport.subscriptions):
                transport._queue.put_nowait((topic, bytes(payload), False))

    def kill(self, transport: MemoryTransport) -> None:
        """Drop ``transport``'s connection abruptly: its Will is published; it stays down
        until ``reconnect``."""
        if transport not in self._connected:
            return
        self._detach(transport)
        transport._allowed.clear()
        if transport.will is not None:
            topic, payload, qos, retain = transport.will
            self.publish(topic, payload, qos=qos, retain=retain)

    def reconnect(self, transport: MemoryTransport) -> None:
        """Let a killed transport connect again (it re-subscribes and calls ``on_connect``)."""
        transport._allowed.set()

    def _attach(self, transport: MemoryTransport) -> None:
        self._connected.append(transport)
        for topic, (payload, _qos) in self.retained.items():
            if any(topic_matches(f, topic) for f, _ in transport.subscriptions):
                transport._queue.put_nowait((topic, payload, True))
        transport._mark_connected()

    def _detach(self, transport: MemoryTransport) -> None:
        if transport in self._connected:
            self._connected.remove(transport)
            transport._mark_disconnected()
            transport._queue.put_nowait(_DROP)


class MemoryTransport(BaseTransport):
    """``Transport`` over a ``MemoryBus``: same interface and counters as ``MqttTransport``."""

    def __init__(
        self,
        bus: MemoryBus,
        *,
        client_id: str,
        subscriptions: Sequence[tuple[str, int]],
        will: Will | None = None,
    ) -> None:
        super().__init__(client_id=client_id, subscriptions=subscriptions, will=will)
        self._bus = bus
        self._queue: asyncio.Queue[tuple[str, bytes, bool] | object] = asyncio.Queue()
        self._allowed = asyncio.Event()
        self._allowed.set()
        self._closing = False

    async def run(self, on_message: OnMessage, on_connect: OnConnect) -> None:
        """Connect, call ``on_connect``, deliver in order; after a kill wait for ``reconnect``."""
        try:
            while not self._closing:
                await self._allowed.wait()
                if self._closing:
                    break
                self._queue = asyncio.Queue()
                self._bus._attach(self)
                await self._call_on_connect(on_connect)
                while True:
                    item = await self._queue.get()
                    if item is _DROP:
                        break
                    topic, payload, retain = item  # type: ignore[misc]
                    await self._deliver(on_message, topic, payload, retain)
        finally:
            self._bus._detach(self)

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> bool:
        """Route through the bus; False (nothing sent) while disconnected."""
        validate_topic(topic)
        validate_qos(qos)
        if not self.connected:
            return False
        self._bus.publish(topic, payload, qos=qos, retain=retain)
        self._count_out(payload)
        return True

    async def disconnect(self) -> None:
        """Clean disconnect: no Will; ``run`` returns."""
        self._closing = True
        self._allowed.set()  # wake a run() waiting for reconnect, so it can return
        self._bus._detach(self)
