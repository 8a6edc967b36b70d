#!/usr/bin/env python3
"""Benchmark the merge: peerd's ``QTable.apply`` against the seed designs' dict merge, same run.

Scenario (DESIGN §9: speed is a ratio against a baseline measured in the same
run, never a wall-clock assertion):

- a federation of ``--origins`` nodes (default 16: this node and 15 peers);
- this node's table holds ``--cells`` cells (default 1 M = 166 667 states × 6
  actions), restored from its own store before the clock starts;
- every peer first sends one warm-up delta (untimed: it creates the peer's
  origin slot), then ``--rounds`` deltas of ``--delta-cells`` cells each
  (default 100 k), sorted by (key, action) as peerd emits them, each a random
  mix of cells the peer already sent (newer versions) and cells it did not;
- the table's rows are laid out in no particular key order, as in a daemon
  that met its states one by one;
- cells are plain Q-learning cells (``succ = fail = 0``), or with ``--outcomes``
  cells that also count successes (bandit use: more arrays to update);
- peerd applies them with ``QTable.apply`` (validation and the evidence guard
  included); the baseline applies the same deltas with the seed formula
  ``(q_l·n_l + q_p·n_p) / (n_l + n_p)`` over a Python dict keyed by
  ``(key, action)``, after converting the delta's arrays with ``.tolist()``
  (how a Python implementation would receive them; the conversion is timed).

Both are timed round by round, alternately, in process CPU time (one core;
wall-clock rates are reported too). Prints one JSON object (``--json``) or a
short human summary. Target: ``ratio`` ≥ 30 and ≥ 5 M cells/s on one core.

    python scripts/bench_merge.py --json
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peerd.delta import Delta
from peerd.qtable import QTable
from peerd.task import Task

NOW = 1.7e9  # a wall-clock "now": absolute log-weights are ≈ 2.8e6, as in the daemon
HALF_LIFE = 600.0


def rss_peak_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_scenario(args: argparse.Namespace) -> tuple[Task, dict[str, np.ndarray], list[Delta],
                                                       list[Delta]]:
    """Own cells of the node, the peers' warm-up deltas and the timed deltas."""
    rng = np.random.default_rng(args.seed)
    task = Task(args.actions, gamma=0.99, name="bench")
    n_states = -(-args.cells // args.actions)
    state_keys = np.unique(rng.integers(0, 2**64 - 1, size=n_states, dtype=np.uint64))
    assert state_keys.shape[0] == n_states  # 64-bit keys: a collision has probability ~1e-9
    n_cells = n_states * args.actions
    all_keys = np.repeat(state_keys, args.actions)  # every (key, action), sorted
    all_acts = np.tile(np.arange(args.actions, dtype=np.uint16), n_states)

    def cells(idx: np.ndarray, version: np.ndarray, t_last: float) -> dict[str, np.ndarray]:
        m = idx.shape[0]
        n = rng.integers(1, 50, m).astype(np.uint32)
        succ = (n // 3 if args.outcomes else np.zeros(m)).astype(np.uint32)
        # recency-weighted evidence of about n updates, the last around t_last
        lw = np.log2(n.astype(np.float64)) + (t_last - rng.random(m) * 3 * HALF_LIFE) / HALF_LIFE
        return {"keys": all_keys[idx], "actions": all_acts[idx],
                "q": rng.normal(0.0, 5.0, m).astype(np.float32), "lw": lw, "n": n,
                "succ": succ, "fail": np.zeros(m, np.uint32), "version": version}

    own = cells(np.arange(n_cells), np.arange(1, n_cells + 1, dtype=np.uint64), NOW)
    warm: list[Delta] = []
    timed: list[Delta] = []
    for p in range(1, args.origins):
        origin = f"peer-{p:02d}"
        fp = task.fingerprint
        version = 0
        sent = np.empty(0, np.int64)
        for r in range(args.rounds + 1):
            # half new cells, half cells this peer sent before (they get a newer version)
            k_old = min(sent.shape[0], args.delta_cells // 2)
            old = rng.choice(sent, k_old, replace=False) if k_old else sent[:0]
            new = rng.choice(n_cells, args.delta_cells - k_old, replace=False)
            idx = np.unique(np.concatenate([old, new]))
            while idx.shape[0] < args.delta_cells:  # collisions: top up
                more = rng.choice(n_cells, args.delta_cells - idx.shape[0], replace=False)
                idx = np.unique(np.concatenate([idx, more]))
            sent = np.union1d(sent, idx)
            ver = version + 1 + rng.permutation(idx.shape[0]).astype(np.uint64)
            d = Delta.build(origin, fp, version, version + idx.shape[0],
                            **cells(idx, ver, NOW - (args.rounds - r)))
            version += idx.shape[0]
            (warm if r == 0 else timed).append(d)
    # interleave peers the way deltas arrive: round by round
    per_peer = args.rounds
    timed = [timed[p * per_peer + r] for r in range(per_peer) for p in range(args.origins - 1)]
    return task, own, warm, timed


class Timer:
    """Accumulated CPU time of this process (one core: numpy runs these loops single-threaded)
    and wall-clock time. CPU time is the headline: other processes on the machine do not
    inflate it (much)."""

    def __init__(self) -> None:
        self.cpu = self.wall = 0.0

    def __enter__(self) -> Timer:
        self._c, self._w = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu += time.process_time() - self._c
        self.wall += time.perf_counter() - self._w


def peerd_table(task: Task, own: dict[str, np.ndarray], warm: list[Delta]) -> QTable:
    """This node's table: its own cells restored, every peer's warm-up delta applied."""
    table = QTable(task, "bench-node", secret="bench", half_life=HALF_LIFE, clock=lambda: NOW)
    # A daemon meets states in no particular key order, so table rows are not sorted by
    # key; restoring the own cells in random batches lays them out the same way.
    rng = np.random.default_rng(0)
    for batch in np.array_split(rng.permutation(own["keys"].shape[0]), 256):
        table.load("bench-node", {f: a[np.sort(batch)] for f, a in own.items()})
    for d in warm:
        table.apply(d)
    return table


class Baseline:
    """The seed designs' merge: one dict ``(key, action) → (q, n)``, visits summed."""

    def __init__(self, own: dict[str, np.ndarray]) -> None:
        self.table: dict[tuple[int, int], tuple[float, int]] = dict(
            zip(zip(own["keys"].tolist(), own["actions"].tolist(), strict=True),
                zip(own["q"].tolist(), own["n"].tolist(), strict=True), strict=True))

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--origins", type=int, default=16, help="nodes in the federation (incl. this one)")
    ap.add_argument("--cells", type=int, default=1_000_000, help="cells in this node's table")
    ap.add_argument("--actions", type=int, default=6)
    ap.add_argument("--delta-cells", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3, help="timed deltas per peer")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--outcomes", action="store_true",
                    help="cells carry success counts (bandit use); default: plain Q-learning cells")
    args = ap.parse_args(argv)
    if args.origins < 2:
        ap.error("--origins must be >= 2")

    task, own, warm, timed = make_scenario(args)
    table = peerd_table(task, own, warm)
    rss_peerd = rss_peak_mb()
    baseline = Baseline(own)
    for d in warm:
        baseline.apply(d)
    gc.collect()
    t_peerd, t_base = Timer(), Timer()
    peers = args.origins - 1
    for r in range(args.rounds):  # alternate, so that both see the same machine
        batch = timed[r * peers : (r + 1) * peers]
        with t_peerd:
            for d in batch:
                table.apply(d)
        with t_base:
            for d in batch:
                baseline.apply(d)
    cells = sum(len(d) for d in timed)
    storage = table.memory()["store_bytes"] + table.memory()["view_bytes"]
    out = {
        "peerd_cells_per_s": round(cells / t_peerd.cpu),
        "baseline_cells_per_s": round(cells / t_base.cpu),
        "ratio": round(t_base.cpu / t_peerd.cpu, 2),
        "peak_rss_mb": round(rss_peak_mb(), 1),
        "peak_rss_mb_peerd_only": round(rss_peerd, 1),
        "peerd_cell_storage_mb": round(storage / 2**20, 1),
        "timer": "process CPU time",
        "peerd_wall_cells_per_s": round(cells / t_peerd.wall),
        "baseline_wall_cells_per_s": round(cells / t_base.wall),
        "cells_applied": cells,
        "deltas": len(timed),
        "delta_cells": args.delta_cells,
        "table_cells": table.size,
        "origins": len(table.origins),
        "actions": args.actions,
        "outcomes": args.outcomes,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(f"peerd    {out['peerd_cells_per_s'] / 1e6:8.2f} M cells/s  ({t_peerd.cpu:.3f} s CPU)")
        print(f"baseline {out['baseline_cells_per_s'] / 1e6:8.2f} M cells/s  ({t_base.cpu:.3f} s CPU)")
        print(f"ratio    {out['ratio']:8.1f}x   peak RSS {out['peak_rss_mb']:.0f} MiB "
              f"({cells} cells in {len(timed)} deltas of {args.delta_cells}, "
              f"table {out['table_cells']} cells × {out['origins']} origins)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
