"""The signed envelope: encode, open (``peek``) and fully validate (``Decoder``) payloads.

A payload is a msgpack map ``{"v": 1, "b": body, "s": signature}``. ``body`` is
itself a msgpack map holding every field (``peerd.wire.codec``); ``signature``
is the 64-byte Ed25519 signature over the exact body bytes, so a receiver
verifies what it received and never re-encodes (DESIGN §5). Size limits are
checked first, before any work: ``max_payload`` bytes per payload,
``max_entries`` cells and ``MAX_SIGNATURES`` signatures per delta, and msgpack
limits per object.

A node builds one ``Decoder`` (federation, task and limits fixed at start) and
calls ``decoder.decode(payload, topic=...)`` per message; ``decode(...)`` is the
same as a function, for tools and tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import msgpack

from peerd.delta import DEFAULT_Q_BOUND
from peerd.errors import (
    FederationMismatch,
    FingerprintMismatch,
    InternalDecodeError,
    MalformedMessage,
    PayloadTooLarge,
    TopicMismatch,
    UnknownMessageType,
    UnsupportedVersion,
    WireError,
)
from peerd.wire.codec import (
    MAX_SIGNATURES,
    PARSERS,
    Limits,
    body_fields,
    claimed_key,
    parse_header,
    required_field,
)
from peerd.wire.messages import DeltaMsg, Message
from peerd.wire.topics import KIND_OF_TYPE, WIRE_VERSION, parse_topic

if TYPE_CHECKING:
    from peerd.identity import Verifier

__all__ = [
    "MAX_ENTRIES", "MAX_PAYLOAD", "SIGNATURE_LEN", "Decoder", "Frame", "Signer", "decode",
    "encode", "peek",
]

#: Default receive limits: a payload above either is rejected before any work.
MAX_PAYLOAD = 8 * 1024 * 1024
MAX_ENTRIES = 1_000_000
SIGNATURE_LEN = 64

# msgpack limits per object (the payload size bounds the totals).
_MAX_STR = 65_536
_MAX_CONTAINER = 4_096
_FRAME_MAX_MAP = 64


class Signer(Protocol):
    """Anything that signs a body with Ed25519 (``peerd.identity.Identity``)."""

    def sign(self, body: bytes) -> bytes: ...


def encode(msg: Message, signer: Signer, *, max_payload: int = MAX_PAYLOAD,
           max_entries: int = MAX_ENTRIES) -> bytes:
    """Sign and frame a message. Raises ``PayloadTooLarge`` when receivers would refuse it
    (split the delta), ``ShapeMismatch``/``MalformedMessage`` for a message that cannot travel.
    """
    if isinstance(msg, DeltaMsg):
        if len(msg.delta) > max_entries:
            raise PayloadTooLarge(f"delta has {len(msg.delta)} cells, limit is {max_entries}")
        if len(msg.signatures) > MAX_SIGNATURES:
            raise PayloadTooLarge(f"{len(msg.signatures)} signatures, limit is {MAX_SIGNATURES}")
    body = msgpack.packb(body_fields(msg), use_bin_type=True)
    signature = bytes(signer.sign(body))
    if len(signature) != SIGNATURE_LEN:
        raise MalformedMessage(f"signer returned {len(signature)} bytes, expected {SIGNATURE_LEN}")
    payload = msgpack.packb({"v": WIRE_VERSION, "b": body, "s": signature}, use_bin_type=True)
    if len(payload) > max_payload:
        raise PayloadTooLarge(f"payload of {len(payload)} bytes exceeds {max_payload}")
    return payload


# ---------------------------------------------------------------- decode

class Frame(NamedTuple):
    """A payload opened but not validated: the signed body bytes, its signature, its fields."""

    body: bytes
    signature: bytes
    fields: dict[str, Any]


def _unpack(data: bytes, *, max_bin: int, max_map: int) -> Any:
    """msgpack → Python with hard limits; any msgpack complaint becomes ``MalformedMessage``."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=max_bin,
                               max_str_len=_MAX_STR, max_array_len=_MAX_CONTAINER,
                               max_map_len=max_map, max_ext_len=_MAX_STR)
    except Exception as exc:  # msgpack raises ValueError, FormatError, StackError, ...
        raise MalformedMessage(f"not msgpack: {type(exc).__name__}: {exc}") from None


def _wire_version(obj: dict[str, Any], where: str) -> None:
    v = obj.get("v")
    if type(v) is not int:
        raise MalformedMessage(f"{where} lacks an integer wire version 'v'")
    if v != WIRE_VERSION:
        raise UnsupportedVersion(f"wire version {v}, this node speaks {WIRE_VERSION}")


def peek(payload: bytes | bytearray | memoryview, *, max_payload: int = MAX_PAYLOAD) -> Frame:
    """Open the frame and the body map, checking only size, msgpack shape and wire version."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise MalformedMessage(f"payload must be bytes, got {type(payload).__name__}")
    data = bytes(payload) if isinstance(payload, memoryview) else payload
    if len(data) > max_payload:
        raise PayloadTooLarge(f"payload of {len(data)} bytes exceeds {max_payload}")
    outer = _unpack(data, max_bin=max_payload, max_map=_FRAME_MAX_MAP)
    if type(outer) is not dict:
        raise MalformedMessage("payload is not a msgpack map")
    _wire_version(outer, "frame")
    body, signature = outer.get("b"), outer.get("s")
    if type(body) is not bytes or type(signature) is not bytes:
        raise MalformedMessage("frame needs b:bytes and s:bytes")
    if len(signature) != SIGNATURE_LEN:
        raise MalformedMessage(f"signature has {len(signature)} bytes, expected {SIGNATURE_LEN}")
    fields = _unpack(body, max_bin=len(body), max_map=_MAX_CONTAINER)
    if type(fields) is not dict:
        raise MalformedMessage("body is not a msgpack map")
    _wire_version(fields, "body")
    return Frame(body, signature, fields)


class Decoder:
    """Validates payloads for one node: federation, task and limits are fixed once, here.

    ``decode`` validates everything before it returns and raises only
    ``WireError`` subclasses (``peerd.errors``), each with a stable ``reason``.
    With a ``verifier`` the signature, sender key and replay are checked as
    soon as the header is known (before any array is inflated), and the
    verifier's state (pinned key, last (epoch, seq)) is updated only once
    everything validated — or not at all with ``commit=False``, for a caller
    that commits with ``verifier.commit(msg)`` after applying the message.
    ``verifier`` is a plain attribute: a node that replaces its verifier (state
    restored, allowlist reloaded) assigns the new one here.
    """

    def __init__(self, *, fed: str, fingerprint: str, n_actions: int,
                 q_bound: float = DEFAULT_Q_BOUND, max_payload: int = MAX_PAYLOAD,
                 max_entries: int = MAX_ENTRIES, max_signatures: int = MAX_SIGNATURES,
                 verifier: Verifier | None = None) -> None:
        self.fed = fed
        self.fingerprint = fingerprint
        self.limits = Limits(int(n_actions), float(q_bound), int(max_entries), int(max_signatures))
        self.max_payload = int(max_payload)
        self.verifier = verifier

    def decode(self, payload: bytes | bytearray | memoryview, *, topic: str | None = None,
               commit: bool = True) -> Message:
        """The message in ``payload``, or a ``WireError``. ``topic``, when given, must agree
        with the signed header. An unexpected exception is a bug and surfaces as
        ``InternalDecodeError`` (reason "internal"), never as itself."""
        try:
            return self._decode(payload, topic, commit)
        except WireError:
            raise
        except Exception as exc:
            raise InternalDecodeError(
                f"decode failed unexpectedly: {type(exc).__name__}: {exc}") from exc

    def _decode(self, payload: bytes | bytearray | memoryview, topic_name: str | None,
                commit: bool) -> Message:
        frame = peek(payload, max_payload=self.max_payload)
        f = frame.fields
        msg_type = required_field(f, "type", str)
        parser = PARSERS.get(msg_type)
        if parser is None:
            raise UnknownMessageType(f"unknown message type {msg_type[:64]!r}")
        h = parse_header(f)
        if h.fed != self.fed:
            raise FederationMismatch(f"message for federation {h.fed!r}, this node is in {self.fed!r}")
        if h.fp != self.fingerprint:
            raise FingerprintMismatch(f"task fingerprint {h.fp!r}, expected {self.fingerprint!r}")
        if topic_name is not None \
                and parse_topic(topic_name) != (h.fed, KIND_OF_TYPE[msg_type], h.node):
            raise TopicMismatch(f"{msg_type} of {h.node!r} arrived on topic {topic_name[:200]!r}")
        verifier = self.verifier
        if verifier is not None:  # authenticate before inflating anything; replays cost nothing
            verifier.check(h, msg_type, frame.body, frame.signature,
                           public_key=claimed_key(msg_type, f))
        try:
            msg = parser(h, f, self.limits)
        except WireError as exc:
            exc.authenticated = verifier is not None  # the signature checked out: the sender said this
            raise
        if verifier is not None and commit:
            verifier.commit(msg)
        return msg


def decode(payload: bytes | bytearray | memoryview, *, fed: str, fingerprint: str,
           n_actions: int, q_bound: float = DEFAULT_Q_BOUND, max_payload: int = MAX_PAYLOAD,
           max_entries: int = MAX_ENTRIES, max_signatures: int = MAX_SIGNATURES,
           verifier: Verifier | None = None, commit: bool = True,
           topic: str | None = None) -> Message:
    """``Decoder(...).decode(payload, topic=, commit=)`` in one call, for tools and tests
    (a node builds its ``Decoder`` once)."""
    decoder = Decoder(fed=fed, fingerprint=fingerprint, n_actions=n_actions, q_bound=q_bound,
                      max_payload=max_payload, max_entries=max_entries,
                      max_signatures=max_signatures, verifier=verifier)
    return decoder.decode(payload, topic=topic, commit=commit)
