"""peerd: a peer-to-peer learning daemon for edge nodes.

Data path: interaction → ``QTable`` (own contribution) → ``Delta`` → wire →
transport → a peer's ``QTable.apply`` (CRDT merge) → merged view → ``act``.
"""

from peerd.delta import Delta, MergeStats, PatternSignature
from peerd.errors import PeerdError, WireError
from peerd.policy import UCB1, EpsilonGreedy, Policy, Thompson
from peerd.qtable import QTable
from peerd.strategies import Max, Median, MergeStrategy, Min, TrimmedMean, WeightedAverage
from peerd.task import Task, state_key
from peerd.trust import consensus_round

__all__ = [
    "UCB1",
    "Delta",
    "EpsilonGreedy",
    "Max",
    "Median",
    "MergeStats",
    "MergeStrategy",
    "Min",
    "Node",
    "NodeConfig",
    "PatternSignature",
    "PeerdClient",
    "PeerdError",
    "Policy",
    "QTable",
    "Task",
    "Thompson",
    "TrimmedMean",
    "WeightedAverage",
    "WireError",
    "consensus_round",
    "load_config",
    "state_key",
]

_LAZY = {"Node": "peerd.node", "NodeConfig": "peerd.config", "load_config": "peerd.config",
         "PeerdClient": "peerd.client"}


def __getattr__(name: str) -> object:
    """The I/O side (``Node``, ``NodeConfig``, the client) is imported on first use:
    ``import peerd`` stays light for the pure core and for ``peerd --help``."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'peerd' has no attribute {name!r}")
