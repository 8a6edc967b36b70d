"""Measure the store's two hot paths under synchronous=FULL and NORMAL.

* ``bulk``: one ``write_cells`` of ``--bulk`` rows (a large delta or a snapshot);
* ``group``: ``--concurrent`` asyncio tasks each writing one cell at once, which
  group commit turns into a few transactions;
* ``baseline``: the same single-cell writes awaited one after another, i.e. one
  transaction (and, with FULL, one fsync) per write -- what group commit saves.

Run on the disk the daemon will use (``--dir``): on tmpfs fsync is free and
FULL looks as cheap as NORMAL.

    python scripts/bench_store.py --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peerd import logs
from peerd.delta import CELL_DTYPES
from peerd.store import Store


def cells(keys: np.ndarray, version: int = 1) -> dict[str, np.ndarray]:
    """Plausible cells for ``keys`` (all at ``version``)."""
    m = keys.shape[0]
    rng = np.random.default_rng(0)
    return {
        "keys": keys.astype(CELL_DTYPES["keys"]),
        "actions": (np.arange(m) % 4).astype(CELL_DTYPES["actions"]),
        "q": rng.normal(size=m).astype(CELL_DTYPES["q"]),
        "lw": rng.random(m),
        "n": np.full(m, 3, CELL_DTYPES["n"]),
        "succ": np.ones(m, CELL_DTYPES["succ"]),
        "fail": np.ones(m, CELL_DTYPES["fail"]),
        "version": np.full(m, version, CELL_DTYPES["version"]),
    }


async def bench(directory: Path, synchronous: str, bulk: int, concurrent: int,
                baseline: int) -> dict[str, float | int | str]:
    path = directory / f"bench-{synchronous.lower()}.db"
    store = await Store.open(path, federation="bench", node_id="n0", fingerprint="fp",
                             synchronous=synchronous)
    try:
        rng = np.random.default_rng(1)
        big = cells(rng.integers(0, 2**64 - 1, bulk, dtype=np.uint64, endpoint=True))
        t = time.perf_counter()
        await store.write_cells("bulk", big)
        bulk_s = time.perf_counter() - t

        singles = [cells(np.array([k], np.uint64)) for k in range(max(concurrent, baseline))]
        commits = store.commits
        t = time.perf_counter()
        await asyncio.gather(*(store.write_cells("group", c) for c in singles[:concurrent]))
        group_s = time.perf_counter() - t
        group_commits = store.commits - commits

        t = time.perf_counter()
        for c in singles[:baseline]:
            await store.write_cells("baseline", c)
        base_s = time.perf_counter() - t
        stats = await store.stats()
    finally:
        await store.close()
    group_rate = concurrent / group_s
    base_rate = baseline / base_s
    return {
        "synchronous": synchronous,
        "bulk_rows": bulk,
        "bulk_s": round(bulk_s, 4),
        "bulk_rows_per_s": round(bulk / bulk_s),
        "group_writes": concurrent,
        "group_s": round(group_s, 4),
        "group_writes_per_s": round(group_rate),
        "group_commits": group_commits,
        "baseline_writes": baseline,
        "baseline_s": round(base_s, 4),
        "baseline_writes_per_s": round(base_rate),
        "group_vs_baseline": round(group_rate / base_rate, 1),
        "file_bytes": stats["file_bytes"] + stats["wal_bytes"],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--dir", type=Path, default=None,
                        help="directory for the databases (default: a temporary one in /tmp)")
    parser.add_argument("--bulk", type=int, default=100_000)
    parser.add_argument("--concurrent", type=int, default=5_000)
    parser.add_argument("--baseline", type=int, default=5_000)
    args = parser.parse_args()
    logs.configure("warning")  # logs to stderr: stdout is only the results

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="peerd-bench-") as tmp:
        results = [await bench(Path(tmp), s, args.bulk, args.concurrent, args.baseline)
                   for s in ("FULL", "NORMAL")]
    if args.json:
        print(json.dumps({"sqlite": __import__("sqlite3").sqlite_version, "results": results},
                         indent=2))
    else:
        for r in results:
            print(" ".join(f"{k}={v}" for k, v in r.items()))


if __name__ == "__main__":
    asyncio.run(main())
