"""Shared fixtures.

Brokers (DESIGN §9): real ones on free loopback ports, never the system broker
on 1883. Every test that takes ``broker`` or ``fresh_broker`` runs once per
available kind: mosquitto (when the binary exists) and the pure-Python amqtt.

- ``broker``: one per kind for the whole session, shared; do not stop it (if a
  test does anyway, the next test gets it restarted).
- ``fresh_broker``: a factory for brokers a test owns and may kill/restart;
  closed after the test.

Waiting: tests wait on conditions with timeouts (``Recorder.wait_for``,
``transport.wait_connected``), never on sleeps.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from peerd.testing.broker import Broker, BrokerKind, available_kinds

BROKER_KINDS: list[BrokerKind] = available_kinds()

#: Import names of what ``pip install -e ".[test]"`` brings (daemon, [sim] and test extras).
_NEEDED = ("aiomqtt", "msgpack", "numpy", "aiosqlite", "structlog", "nacl", "aiohttp",
           "prometheus_client", "amqtt", "gymnasium", "pytest_asyncio", "hypothesis")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Without the test install, say so in one line instead of one collection error per module."""
    missing = [m for m in _NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        pytest.exit(f"peerd's test dependencies are not installed ({', '.join(missing)} missing): "
                    'run pip install -e ".[test]" first (README, "The two commands")', returncode=4)


# -- brokers -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _session_brokers() -> Iterator[dict[str, Broker]]:
    brokers: dict[str, Broker] = {}
    try:
        yield brokers
    finally:
        for b in brokers.values():
            b.close()


@pytest.fixture(params=BROKER_KINDS)
def broker(request: pytest.FixtureRequest, _session_brokers: dict[str, Broker]) -> Broker:
    """The session's shared broker of this test's kind, started on first use."""
    kind = request.param
    b = _session_brokers.get(kind)
    if b is None:
        b = _session_brokers[kind] = Broker(kind).start()
    elif not b.is_running():  # a test broke the rule; do not let it cascade
        b.start()
    return b


@pytest.fixture(params=BROKER_KINDS)
def fresh_broker(request: pytest.FixtureRequest) -> Iterator[Callable[..., Broker]]:
    """Factory ``fresh_broker(**Broker kwargs) -> started Broker`` of this test's kind."""
    made: list[Broker] = []

    def make(**kwargs: Any) -> Broker:
        kwargs.setdefault("kind", request.param)
        b = Broker(**kwargs).start()
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Belt and braces: no broker process outlives the session, whatever failed."""
    Broker.stop_all()


# -- recording callbacks -----------------------------------------------------------------------


class Recorder:
    """``on_message``/``on_connect`` callbacks that record, and an event-driven ``wait_for``."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.connects = 0
        self._changed = asyncio.Condition()

    async def on_message(self, topic: str, payload: bytes, retain: bool) -> None:
        async with self._changed:
            self.messages.append((topic, payload, retain))
            self._changed.notify_all()

    async def on_connect(self) -> None:
        async with self._changed:
            self.connects += 1
            self._changed.notify_all()

    def payloads(self, topic: str | None = None) -> list[bytes]:
        return [p for t, p, _ in self.messages if topic is None or t == topic]

    async def wait_for(self, predicate: Callable[[Recorder], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate(self)`` holds; fail the test with what arrived if it never does."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: predicate(self)), timeout)
            except TimeoutError:
                pytest.fail(
                    f"condition not met within {timeout}s; connects={self.connects}, "
                    f"messages={self.messages[-10:]!r}"
                )


@pytest.fixture
def recorder() -> Callable[[], Recorder]:
    """Factory of ``Recorder`` objects (one per simulated node)."""
    return Recorder


@pytest.fixture
async def run_transport() -> AsyncIterator[Callable[[Any, Recorder], asyncio.Task[None]]]:
    """``run_transport(transport, recorder)`` starts ``transport.run`` as a task; all are
    cancelled after the test."""
    tasks: list[asyncio.Task[None]] = []

    def start(transport: Any, rec: Recorder) -> asyncio.Task[None]:
        task = asyncio.create_task(transport.run(rec.on_message, rec.on_connect))
        tasks.append(task)
        return task

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
