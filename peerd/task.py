"""The task a federation learns, and how application states become keys.

A ``Task`` is what nodes must agree on before their Q-values mean the same thing:
the ordered action names, the discount γ and the version of the state encoding.
Its ``fingerprint`` travels in every message; anything else is rejected.

Raw states never leave the node: ``state_key`` hashes a canonical encoding with
keyed BLAKE2b (key = the federation secret) to an unsigned 64-bit key, so a
broker or an eavesdropper learns nothing about the application's states.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

from peerd.errors import InvalidState, UnknownAction

#: Bump when ``canonical_state`` changes: it is part of the fingerprint.
STATE_ENCODING_VERSION = 1


@dataclass(frozen=True)
class Task:
    """Action set (fixed order), discount and state-encoding version."""

    actions: tuple[str, ...]
    gamma: float = 0.95
    name: str = "task"
    encoding: int = STATE_ENCODING_VERSION
    fingerprint: str = field(init=False)

    def __init__(
        self,
        actions: Sequence[str] | int,
        *,
        gamma: float = 0.95,
        name: str = "task",
        encoding: int = STATE_ENCODING_VERSION,
    ) -> None:
        if isinstance(actions, Integral):
            names = tuple(str(i) for i in range(int(actions)))
        else:
            names = tuple(str(a) for a in actions)
        if not names:
            raise UnknownAction("a task needs at least one action")
        if len(set(names)) != len(names):
            raise UnknownAction(f"action names must be unique, got {list(names)}")
        if len(names) > 65535:
            raise UnknownAction("at most 65535 actions (uint16 on the wire)")
        if not (0.0 <= float(gamma) <= 1.0):
            raise ValueError(f"gamma must be within [0, 1], got {gamma}")
        object.__setattr__(self, "actions", names)
        object.__setattr__(self, "gamma", float(gamma))
        object.__setattr__(self, "name", str(name))
        object.__setattr__(self, "encoding", int(encoding))
        object.__setattr__(self, "fingerprint", _fingerprint(names, float(gamma), int(encoding)))

    @property
    def n_actions(self) -> int:
        return len(self.actions)

    def action_index(self, action: int | str) -> int:
        """Index of an action given by index or name; raises ``UnknownAction``."""
        if isinstance(action, str):
            try:
                return self.actions.index(action)
            except ValueError:
                raise UnknownAction(f"unknown action {action!r}; known: {list(self.actions)}") from None
        if isinstance(action, Integral) and 0 <= int(action) < len(self.actions):
            return int(action)
        raise UnknownAction(f"action index {action!r} outside 0..{len(self.actions) - 1}")


def _fingerprint(actions: tuple[str, ...], gamma: float, encoding: int) -> str:
    body = json.dumps({"actions": list(actions), "gamma": repr(gamma), "encoding": encoding},
                      separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(body.encode(), digest_size=8).hexdigest()


def _canonical(obj: Any) -> Any:
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, Integral):
        return int(obj)
    if isinstance(obj, Real):
        x = float(obj)
        if not math.isfinite(x):
            raise InvalidState(f"state holds a non-finite number: {obj!r}")
        return int(x) if x.is_integer() else x
    if isinstance(obj, (tuple, list)):
        return [_canonical(x) for x in obj]
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise InvalidState(f"state dict keys must be str, got {type(k).__name__}")
            out[k] = _canonical(v)
        return out
    raise InvalidState(f"cannot encode a state of type {type(obj).__name__}: "
                       "use str, int, or JSON-able tuples/lists/dicts")


def canonical_state(state: Any) -> bytes:
    """Canonical bytes of a state: equal states give equal bytes on every node.

    Tuples and lists are the same, dict keys are sorted, integral floats are
    ints (``1.0`` and ``1`` are one state), numpy scalars are plain numbers.
    """
    return json.dumps(_canonical(state), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False).encode()


def _secret_bytes(secret: bytes | str) -> bytes:
    raw = secret.encode() if isinstance(secret, str) else bytes(secret)
    if len(raw) > 64:  # BLAKE2b keys are at most 64 bytes: compress longer secrets
        raw = hashlib.blake2b(raw, digest_size=64).digest()
    return raw


def state_key(state: Any, secret: bytes | str) -> int:
    """Hash a state to an unsigned 64-bit key with keyed BLAKE2b."""
    digest = hashlib.blake2b(canonical_state(state), key=_secret_bytes(secret), digest_size=8)
    return int.from_bytes(digest.digest(), "little")
