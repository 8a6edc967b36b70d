"""Topic names of the wire protocol (DESIGN §4): ids, topics, subscriptions, routes. Pure.

``peerd/v1/{fed}/{kind}/{node}``: ``kind`` is one of ``KINDS``; births and
deaths share the retained ``presence`` topic. On ``relay/{relayer}`` travel
payloads another node signed, byte for byte: their header names the origin. Ids are single MQTT topic levels
(``check_id``), so no peer can smuggle a wildcard or a level separator into a
topic through its node id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from peerd.errors import MalformedMessage

if TYPE_CHECKING:
    from peerd.wire.messages import Message

__all__ = [
    "KINDS", "KIND_OF_TYPE", "MAX_ID_LEN", "QOS", "RETAIN", "WIRE_VERSION", "Route", "check_id",
    "is_safe_id", "parse_topic", "route", "subscriptions", "topic",
]

#: The ``v1`` of the topic root and the ``v`` of every frame and body.
WIRE_VERSION = 1
#: Ids are single MQTT topic levels, short enough for logs and metric labels.
MAX_ID_LEN = 64

_FORBIDDEN_ID_CHARS = frozenset("/+#\0")


def is_safe_id(value: object) -> bool:
    """True when ``value`` can be one MQTT topic level: non-empty, ≤ 64 printable chars, no / + #."""
    return (isinstance(value, str) and 0 < len(value) <= MAX_ID_LEN and value.isprintable()
            and _FORBIDDEN_ID_CHARS.isdisjoint(value))


def _show(value: object) -> str:
    """A bounded repr for error messages: peers control these values and logs are finite."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_id(value: object, what: str = "id") -> str:
    """Return ``value`` if it is a safe topic level, else raise ``MalformedMessage``."""
    if not is_safe_id(value):
        raise MalformedMessage(f"{what} {_show(value)} must be 1..{MAX_ID_LEN} printable chars "
                               "without / + # or NUL")
    return value  # type: ignore[return-value]


#: Topic kind of each message type (births and deaths share the retained presence topic).
KIND_OF_TYPE: dict[str, str] = {
    "delta": "delta", "birth": "presence", "death": "presence",
    "heartbeat": "heartbeat", "sync": "sync", "rebirth": "rebirth",
}
#: ``relay`` carries no message type of its own: an origin's signed payloads, verbatim,
#: re-sent by another node (``peerd.relay``); the topic names the relayer.
KINDS: tuple[str, ...] = ("delta", "presence", "heartbeat", "sync", "rebirth", "relay")
QOS: dict[str, int] = {"delta": 1, "presence": 1, "heartbeat": 0, "sync": 1, "rebirth": 1,
                       "relay": 1}
RETAIN: dict[str, bool] = {"delta": False, "presence": True, "heartbeat": False, "sync": False,
                           "rebirth": False, "relay": False}
_TOPIC_ROOT = f"peerd/v{WIRE_VERSION}"


def topic(fed: str, kind: str, node: str) -> str:
    """``peerd/v1/{fed}/{kind}/{node}``, refusing ids that would break the topic tree."""
    if kind not in QOS:
        raise MalformedMessage(f"unknown topic kind {kind!r}; known: {list(KINDS)}")
    return f"{_TOPIC_ROOT}/{check_id(fed, 'federation')}/{kind}/{check_id(node, 'node id')}"


def subscriptions(fed: str) -> list[str]:
    """Topic filters for a federation, one per kind in ``KINDS`` order: subscribe each at ``QOS[kind]``.

    MQTT 3.1.1 has no no-local option: a node receives its own messages and
    must skip those whose header ``node`` is its own.
    """
    check_id(fed, "federation")
    return [f"{_TOPIC_ROOT}/{fed}/{kind}/+" for kind in KINDS]


def parse_topic(name: str) -> tuple[str, str, str] | None:
    """``(fed, kind, node)`` of a peerd topic, or None for anything else."""
    if not isinstance(name, str):
        return None
    parts = name.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != _TOPIC_ROOT:
        return None
    fed, kind, node = parts[2], parts[3], parts[4]
    if kind not in QOS or not is_safe_id(fed) or not is_safe_id(node):
        return None
    return fed, kind, node


class Route(NamedTuple):
    """Where and how a message is published."""

    topic: str
    qos: int
    retain: bool


def route(msg: Message) -> Route:
    """Topic, QoS and retain flag of a message, as fixed by DESIGN §4."""
    kind = KIND_OF_TYPE[msg.type]
    return Route(topic(msg.header.fed, kind, msg.header.node), QOS[kind], RETAIN[kind])
