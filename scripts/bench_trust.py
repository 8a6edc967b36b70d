#!/usr/bin/env python3
"""bench_trust: what a deviation round costs the event loop, scored inline vs in a worker thread.

One ``Node`` (no store, no broker, a virtual clock) holds the cells of N
validly signed origins (births from ``bench_fleet.Fleet``, the registry filled
through ``Node.receive``): a universe of ``--cells`` (state, action) cells,
each origin holding a random ``--hold`` share of them with its own evidence,
honest values near a common truth, one in 16 origins (at least one) with its
values inverted (so that the rounds quarantine someone). For each N, in the
same process:

- ``phases_ms``: what one round is made of, timed apart: ``snapshot_cells_room``
  (the copy of the table into touched memory: what stays on the loop; ``_fresh``:
  into fresh memory, page faults included), ``cells_room`` (touching that
  memory: in the thread), ``gather`` (the copy's cells and the dense matrix)
  and ``judge_round`` (scoring, up to 3 passes), and for comparison
  ``delta_of_all``, ``delta_of`` for every origin (how the round read the
  table before);
- ``inline`` / ``thread``: ``--rounds`` deviation rounds with the scoring on
  the event loop (``Node.off_loop_cells`` past every table) and in a worker
  thread (``off_loop_cells = 0``), while a concurrent task sleeps 1 ms in a
  loop and records the gaps between its wake-ups: ``round_ms`` (median wall
  time of a round), ``loop_max_gap_ms`` and ``loop_p99_gap_ms``, ``ticks``
  (wake-ups of the concurrent task during the rounds);
- ``idle``: the same ticker for as long as the threaded rounds took (at most
  5 s), with no round: what the machine's other load alone costs it;
- ``stall_ratio``: inline max gap / thread max gap, ``round_ratio``: thread
  round time / inline; ``same_verdicts``: both paths judged alike (each
  round starts from the same state: quarantine emptied, trusts reset to 1).

    python scripts/bench_trust.py --origins 8,64,256 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_fleet import HALF_LIFE, SECRET, T0, Fleet, VirtualClock, node_config

from peerd import logs
from peerd.delta import Delta
from peerd.node import Node
from peerd.qtable import cells_room
from peerd.quarantine import MAX_MATRIX_ENTRIES, gather_cells, judge_round
from peerd.task import state_key


async def build_node(origins: int, cells: int, hold: float, liars: int, seed: int) -> Node:
    """A node holding ``origins`` signed peers' cells over a shared universe of ``cells`` cells."""
    clock = VirtualClock(T0)
    cfg = node_config("", origins, "normal", relay=False)
    node = Node(cfg, clock=clock, monotonic=clock)
    await node.open()
    fleet = Fleet(origins, seed)
    for _now, _kind, topic, payload in fleet.births(T0):
        await node.receive(topic, payload)
    a = len(cfg.task.actions)
    rng = np.random.default_rng(seed)
    states = math.ceil(cells / a)
    keys = np.array([state_key(f"s{j}", SECRET) for j in range(states)], np.uint64)
    truth = rng.uniform(0.0, 10.0, (states, a))
    now_over_h = T0 / HALF_LIFE
    for i, pid in enumerate(fleet.ids):
        held = np.flatnonzero(rng.random(states * a) < hold)
        held = held[held < cells]
        s, act = np.divmod(held, a)
        q = truth[s, act] + rng.normal(0.0, 0.3, held.size)
        if i < liars:
            q = -q  # an inverter: far from every honest origin
        n = rng.integers(1, 20, held.size)
        lw = now_over_h + np.log2(n) - rng.uniform(0.0, 2.0, held.size)
        order = np.lexsort((act, keys[s]))
        m = held.size
        delta = Delta.build(pid, cfg.task.fingerprint, 0, m, keys=keys[s][order],
                            actions=act[order], q=q[order], lw=lw[order], n=n[order],
                            succ=np.zeros(m), fail=np.zeros(m), version=np.arange(1, m + 1))
        node.table.apply(delta)
    return node


def reset(node: Node) -> None:
    """Back to the state before the first round: nobody quarantined, every trust 1."""
    node.quarantine.held.clear()
    back = {}
    for pid in node.peer_ids():
        entry = node._registry.get(pid)
        if entry is not None and entry.trust != 1.0:
            entry.trust = back[pid] = 1.0
    if back:
        node.table.set_trusts(back)


def phases(node: Node) -> dict[str, Any]:
    """One round's parts, timed apart: what stays on the loop (the copy) and what moves."""
    t = node.table
    origins = [o for o in t.origins if o == node.id or t.max_version(o) > 0]
    c0 = time.perf_counter()
    deltas = [t.delta_of(o) for o in origins]
    c1 = time.perf_counter()
    snap = t.snapshot_cells(origins)
    fresh = time.perf_counter() - c1
    n = t.stored_entries
    room = cells_room(n + n // 4 + 1024)
    c2r = time.perf_counter()
    snap = t.snapshot_cells(origins, room=room)
    c2 = time.perf_counter()
    matrix = gather_cells(snap.origins, *snap.arrays(), shared_only=True,
                          max_entries=MAX_MATRIX_ENTRIES)
    c3 = time.perf_counter()
    judge_round(matrix, {o: 1.0 for o in origins}, type(node.quarantine)(), own=node.id,
                now_over_h=node.clock() / t.half_life)
    c4 = time.perf_counter()
    ms = lambda a, b: round((b - a) * 1e3, 2)  # noqa: E731
    return {"delta_of_all": ms(c0, c1), "snapshot_cells_fresh": round(fresh * 1e3, 2),
            "snapshot_cells_room": ms(c2r, c2), "cells_room": ms(c1 + fresh, c2r), "gather": ms(c2, c3),
            "judge_round": ms(c3, c4), "origin_cells": int(sum(len(d) for d in deltas)),
            "matrix": list(matrix.q.shape)}


async def rounds(node: Node, n: int, *, threaded: bool) -> tuple[dict[str, Any], list[dict]]:
    """``n`` deviation rounds while a concurrent task measures how often the loop lets it run.

    A gap between two of its wake-ups counts when it overlaps a round (the
    bench's own ``reset`` between rounds is left out)."""
    node.off_loop_cells = 0 if threaded else 1 << 62
    wakes: list[tuple[float, float]] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            t = time.perf_counter()
            wakes.append((last, t))
            last = t

    windows: list[tuple[float, float]] = []
    verdicts: list[dict] = []
    task = asyncio.create_task(ticker())
    for _ in range(n):
        reset(node)
        await asyncio.sleep(0.005)  # the ticker's turn: no gap spans the reset and a round
        t0 = time.perf_counter()
        verdicts.append(await node.deviation_round())
        windows.append((t0, time.perf_counter()))
    stop.set()
    await task
    g = np.array([b - a for a, b in wakes if any(a < e and b > s for s, e in windows)]) * 1e3
    walls = [e - s for s, e in windows]
    return {"round_ms": round(float(np.median(walls)) * 1e3, 1),
            "loop_max_gap_ms": round(float(g.max()), 1) if g.size else None,
            "loop_p99_gap_ms": round(float(np.percentile(g, 99)), 1) if g.size else None,
            "ticks": int(g.size),
            "quarantined": sorted(node.quarantine.held)}, verdicts


async def idle(seconds: float) -> dict[str, Any]:
    """The same ticker with nothing else to do: the machine's own noise (other processes' load)."""
    gaps: list[float] = []
    end = time.perf_counter() + seconds
    last = time.perf_counter()
    while last < end:
        await asyncio.sleep(0.001)
        t = time.perf_counter()
        gaps.append(t - last)
        last = t
    g = np.array(gaps) * 1e3
    return {"loop_max_gap_ms": round(float(g.max()), 1),
            "loop_p99_gap_ms": round(float(np.percentile(g, 99)), 1), "ticks": int(g.size)}


def same_verdicts(a: list[dict], b: list[dict]) -> bool:
    for va, vb in zip(a, b, strict=True):
        if va.keys() != vb.keys():
            return False
        for p, x in va.items():
            y = vb[p]
            if x.quarantined != y.quarantined or (x.score is None) != (y.score is None):
                return False
            if x.score is not None and not math.isclose(x.score, y.score, rel_tol=1e-9):
                return False
    return True


async def one(origins: int, args: argparse.Namespace) -> dict[str, Any]:
    b0 = time.perf_counter()
    node = await build_node(origins, args.cells, args.hold, max(1, origins // 16), args.seed)
    out: dict[str, Any] = {"origins": origins, "build_s": round(time.perf_counter() - b0, 1)}
    out["phases_ms"] = phases(node)
    inline, v_in = await rounds(node, args.rounds, threaded=False)
    thread, v_th = await rounds(node, args.rounds, threaded=True)
    out["inline"], out["thread"] = inline, thread
    out["idle"] = await idle(min(5.0, args.rounds * thread["round_ms"] / 1e3))
    out["stall_ratio"] = (round(inline["loop_max_gap_ms"] / thread["loop_max_gap_ms"], 1)
                          if inline["loop_max_gap_ms"] and thread["loop_max_gap_ms"] else None)
    out["round_ratio"] = round(thread["round_ms"] / inline["round_ms"], 2) if inline["round_ms"] else None
    out["same_verdicts"] = same_verdicts(v_in, v_th)
    await node.close()
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {"cells": args.cells, "hold": args.hold, "rounds": args.rounds,
                           "seed": args.seed, "load_before": os.getloadavg()[0], "runs": []}
    for n in args.origins:
        res["runs"].append(await one(n, args))
    res["load_after"] = os.getloadavg()[0]
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--origins", type=lambda s: [int(x) for x in s.split(",")], default=[8, 64, 256])
    p.add_argument("--cells", type=int, default=8192, help="the universe of (state, action) cells")
    p.add_argument("--hold", type=float, default=0.5, help="share of the universe each origin holds")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="compact JSON")
    args = p.parse_args()
    logs.configure("warning")
    print(json.dumps(asyncio.run(main_async(args)), indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
