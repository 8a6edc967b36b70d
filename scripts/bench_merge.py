#!/usr/bin/env python3
"""Benchmark the merge as the fleet grows: ``QTable.apply`` against the seed's dict loop, same run.

Baseline: the seed designs' merge, a Python dict ``(key, action) → (q, n)`` updated per cell
with ``(q_l·n_l + q_p·n_p) / (n_l + n_p)`` after ``.tolist()`` of the delta's arrays.

Scenario, per origin count N (DESIGN §9: speed is a ratio against a baseline
measured in the same run, never a wall-clock assertion):

- a table of ``--cells`` cells (default 1 M = 166 667 states × 6 actions);
- N origins (this node and N − 1 peers), each holding a random 10 % of the
  cells, restored before the clock starts (untimed; the baseline dict holds
  every cell that any origin holds);
- the same total work at every N: ``--work`` delta cells (default 2 M) in
  deltas of ``--delta-cells`` (default 10 k) from the peers in turn, each half
  cells the peer holds (newer versions) and half cells it does not (new);
- both sides are timed delta by delta, alternately, in process CPU time.

Each N runs in a fresh subprocess, so that its peak RSS is its own. Reported
per N: peerd and baseline cells/s and their ratio, peak RSS, and bytes per
stored (origin, cell) pair and per merged cell, from the arrays' ``nbytes``
(indexes and capacity slack included). Targets: the rate at the largest N is
≥ 0.7× the rate at the smallest; peerd ≥ 10× the dict loop at every N;
≤ 64 B per stored pair and per merged cell.

    python scripts/bench_merge.py --origins 8,64,256 --json
    python scripts/bench_merge.py --quick          # a small run (100 k cells)
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peerd import kernels
from peerd.delta import Delta
from peerd.qtable import QTable
from peerd.task import Task

NOW = 1.7e9  # a wall-clock "now": absolute log-weights are ≈ 2.8e6, as in the daemon
HALF_LIFE = 600.0
HOLD = 0.10  # share of the table each origin holds
TARGETS = {"rate_largest_over_smallest_min": 0.7, "ratio_min": 10.0, "bytes_per_pair_max": 64.0,
           "bytes_per_cell_max": 64.0}


def _numba_version() -> str | None:
    """numba's installed version (without importing it), or None."""
    try:
        return importlib.metadata.version("numba")
    except importlib.metadata.PackageNotFoundError:
        return None


def rss_peak_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Timer:
    """Accumulated process CPU time (numpy runs these loops on one core) and wall time."""

    def __init__(self) -> None:
        self.cpu = self.wall = 0.0

    def __enter__(self) -> Timer:
        self._c, self._w = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu += time.process_time() - self._c
        self.wall += time.perf_counter() - self._w


class Scenario:
    """The table's keys and a random generator of cells of the peers."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.rng = np.random.default_rng(args.seed)
        self.a = args.actions
        self.task = Task(self.a, gamma=0.99, name="bench")
        n_states = -(-args.cells // self.a)
        keys = np.unique(self.rng.integers(0, 2**64 - 1, size=n_states, dtype=np.uint64))
        assert keys.shape[0] == n_states  # 64-bit keys: a collision has probability ~1e-9
        self.n_cells = n_states * self.a
        self.keys = np.repeat(keys, self.a)  # every (key, action), sorted
        self.acts = np.tile(np.arange(self.a, dtype=np.uint16), n_states)

    def held(self) -> np.ndarray:
        """A random 10 % of the cells, sorted."""
        return np.flatnonzero(self.rng.random(self.n_cells) < HOLD)

    def cells(self, idx: np.ndarray, v0: int) -> dict[str, np.ndarray]:
        """Cells ``idx`` (sorted) with versions after ``v0``, as a peer sends them."""
        m = idx.shape[0]
        n = self.rng.integers(1, 50, m).astype(np.uint32)
        # recency-weighted evidence of about n updates, the last within 3 half-lives
        lw = np.log2(n.astype(np.float64)) + (NOW - self.rng.random(m) * 3 * HALF_LIFE) / HALF_LIFE
        return {"keys": self.keys[idx], "actions": self.acts[idx],
                "q": self.rng.normal(0.0, 5.0, m).astype(np.float32), "lw": lw, "n": n,
                "succ": np.zeros(m, np.uint32), "fail": np.zeros(m, np.uint32),
                "version": v0 + 1 + self.rng.permutation(m).astype(np.uint64)}


class Baseline:
    """The seed designs' merge: one dict ``(key, action) → (q, n)``, visits summed."""

    def __init__(self, keys: np.ndarray, acts: np.ndarray) -> None:
        self.table: dict[tuple[int, int], tuple[float, int]] = dict.fromkeys(
            zip(keys.tolist(), acts.tolist(), strict=True), (0.0, 1))

    def apply(self, d: Delta) -> None:
        table = self.table
        get = table.get
        keys, acts, qs, ns = d.keys.tolist(), d.actions.tolist(), d.q.tolist(), d.n.tolist()
        for k, a, q_p, n_p in zip(keys, acts, qs, ns, strict=True):
            cell = (k, a)
            cur = get(cell)
            if cur is None:
                table[cell] = (q_p, n_p)
            else:
                q_l, n_l = cur
                n = n_l + n_p
                table[cell] = ((q_l * n_l + q_p * n_p) / n, n)


def run_one(args: argparse.Namespace, origins: int) -> dict[str, object]:
    """One origin count and merge path (``args.kernel``), in this process."""
    sc = Scenario(args)
    table = QTable(sc.task, "bench-node", secret="bench", half_life=HALF_LIFE, clock=lambda: NOW,
                   kernel=args.kernel)
    table.load("bench-node", sc.cells(sc.held(), 0))
    peers = [f"peer-{p:04d}" for p in range(1, origins)]
    held: dict[str, np.ndarray] = {}
    anyone = np.zeros(sc.n_cells, bool)
    t_setup = time.process_time()
    for p in peers:
        idx = held[p] = sc.held()
        anyone[idx] = True
        d = sc.cells(idx, 0)
        table.apply(Delta.build(p, sc.task.fingerprint, 0, idx.shape[0], **d), guard=False)
    t_setup = time.process_time() - t_setup
    version = {p: held[p].shape[0] for p in peers}
    gc.collect()
    rss_peerd = rss_peak_mb()
    mem = table.memory()

    # the timed deltas: half cells the peer holds (newer versions), half cells it does not
    n_deltas = max(1, args.work // args.delta_cells)
    deltas: list[Delta] = []
    for i in range(n_deltas):
        p = peers[i % len(peers)]
        half = args.delta_cells // 2
        old = sc.rng.choice(held[p], half, replace=False)
        new = sc.rng.choice(sc.n_cells, args.delta_cells - half, replace=False)
        idx = np.union1d(old, new)
        v0 = version[p]
        version[p] = v0 + idx.shape[0]
        deltas.append(Delta.build(p, sc.task.fingerprint, v0, version[p], **sc.cells(idx, v0)))
    base = Baseline(sc.keys[anyone], sc.acts[anyone])
    del anyone
    gc.collect()
    t_peerd, t_base = Timer(), Timer()
    for d in deltas:  # alternate, so that both see the same machine
        with t_peerd:
            table.apply(d)
        with t_base:
            base.apply(d)
    cells = sum(len(d) for d in deltas)
    return {
        "origins": len(table.origins),
        "kernel": table.last_kernel,
        "peerd_cells_per_s": round(cells / t_peerd.cpu),
        "baseline_cells_per_s": round(cells / t_base.cpu),
        "ratio": round(t_base.cpu / t_peerd.cpu, 2),
        "peak_rss_mb": round(rss_peak_mb(), 1),
        "peak_rss_mb_peerd_only": round(rss_peerd, 1),
        "bytes_per_stored_pair": round(mem["bytes_per_pair"], 1),
        "bytes_per_merged_cell": round(mem["bytes_per_cell"], 1),
        "stored_pairs": int(mem["pairs"]),
        "merged_cells": int(mem["cells"]),
        "setup_cells_per_s": round(int(mem["pairs"]) / max(t_setup, 1e-9)),
        "peerd_wall_cells_per_s": round(cells / t_peerd.wall),
        "baseline_wall_cells_per_s": round(cells / t_base.wall),
        "cells_applied": cells,
        "deltas": len(deltas),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--origins", default="8,64,256", help="origin counts, comma-separated")
    ap.add_argument("--cells", type=int, default=1_000_000, help="cells in the table")
    ap.add_argument("--actions", type=int, default=6)
    ap.add_argument("--work", type=int, default=2_000_000, help="delta cells applied per origin count")
    ap.add_argument("--delta-cells", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="a small run: 100 k cells, 200 k delta cells")
    ap.add_argument("--kernel", choices=["auto", "numba", "numpy"], default="auto",
                    help="merge path: auto (numba if installed, and numpy as well for reference)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child: one origin count
    args = ap.parse_args(argv)
    if args.quick:
        args.cells, args.work, args.delta_cells = 100_000, 200_000, 5_000
    if args.one is not None:
        print(json.dumps(run_one(args, args.one)))
        return 0
    counts = sorted({int(x) for x in args.origins.split(",")})
    if counts[0] < 2:
        ap.error("--origins must all be >= 2")
    paths = [args.kernel]
    if args.kernel == "auto":
        paths = ["numba", "numpy"] if kernels.available() else ["numpy"]

    def child(n: int, kernel: str) -> dict[str, object]:
        cmd = [sys.executable, __file__, "--one", str(n), "--cells", str(args.cells),
               "--actions", str(args.actions), "--work", str(args.work),
               "--delta-cells", str(args.delta_cells), "--seed", str(args.seed), "--kernel", kernel]
        res = subprocess.run(cmd, check=True, capture_output=True, text=True)
        return json.loads(res.stdout)

    # A fresh process per (count, path): its peak RSS is its own, and numba's import
    # does not weigh on the numpy run. Each ratio is against the dict loop in that process.
    load_start = [round(x, 2) for x in os.getloadavg()]
    by_path = {k: [child(n, k) for n in counts] for k in paths}
    runs = by_path[paths[0]]
    small, large = runs[0], runs[-1]
    scaling = large["peerd_cells_per_s"] / small["peerd_cells_per_s"]
    out = {
        "kernel": runs[0]["kernel"],
        "runs": runs,
        "rate_largest_over_smallest": round(scaling, 3),
        "targets": TARGETS,
        "meets_targets": bool(
            scaling >= TARGETS["rate_largest_over_smallest_min"]
            and all(r["ratio"] >= TARGETS["ratio_min"] for r in runs)
            and all(r["bytes_per_stored_pair"] <= TARGETS["bytes_per_pair_max"] for r in runs)
            and all(r["bytes_per_merged_cell"] <= TARGETS["bytes_per_cell_max"] for r in runs)),
        "timer": "process CPU time",
        "table_cells": args.cells, "actions": args.actions, "work_cells": args.work,
        "delta_cells": args.delta_cells, "hold": HOLD,
        "python": platform.python_version(), "numpy": np.__version__,
        "numba": _numba_version(),
        "load_average_start": load_start,  # other sessions' work on a shared machine
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    if len(paths) > 1:  # the numpy path, the reference, measured in the same run
        ref = by_path["numpy"]
        out["numpy_runs"] = ref
        out["numpy_rate_largest_over_smallest"] = round(
            ref[-1]["peerd_cells_per_s"] / ref[0]["peerd_cells_per_s"], 3)
        out["numba_over_numpy"] = [round(a["peerd_cells_per_s"] / b["peerd_cells_per_s"], 2)
                                   for a, b in zip(runs, ref, strict=True)]
    if args.json:
        print(json.dumps(out))
    else:
        for path in paths:
            for r in by_path[path]:
                print(f"[{r['kernel']:5s}] {r['origins']:5d} origins: "
                      f"peerd {r['peerd_cells_per_s'] / 1e6:6.2f} M cells/s, "
                      f"dict {r['baseline_cells_per_s'] / 1e6:5.2f} M cells/s ({r['ratio']:.1f}x), "
                      f"peak RSS {r['peak_rss_mb']:.0f} MiB, {r['bytes_per_stored_pair']:.1f} B/pair, "
                      f"{r['bytes_per_merged_cell']:.1f} B/cell")
        print(f"[{out['kernel']}] rate at {large['origins']} ÷ rate at {small['origins']}: {scaling:.2f}; "
              f"targets met: {out['meets_targets']}; load average {out['load_average']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
