"""``scripts/bench_merge.py`` reports which merge path ran, and with numba installed both paths
against the dict loop of the same run (a tiny table: this checks the report, not the speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from peerd import kernels

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_merge.py"
TINY = ["--cells", "6000", "--work", "4000", "--delta-cells", "1000", "--origins", "2,3", "--json"]


def _bench(*extra: str) -> dict:
    out = subprocess.run([sys.executable, str(SCRIPT), *TINY, *extra], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


def test_auto_reports_the_kernel_and_with_numba_both_paths() -> None:
    """``--kernel auto``: the headline runs name their path; where numba can load, the numpy
    path's runs and the numba ÷ numpy rate ratios come in the same report."""
    out = _bench()
    expected = "numba" if kernels.available() else "numpy"
    assert out["kernel"] == expected
    assert [r["kernel"] for r in out["runs"]] == [expected, expected]
    assert [r["origins"] for r in out["runs"]] == [2, 3]
    for r in out["runs"]:
        assert r["ratio"] > 0 and r["cells_applied"] > 0
        assert r["bytes_per_stored_pair"] > 0
    if expected == "numba":
        assert [r["kernel"] for r in out["numpy_runs"]] == ["numpy", "numpy"]
        assert len(out["numba_over_numpy"]) == 2
    else:
        assert "numpy_runs" not in out
    assert len(out["load_average"]) == 3
    assert len(out["load_average_start"]) == 3 and min(out["load_average_start"]) >= 0


def test_kernel_numpy_runs_the_numpy_path_only() -> None:
    """``--kernel numpy``: one set of runs, all on the numpy path."""
    out = _bench("--kernel", "numpy")
    assert out["kernel"] == "numpy"
    assert {r["kernel"] for r in out["runs"]} == {"numpy"}
    assert "numpy_runs" not in out
