"""How ``peerd sim`` scales with the fleet: wall time and steps to target for N = 8 … 64.

For every N in ``--nodes`` (ascending), runs the federated and centralized
modes (as ``peerd sim --modes federated,centralized`` does, one after the
other, over the same broker kind) and prints JSON per N:

- ``wall_s``: seconds per mode (the federated one includes starting N nodes and
  their meeting over the broker), and ``total_wall_s``;
- ``steps_to_target`` per mode (median over nodes, then over seeds) and
  ``fed_over_central`` = centralized steps ÷ federated steps (1.0: as fast as
  one table fed by every environment, the limit);
- ``wall_ratio_vs_prev``: this N's total wall time ÷ the previous N's, measured
  back to back in this run (the scaling target: ≤ 4 when N doubles).

The N² deliveries per publishing round are inherent (each of N deltas goes to
N − 1 nodes), so doubling N costs up to 4× per tick; fewer steps to the target
at larger N win some of it back. Wall times depend on the machine and its load:
compare ratios from one run, not figures across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peerd import logs
from peerd.sim.runner import SimSettings, Simulation, summarize

MODES = ("federated", "centralized")


def _progress(nodes: int, t0: float) -> Any:
    """A ``Simulation`` progress callback: one stderr line per 1,000 ticks (an N = 64 run takes an hour)."""
    def report(mode: str, tick: int, best: float, cap: int) -> None:
        if tick % 1000 == 0:
            load = os.getloadavg()[0]
            print(f"# N={nodes} {mode}: tick {tick}, best median metric {best:.2f}, "
                  f"{time.perf_counter() - t0:.0f} s, load {load:.1f}", file=sys.stderr, flush=True)
    return report


def run_n(env: str, nodes: int, seeds: int, broker_kind: str, seed: int,
          publish_every: int, trust_every: int,
          node_options: dict[str, Any] | None = None,
          eval_every: int | None = None, progress: bool = False,
          modes: tuple[str, ...] = MODES, defences: bool = True,
          curves: bool = False, max_lag: int | None = 0) -> dict[str, Any]:
    """One ``peerd sim`` run at ``nodes``: per mode, wall seconds and steps to the target."""
    row: dict[str, Any] = {"wall_s": {}, "steps_to_target": {}, "steps_per_seed": {}}
    t_all = time.perf_counter()
    for mode in modes:  # one Simulation per mode, to time each including its setup
        s = SimSettings(env=env, nodes=nodes, seeds=seeds, modes=[mode], broker_kind=broker_kind,
                        seed=seed, publish_every=publish_every, trust_every=trust_every,
                        node_options=node_options or {}, eval_every=eval_every,
                        defences=defences, max_lag=max_lag,
                        # N births, each answered by every node that saw it live (coalesced per burst),
                        # each delivered to N nodes by one broker: meeting grows faster than N
                        peer_timeout=max(30.0, 0.05 * nodes**2))
        t0 = time.perf_counter()
        out = summarize(asyncio.run(Simulation(s, progress=_progress(nodes, t0) if progress
                                              else None).run()))["modes"][mode]
        row["wall_s"][mode] = round(time.perf_counter() - t0, 1)
        row["steps_to_target"][mode] = out["steps_to_target"]
        row["steps_per_seed"][mode] = out["steps_per_seed"]
        if curves:
            row.setdefault("curve_per_seed", {})[mode] = out["curve_per_seed"]
        if mode == "federated":
            row["lag_wait_s"] = round(out["lag_wait_s"], 1)
            row["messages_per_node"] = out["messages_per_node"]
            row["trace_per_seed"] = [  # how old peers' cells were; how long probation held them
                {k: t.get(k) for k in ("staleness_p50", "staleness_max", "probation_clear_tick",
                                       "first_peer_tick", "all_peers_tick", "rejected")}
                for t in out.get("trace_per_seed", [])]
    row["total_wall_s"] = round(time.perf_counter() - t_all, 1)
    row["load_avg"] = [round(x, 1) for x in os.getloadavg()]  # 1, 5, 15 min, at the end of this N
    f, c = row["steps_to_target"].get("federated"), row["steps_to_target"].get("centralized")
    row["fed_over_central"] = round(c / f, 3) if f and c else None
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="taxi")
    p.add_argument("--nodes", default="8,16,32,64", help="comma-separated fleet sizes")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--publish-every", type=int, default=10)
    p.add_argument("--trust-every", type=int, default=100, help="ticks between trust rounds")
    p.add_argument("--broker-kind", default="amqtt", choices=["amqtt", "mosquitto", "auto"])
    p.add_argument("--eval-every", type=int, default=None,
                   help="steps between evaluations (default: the env's, 250 on Taxi: ±8%% at "
                        "3,000 steps; 50 resolves fed ÷ central to ~2%%)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                   help="override a NodeConfig field on every node, e.g. probation_rounds=0 "
                        "(what a defence costs); repeatable")
    p.add_argument("--modes", default=",".join(MODES),
                   help="comma-separated, of federated,centralized (centralized is deterministic "
                        "per seed and build: one run of it serves every federated arm)")
    p.add_argument("--max-lag", type=int, default=0,
                   help="ticks a delta may arrive late (default: 0, the simulation's; give "
                        "--publish-every for the earlier default: the simulation steps on while "
                        "the broker delivers, so deltas land about this late)")
    p.add_argument("--no-defences", action="store_true",
                   help="evidence budget and deviation quarantine off (what the defences cost)")
    p.add_argument("--curves", action="store_true",
                   help="per mode and seed, every evaluation's [tick, median metric over nodes]")
    p.add_argument("--progress", action="store_true", help="a stderr line every 1,000 ticks")
    p.add_argument("--json", action="store_true", help="compact JSON")
    args = p.parse_args()
    logs.configure("error")
    sizes = sorted(int(x) for x in args.nodes.split(","))
    options = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.set)}
    report: dict[str, Any] = {"env": args.env, "seeds": args.seeds, "broker": args.broker_kind,
                              "publish_every": args.publish_every,
                              "trust_every": args.trust_every, "node_options": options,
                              "eval_every": args.eval_every,
                              "defences": not args.no_defences, "max_lag": args.max_lag,
                              "nodes": {}}
    prev: float | None = None
    for n in sizes:
        row = run_n(args.env, n, args.seeds, args.broker_kind, args.seed, args.publish_every,
                    args.trust_every, options, args.eval_every, args.progress,
                    tuple(m for m in args.modes.split(",") if m), not args.no_defences, args.curves,
                    args.max_lag)
        row["wall_ratio_vs_prev"] = round(row["total_wall_s"] / prev, 2) if prev else None
        prev = row["total_wall_s"]
        report["nodes"][str(n)] = row
        print(f"# N={n}: {json.dumps(row)}", file=sys.stderr, flush=True)
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
