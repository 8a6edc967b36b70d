"""The simulation's delivery bound counts from what a node owes; its trace measures peers' cells."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from peerd.sim.runner import (
    SimSettings,
    Simulation,
    _FleetTrace,
    _node_config,
    _wait_delivered,
    owed_version,
    task_of,
)


class _Sender:
    """A node for ``_wait_delivered``/``_FleetTrace``: own version, publish state, what it holds of others."""

    def __init__(self, node_id: str, *, published: int, watermark: int, every: int = 10) -> None:
        self.id = node_id
        self.published_version = published
        self.watermark = watermark
        self.config = SimpleNamespace(publish_every=every)
        self.table = SimpleNamespace(version=watermark)
        self.known: dict[str, int] = {}
        self.applied_event = asyncio.Event()
        self.probation: set[str] = set()
        self.quarantine: set[str] = set()

    def known_version(self, origin: str) -> int:
        return self.known.get(origin, 0)

    def excluded(self, origin: str) -> bool:
        return origin in self.probation or origin in self.quarantine

    def trust_of(self, origin: str) -> float:
        return 1.0


def test_owed_version_is_what_the_publish_trigger_covers() -> None:
    """A node past its publish trigger owes its watermark, even before its publisher has run."""
    assert owed_version(_Sender("a", published=10, watermark=15)) == 10  # not due yet
    assert owed_version(_Sender("a", published=10, watermark=20)) == 20  # due, not sent yet
    assert owed_version(_Sender("a", published=20, watermark=20)) == 20


async def test_the_wait_holds_until_a_triggered_publish_arrives() -> None:
    """max_lag 0: a version the trigger covers must arrive, whether or not the publisher ran yet.

    Measured against ``published_version`` the wait returned at once here, and
    the simulation ran a publish period further ahead of the broker than
    ``max_lag`` allows.
    """
    a = _Sender("a", published=0, watermark=10)
    b = _Sender("b", published=0, watermark=10)
    nodes: list[Any] = [a, b]
    wait = asyncio.ensure_future(_wait_delivered(nodes, 0, timeout=5.0))
    for _ in range(20):
        await asyncio.sleep(0)  # event-loop turns: a wait with nothing to wait for is done now
    assert not wait.done()
    a.known["b"] = b.known["a"] = 10
    a.applied_event.set()
    b.applied_event.set()
    await asyncio.wait_for(wait, 5.0)


def test_trace_staleness_probation_and_bootstrap_ticks() -> None:
    """The trace reports how old peers' cells are, how long probation held them, when they first count."""
    a = _Sender("a", published=10, watermark=10)
    b = _Sender("b", published=10, watermark=10)
    a.probation.add("b")
    b.probation.add("a")
    trace = _FleetTrace([a, b])  # type: ignore[list-item]
    trace.sample(10)  # nothing held, everyone on probation
    for nd, t in ((a, 20), (b, 20)):
        nd.table.version = t
    a.known["b"], b.known["a"] = 10, 10
    a.probation.clear()
    trace.sample(20)  # a counts b; b still holds a on probation
    b.probation.clear()
    trace.sample(30)
    out = trace.summary()
    assert out["samples"] == 3
    assert out["staleness_max"] == 10 and out["staleness_p50"] == 10  # 10,10 then 10,10 then 10,10
    assert out["probation_clear_tick"] == 30
    assert abs(out["probation_mean"] - 0.5) < 1e-9  # 1, 0.5, 0
    assert out["first_peer_tick"] == {"median": 25.0, "max": 30}
    assert out["all_peers_tick"] == {"median": 25.0, "max": 30}


async def test_no_peer_cell_is_older_than_a_publish_period_plus_max_lag() -> None:
    """A real federated run (3 nodes, embedded broker): no peer cell older than publish_every + max_lag.

    Before, the bound was checked only at multiples of ``publish_every`` against
    ``published_version``, and cells were up to 38 ticks old with the defaults (20).
    """
    s = SimSettings(env="frozenlake", nodes=3, modes=["federated"], step_cap=300, eval_every=100,
                    publish_every=10, max_lag=5, trust_every=100)
    out = await Simulation(s).run()
    trace = out["federated"][0].trace
    assert trace["samples"] >= 25
    assert 0 < trace["staleness_max"] <= 15, trace
    assert trace["first_peer_tick"]["max"] is not None  # every node counted a peer


def test_summarize_reports_the_median_curve_per_seed() -> None:
    """Where the modes part: per seed, every evaluation's tick and median metric over nodes."""
    from peerd.sim.runner import RunResult, summarize

    r = RunResult("federated", 2024, 100, [100, 100, 150],
                  curve_steps=[50, 100], curve_metric=[[-200.0, -150.0, -100.0], [1.0, 7.0, 9.0]])
    out = summarize({"federated": [r]})["modes"]["federated"]
    (curve,) = out["curve_per_seed"]
    assert [t for t, _ in curve] == [50, 100]
    assert [m for _, m in curve] == pytest.approx([-150.0, 7.0])


@pytest.mark.parametrize("env", ["taxi", "frozenlake"])
def test_task_of_is_the_task_every_simulated_node_runs(env: str) -> None:
    """Tables built outside a ``Node`` (``scripts/gap_sim.py``) take ``task_of(spec)``: the same
    actions, discount and fingerprint as the simulation's nodes, so their deltas interoperate."""
    sim = Simulation(SimSettings(env=env, nodes=2, modes=["federated"]))
    cfg = _node_config(sim.spec, sim.s, 0, 1, None, sim.half_life, "fed")
    task = task_of(sim.spec)
    assert task.fingerprint == cfg.task.fingerprint
    assert task.actions == cfg.task.actions and task.n_actions == len(sim.spec.action_names)
