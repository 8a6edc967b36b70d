"""One exception tree for everything peerd raises on purpose.

    PeerdError
    ├── ConfigError            a setting is missing or wrong (names the key)
    ├── InvalidState           an application state cannot be encoded canonically
    ├── UnknownAction          an action index or name outside the task
    ├── StoreError             the SQLite state directory cannot be used
    ├── TransportError         the broker cannot be reached or refused us
    └── WireError              input from the network (or a caller) is rejected
        ├── InvalidDelta       a delta's cells are malformed or absurd
        │   ├── FingerprintMismatch
        │   ├── ShapeMismatch
        │   ├── NonFiniteValue
        │   ├── ValueOutOfBounds
        │   ├── BadActionIndex
        │   └── ExcessiveEvidence
        └── ... decode/signature errors, defined in ``peerd.wire``

Every ``WireError`` has a short snake_case ``reason`` that is used as the label
of ``peerd_rejected_messages_total{reason=...}``: the reason is part of the
public surface, the message is for humans.
"""

from __future__ import annotations


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


class EvidenceBudgetExceeded(InvalidDelta):
    """A delta claims more evidence than its version range allows (DESIGN §2 "Evidence budget")."""

    reason = "evidence_budget"


class VersionRateExceeded(InvalidDelta):
    """A peer's version grows faster than the configured cap or a multiple of the federation's median."""

    reason = "version_rate"
