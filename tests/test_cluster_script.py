"""``scripts/cluster.py``: real ``peerd run`` processes converge through a broker and stop cleanly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from peerd.testing.broker import Broker

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cluster.py"


def test_cluster_of_daemons_converges_and_reports(broker: Broker) -> None:
    """Three daemons driven through their APIs all hold every interaction, report, then exit 0."""
    out = subprocess.run([sys.executable, str(SCRIPT), "--nodes", "3", "--interactions", "10",
                          "--idle", "0.5", "--broker", broker.url],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:] + out.stdout[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["ok"] is True
    assert report["converged"] is True
    assert report["interactions"] == 30
    assert report["visits_checked"] == {"node0": 30, "node1": 30, "node2": 30}
    assert report["exit_codes"] == [0, 0, 0]
    assert report["peers_online"] == [2, 2, 2]
    # every learn was reported applied by both other nodes, and the figures are there
    prop = report["propagation_ms"]
    assert prop["n"] == 30 and prop["never"] == 0
    assert prop["p50"] <= prop["p99"] <= prop["max"]
    for key in ("ready", "idle"):
        assert 0 < report["rss_mb"][key]["median"] <= report["rss_mb"][key]["max"]
    assert 0 < report["pss_mb"]["median"] <= report["pss_mb"]["max"]
    for key in ("ready_s", "drive_s", "converge_s", "learns_per_s", "loadavg_drive", "loadavg_idle",
                "idle_cpu_pct"):
        assert key in report, key
