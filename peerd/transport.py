"""MQTT 3.1.1 transport: the only module that imports aiomqtt.

``MqttTransport.run`` owns the connection for the node's whole life: connect,
subscribe, ``on_connect`` (the node publishes its birth), then hand every
message to ``on_message`` in order of arrival from one consumer loop. When the
connection is lost it reconnects forever with jittered exponential backoff
(DESIGN §8: learning and the local API keep working while the broker is away),
and re-subscribes and calls ``on_connect`` again each time.

Sessions are clean (``clean_session=True``): the broker keeps nothing for us
while we are away; catch-up is the anti-entropy protocol's job (DESIGN §4),
which keeps every broker behaving the same.

``publish`` never blocks on the network: it returns ``True`` once the message is
handed to the MQTT client (written in call order; QoS 1 is then confirmed in
the background) and ``False`` when disconnected. aiomqtt errors never escape as
such: they are retried (connection) or turned into ``False`` (publish); an
unusable setup surfaces as ``peerd.errors.ConfigError``/``TransportError``.

Brokers without retained messages: mosquitto with ``retain_available false``
drops a client whose Will or PUBLISH has the retain bit (MQTT 3.1.1 has no way
to say why). With ``retain=False`` nothing is ever retained; otherwise the
transport notices by itself and switches retain off for good, logging once
(``transport_retain_unavailable``):

- a CONNECT with a retained Will that times out is retried once with the Will
  not retained (a probe); if that one connects, retain was the cause;
- a connection lost while a retained publish awaits its PUBACK: the same.

Without retain, presence rests on rebirth requests (``peerd.presence``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
from collections.abc import Sequence
from dataclasses import dataclass
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
    "MqttTransport",
    "OnConnect",
    "OnMessage",
    "TLSConfig",
    "Transport",
    "Will",
    "backoff_delay",
    "parse_broker_url",
    "topic_matches",
]

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


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in ``[base, min(cap, base·2^(attempt+1))]``, ``attempt`` from 0.

    The ceiling starts at twice the base so that even the first retry is
    jittered: a federation whose broker restarts must not reconnect in lockstep.
    """
    ceiling = min(cap, base * 2.0 ** min(attempt + 1, 60))
    return rng.uniform(base, ceiling)


class MqttTransport(BaseTransport):
    """A node's MQTT connection: reconnects forever, delivers in order, never raises on publish."""

    def __init__(
        self,
        url: str,
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
        retain: bool = True,
    ) -> None:
        super().__init__(client_id=client_id, subscriptions=subscriptions, will=will)
        address = parse_broker_url(url)
        if not 0 < backoff[0] <= backoff[1]:
            raise ConfigError(f"backoff must satisfy 0 < base <= cap, got {backoff!r}")
        if not 0 < keepalive <= 65535:
            raise ConfigError(f"keepalive must be in 1..65535 s, got {keepalive!r}")
        self.url = url
        self.host = address.host
        self.port = address.port
        self.username = username if username is not None else address.username
        self._password = password if password is not None else address.password
        self.tls = tls if tls is not None else (TLSConfig() if address.tls else None)
        self.keepalive = keepalive
        self.backoff = backoff
        #: Seconds to wait for CONNACK/SUBACK/PUBACK and for flushing on disconnect.
        self.timeout = timeout
        #: Messages dropped because they match none of our subscriptions.
        self.messages_unsolicited = 0
        #: Why the last connection attempt failed or the last connection ended.
        self.last_error: str | None = None
        #: False: retained publishes and the Will go out without the retain bit.
        self.retain_available = retain
        self._retain_probe = False  # this attempt connects with a non-retained Will, as a test
        self._retained_pending: set[asyncio.Task[bool]] = set()
        self._retained_failed = False  # a retained publish of this connection went unconfirmed
        self._retained_lost = False  # the last connection died with a retained publish unacked
        self._rng = rng if rng is not None else random.Random()
        self._client: aiomqtt.Client | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()
        self._stopped = asyncio.Event()
        self._running = False

    def __repr__(self) -> str:
        state = "connected" if self.connected else "disconnected"
        return f"<MqttTransport {self.client_id} {self.host}:{self.port} {state}>"

    # -- the connection loop --------------------------------------------------------------

    async def run(self, on_message: OnMessage, on_connect: OnConnect) -> None:
        """Stay connected until ``disconnect()`` or cancellation; see the module docstring."""
        if self._running:
            raise RuntimeError("MqttTransport.run() is already running")
        self._running = True
        self._stopped.clear()
        attempt = 0
        try:
            while not self._closing.is_set():
                connections_before = self._connections
                try:
                    await self._session(on_message, on_connect)
                except aiomqtt.MqttError as exc:
                    self.last_error = str(exc)
                    event = "transport_connection_lost" if self._connections else "transport_connect_failed"
                    self._log.warning(event, error=str(exc), url=self.url)
                    self._suspect_retain(exc, connected=self._connections > connections_before)
                if self._closing.is_set():
                    break
                if self._connections > connections_before:
                    attempt = 0  # it worked for a while: start again from the base delay
                delay = backoff_delay(attempt, *self.backoff, self._rng)
                attempt += 1
                self._log.info("transport_reconnect_scheduled", delay=round(delay, 3), attempt=attempt)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), delay)
        finally:
            self._mark_disconnected()
            self._running = False
            self._stopped.set()

    def _suspect_retain(self, exc: aiomqtt.MqttError, *, connected: bool) -> None:
        """After a failed attempt or a lost connection: was the retain bit the cause?"""
        if not self.retain_available:
            return
        if self._retain_probe:  # the probe failed as well: retain was not the cause
            self._retain_probe = False
        elif connected and self._retained_lost:
            self._retain_off("the broker dropped the connection on a retained publish")
        elif (not connected and self.will is not None and self.will[3]
              and "timed out" in str(exc).lower()):
            self._retain_probe = True  # no CONNACK for a retained Will: try once without
        self._retained_lost = False

    def _retain_off(self, why: str) -> None:
        self.retain_available = False
        self._retain_probe = False
        self._log.warning("transport_retain_unavailable", reason=why, url=self.url,
                          hint="set [broker] retain = false to skip the detection")

    async def _session(self, on_message: OnMessage, on_connect: OnConnect) -> None:
        """One connection, from CONNECT to its end.

        Ends by raising ``MqttError`` when the connection is lost, or returns
        after a clean DISCONNECT when ``disconnect()`` was asked for.
        """
        client = self._new_client()
        async with client:
            if self._retain_probe:
                self._retain_off("the broker refused a retained Will")
            self._retained_failed = False
            try:
                await self._subscribe(client)
                self._client = client
                self._mark_connected()
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
                self._client = None
                self._mark_disconnected()
                self._retained_lost = self._retained_failed or any(
                    not t.done() for t in self._retained_pending)
                self._abandon_pending()

    def _new_client(self) -> aiomqtt.Client:
        will = None
        if self.will is not None:
            topic, payload, qos, retain = self.will
            retain = retain and self.retain_available and not self._retain_probe
            will = aiomqtt.Will(topic, payload, qos, retain)
        tls_params = None
        if self.tls is not None:
            tls_params = aiomqtt.TLSParameters(
                ca_certs=self.tls.ca_certs, certfile=self.tls.certfile, keyfile=self.tls.keyfile
            )
        client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=True,
            will=will,
            keepalive=self.keepalive,
            username=self.username,
            password=self._password,
            tls_params=tls_params,
            timeout=self.timeout,
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
        for (topic_filter, _qos), code in zip(self.subscriptions, granted, strict=False):
            value = code if isinstance(code, int) else getattr(code, "value", code)
            if value == 0x80:
                # Refused (ACL): retrying would not help; the node sees nothing on it.
                self._log.error("transport_subscription_refused", filter=topic_filter)

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

    # -- publishing -----------------------------------------------------------------------

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> bool:
        """Hand a message to the client: True if taken, False (at once) when disconnected.

        A taken QoS 1 message is acknowledged in the background; if the connection
        drops first it is lost with it (clean session), which anti-entropy repairs.
        Raises ``ValueError`` for an invalid topic or QoS (a caller bug).
        """
        validate_topic(topic)
        if qos not in (0, 1, 2):
            raise ValueError(f"QoS must be 0, 1 or 2, not {qos!r}")
        client = self._client
        if client is None or not self.connected:
            return False
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
            return False
        self._count_out(payload)
        return True

    async def _send(
        self, client: aiomqtt.Client, topic: str, payload: bytes, qos: int, retain: bool
    ) -> bool:
        try:
            await client.publish(topic, payload, qos=qos, retain=retain, timeout=self.timeout)
        except aiomqtt.MqttError as exc:
            self._log.debug("transport_publish_unconfirmed", topic=topic, error=str(exc))
            if retain:
                self._retained_failed = True
            return False
        return True

    async def _flush(self) -> None:
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=self.timeout)

    def _abandon_pending(self) -> None:
        for task in list(self._pending):
            task.cancel()

    async def disconnect(self) -> None:
        """Clean disconnect (no Will): flush pending publishes, DISCONNECT, make ``run`` return."""
        self._closing.set()
        if self._running:
            # _session is bounded by self.timeout for the flush and for DISCONNECT.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), 3 * self.timeout)
