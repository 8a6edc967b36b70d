"""The federated ÷ centralized gap without a network: QTables exchanging deltas in one process.

A diagnosis tool for issue 10. Every node is a bare ``QTable`` (no trust, no
quarantine, no probation, no evidence budget, no broker); every
``--publish-every`` ticks each publishes its delta since its last publish,
and every other node applies it ``--lag`` ticks later — deterministic, so one
run per seed is the figure. ``--hold T`` keeps every peer out of every view
until tick T (what a start-up rule such as newcomer probation costs at most).
``--trust X`` weighs every peer X (trust rounds raise honest peers to ~1.25).
Prints JSON: steps to target per arm, and the median-metric curve.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peerd.qtable import QTable
from peerd.sim.runner import SimSettings, Simulation, VirtualClock, task_of


def run_arm(nodes: int, seed: int, publish_every: int, lag: int, hold: int, trust: float,
            eval_every: int, step_cap: int | None = None) -> dict[str, Any]:
    """One federated arm; ``steps`` None when the target was not reached within the step cap."""
    sim = Simulation(SimSettings(env="taxi", nodes=nodes, eval_every=eval_every, seed=seed,
                                 modes=["federated"], step_cap=step_cap))
    spec = sim.spec
    clock = VirtualClock()
    opts = {"start": spec.eps_start, "end": spec.eps_end, "decay_steps": spec.eps_decay_steps}
    tables = [QTable(task_of(spec), f"node{i:02d}", secret="peerd-sim", half_life=sim.half_life,
                     clock=clock, seed=seed * 1000 + i, policy_options=opts,
                     quarantine_below=0.2 if hold else 0.0)
              for i in range(nodes)]
    keys = sim._keys(tables[0])
    published = [0] * nodes
    queue: list[tuple[int, int, Any]] = []  # (due tick, sender, delta)
    held = bool(hold)

    def after(tick: int) -> None:
        nonlocal held
        if tick % publish_every == 0:
            for i, t in enumerate(tables):
                d = t.delta(since=published[i])
                published[i] = t.version
                if len(d):
                    queue.append((tick + lag, i, d))
        due = [q for q in queue if q[0] <= tick]
        queue[:] = [q for q in queue if q[0] > tick]
        for _, i, d in due:
            for j, t in enumerate(tables):
                if j != i:
                    first = d.origin not in t.origins
                    t.apply(d)
                    w = 0.1 if held else trust
                    if first and w != 1.0:
                        t.set_trusts({d.origin: w})
        if held and tick >= hold:
            held = False
            for t in tables:
                t.set_trusts({o: trust for o in t.origins if o != t.node_id})

    res = asyncio.run(sim._loop(
        "federated", seed, lambda i, s: tables[i].act(s),
        lambda i, s, a, r, s2, d: tables[i].learn(s, a, r, s2, done=d) and None,
        lambda: np.stack([t.greedy(keys) for t in tables]), clock, after))
    counted = [sum(t.trust(o) >= 0.2 for o in t.origins if o != t.node_id) for t in tables]
    return {"steps": res.steps_to_target, "peers_counted": int(np.median(counted)),
            "curve": [[t, round(float(np.median(m)), 2)]
                      for t, m in zip(res.curve_steps, res.curve_metric, strict=True)]}


def run_central(nodes: int, seed: int, eval_every: int,
                step_cap: int | None = None) -> dict[str, Any]:
    sim = Simulation(SimSettings(env="taxi", nodes=nodes, eval_every=eval_every, seed=seed,
                                 modes=["centralized"], step_cap=step_cap))
    res = asyncio.run(sim.run_centralized(seed))
    return {"steps": res.steps_to_target,
            "curve": [[t, round(float(np.median(m)), 2)]
                      for t, m in zip(res.curve_steps, res.curve_metric, strict=True)]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=16)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--arm", action="append", default=[],
                   help="publish_every,lag[,hold[,trust]] (repeatable; hold 0 and trust 1 when "
                        "left out); 'central' for centralized")
    args = p.parse_args()
    arms = []
    for arm in args.arm or ["central", "10,10,0,1"]:
        parts = arm.split(",")
        if arm != "central" and not 2 <= len(parts) <= 4:
            p.error(f"--arm wants 'central' or publish_every,lag[,hold[,trust]], got {arm!r}")
        arms.append(arm)
    out: dict[str, Any] = {"nodes": args.nodes, "seed": args.seed, "arms": {}}
    for arm in arms:
        if arm == "central":
            r = run_central(args.nodes, args.seed, args.eval_every)
        else:
            parts = arm.split(",")
            pe, lag, hold, trust = parts + ["0", "0", "0", "1"][len(parts):]
            r = run_arm(args.nodes, args.seed, int(pe), int(lag), int(hold), float(trust),
                        args.eval_every)
        out["arms"][arm] = r
        print(f"# {arm}: {r['steps']}", file=sys.stderr, flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
