"""Which merge path runs: the compiled kernels (numba) when available, else numpy.

The merge of a large delta is ~100 numpy passes over its cells
(``docs/merge.md``): each pass is cheap, but together their set-up, casts
and temporaries cost more than the work. ``peerd.kernels_numba`` does
each stage as one compiled loop per delta, without temporaries, which numpy
cannot; the numpy path stays as the fallback and as the reference the tests
compare the kernels with.

numba is an optional dependency (``pip install "peerd[fast]"``), and it is
**never imported unless used**: importing numba and loading the compiled
kernels costs ~100 MB of RSS (LLVM), more than an idle daemon. So
``QTable`` asks ``load()`` only for a delta of at least ``MIN_CELLS`` cells
that is not a restore from the node's own store, and a daemon that only sees
small deltas never pays. Disabled with ``PEERD_NO_NUMBA=1`` (any value but
``""``/``"0"``) or ``QTable(kernel="numpy")``. The variable is read until the kernels
load, not after: it stops their import, and once imported they stay in use (reading
``os.environ`` raises and catches a ``KeyError`` inside, ~1 µs hot and several cold, twice
per delta before this).

The module is pure: no I/O, no logging. ``status()`` tells what happened
(for ``bench_merge`` and the tests).
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

#: a delta this large (cells) loads the kernels in ``kernel="auto"`` mode; smaller ones use
#: them only once loaded. Loading costs ~1 s of CPU and ~100 MB of RSS and saves ~1 ms per
#: delta of this size: only a process that merges many such deltas (a fleet's aggregator,
#: a simulation, the benchmarks) gains, not a daemon catching up once.
MIN_CELLS = 8192
KERNELS = ("auto", "numba", "numpy")

_loaded: ModuleType | None = None
_error: str | None = None  # why loading failed (then it is not tried again)


def disabled() -> bool:
    """True when ``PEERD_NO_NUMBA`` is set to anything but ``""`` or ``"0"``."""
    return os.environ.get("PEERD_NO_NUMBA", "") not in ("", "0")


def available() -> bool:
    """Whether numba is installed (without importing it) and not disabled."""
    return not disabled() and _error is None and (
        _loaded is not None or importlib.util.find_spec("numba") is not None)


def loaded() -> ModuleType | None:
    """The kernels if already loaded (never loads them)."""
    return _loaded


def load() -> ModuleType | None:
    """The compiled kernels, importing numba on first use; None when absent or disabled.

    A failure to import (numba missing, or a numba that refuses the installed
    numpy) is remembered: the numpy path runs, and ``status()`` says why.
    """
    global _loaded, _error
    if _loaded is not None:
        return _loaded
    if disabled():
        return None
    if _error is None:
        if importlib.util.find_spec("numba") is None:
            _error = "numba is not installed (pip install 'peerd[fast]')"
            return None
        try:
            from peerd import kernels_numba

            kernels_numba.warm()
        except Exception as exc:  # numba's own import errors are of many kinds
            _error = f"numba import failed: {type(exc).__name__}: {exc}"
            return None
        _loaded = kernels_numba
    return _loaded


def status() -> dict[str, object]:
    """What this process has: ``{"disabled", "installed", "loaded", "error"}``."""
    return {"disabled": disabled(), "installed": importlib.util.find_spec("numba") is not None,
            "loaded": _loaded is not None, "error": _error}


def _reset_for_tests() -> None:
    """Forget a remembered failure (tests that hide numba, then restore it)."""
    global _error
    _error = None
