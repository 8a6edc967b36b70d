"""Speedup of a peerd federation over isolated learning, with centralized pooling as the limit.

Runs ``peerd sim`` for N in {1, 2, 4, 8} (``--ns``) on Taxi-v4 and
FrozenLake8x8-v1 (``--envs``) over a real broker (embedded amqtt by default)
and prints JSON: steps per node to the target and speedup per mode and N, and
``federated_over_centralized`` = federated speedup / centralized speedup,
measured in the same run. The isolated baseline is measured once per env and
seed with 8 independent nodes (isolated nodes do not interact, so N does not
change them; 8 nodes give 8 samples for the median).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peerd import logs
from peerd.sim.runner import SimSettings, Simulation, summarize


def run(env: str, nodes: int, modes: list[str], seeds: int, broker_kind: str, seed: int) -> dict[str, Any]:
    s = SimSettings(env=env, nodes=nodes, seeds=seeds, modes=modes, broker_kind=broker_kind, seed=seed)
    t0 = time.perf_counter()
    out = summarize(asyncio.run(Simulation(s).run()))["modes"]
    print(f"# {env} N={nodes} {modes}: {time.perf_counter() - t0:.0f}s "
          f"{ {m: v['steps_to_target'] for m, v in out.items()} }", file=sys.stderr, flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", default="taxi,frozenlake8x8")
    p.add_argument("--ns", default="1,2,4,8")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--broker-kind", default="amqtt", choices=["amqtt", "mosquitto", "auto"])
    p.add_argument("--json", action="store_true", help="compact JSON")
    args = p.parse_args()
    logs.configure("warning")
    report: dict[str, Any] = {"seeds": args.seeds, "broker": args.broker_kind, "envs": {}}
    for env in args.envs.split(","):
        iso = run(env, 8, ["isolated"], args.seeds, args.broker_kind, args.seed)["isolated"]
        base = iso["steps_to_target"]
        rows: dict[str, Any] = {"isolated": {"steps_to_target": base,
                                             "steps_per_seed": iso["steps_per_seed"]}}
        for n in [int(x) for x in args.ns.split(",")]:
            if n == 1:
                continue  # one node alone is the isolated baseline
            modes = run(env, n, ["federated", "centralized"], args.seeds, args.broker_kind, args.seed)
            row: dict[str, Any] = {}
            for m, v in modes.items():
                s = v["steps_to_target"]
                row[m] = {"steps_to_target": s, "steps_per_seed": v["steps_per_seed"],
                          "speedup": (base / s) if base and s else None}
                if m == "federated":
                    row[m].update(messages_per_node=v["messages_per_node"],
                                  bytes_per_node=v["bytes_per_node"], lag_wait_s=v["lag_wait_s"])
            f, c = row["federated"]["speedup"], row["centralized"]["speedup"]
            row["federated_over_centralized"] = (f / c) if f and c else None
            rows[f"N={n}"] = row
        report["envs"][env] = rows
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
