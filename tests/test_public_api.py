"""The package's public surface is exactly ``peerd.__all__``, and every name in it resolves."""

from __future__ import annotations

import peerd

PUBLIC = {
    "Delta", "EpsilonGreedy", "Max", "Median", "MergeStats", "MergeStrategy", "Min", "Node",
    "NodeConfig", "PatternSignature", "PeerdClient", "PeerdError", "Policy", "QTable", "Task",
    "Thompson", "TrimmedMean", "UCB1", "WeightedAverage", "WireError", "consensus_round",
    "load_config", "state_key",
}


def test_all_is_exactly_the_public_surface() -> None:
    """__all__ lists the documented names, no more, no less, and each one resolves."""
    assert set(peerd.__all__) == PUBLIC
    for name in peerd.__all__:
        assert getattr(peerd, name) is not None
