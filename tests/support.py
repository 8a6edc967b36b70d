"""Helpers shared by the tests that run nodes over a real broker.

Plain functions, imported as ``from support import ...`` (pytest puts
``tests/`` on ``sys.path``): waiting on a condition, never on a sleep, and
the small node configuration these tests start from.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np

from peerd.config import NodeConfig
from peerd.node import Node


async def eventually(pred: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    """Wait until ``pred()`` holds, checking between event-loop turns; fail after ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while not pred():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"condition not reached within {timeout}s: {what}") from None


def fast_config(node_id: str, broker_url: str, fed: str, **kw: Any) -> NodeConfig:
    """A node that beats and syncs every few hundred ms, with 3 actions and no API."""
    base: dict[str, Any] = dict(federation=fed, node_id=node_id, actions=["a", "b", "c"],
                                secret="s", broker_url=broker_url, api_listen="",
                                heartbeat_interval=0.3, sync_interval=0.2, publish_every=5)
    base.update(kw)
    return NodeConfig(**base)


def same_views(nodes: list[Node]) -> bool:
    """Whether every node's merged view has the same keys, exact visits and (to 1e-9) values."""
    k0, q0, n0 = nodes[0].table.view()
    for nd in nodes[1:]:
        k, q, n = nd.table.view()
        if not (np.array_equal(k, k0) and np.array_equal(n, n0) and np.allclose(q, q0, rtol=1e-9)):
            return False
    return True
