"""peerd: a peer-to-peer learning daemon for edge nodes."""

from peerd.delta import Delta, MergeStats, PatternSignature
from peerd.errors import PeerdError, WireError
from peerd.task import Task, state_key

__all__ = ["Delta", "MergeStats", "PatternSignature", "PeerdError", "Task", "WireError", "state_key"]
