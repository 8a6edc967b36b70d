"""MQTT 3.1.1 transport: the only module that imports aiomqtt.

``MqttTransport.run`` owns the connection for the node's whole life: connect,
subscribe, ``on_connect`` (the node publishes its birth), then hand every
message to ``on_message`` in order of arrival from one consumer loop. When the
connection is lost it reconnects forever (DESIGN §8: learning and the local
API keep working while the broker is away), and re-subscribes and calls
``on_connect`` again each time.

Past one broker: the transport takes the *members* of a clustered broker
(NATS, EMQX, ...; any MQTT 3.1.1 cluster where a message published on one
member reaches subscribers on all). It connects to the first; when a
connection is lost or refused it moves on to the next member after a short
jittered pause, and only once every member has failed in a row does it back
off exponentially (full jitter, capped). A disconnect is one structured event
(``broker_disconnected member=... error=...``), never a traceback: aiomqtt
leaves the exception of its ``_disconnected`` future unretrieved when the
connection drops outside message iteration (during SUBSCRIBE, a PUBACK wait
or ``on_connect``), and asyncio then prints "Future exception was never
retrieved" on garbage collection; ``_settle`` retrieves it after each session.

Sessions are clean (``clean_session=True``): the broker keeps nothing for us
while we are away; catch-up is the anti-entropy protocol's job (DESIGN §4),
which keeps every broker behaving the same.

``publish`` never blocks on the network by default: it returns ``True`` once
the message is handed to the MQTT client (written in call order; QoS 1 is then
confirmed in the background) and ``False`` when disconnected. With
``confirm=True`` a QoS 1 publish returns only when the broker acknowledged it
(``True``) or the connection ended first (``False``). ``publish_tracked``
(what a node uses for deltas) does not wait but returns a future of that
outcome, so the node can go back over a delta a lost connection swallowed. aiomqtt errors never escape as
such: they are retried (connection) or turned into ``False`` (publish); an
unusable setup surfaces as ``peerd.errors.ConfigError``/``TransportError``.

Brokers without retained messages: mosquitto with ``retain_available false``
drops a client whose Will or PUBLISH has the retain bit (MQTT 3.1.1 has no way
to say why). With ``retain=False`` nothing is ever retained; otherwise the
transport notices by itself and switches retain off for good, logging once
(``transport_retain_unavailable``):

- a connection lost while a retained publish awaits its PUBACK: retain is off;
- a CONNECT with a retained Will that times out is retried with the Will not
  retained (a probe). A timeout alone proves nothing (a slow or recovering
  broker, a cluster member electing leaders), so the probe only lets the
  connection happen: the retained birth that follows decides (dropped: retain
  off; acknowledged: the next Will is retained again).

Without retain, presence rests on rebirth requests (``peerd.presence``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import unquote, urlsplit

import aiomqtt

from peerd.errors import ConfigError
from peerd.transport_api import (
    BaseTransport,
    OnConnect,
    OnMessage,
    Transport,
    Will,
    topic_matches,
    validate_topic,
)

__all__ = [
    "BrokerAddress",
    "MqttTransport",
    "OnConnect",
    "OnMessage",
    "TLSConfig",
    "Transport",
    "Will",
    "backoff_delay",
    "parse_broker_url",
    "retry_delay",
    "topic_matches",
]

T = TypeVar("T")

_DEFAULT_PORTS = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883}
_TLS_SCHEMES = {"mqtts", "ssl"}


@dataclass(frozen=True)
class TLSConfig:
    """TLS files for the broker connection; all ``None`` = system CAs, no client certificate."""

    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None

    def __post_init__(self) -> None:
        if self.keyfile is not None and self.certfile is None:
            raise ConfigError("tls.keyfile given without tls.certfile")
        for name in ("ca_certs", "certfile", "keyfile"):
            path = getattr(self, name)
            if path is not None and not os.access(path, os.R_OK):
                raise ConfigError(f"tls.{name}: cannot read {path!r}")


@dataclass(frozen=True)
class BrokerAddress:
    """What a broker URL says: where to connect, whether TLS, optional credentials."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None

    @property
    def display(self) -> str:
        """The URL without credentials: what status, metrics and logs may show."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://[user[:pass]@]host[:port]``; ``mqtts://`` implies TLS (default port 8883)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ConfigError(f"broker url {url!r}: scheme must be mqtt:// or mqtts://")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        raise ConfigError(f"broker url {url!r}: invalid port") from None
    if not parts.hostname:
        raise ConfigError(f"broker url {url!r}: no host")
    return BrokerAddress(
        host=parts.hostname,
        port=port,
        tls=scheme in _TLS_SCHEMES,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def retry_delay(failures: int, members: int, base: float, cap: float,
                rng: random.Random) -> float:
    """Pause before the next connection attempt, after ``failures`` failed in a row.

    While some member has not been tried since the last working connection
    (``failures % members != 0``, or the connection was just lost), the next
    member is tried after a short jittered pause in ``[0, base]``: a lost
    member must not cost the node seconds of gossip. Once every member has
    failed in a row, the pause is ``backoff_delay`` over the number of full
    rounds that failed, so a cluster that is entirely down is not hammered.
    """
    if failures == 0 or failures % members:
        return rng.uniform(0.0, base)
    return backoff_delay(failures // members - 1, base, cap, rng)


def _describe(exc: BaseException) -> str:
    """The root cause of an aiomqtt error: "[code:7] The connection was lost." beats
    "Disconnected during message iteration"."""
    cause = exc.__cause__
    return f"{exc}: {cause}" if cause is not None and str(cause) not in str(exc) else str(exc)


def _disconnected_future(client: aiomqtt.Client) -> asyncio.Future[None] | None:
    """aiomqtt's private "connection ended" future (pinned aiomqtt>=2.5,<3; None if it moved)."""
    fut = getattr(client, "_disconnected", None)
    return fut if isinstance(fut, asyncio.Future) else None


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in ``[base, min(cap, base·2^(attempt+1))]``, ``attempt`` from 0.

    The ceiling starts at twice the base so that even the first retry is
    jittered: a federation whose broker restarts must not reconnect in lockstep.
    """
    ceiling = min(cap, base * 2.0 ** min(attempt + 1, 60))
    return rng.uniform(base, ceiling)


class MqttTransport(BaseTransport):
    """A node's MQTT connection: fails over between members, delivers in order, never raises on publish."""

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        client_id: str,
        subscriptions: Sequence[tuple[str, int]],
        will: Will | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: TLSConfig | None = None,
        keepalive: int = 30,
        backoff: tuple[float, float] = (0.2, 30.0),
        rng: random.Random | None = None,
        timeout: float = 10.0,
        connect_timeout: float | None = None,
        confirm: bool = False,
        retain: bool = True,
    ) -> None:
        super().__init__(client_id=client_id, subscriptions=subscriptions, will=will)
        self.urls: list[str] = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ConfigError("no broker url given")
        self.members: list[BrokerAddress] = [parse_broker_url(u) for u in self.urls]
        if len({m.display for m in self.members}) != len(self.members):
            raise ConfigError(f"broker urls list a member twice: {self.urls!r}")
        if not 0 < backoff[0] <= backoff[1]:
            raise ConfigError(f"backoff must satisfy 0 < base <= cap, got {backoff!r}")
        if not 0 < keepalive <= 65535:
            raise ConfigError(f"keepalive must be in 1..65535 s, got {keepalive!r}")
        self._username = username
        self._password = password
        self._tls = tls
        self.keepalive = keepalive
        self.backoff = backoff
        #: Seconds to wait for SUBACK/PUBACK and for flushing on disconnect.
        self.timeout = timeout
        #: Seconds to wait for CONNACK (and DISCONNECT) in the first round of attempts,
        #: doubled after each round that failed entirely, up to ``timeout``: a member
        #: that accepts TCP but cannot admit us yet (a NATS member while its cluster
        #: re-elects JetStream leaders) is left quickly for the next, and a broker that
        #: is merely slow still gets all the time it needs.
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        self._failures = 0  # attempts failed in a row since the last connection that worked
        #: QoS 1 ``publish`` returns only once acknowledged (module docstring).
        self.confirm = confirm
        #: Messages dropped because they match none of our subscriptions.
        self.messages_unsolicited = 0
        #: Why the last connection attempt failed or the last connection ended.
        self.last_error: str | None = None
        #: Connections that ended without being asked to (``broker_disconnected`` events).
        self.disconnects = 0
        #: Connection attempts that failed before we were subscribed (``broker_connect_failed``).
        self.connect_failures = 0
        self._index = 0  # the member in use, or the next one to try
        #: False: retained publishes and the Will go out without the retain bit.
        self.retain_available = retain
        self._retain_probe = False  # this attempt connects with a non-retained Will, as a test
        self._retained_pending: set[asyncio.Task[bool]] = set()
        self._retained_lost = False  # the connection died with a retained publish unconfirmed
        self._rng = rng if rng is not None else random.Random()
        self._client: aiomqtt.Client | None = None
        self._pending: set[asyncio.Task[bool]] = set()
        self._closing = asyncio.Event()
        self._stopped = asyncio.Event()
        self._running = False

    def __repr__(self) -> str:
        state = "connected" if self.connected else "disconnected"
        return f"<MqttTransport {self.client_id} {self.address.display} {state}>"

    # -- where we are -----------------------------------------------------------------

    @property
    def address(self) -> BrokerAddress:
        """The member in use (while connected) or the next one to try."""
        return self.members[self._index]

    @property
    def url(self) -> str:
        return self.urls[self._index]

    @property
    def host(self) -> str:
        return self.address.host

    @property
    def port(self) -> int:
        return self.address.port

    @property
    def username(self) -> str | None:
        return self._username if self._username is not None else self.address.username

    @property
    def tls(self) -> TLSConfig | None:
        if self._tls is not None:
            return self._tls
        return TLSConfig() if self.address.tls else None

    @property
    def backlog(self) -> int:
        """Messages received from the broker and not handed to the node yet (0 if unknown).

        The node holds relays back while this is not 0 (``RelayPlanner.due``).
        aiomqtt queues them in an ``asyncio.Queue`` (``Client._queue``, 2.x).
        """
        queue = getattr(self._client, "_queue", None)
        return queue.qsize() if isinstance(queue, asyncio.Queue) else 0

    @property
    def member(self) -> str | None:
        """The member in use, without credentials (``mqtt://host:port``); None when disconnected."""
        return self.address.display if self.connected else None

    @property
    def member_urls(self) -> list[str]:
        """Every member, without credentials, in the order they are tried."""
        return [m.display for m in self.members]

    # -- the connection loop --------------------------------------------------------------

    async def run(self, on_message: OnMessage, on_connect: OnConnect) -> None:
        """Stay connected until ``disconnect()`` or cancellation; see the module docstring."""
        if self._running:
            raise RuntimeError("MqttTransport.run() is already running")
        self._running = True
        self._stopped.clear()
        self._failures = 0
        try:
            while not self._closing.is_set():
                connections_before = self._connections
                member = self.address.display
                error: str | None = None
                failure: aiomqtt.MqttError | None = None
                try:
                    await self._session(on_message, on_connect)
                except aiomqtt.MqttError as exc:
                    error, failure = _describe(exc), exc
                if self._closing.is_set():
                    break
                self.last_error = error
                lost = self._connections > connections_before
                self._suspect_retain(failure, connected=lost)
                self._failures = failures = 0 if lost else self._failures + 1
                # The member we were on (or tried) just failed: the next one goes first.
                self._index = (self._index + 1) % len(self.members)
                delay = retry_delay(failures, len(self.members), *self.backoff, self._rng)
                if lost:
                    self.disconnects += 1
                    self._log.warning("broker_disconnected", member=member, error=error,
                                      next_member=self.address.display, retry_in=round(delay, 3))
                else:
                    self.connect_failures += 1
                    self._log.warning("broker_connect_failed", member=member, error=error,
                                      failures=failures, next_member=self.address.display,
                                      retry_in=round(delay, 3))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), delay)
        finally:
            self._mark_disconnected()
            self._running = False
            self._stopped.set()

    def _suspect_retain(self, exc: aiomqtt.MqttError | None, *, connected: bool) -> None:
        """After a failed attempt or a lost connection: was the retain bit the cause?"""
        lost_retained, self._retained_lost = self._retained_lost, False
        if not self.retain_available:
            return
        if connected and lost_retained:
            self._retain_off("the broker dropped the connection on a retained publish")
        elif self._retain_probe:  # the probe failed as well: retain was not the cause
            self._retain_probe = False
        elif (not connected and exc is not None and self.will is not None and self.will[3]
              and "timed out" in str(exc).lower()):
            self._retain_probe = True  # no CONNACK for a retained Will: try once without

    def _retain_off(self, why: str) -> None:
        self.retain_available = False
        self._retain_probe = False
        self._log.warning("transport_retain_unavailable", reason=why, member=self.address.display,
                          hint="set [broker] retain = false to skip the detection")

    async def _session(self, on_message: OnMessage, on_connect: OnConnect) -> None:
        """One connection to the current member, from CONNECT to its end.

        Ends by raising ``MqttError`` when the connection is lost, or returns
        after a clean DISCONNECT when ``disconnect()`` was asked for.
        """
        client = self._new_client()
        entered = False
        try:
            async with client:
                entered = True
                watch: asyncio.Task[None] | None = None
                try:
                    await self._until_disconnected(client, self._subscribe(client))
                    self._client = client
                    self._mark_connected()
                    watch = asyncio.create_task(self._abandon_pending_when_lost(client))
                    await self._call_on_connect(on_connect)
                    consumer = asyncio.create_task(self._consume(client, on_message))
                    closing = asyncio.create_task(self._closing.wait())
                    try:
                        await asyncio.wait({consumer, closing}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        closing.cancel()
                        if not consumer.done():
                            consumer.cancel()
                            with contextlib.suppress(asyncio.CancelledError):
                                await consumer
                    if consumer.done() and not consumer.cancelled():
                        consumer.result()  # raises the MqttError that ended the stream
                    await self._flush()  # let the death message be acknowledged before DISCONNECT
                finally:
                    if watch is not None:
                        watch.cancel()
                    self._client = None
                    self._mark_disconnected()
                    self._abandon_pending()
        except BaseException:
            if not entered:
                self._abort(client)
            raise
        finally:
            self._settle(client)

    @staticmethod
    def _abort(client: aiomqtt.Client) -> None:
        """Close the socket of a connection attempt that failed or was cancelled before CONNACK.

        aiomqtt leaves it open and watched by the event loop; when the broker
        later closes it, its callback trips over the cancelled CONNACK future
        and asyncio prints "Exception in callback". Closing it ourselves (paho's
        own close, which also unregisters it from the loop) ends that.
        """
        paho = getattr(client, "_client", None)
        close = getattr(paho, "_sock_close", None)
        if callable(close):
            with contextlib.suppress(Exception):
                close()

    @staticmethod
    def _settle(client: aiomqtt.Client) -> None:
        """Retrieve the exception of a connection that ended, so asyncio never prints it."""
        fut = _disconnected_future(client)
        if fut is not None and fut.done() and not fut.cancelled():
            fut.exception()

    async def _until_disconnected(self, client: aiomqtt.Client, aw: Awaitable[T]) -> T:
        """Await ``aw``, but raise ``MqttError`` as soon as the connection ends.

        aiomqtt waits for a SUBACK/PUBACK until its timeout even when the
        connection is already gone; a failover must not wait that long.
        """
        task = asyncio.ensure_future(aw)
        ended = _disconnected_future(client)
        if ended is None:
            return await task
        try:
            await asyncio.wait({task, ended}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await task
        cause = ended.exception() if not ended.cancelled() else None
        raise aiomqtt.MqttError("connection lost") from cause

    async def _abandon_pending_when_lost(self, client: aiomqtt.Client) -> None:
        """Fail the publishes waiting for a PUBACK as soon as the connection is gone.

        aiomqtt would wait for each until its timeout, even during ``on_connect``
        (the birth) when no consumer is there yet to notice the loss; a
        failover must not wait that long.
        """
        ended = _disconnected_future(client)
        if ended is not None:
            await asyncio.wait({ended})
            self._mark_disconnected()
            self._abandon_pending()

    def _new_client(self) -> aiomqtt.Client:
        address = self.address
        will = None
        if self.will is not None:
            topic, payload, qos, retain = self.will
            retain = retain and self.retain_available and not self._retain_probe
            will = aiomqtt.Will(topic, payload, qos, retain)
        tls_params = None
        tls = self.tls
        if tls is not None:
            tls_params = aiomqtt.TLSParameters(
                ca_certs=tls.ca_certs, certfile=tls.certfile, keyfile=tls.keyfile
            )
        client = aiomqtt.Client(
            address.host,
            address.port,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=True,
            will=will,
            keepalive=self.keepalive,
            username=self.username,
            password=self._password if self._password is not None else address.password,
            tls_params=tls_params,
            timeout=min(self.timeout,
                        self.connect_timeout * 2.0 ** min(self._failures // len(self.members), 16)),
            # Nagle off: a delta is one small write that must leave now. With it on, a
            # publish written while the previous one is unacknowledged waits for the
            # peer's delayed ACK (~40 ms on Linux), slower than the broker round trip.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        # publish() leaves QoS 1 confirmations pending by design; aiomqtt warns
        # from 10 on. Only a real backlog should be worth a warning.
        client.pending_calls_threshold = 1000
        return client

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        if not self.subscriptions:
            return
        granted = await client.subscribe(self.subscriptions, timeout=self.timeout)
        refused = []
        for (topic_filter, _qos), code in zip(self.subscriptions, granted, strict=False):
            value = code if isinstance(code, int) else getattr(code, "value", code)
            if value == 0x80:
                refused.append(topic_filter)
        if refused:
            # A node that cannot hear its federation is no use on this member: an ACL
            # refusal is a misconfiguration to shout about (again at every retry), and
            # a cluster member still recovering (NATS refuses a QoS 1 subscription
            # whose JetStream consumer it cannot create yet) is left for the next one.
            self._log.error("transport_subscription_refused", filters=refused,
                            member=self.address.display)
            raise aiomqtt.MqttError(f"subscription refused: {', '.join(refused)}")

    async def _consume(self, client: aiomqtt.Client, on_message: OnMessage) -> None:
        """The single consumer: messages reach the node strictly in arrival order."""
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):  # paho always gives bytes; be sure
                payload = str(payload).encode() if payload is not None else b""
            topic = message.topic.value
            if not any(topic_matches(f, topic) for f, _qos in self.subscriptions):
                # Brokers can send what we never asked for (amqtt 0.12 does, on CONNECT).
                self.messages_unsolicited += 1
                self._log.debug("transport_unsolicited_message", topic=topic)
                continue
            await self._deliver(on_message, topic, bytes(payload), message.retain)

    def _mark_disconnected(self) -> None:
        """Connection state only: the loss is logged once, by ``run``, with its member and cause."""
        self._up.clear()
        self._down.set()

    # -- publishing -----------------------------------------------------------------------

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> bool:
        """Hand a message to the client: True if taken, False (at once) when disconnected.

        A taken QoS 1 message is acknowledged in the background; if the connection
        drops first it is lost with it (clean session), which anti-entropy repairs.
        With ``confirm`` set, a QoS 1 publish waits for that acknowledgement and
        returns False if the connection ended first.
        Raises ``ValueError`` for an invalid topic or QoS (a caller bug).
        """
        ack = await self.publish_tracked(topic, payload, qos=qos, retain=retain)
        if ack is None:
            return False
        if self.confirm and qos > 0:
            # wait() rather than await: cancelling the caller must not cancel the send.
            await asyncio.wait({ack})
            return not ack.cancelled() and ack.result()
        return True

    async def publish_tracked(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> asyncio.Future[bool] | None:
        """``publish`` that never waits, and tells how it ended: None if not taken (disconnected),
        else a future that is True once the broker acknowledged it (QoS 0: once written)
        and False or cancelled if the connection ended first.

        What lets a publisher advance its cursor at once yet go back over what a
        lost connection swallowed, without waiting a round trip per message.
        """
        validate_topic(topic)
        if qos not in (0, 1, 2):
            raise ValueError(f"QoS must be 0, 1 or 2, not {qos!r}")
        client = self._client
        if client is None or not self.connected:
            return None
        retain = retain and self.retain_available
        task = asyncio.create_task(self._send(client, topic, payload, qos, retain))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        if retain:
            self._retained_pending.add(task)
            task.add_done_callback(self._retained_pending.discard)
        # aiomqtt hands the message to paho synchronously, in the task's first step,
        # which runs before we resume: after this the message is queued (or refused).
        await asyncio.sleep(0)
        if task.done() and not task.cancelled() and task.result() is False:
            return None
        self._count_out(payload)
        return task

    async def _send(
        self, client: aiomqtt.Client, topic: str, payload: bytes, qos: int, retain: bool
    ) -> bool:
        try:
            await client.publish(topic, payload, qos=qos, retain=retain, timeout=self.timeout)
        except aiomqtt.MqttError as exc:
            self._log.debug("transport_publish_unconfirmed", topic=topic, error=_describe(exc))
            if retain:
                self._retained_lost = True
            return False
        if retain:
            self._retain_probe = False  # the broker keeps retained messages: Wills may retain too
        return True

    async def _flush(self) -> None:
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=self.timeout)

    def _abandon_pending(self) -> None:
        if any(not t.done() for t in self._retained_pending):
            self._retained_lost = True  # see _suspect_retain
        for task in list(self._pending):
            task.cancel()

    async def disconnect(self) -> None:
        """Clean disconnect (no Will): flush pending publishes, DISCONNECT, make ``run`` return."""
        self._closing.set()
        if self._running:
            # _session is bounded by self.timeout for the flush and for DISCONNECT.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), 3 * self.timeout)
