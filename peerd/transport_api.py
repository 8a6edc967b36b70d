"""The transport contract the node codes against, and what every transport shares.

``Transport`` is the protocol ``peerd.node.Node`` needs from its connection to
the federation's broker; ``BaseTransport`` holds the counters, connection state
and callback safety that the real ``peerd.transport.MqttTransport`` and the
in-memory ``peerd.testing.memory.MemoryTransport`` share, so both count,
deliver and report connection state the same way. MQTT 3.1.1 topic matching
and validation live here too. Nothing here imports aiomqtt, and nothing here
is test-only: this module is on the daemon's import path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

import structlog

__all__ = [
    "BaseTransport",
    "OnConnect",
    "OnMessage",
    "Transport",
    "Will",
    "topic_matches",
    "validate_filter",
    "validate_qos",
    "validate_topic",
]

#: ``on_message(topic, payload, retain)``; an exception is logged and counted, never fatal.
OnMessage = Callable[[str, bytes, bool], Awaitable[None]]
#: Called after every (re)connection once subscriptions are in place: publish the birth here.
OnConnect = Callable[[], Awaitable[None]]
#: ``(topic, payload, qos, retain)`` the broker publishes when the connection is lost abruptly.
Will = tuple[str, bytes, int, bool]

log = structlog.get_logger("peerd.transport")


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether an MQTT 3.1.1 ``topic_filter`` (``+``, ``#``) matches a concrete ``topic``.

    ``a/#`` also matches ``a`` (the parent level), and topics starting with
    ``$`` are not matched by filters starting with a wildcard (MQTT-4.7.2-1).
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    for i, level in enumerate(filter_levels):
        if level == "#":
            return True
        if i >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[i]:
            return False
    return len(filter_levels) == len(topic_levels)


def validate_topic(topic: str) -> None:
    """Reject a topic no broker would accept for PUBLISH (a caller bug, so ``ValueError``)."""
    if not topic or "+" in topic or "#" in topic or "\x00" in topic:
        raise ValueError(f"invalid MQTT topic name {topic!r}")
    if len(topic.encode()) > 65535:
        raise ValueError("MQTT topic name longer than 65535 bytes")


def validate_filter(topic_filter: str) -> None:
    """Reject a malformed subscription filter (``#`` not last, ``+``/``#`` inside a level)."""
    if not topic_filter or "\x00" in topic_filter:
        raise ValueError(f"invalid MQTT topic filter {topic_filter!r}")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"'#' must be the whole last level: {topic_filter!r}")
        if "+" in level and level != "+":
            raise ValueError(f"'+' must be a whole level: {topic_filter!r}")


def validate_qos(qos: int) -> None:
    """Reject a QoS other than 0, 1 or 2 (a caller bug, so ``ValueError``)."""
    if qos not in (0, 1, 2):
        raise ValueError(f"QoS must be 0, 1 or 2, not {qos!r}")


@runtime_checkable
class Transport(Protocol):
    """What a node needs from its connection to the federation's broker."""

    messages_in: int
    messages_out: int
    bytes_in: int
    bytes_out: int
    reconnects: int
    callback_errors: int

    @property
    def connected(self) -> bool: ...

    @property
    def backlog(self) -> int: ...

    async def run(self, on_message: OnMessage, on_connect: OnConnect) -> None: ...

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> bool: ...

    async def disconnect(self) -> None: ...

    async def wait_connected(self, timeout: float) -> bool: ...

    async def wait_disconnected(self, timeout: float) -> bool: ...


class BaseTransport:
    """Counters, connection state and callback safety shared by the real and memory transports."""

    def __init__(
        self,
        *,
        client_id: str,
        subscriptions: Sequence[tuple[str, int]],
        will: Will | None = None,
    ) -> None:
        if not client_id:
            raise ValueError("client_id must be a non-empty string")
        for topic_filter, qos in subscriptions:
            validate_filter(topic_filter)
            validate_qos(qos)
        if will is not None:
            validate_topic(will[0])
            validate_qos(will[2])
        self.client_id = client_id
        self.subscriptions: list[tuple[str, int]] = list(subscriptions)
        self.will = will
        self.messages_in = 0
        self.messages_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        #: Successful connections after the first one.
        self.reconnects = 0
        #: Exceptions raised by ``on_message``/``on_connect`` (logged, then ignored).
        self.callback_errors = 0
        self._connections = 0
        self._up = asyncio.Event()
        self._down = asyncio.Event()
        self._down.set()
        self._log = log.bind(client_id=client_id)

    @property
    def connected(self) -> bool:
        """True while connected *and* subscribed: what is published now will be heard."""
        return self._up.is_set()

    @property
    def backlog(self) -> int:
        """Messages received and not handed to the node yet; 0 where a transport cannot tell.

        The node holds its relays back while this is not 0 (``RelayPlanner.due``): what
        waits in the queue may already answer what a relay would repeat.
        """
        return 0

    async def wait_connected(self, timeout: float) -> bool:
        """Wait until connected and subscribed; False on timeout."""
        return await _wait_event(self._up, timeout)

    async def wait_disconnected(self, timeout: float) -> bool:
        """Wait until the connection is gone (lost or closed); False on timeout."""
        return await _wait_event(self._down, timeout)

    def _mark_connected(self) -> None:
        if self._connections:
            self.reconnects += 1
        self._connections += 1
        self._down.clear()
        self._up.set()
        self._log.info("transport_connected", connections=self._connections)

    def _mark_disconnected(self) -> None:
        was_up = self._up.is_set()
        self._up.clear()
        self._down.set()
        if was_up:
            self._log.info("transport_disconnected")

    def _count_out(self, payload: bytes) -> None:
        self.messages_out += 1
        self.bytes_out += len(payload)

    async def _call_on_connect(self, on_connect: OnConnect) -> None:
        try:
            await on_connect()
        except Exception:
            self.callback_errors += 1
            self._log.exception("transport_on_connect_failed")

    async def _deliver(self, on_message: OnMessage, topic: str, payload: bytes, retain: bool) -> None:
        """Count and hand one message to the node; its exceptions must not stop the stream."""
        self.messages_in += 1
        self.bytes_in += len(payload)
        try:
            await on_message(topic, payload, retain)
        except Exception:
            self.callback_errors += 1
            self._log.exception("transport_on_message_failed", topic=topic)


async def _wait_event(event: asyncio.Event, timeout: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True
