"""``scripts/cluster.py``: real ``peerd run`` processes converge through a broker and stop cleanly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from peerd.testing.broker import Broker

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cluster.py"


def test_cluster_of_daemons_converges_and_exits_cleanly(broker: Broker) -> None:
    """Three daemons driven through their APIs all hold every interaction, then exit 0 on SIGTERM."""
    out = subprocess.run([sys.executable, str(SCRIPT), "--nodes", "3", "--interactions", "30",
                          "--broker", broker.url], capture_output=True, text=True, timeout=120)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert report["visits_per_node"] == [90, 90, 90]
    assert report["exit_codes"] == [0, 0, 0]
    assert report["peers_online"] == [2, 2, 2]
