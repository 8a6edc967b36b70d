"""The merge path is chosen safely: numba is imported only when installed, enabled and needed;
otherwise (missing, disabled, small deltas) the numpy path runs and nothing else changes.

Each case runs in a fresh interpreter: whether numba is loaded is per-process state. That the
two paths give the same view is a property in ``test_merge_properties.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from peerd import kernels
from peerd.qtable import QTable
from peerd.task import Task

REPO = Path(__file__).resolve().parents[1]
HAS_NUMBA = kernels.available()
needs_numba = pytest.mark.skipif(not HAS_NUMBA,
                                 reason="numba not installed (the [fast] extra) or PEERD_NO_NUMBA set")

# Applies a small delta, restores MIN_CELLS cells, then (if asked) applies a delta of MIN_CELLS
# cells and another small one, and reports which path each took and whether numba was imported.
_SCRIPT = """
import json, sys
{hide}
import numpy as np
import peerd, peerd.node, peerd.daemon
from peerd import kernels
from peerd.delta import Delta
from peerd.qtable import QTable
from peerd.task import Task

task = Task(4, gamma=0.9, name="k")
t = QTable(task, "me", secret="s", clock=lambda: 1e6, half_life=600.0)

def delta(origin, m):
    keys = np.arange(1, m + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return Delta.build(origin, task.fingerprint, 0, m, keys=np.sort(keys), actions=np.zeros(m),
                       q=np.ones(m), lw=np.full(m, 1e6 / 600.0), n=np.ones(m), succ=np.zeros(m),
                       fail=np.zeros(m), version=np.arange(1, m + 1))

out = {{}}
t.apply(delta("small", 100))
out["small"] = [t.last_kernel, sys.modules.get("numba") is not None]
t.load("restored", delta("restored", kernels.MIN_CELLS).arrays())
out["restore"] = [t.last_kernel, sys.modules.get("numba") is not None]
if {large}:
    t.apply(delta("large", kernels.MIN_CELLS))
    out["large"] = [t.last_kernel, sys.modules.get("numba") is not None]
    t.apply(delta("small2", 100))
    out["after"] = [t.last_kernel, sys.modules.get("numba") is not None]
out["status"] = kernels.status()
try:
    QTable(task, "me", secret="s", kernel="numba")
    out["forced"] = "ok"
except ValueError as exc:
    out["forced"] = str(exc)
print(json.dumps(out))
"""


def _run(*, large: bool, hide_numba: bool = False, env: dict[str, str] | None = None) -> dict:
    hide = "sys.modules['numba'] = None  # as if not installed" if hide_numba else ""
    code = _SCRIPT.format(hide=hide, large=large)
    full_env = {k: v for k, v in os.environ.items() if k != "PEERD_NO_NUMBA"} | (env or {})
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO, env=full_env)
    return json.loads(res.stdout)


def test_importing_peerd_and_merging_small_deltas_never_imports_numba() -> None:
    """peerd, peerd.node and peerd.daemon import, a 100-cell delta merges and a restore of
    ``MIN_CELLS`` cells loads, without numba being imported (installed or not): a daemon that
    sees only small deltas, or restarts with a large table, pays nothing."""
    out = _run(large=False)
    assert out["small"] == ["numpy", False]
    assert out["restore"] == ["numpy", False]
    assert out["status"]["loaded"] is False


def test_without_numba_every_delta_takes_the_numpy_path() -> None:
    """With numba not importable, a delta of ``MIN_CELLS`` cells merges on the numpy path,
    ``kernel='numba'`` is refused with the install line, and the status says why."""
    out = _run(large=True, hide_numba=True)
    assert out["large"] == ["numpy", False]
    assert out["after"] == ["numpy", False]
    assert "peerd[fast]" in out["forced"]
    assert "not installed" in out["status"]["error"]


def test_peerd_no_numba_disables_the_kernels() -> None:
    """``PEERD_NO_NUMBA=1``: numba is never imported, even for a large delta, and
    ``kernel='numba'`` is refused."""
    out = _run(large=True, env={"PEERD_NO_NUMBA": "1"})
    assert out["large"] == ["numpy", False]
    assert out["status"]["disabled"] is True
    assert out["forced"].startswith("kernel='numba'")


@needs_numba
def test_a_large_delta_loads_the_kernels_and_later_deltas_use_them() -> None:
    """With numba installed: a small delta leaves it unimported; the first delta of
    ``MIN_CELLS`` cells imports it and merges on the kernels, and so do later small deltas."""
    out = _run(large=True)
    assert out["small"] == ["numpy", False]
    assert out["large"] == ["numba", True]
    assert out["after"] == ["numba", True]
    assert out["forced"] == "ok"


def test_an_unknown_kernel_is_refused() -> None:
    """``kernel`` is one of auto, numba, numpy."""
    with pytest.raises(ValueError, match="kernel must be one of"):
        QTable(Task(2, gamma=0.9, name="k"), "me", secret="s", kernel="cython")


def test_kernel_numpy_never_loads_the_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """``kernel='numpy'`` asks ``peerd.kernels`` for nothing, whatever the delta's size."""
    t = QTable(Task(2, gamma=0.9, name="k"), "me", secret="s", kernel="numpy")

    def boom() -> None:
        raise AssertionError("kernels.load() called")

    monkeypatch.setattr(kernels, "load", boom)
    monkeypatch.setattr(kernels, "loaded", boom)
    assert t._kernels(10 * kernels.MIN_CELLS) is None


@needs_numba
@pytest.mark.parametrize("start", [0.0, 1e6, 3e9])
def test_both_paths_report_the_same_merge_statistics(start: float) -> None:
    """``merge_swap``'s statistics (its confidence takes 2^(ref − now) as an ldexp of the whole
    ``ref_rel``) match the numpy path's: counts exactly, confidence within 1e-9 relative, for
    a table whose clock (and so its view's ``base``) started far before the cells' time."""
    import numpy as np

    from peerd.delta import Delta

    task = Task(4, gamma=0.9, name="k")
    clock = [start]
    tables = [QTable(task, "me", secret="s", clock=lambda: clock[0], half_life=600.0, kernel=k)
              for k in ("numpy", "numba")]
    clock[0] = 3e9 + 1234.5  # the cells are from now: lw ≈ now/H, up to 5e6 half-lives past base
    rng = np.random.default_rng(3)
    stats = [[], []]
    for step in range(4):
        m = 9000
        keys = np.sort(rng.choice(2**40, m, replace=False).astype(np.uint64))
        lw = clock[0] / 600.0 - rng.uniform(0, 40, m)
        d = Delta.build(f"p{step % 2}", task.fingerprint, 0, m, keys=keys, actions=rng.integers(0, 4, m),
                        q=rng.uniform(-1, 1, m), lw=lw, n=np.ones(m), succ=np.zeros(m), fail=np.zeros(m),
                        version=np.arange(1, m + 1))
        for t, out in zip(tables, stats, strict=True):
            out.append(t.apply(d))
        clock[0] += 600.0 * 3
    assert tables[1].last_kernel == "numba" and tables[0].last_kernel == "numpy"
    for a, b in zip(*stats, strict=True):
        counts = ("new", "updated", "conflicts", "total_visits")
        assert [getattr(a, c) for c in counts] == [getattr(b, c) for c in counts]
        assert 0.0 < a.confidence < 1.0
        assert b.confidence == pytest.approx(a.confidence, rel=1e-9)


@needs_numba
def test_an_origin_hash_rebuild_lists_its_entries_in_entry_order() -> None:
    """``_entry_order`` (the rebuild's replacement for ``np.sort`` of the ids a hash holds) gives
    exactly those ids, ascending, for tables of any fill, ids up to the store's high mark."""
    import numpy as np
    from hypothesis import given, settings
    from hypothesis import strategies as st

    kern = kernels.load()
    assert kern is not None

    @settings(max_examples=60, deadline=None)
    @given(st.integers(64, 4096), st.data())
    def check(size: int, data: st.DataObject) -> None:
        end = data.draw(st.integers(2, 50_000))
        n = data.draw(st.integers(0, min(size // 2, end - 1)))
        rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
        ids = rng.choice(np.arange(1, end), n, replace=False).astype(np.int32)
        table = np.zeros(size, np.int32)
        table[rng.choice(size, n, replace=False)] = ids
        out = kern._entry_order(table, n, end)
        np.testing.assert_array_equal(out, np.sort(ids).astype(np.int64))

    check()


@needs_numba
def test_cancelled_sums_are_recomputed_by_the_kernel_as_by_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where an origin's heavy term is replaced by a light one (its sum cancels), the compiled
    ``recompute_exact`` runs and gives numpy's ``_recompute_exact``: views and confidence within
    1e-9 relative, visits exactly; and the view equals a full recompute from the stored cells."""
    import numpy as np

    from peerd import kernels_numba
    from peerd.delta import Delta

    calls = []
    real = kernels_numba.recompute_exact

    def counted(*args: object) -> float:
        calls.append(args[4].shape[0])
        return real(*args)

    monkeypatch.setattr(kernels_numba, "recompute_exact", counted)
    task = Task(4, gamma=0.9, name="k")
    now = 1e6
    tables = [QTable(task, "me", secret="s", clock=lambda: now, half_life=600.0, kernel=k,
                     min_visits=2) for k in ("numpy", "numba")]
    rng = np.random.default_rng(5)
    m = 3000
    keys = np.sort(rng.choice(2**40, m, replace=False).astype(np.uint64))
    acts = rng.integers(0, 4, m)
    fresh = now / 600.0

    def delta(origin: str, v0: int, lw: np.ndarray, n: np.ndarray) -> Delta:
        return Delta.build(origin, task.fingerprint, v0, v0 + m, keys=keys, actions=acts,
                           q=rng.uniform(-1, 1, m), lw=lw, n=n, succ=np.zeros(m), fail=np.zeros(m),
                           version=v0 + 1 + rng.permutation(m))

    heavy = fresh + rng.uniform(-1, 0, m)
    steps = [delta("p0", 0, heavy, rng.integers(2, 9, m)),
             delta("p1", 0, heavy - 12 + rng.uniform(-2, 2, m), rng.integers(1, 4, m)),  # some n < 2
             delta("p2", 0, heavy - 11, rng.integers(2, 5, m)),
             delta("p0", m, heavy - 10 - rng.uniform(0, 4, m), rng.integers(2, 9, m))]  # ÷ 2^10+
    for t in tables:
        t.set_trust("p2", 0.5)
    stats = [[t.apply(d) for d in steps] for t in tables]
    assert calls and sum(calls) > m // 2  # most cells cancelled in the last delta
    for a, b in zip(*stats, strict=True):
        assert b.confidence == pytest.approx(a.confidence, rel=1e-9)
        assert b.total_visits == a.total_visits
    views = [t.view() for t in tables]
    tables[1].recompute_all()
    for got in (views[1], tables[1].view()):
        for x, y in zip(views[0], got, strict=True):
            np.testing.assert_allclose(y, x, rtol=1e-9, atol=1e-12)
