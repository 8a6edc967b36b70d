"""Benchmark the wire format against a JSON list-of-dicts baseline in the same run.

A realistic 100 k-cell delta (sorted random uint64 state keys with all 6 actions
each, q ~ N(0, 5) as float32, lw = t/H + small with t around 1.7e9 s and
H = 600 s, small visit counts, cell versions a shuffled run of the version
counter) and a 10-cell delta: encode+sign and decode+verify throughput in
cells/s, bytes per cell, and the ratios against ``json.dumps`` of
``[{"key", "action", "q", "lw", "n", "version"}, ...]``. A variant with one
distinct key per cell (no repeated keys) shows the worst case for size.

    python scripts/bench_wire.py --json

Targets (issue): ≤ 24 bytes/cell, ≥ 3.5× smaller than JSON, ≥ 1 M cells/s
round trip for the large delta. Exit 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peerd.delta import Delta
from peerd.identity import Identity, Verifier
from peerd.task import Task
from peerd.wire import DeltaMsg, Header, decode, encode

TASK = Task(6)
FED = "bench"
NODE = "edge-01"
H = 600.0
T_NOW = 1.7e9
TARGETS = {"bytes_per_cell_max": 24.0, "json_ratio_min": 3.5, "round_trip_cells_per_s_min": 1e6}


def realistic_delta(m: int, *, seed: int = 0, distinct_keys: bool = False) -> Delta:
    """``m`` cells as a learning node would publish them, sorted by (key, action)."""
    rng = np.random.default_rng(seed)
    n_actions = TASK.n_actions
    if distinct_keys:
        keys = np.sort(rng.integers(0, 2**64, m, dtype=np.uint64))
        actions = rng.integers(0, n_actions, m)
    else:
        states = np.sort(rng.integers(0, 2**64, -(-m // n_actions), dtype=np.uint64))
        keys = np.repeat(states, n_actions)[:m]
        actions = np.tile(np.arange(n_actions), len(states))[:m]
    t_last = T_NOW - rng.uniform(0, 100 * H, m)  # last update within the last 100 minutes
    n = rng.geometric(0.2, m)
    lw = t_last / H + np.log2(np.minimum(n, 1 + rng.uniform(0, 3, m)))
    lo = 5_000_000
    return Delta.build(NODE, TASK.fingerprint, lo, lo + m, keys=keys, actions=actions,
                       q=rng.normal(0, 5, m), lw=lw, n=n, succ=np.zeros(m), fail=np.zeros(m),
                       version=lo + 1 + rng.permutation(m))


def json_baseline(d: Delta) -> bytes:
    cols = {"key": d.keys.tolist(), "action": d.actions.tolist(), "q": d.q.tolist(),
            "lw": d.lw.tolist(), "n": d.n.tolist(), "version": d.version.tolist()}
    return json.dumps([dict(zip(cols, row, strict=True))
                       for row in zip(*cols.values(), strict=True)]).encode()


def median_seconds(fn: Callable[[], object], *, repeat: int, number: int = 1) -> float:
    """Median over ``repeat`` runs of the time of one call (each run makes ``number`` calls)."""
    fn()  # warm up
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        runs.append((time.perf_counter() - t0) / number)
    return statistics.median(runs)


def bench(d: Delta, identity: Identity, *, repeat: int, number: int) -> dict[str, Any]:
    m = len(d)
    msg = DeltaMsg(Header(FED, NODE, TASK.fingerprint, 1, 1, T_NOW), d)
    payload = encode(msg, identity)
    allow = {NODE: identity.public_key}

    def decode_verify() -> object:  # a fresh verifier each time: the same seq is not a replay
        return decode(payload, fed=FED, fingerprint=TASK.fingerprint,
                      n_actions=TASK.n_actions, verifier=Verifier(allowlist=allow))

    baseline = json_baseline(d)
    t_enc = median_seconds(lambda: encode(msg, identity), repeat=repeat, number=number)
    t_dec = median_seconds(decode_verify, repeat=repeat, number=number)
    t_json_enc = median_seconds(lambda: json_baseline(d), repeat=repeat, number=number)
    t_json_dec = median_seconds(lambda: json.loads(baseline), repeat=repeat, number=number)
    return {
        "cells": m,
        "wire_bytes": len(payload),
        "bytes_per_cell": round(len(payload) / m, 2),
        "json_bytes_per_cell": round(len(baseline) / m, 2),
        "json_over_wire_size": round(len(baseline) / len(payload), 2),
        "encode_sign_cells_per_s": round(m / t_enc),
        "decode_verify_cells_per_s": round(m / t_dec),
        "round_trip_cells_per_s": round(m / (t_enc + t_dec)),
        "json_round_trip_cells_per_s": round(m / (t_json_enc + t_json_dec)),
        "wire_over_json_speed": round((t_json_enc + t_json_dec) / (t_enc + t_dec), 2),
        "round_trip_ms": round(1e3 * (t_enc + t_dec), 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--cells", type=int, default=100_000, help="cells of the large delta")
    p.add_argument("--repeat", type=int, default=7, help="timed runs (median is reported)")
    args = p.parse_args(argv)
    identity = Identity.from_seed(b"\x42" * 32)
    large = bench(realistic_delta(args.cells), identity, repeat=args.repeat, number=1)
    worst = realistic_delta(args.cells, distinct_keys=True)
    worst_payload = encode(DeltaMsg(Header(FED, NODE, TASK.fingerprint, 1, 1, T_NOW), worst),
                           identity)
    out: dict[str, Any] = {
        "large": large,
        "large_distinct_keys": {
            "bytes_per_cell": round(len(worst_payload) / len(worst), 2),
            "json_over_wire_size": round(len(json_baseline(worst)) / len(worst_payload), 2)},
        "small": bench(realistic_delta(10), identity, repeat=args.repeat, number=300),
        "raw_bytes_per_cell": sum(a.dtype.itemsize for a in worst.arrays().values()),
        "targets": TARGETS,
    }
    out["meets_targets"] = (large["bytes_per_cell"] <= TARGETS["bytes_per_cell_max"]
                            and large["json_over_wire_size"] >= TARGETS["json_ratio_min"]
                            and large["round_trip_cells_per_s"]
                            >= TARGETS["round_trip_cells_per_s_min"])
    print(json.dumps(out, indent=None if args.json else 2))
    return 0 if out["meets_targets"] else 1


if __name__ == "__main__":
    sys.exit(main())
