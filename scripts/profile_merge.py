#!/usr/bin/env python3
"""Where a peer's delta goes: per-stage CPU time of ``QTable.apply`` in the ``bench_merge`` scenario.

The same table, origins and deltas as ``scripts/bench_merge.py`` (one origin
count, in this process), with the dict baseline applied between peerd's
deltas as there (so peerd's structures are as cold as in the benchmark). Each
piece of the merge path is wrapped in a process-CPU-time timer; ``rest`` is
what ``QTable.apply`` spends outside the wrapped pieces (its own numpy glue
and Python). ``--warm`` also times, before each stage, one bare gather of the
rows that stage will touch (key-index slots, view rows, the origin's hash
slots and records, holder-chain heads): what a cache miss per cell costs on
this machine, apart from the numpy passes around it. ``--kernel numba``
times each compiled kernel (``peerd/kernels_numba.py``) that Python calls as
a stage instead (``merge_delta``: the whole merge in one call), and the
growths and recomputes that stay in Python.
``--cprofile`` prints the top functions instead.

    python scripts/profile_merge.py --origins 64 --deltas 100
    python scripts/profile_merge.py --origins 64 --deltas 100 --kernel numba
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import gc
import json
import os
import pstats
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_merge as bm

from peerd import cells, kernels, keyindex, qtable, view
from peerd.delta import Delta
from peerd.qtable import QTable

T: dict[str, float] = defaultdict(float)
_depth = [0]


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its outermost calls' CPU time added to ``T[name]``."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _depth[0]:
            return fn(*args, **kwargs)
        _depth[0] += 1
        c = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            T[name] += time.process_time() - c
            _depth[0] -= 1
    return wrapper


#: the compiled kernels, each its own stage (``--kernel numba``)
KERNEL_STAGES = {
    "delta_scan": "validate + order (kernels: delta_scan)",
    "scan_order": "sorted + outcomes check (kernels: scan_order; in delta_scan when validated here)",
    "key_ensure": "key index + cell ids (kernels: key_ensure)",
    "cell_probe": "origin hash + version test + old records (kernels: cell_probe)",
    "insert_new": "new entries: link + hash (kernels: insert_new)",
    "hash_put": "origin hash rebuilds (kernels: hash_put)",
    "merge_swap": "field writes + view rows + stats (kernels: merge_swap)",
    "merge_delta": "the whole merge in one call (kernels: merge_delta)",
    "recompute_exact": "exact recompute of cancelled sums (kernels: recompute_exact)",
}


def instrument_kernels() -> None:
    """Wrap the compiled kernels (module attributes: the merge path calls them through it)."""
    kern = kernels.load()
    if kern is None:
        raise SystemExit(f"--kernel numba: the kernels cannot load: {kernels.status()['error']}")
    for name, label in KERNEL_STAGES.items():
        setattr(kern, name, timed(label, getattr(kern, name)))
    # the growths the compiled merge leaves to Python (rare, but each a copy of a whole array)
    view.MergedView.reserve = timed("view growth (MergedView.reserve)", view.MergedView.reserve)
    cells.CellStore.reserve_cells = timed("holder heads growth (CellStore.reserve_cells)",
                                          cells.CellStore.reserve_cells)
    qtable.QTable._refresh = timed("exact recompute of cancelled sums (QTable._refresh)",
                                   qtable.QTable._refresh)
    view.MergedView.evidence = timed("evidence read back after a recompute (MergedView.evidence)",
                                     view.MergedView.evidence)
    keyindex.KeyIndex.make_room = timed("key index growth (KeyIndex.make_room)",
                                        keyindex.KeyIndex.make_room)


def instrument(warm: bool) -> None:
    """Wrap the pieces of the merge path (class attributes: every table sees them)."""
    Delta.validate = timed("validate (Delta.validate)", Delta.validate)
    keyindex.KeyIndex.ensure = timed("key index (KeyIndex.ensure)", keyindex.KeyIndex.ensure)
    cells.CellStore.lookup = timed("origin hash (CellStore.lookup)", cells.CellStore.lookup)
    cells.CellStore.insert = timed("new entries (CellStore.insert)", cells.CellStore.insert)
    view.MergedView.swap = timed("view rows (MergedView.swap)", view.MergedView.swap)
    qtable.evidence_of = timed("stats (evidence_of)", qtable.evidence_of)
    if not warm:
        return
    ensure = keyindex.KeyIndex.ensure

    def ensure_warm(self: keyindex.KeyIndex, keys: np.ndarray) -> np.ndarray:
        c = time.process_time()
        self._slots.take(self._home(np.asarray(keys, np.uint64)))
        T["cold gather: key-index slots"] += time.process_time() - c
        return ensure(self, keys)
    keyindex.KeyIndex.ensure = ensure_warm
    lookup = cells.CellStore.lookup

    def lookup_warm(self: cells.CellStore, cell: np.ndarray, slot: int) -> Any:
        h = self.hashes.get(slot)
        if h is not None and cell.shape[0] > 16:
            c = time.process_time()
            e = h.table.take(h.home(cell))
            T["cold gather: origin hash slots"] += time.process_time() - c
            c = time.process_time()
            self.cell[e]
            T["cold gather: records (cell field)"] += time.process_time() - c
            c = time.process_time()
            self.head[cell]
            T["cold gather: holder-chain heads"] += time.process_time() - c
        return lookup(self, cell, slot)
    cells.CellStore.lookup = lookup_warm
    swap = view.MergedView.swap

    def swap_warm(self: view.MergedView, c: np.ndarray, *args: Any) -> Any:
        t0 = time.process_time()
        self._rows.take(c)
        T["cold gather: view rows"] += time.process_time() - t0
        return swap(self, c, *args)
    view.MergedView.swap = swap_warm


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--origins", type=int, default=64)
    ap.add_argument("--deltas", type=int, default=100, help="10 k-cell deltas timed")
    ap.add_argument("--cells", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--warm", action="store_true", help="time a bare cold gather before each stage")
    ap.add_argument("--cprofile", action="store_true", help="print cProfile's top functions instead")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--kernel", choices=["numpy", "numba"], default="numpy",
                    help="merge path to profile (numba: per compiled kernel; --warm is numpy's)")
    args = ap.parse_args(argv)
    delta_cells = 10_000
    ns = argparse.Namespace(seed=args.seed, actions=6, cells=args.cells,
                            work=args.deltas * delta_cells, delta_cells=delta_cells)
    sc = bm.Scenario(ns)
    table = QTable(sc.task, "bench-node", secret="bench", half_life=bm.HALF_LIFE, clock=lambda: bm.NOW,
                   kernel=args.kernel)
    table.load("bench-node", sc.cells(sc.held(), 0))
    peers = [f"peer-{p:04d}" for p in range(1, args.origins)]
    held: dict[str, np.ndarray] = {}
    anyone = np.zeros(sc.n_cells, bool)
    for p in peers:
        idx = held[p] = sc.held()
        anyone[idx] = True
        table.apply(Delta.build(p, sc.task.fingerprint, 0, idx.shape[0], **sc.cells(idx, 0)), guard=False)
    version = {p: held[p].shape[0] for p in peers}
    deltas = []
    for i in range(args.deltas):  # as bench_merge: half cells the peer holds, half new to it
        p = peers[i % len(peers)]
        half = delta_cells // 2
        idx = np.union1d(sc.rng.choice(held[p], half, replace=False),
                         sc.rng.choice(sc.n_cells, delta_cells - half, replace=False))
        v0 = version[p]
        version[p] = v0 + idx.shape[0]
        deltas.append(Delta.build(p, sc.task.fingerprint, v0, version[p], **sc.cells(idx, v0)))
    base = bm.Baseline(sc.keys[anyone], sc.acts[anyone])
    del anyone
    gc.collect()
    prof = cProfile.Profile(time.process_time) if args.cprofile else None
    if prof is None and args.kernel == "numba":
        instrument_kernels()
    elif prof is None:
        instrument(args.warm)
    t_peerd = t_base = 0.0
    flt_p = flt_b = 0  # minor page faults: fresh memory touched (allocator churn would show here)
    for d in deltas:
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        c = time.process_time()
        if prof is not None:
            prof.enable()
        table.apply(d)
        if prof is not None:
            prof.disable()
        t_peerd += time.process_time() - c
        f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        c = time.process_time()
        base.apply(d)
        t_base += time.process_time() - c
        f2 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        flt_p += f1 - f0
        flt_b += f2 - f1
    n = sum(len(d) for d in deltas)
    if prof is not None:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return 0
    staged = sum(v for k, v in T.items() if not k.startswith("cold"))
    warm = sum(v for k, v in T.items() if k.startswith("cold"))
    stages = dict(T)
    stages["rest (apply's own glue and Python)"] = t_peerd - staged - warm
    out = {"origins": args.origins, "kernel": table.last_kernel, "deltas": len(deltas), "cells": n,
           "load_average": [round(x, 2) for x in os.getloadavg()],
           "peerd_cells_per_s": round(n / (t_peerd - warm)), "baseline_cells_per_s": round(n / t_base),
           "ratio": round(t_base / (t_peerd - warm), 2),
           "us_per_delta_total": round((t_peerd - warm) / len(deltas) * 1e6),
           "page_faults_per_delta": {"peerd": round(flt_p / len(deltas), 1),
                                     "baseline": round(flt_b / len(deltas), 1)},
           "us_per_delta": {k: round(v / len(deltas) * 1e6) for k, v in
                            sorted(stages.items(), key=lambda kv: -kv[1])}}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"[{out['kernel']}] {args.origins} origins: "
              f"peerd {out['peerd_cells_per_s'] / 1e6:.2f} M cells/s, dict "
              f"{out['baseline_cells_per_s'] / 1e6:.2f} M cells/s ({out['ratio']:.1f}x); "
              f"{out['us_per_delta_total']} us per 10 k-cell delta (process CPU time); minor page "
              f"faults per delta: peerd {out['page_faults_per_delta']['peerd']}, dict "
              f"{out['page_faults_per_delta']['baseline']}")
        for k, v in out["us_per_delta"].items():
            print(f"  {k:45s} {v:6d} us  {v / delta_cells * 1e3:6.1f} ns/cell")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
