"""``scripts/gap_sim.py``: the network-free federation is deterministic, and its hold keeps peers out."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gap_sim.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gap_sim", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gap_sim", mod)
    spec.loader.exec_module(mod)
    return mod


def test_same_arm_same_curve_and_the_hold_keeps_peers_out() -> None:
    """One run per seed is the figure (no network, no timing); a hold past the run counts no peer."""
    g = _load()
    a = g.run_arm(3, 2024, 10, 5, 0, 1.0, 25, step_cap=150)
    b = g.run_arm(3, 2024, 10, 5, 0, 1.0, 25, step_cap=150)
    assert len(a["curve"]) == 6
    np.testing.assert_allclose(np.array(a["curve"]), np.array(b["curve"]), rtol=0, atol=1e-9)
    assert a["peers_counted"] == 2  # every peer's deltas arrived and count
    held = g.run_arm(3, 2024, 10, 5, 1_000, 1.0, 25, step_cap=150)
    assert held["peers_counted"] == 0  # stored, but weighed below the view's cut
    central = g.run_central(3, 2024, 25, step_cap=150)
    assert [t for t, _ in central["curve"]] == [t for t, _ in a["curve"]]
