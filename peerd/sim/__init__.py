"""Multi-node simulation (``peerd sim``): tabular environments stepped in lockstep."""
