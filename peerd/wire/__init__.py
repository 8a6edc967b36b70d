"""Wire protocol v1 (DESIGN §4-5), one concept per module. Pure: no I/O.

- ``topics``   — ids, topic names, subscriptions, routes (topic, QoS, retain);
- ``messages`` — ``Header`` and the messages: ``DeltaMsg``, ``Birth``, ``Death``,
  ``Heartbeat``, ``SyncRequest``, ``Rebirth``;
- ``codec``    — msgpack body fields ↔ messages, array packing (raw, byte-shuffled zlib);
- ``framing``  — the signed envelope and size limits: ``encode``, ``peek``,
  ``Decoder`` (one per node) and ``decode`` (the same as a function).

Errors are ``peerd.errors.WireError`` subclasses, each with a stable
``reason`` (``REASONS``; the tree is drawn in ``peerd.errors``); the ones
decode raises are re-exported here. Use the package, not its modules:
``from peerd import wire; wire.encode(wire.Birth(...), identity)``.
"""

from __future__ import annotations

from peerd.errors import (
    REASONS,
    BadSignature,
    FederationMismatch,
    InternalDecodeError,
    KeyMismatch,
    MalformedMessage,
    PayloadTooLarge,
    Replay,
    TopicMismatch,
    UnknownMessageType,
    UnknownSender,
    UnsupportedVersion,
)
from peerd.wire.codec import (
    CODEC_DELTA_SHUFFLE,
    CODEC_RAW,
    CODEC_SHUFFLE,
    CODECS,
    COMPRESS_MIN_CELLS,
    MAX_SIGNATURES,
    SIGNATURE_DTYPES,
    ZLIB_LEVEL,
)
from peerd.wire.framing import (
    MAX_ENTRIES,
    MAX_PAYLOAD,
    SIGNATURE_LEN,
    Decoder,
    Frame,
    Signer,
    decode,
    encode,
    peek,
)
from peerd.wire.messages import (
    KEYED_TYPES,
    PUBLIC_KEY_LEN,
    RELAYABLE_TYPES,
    TYPES,
    Birth,
    Death,
    DeltaMsg,
    Header,
    Heartbeat,
    Message,
    Rebirth,
    SyncRequest,
)
from peerd.wire.topics import (
    KIND_OF_TYPE,
    KINDS,
    MAX_ID_LEN,
    QOS,
    RETAIN,
    WIRE_VERSION,
    Route,
    check_id,
    is_safe_id,
    parse_topic,
    route,
    subscriptions,
    topic,
)

__all__ = [
    "CODECS", "CODEC_DELTA_SHUFFLE", "CODEC_RAW", "CODEC_SHUFFLE", "COMPRESS_MIN_CELLS",
    "KEYED_TYPES", "KINDS", "KIND_OF_TYPE", "MAX_ENTRIES", "MAX_ID_LEN", "MAX_PAYLOAD",
    "MAX_SIGNATURES", "PUBLIC_KEY_LEN", "QOS", "REASONS", "RELAYABLE_TYPES", "RETAIN",
    "SIGNATURE_DTYPES", "SIGNATURE_LEN", "TYPES",
    "WIRE_VERSION", "ZLIB_LEVEL", "BadSignature", "Birth", "Death", "Decoder", "DeltaMsg",
    "FederationMismatch", "Frame", "Header", "Heartbeat", "InternalDecodeError", "KeyMismatch",
    "MalformedMessage", "Message", "PayloadTooLarge", "Rebirth", "Replay", "Route", "Signer",
    "SyncRequest", "TopicMismatch", "UnknownMessageType", "UnknownSender",
    "UnsupportedVersion", "check_id", "decode", "encode", "is_safe_id", "parse_topic", "peek",
    "route", "subscriptions", "topic",
]
