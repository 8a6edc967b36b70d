"""One exception tree for everything peerd raises on purpose.

    PeerdError
    ├── ConfigError              a setting is missing or wrong (names the key)
    ├── InvalidState             an application state cannot be encoded canonically (TypeError)
    ├── UnknownAction            an action index or name outside the task (ValueError)
    ├── StoreError               the SQLite state directory cannot be used
    ├── TransportError           the broker cannot be reached or refused us
    ├── ApiError(status, code)   the local API answered 4xx/5xx (peerd.client)
    │   └── ApiUnreachable       no answer at all (status 0): daemon down, wrong address
    ├── ToolError(code)          an operator tool fails with one line and exit status ``code``
    ├── SimulationError          ``peerd sim`` cannot go on (e.g. the nodes never met)
    └── WireError                input from the network (or a caller) is rejected   reason
        ├── MalformedMessage     not msgpack, wrong shape or field type             "malformed"
        │   └── InternalDecodeError  a bug in decode (the fuzzer counts it a crash) "internal"
        ├── PayloadTooLarge      payload (or a delta to encode) above the limit     "too_large"
        ├── UnsupportedVersion   wire version other than 1                          "version"
        ├── UnknownMessageType   a type not in wire.TYPES                           "unknown_type"
        ├── FederationMismatch   the message is for another federation             "federation"
        ├── TopicMismatch        topic disagrees with the signed header             "topic"
        ├── BadSignature         Ed25519 signature does not verify                  "bad_signature"
        ├── UnknownSender        no pinned key (or not on a strict allowlist)       "unknown_sender"
        ├── KeyMismatch          a birth with another key than the pinned one       "key_mismatch"
        ├── Replay               (epoch, seq) not newer for that node and type      "replay"
        ├── OriginMismatch       a node sent cells of another origin                "origin_mismatch"
        ├── OriginLimit          a new peer past max_origins                        "origin_limit"
        └── InvalidDelta         a delta's cells are malformed or absurd            "invalid_delta"
            ├── FingerprintMismatch  another task (actions, γ, encoding)            "fingerprint"
            ├── ShapeMismatch        lengths, dtypes or entry counts                "shape"
            ├── NonFiniteValue       NaN or infinity                                "non_finite"
            ├── ValueOutOfBounds     |q| > q_bound, negative counts ...             "out_of_bounds"
            ├── BadActionIndex       an action index outside the task               "unknown_action"
            └── ExcessiveEvidence    lw claims > visit_cap fresh visits or future   "excessive_evidence"

Every ``WireError`` has a short snake_case ``reason``, the label of
``peerd_rejected_messages_total{reason=...}``: the reason is part of the public
surface, the message is for humans. ``REASONS`` lists every reason a
``WireError`` can carry (the metrics pre-register them); a test derives the
set from the classes above and checks ``REASONS`` covers it.

This module imports nothing: every layer (the pure core, the wire, the tools,
the standard-library-only client) can raise from it.
"""

from __future__ import annotations

__all__ = [
    "REASONS", "ApiError", "ApiUnreachable", "BadActionIndex", "BadSignature", "ConfigError",
    "ExcessiveEvidence", "FederationMismatch", "FingerprintMismatch", "InternalDecodeError",
    "InvalidDelta", "InvalidState", "KeyMismatch", "MalformedMessage", "NonFiniteValue",
    "OriginLimit", "OriginMismatch", "PayloadTooLarge", "PeerdError", "Replay", "ShapeMismatch",
    "SimulationError", "StoreError", "ToolError", "TopicMismatch", "TransportError",
    "UnknownAction", "UnknownMessageType", "UnknownSender", "UnsupportedVersion",
    "ValueOutOfBounds", "WireError",
]


class PeerdError(Exception):
    """Base of every error peerd raises deliberately."""


class ConfigError(PeerdError):
    """A configuration key is missing, malformed or out of range."""


class InvalidState(PeerdError, TypeError):
    """A state is not a str, int, or JSON-able tuple/list/dict of scalars."""


class UnknownAction(PeerdError, ValueError):
    """An action index or name does not belong to the task."""


class StoreError(PeerdError):
    """The durable store failed or holds data of another federation/task."""


class TransportError(PeerdError):
    """The MQTT transport failed (connection refused, lost, not connected)."""


# ---------------------------------------------------------------- local API and tools

class ApiError(PeerdError):
    """The API refused a request: ``status`` (0 = no answer), ``code`` and the server's ``message``."""

    def __init__(self, status: int, message: str, *, code: str = "") -> None:
        super().__init__(f"{status} {code}: {message}" if code else f"{status}: {message}")
        self.status = status
        self.code = code
        self.message = message


class ApiUnreachable(ApiError):
    """The daemon did not answer (refused, timed out, connection reset)."""


class ToolError(PeerdError):
    """A failure an operator tool reports as one line and exit status ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class SimulationError(PeerdError):
    """``peerd sim`` cannot go on; the message names the probable cause in one line."""


# ---------------------------------------------------------------- rejected input

class WireError(PeerdError):
    """Rejected input. ``reason`` is a stable metric label."""

    reason: str = "invalid"
    #: True when raised after the sender's signature was verified: only such
    #: rejections may cost the sender trust (anyone can publish garbage in its name).
    authenticated: bool = False

    def __init__(self, message: str = "", *, reason: str | None = None) -> None:
        super().__init__(message or self.__class__.__doc__ or "rejected")
        if reason is not None:
            self.reason = reason


class MalformedMessage(WireError):
    """Not msgpack, or a field is missing or of the wrong type."""

    reason = "malformed"


class InternalDecodeError(MalformedMessage):
    """decode hit an unexpected exception: a bug, reported instead of crashing the node."""

    reason = "internal"


class PayloadTooLarge(WireError):
    """The payload (or a delta to encode) exceeds the size limit."""

    reason = "too_large"


class UnsupportedVersion(WireError):
    """The wire version is not one this node speaks."""

    reason = "version"


class UnknownMessageType(WireError):
    """The message type is not one of ``wire.TYPES``."""

    reason = "unknown_type"


class FederationMismatch(WireError):
    """The message belongs to another federation."""

    reason = "federation"


class TopicMismatch(WireError):
    """The topic a message arrived on disagrees with its signed header."""

    reason = "topic"


class BadSignature(WireError):
    """The Ed25519 signature does not match the body and the sender's key."""

    reason = "bad_signature"


class UnknownSender(WireError):
    """No key is pinned for the sender, or it is not on the strict allowlist."""

    reason = "unknown_sender"


class KeyMismatch(WireError):
    """A birth announces another public key than the one pinned for that node."""

    reason = "key_mismatch"


class Replay(WireError):
    """(epoch, seq) is not newer than the last accepted from that node for that type.

    ``duplicate`` is true when it equals the last accepted one: an honest QoS 1
    redelivery or a retained birth, which a node may choose not to penalise.
    """

    reason = "replay"

    def __init__(self, message: str = "", *, duplicate: bool = False) -> None:
        super().__init__(message)
        self.duplicate = duplicate


class OriginMismatch(WireError):
    """A node sent cells of another origin (relaying is not enabled)."""

    reason = "origin_mismatch"


class OriginLimit(WireError):
    """A new peer past ``max_origins``: refused before its message is even decoded."""

    reason = "origin_limit"


class InvalidDelta(WireError):
    """A delta's cells are malformed; nothing of it was applied."""

    reason = "invalid_delta"


class FingerprintMismatch(InvalidDelta):
    """The message is for another task (action set, gamma or encoding differ)."""

    reason = "fingerprint"


class ShapeMismatch(InvalidDelta):
    """Arrays have different lengths, wrong dtypes or too many entries."""

    reason = "shape"


class NonFiniteValue(InvalidDelta):
    """An array holds NaN or infinity."""

    reason = "non_finite"


class ValueOutOfBounds(InvalidDelta):
    """A value is outside its allowed range (|q| > q_bound, negative lw ...)."""

    reason = "out_of_bounds"


class BadActionIndex(InvalidDelta):
    """An action index is not one of the task's actions."""

    reason = "unknown_action"


class ExcessiveEvidence(InvalidDelta):
    """A log-weight claims more than visit_cap fresh visits or evidence from the future."""

    reason = "excessive_evidence"


#: Every reason a ``WireError`` can carry, for pre-registering metric labels.
#: ``origin_limit``: a new origin refused because the node holds as many origins
#: as it accepts.
REASONS: tuple[str, ...] = (
    "too_large", "malformed", "version", "unknown_type", "federation", "topic",
    "fingerprint", "shape", "non_finite", "out_of_bounds", "unknown_action",
    "bad_signature", "unknown_sender", "key_mismatch", "replay", "internal",
    "excessive_evidence", "origin_mismatch", "origin_limit", "invalid_delta", "invalid",
)
