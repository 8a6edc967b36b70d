"""Poisoners: honest nodes learning next to nodes that publish validly signed lies.

Part of the proof suite (``scripts/prove.py`` calls ``run``). Each run is a
``peerd sim`` federation over a real broker with ``attackers`` extra nodes
whose published cells are poisoned (``peerd.sim.runner.PoisonedTable``):
inverted values, values pushed to ±q_bound, claims of 10^9 visits at the
highest log-weight the evidence guard lets through, or a copycat that copies
honest signatures. Figures: honest nodes' steps to target against an
all-honest run of the same strategy (same seeds), and each attack's mean
trust (as seen by honest nodes) per trust round.

Targets (issue "Proof suite"): with 20 % attackers honest nodes reach the
target within 1.5× the all-honest steps; attackers' trust reaches the floor
(0.1) within 10 rounds.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peerd.sim.runner import SimSettings, Simulation
from peerd.testing.broker import Broker, find_mosquitto
from peerd.trust import TRUST_MIN

FULL = {
    "env": "taxi", "nodes": 8, "trust_every": 100, "seeds": 1,
    "plan": [  # (attackers, attack, strategy)
        *[(2, atk, "weighted_average") for atk in ("invert", "extreme", "visits", "copycat")],
        (4, "invert", "weighted_average"),
        *[(2, "invert", s) for s in ("trimmed_mean:0.2", "median")],
    ],
}
QUICK = {
    "env": "routing", "nodes": 8, "trust_every": 20, "seeds": 1,
    "plan": [(2, "invert", "weighted_average"), (2, "visits", "weighted_average")],
}


def _rounds_to_floor(trust: list[tuple[int, float]]) -> int | None:
    for i, (_, t) in enumerate(trust, start=1):
        if t <= TRUST_MIN + 1e-9:
            return i
    return None


async def _one(broker_url: str, env: str, nodes: int, attackers: int, attack: str, strategy: str,
               trust_every: int, step_cap: int | None, seed: int) -> dict[str, Any]:
    s = SimSettings(env=env, nodes=nodes, modes=["federated"], broker_url=broker_url,
                    attackers=attackers, attack=attack, strategy=strategy,
                    trust_every=trust_every, step_cap=step_cap, seed=seed)
    t0 = time.perf_counter()
    r = (await Simulation(s).run())["federated"][0]
    return {"attackers": attackers, "attack": attack if attackers else None, "strategy": strategy,
            "steps_to_target": r.steps_to_target, "attacker_trust": r.attacker_trust,
            "rounds_to_floor": _rounds_to_floor(r.attacker_trust) if attackers else None,
            "wall_s": round(time.perf_counter() - t0, 1)}


async def _run(quick: bool, broker_url: str) -> dict[str, Any]:
    cfg = QUICK if quick else FULL
    env, nodes, seed = cfg["env"], cfg["nodes"], 2024
    baselines: dict[str, dict[str, Any]] = {}
    runs = []
    for attackers, attack, strategy in cfg["plan"]:
        if strategy not in baselines:
            baselines[strategy] = await _one(broker_url, env, nodes, 0, "invert", strategy,
                                             cfg["trust_every"], None, seed)
            _log(baselines[strategy])
        base = baselines[strategy]["steps_to_target"]
        cap = int(base * 3) if base else None  # beyond 3x the honest steps: "not reached"
        r = await _one(broker_url, env, nodes, attackers, attack, strategy, cfg["trust_every"],
                       cap, seed)
        r["slowdown"] = (r["steps_to_target"] / base) if (base and r["steps_to_target"]) else None
        share = attackers / (attackers + nodes)
        r["attacker_share"] = round(share, 3)
        r["meets_steps_target"] = bool(r["slowdown"] is not None and r["slowdown"] <= 1.5)
        r["meets_trust_target"] = bool(r["rounds_to_floor"] is not None and r["rounds_to_floor"] <= 10)
        r["attacker_trust"] = [(k, round(v, 3)) for k, v in r["attacker_trust"]]
        _log(r)
        runs.append(r)
    # Targets as stated: 20 % attackers, the default strategy; attacks that signatures can see.
    judged = [r for r in runs if r["attacker_share"] <= 0.2 + 1e-9
              and r["strategy"] == "weighted_average" and r["attack"] != "copycat"]
    return {
        "env": env, "honest_nodes": nodes,
        "all_honest": {k: v["steps_to_target"] for k, v in baselines.items()},
        "runs": runs,
        "pass": bool(judged) and all(r["meets_steps_target"] and r["meets_trust_target"]
                                     for r in judged),
        "judged_on": "20% attackers, weighted_average, attacks visible to signature consensus "
                     "(invert, extreme, visits); copycat and 4 attackers are reported, not judged",
    }


def _log(r: dict[str, Any]) -> None:
    brief = {k: v for k, v in r.items() if k != "attacker_trust"}
    print(f"# poisoners {brief}", file=sys.stderr, flush=True)


def run(quick: bool = False, broker_url: str | None = None) -> dict[str, Any]:
    """Run the poisoner experiments; starts a mosquitto (else amqtt) broker unless given one."""
    if broker_url:
        return asyncio.run(_run(quick, broker_url))
    with Broker("mosquitto" if find_mosquitto() else "amqtt") as broker:
        return asyncio.run(_run(quick, broker.url))


if __name__ == "__main__":
    import argparse
    import json

    from peerd import logs

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    logs.configure("warning")
    print(json.dumps(run(args.quick), indent=2))
