"""Poisoners: honest nodes learning next to validly signed liars, with the defences of issue 11 on.

Part of the proof suite (``scripts/prove.py`` calls ``run``). Each run is a
``peerd sim`` federation over a real broker: 8 honest nodes plus COUNT liars
of one attack of ``peerd.sim.attacks`` (invert, extreme, ipm, alie, inflate,
focus, copycat, sybil), each a pinned member signing its own lies. Figures per
attack × count, as medians over seeds: honest nodes' steps to the target,
the slowdown against the all-honest run of the same build (same seeds), the
trust rounds until every honest node has every liar out of its view, and the
longest run of rounds an honest node spent quarantined by another.

Rounds to quarantine count rounds until every honest node has *judged* every
liar out (quarantined, or trust below ``quarantine_below``): newcomer probation
alone keeps a liar out of the view but does not count. A run the federation
stalls in (the broker stops delivering; seen with sybil churn) is recorded
with its error, as not reached.

Targets (issue 11): all-honest within 1.1× of the federated steps before the
defences (5 500 on Taxi); 2 liars ≤ 1.3×; 3 liars ≤ 2×; invert, extreme, ipm,
inflate and copycat liars out of every honest view within 10 rounds; in
all-honest runs no honest node quarantined for more than one round;
FrozenLake8x8 with 2 inverters ≤ 1.3×.

    python scripts/prove_poisoners.py [--quick] [--seeds 3] [--attacks invert,ipm] [--counts 2,3]
                                      [--no-frozenlake] [--out part.json]
    python scripts/prove_poisoners.py --merge part1.json part2.json   # one report from parts
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peerd.errors import SimulationError
from peerd.sim.attacks import ATTACKS, AttackSpec
from peerd.sim.runner import SimSettings, Simulation
from peerd.testing.broker import Broker, find_mosquitto

#: federated all-honest steps on Taxi-v4 (8 nodes) before the defences (docs/prove.md §5)
HONEST_BEFORE = {"taxi": 5500}
#: all-honest steps to give up from (× GIVE_UP) in a part run with --no-honest (the 3-seed runs of 2026-11)
HONEST_TYPICAL = {"taxi": 6500, "frozenlake8x8": 19500}
QUARANTINE_JUDGED = ("invert", "extreme", "ipm", "inflate", "copycat")
LIMITS = {2: 1.3, 3: 2.0}
#: a run stops at GIVE_UP × the all-honest steps: "not reached" (above every slowdown target,
#: 2×; 3× before, which cost the matrix hours on 2 shared cores)
GIVE_UP = 2.1
#: the issue sets only a slowdown target there (2 inverters ≤ 1.3×): the rest is reported
SLOWDOWN_ONLY_ENVS = ("frozenlake8x8",)

FULL = {"env": "taxi", "nodes": 8, "trust_every": 100, "seeds": 3, "counts": (2, 3),
        "attacks": ATTACKS, "frozenlake": True}
QUICK = {"env": "routing", "nodes": 8, "trust_every": 20, "seeds": 1, "counts": (2,),
         "attacks": ("invert", "inflate"), "frozenlake": False}


#: the poisoner matrix's delivery lag, in ticks: every figure of docs/prove.md §5 was measured
#: with it (the simulation's default until 2026-11-30; now 0, ``peerd.sim.runner``)
MAX_LAG = 10


async def _one(broker_url: str, env: str, nodes: int, attacks: list[AttackSpec], trust_every: int,
               step_cap: int | None, seed: int, defences: bool = True) -> dict[str, Any]:
    s = SimSettings(env=env, nodes=nodes, modes=["federated"], broker_url=broker_url,
                    attacks=tuple(attacks), trust_every=trust_every, step_cap=step_cap, seed=seed,
                    defences=defences, max_lag=MAX_LAG)
    t0 = time.perf_counter()
    c0 = time.process_time()
    try:
        r = (await Simulation(s).run())["federated"][0]
    except (TimeoutError, SimulationError) as exc:
        # the federation stalled (the broker stopped delivering; seen with sybil churn, on main
        # too): recorded as a failed run, not the end of the matrix
        return {"steps": None, "rounds_to_quarantine": None, "rounds_to_exclusion": None,
                "honest_quarantine_rounds": 0,
                "sybil_identities": 0, "error": f"{type(exc).__name__}: {exc}"[:200],
                "attacker_excluded": [], "attacker_trust": [],
                "wall_s": round(time.perf_counter() - t0, 1),
                "cpu_s": round(time.process_time() - c0, 1)}
    # out of every honest view: quarantined, distrusted or still on probation (a liar whose
    # every delta the evidence budget rejects is never judged by its values, yet never counts)
    excluded = next((i for i, (_, x) in enumerate(r.attacker_excluded, start=1) if x >= 1.0), None)
    return {"steps": r.steps_to_target, "rounds_to_quarantine": r.rounds_to_quarantine,
            "rounds_to_exclusion": excluded,
            "honest_quarantine_rounds": r.honest_quarantine_rounds,
            "sybil_identities": r.sybil_identities,
            "attacker_excluded": [(k, round(v, 3)) for k, v in r.attacker_excluded],
            "attacker_trust": [(k, round(v, 3)) for k, v in r.attacker_trust],
            "attacker_quarantined": [(k, round(v, 3)) for k, v in r.attacker_quarantined],
            "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(time.process_time() - c0, 1)}


def _median(xs: list[int | None]) -> float | None:
    vals = [np.inf if x is None else x for x in xs]
    m = float(np.median(vals)) if vals else np.inf
    return m if np.isfinite(m) else None


async def _series(broker_url: str, env: str, cfg: dict[str, Any], attack: str | None, count: int,
                  seeds: list[int], base: dict[int, int | None] | None,
                  defences: bool = True) -> dict[str, Any]:
    runs = []
    for seed in seeds:
        b = (base or {}).get(seed)
        cap = int(b * GIVE_UP) if b else None
        specs = [AttackSpec(attack, count)] if attack and count else []
        r = await _one(broker_url, env, cfg["nodes"], specs, cfg["trust_every"], cap, seed, defences)
        r["seed"] = seed
        runs.append(r)
        _log({"env": env, "attack": attack, "count": count, "defences": defences,
              **{k: v for k, v in r.items() if not k.startswith("attacker_")}})
    steps = _median([r["steps"] for r in runs])
    rq = [r["rounds_to_quarantine"] for r in runs]
    return {"env": env, "attack": attack, "count": count, "defences": defences,
            "steps_per_seed": [r["steps"] for r in runs],
            "steps": steps, "rounds_to_quarantine_per_seed": rq,
            "rounds_to_quarantine": _median(rq) if attack else None,
            "rounds_to_exclusion": (_median([r.get("rounds_to_exclusion") for r in runs])
                                    if attack else None),
            "honest_quarantine_rounds": max(r["honest_quarantine_rounds"] for r in runs),
            "sybil_identities": max(r["sybil_identities"] for r in runs),
            "runs": runs}


async def _run(quick: bool, broker_url: str, *, seeds: int | None = None,
               seed_list: tuple[int, ...] | None = None,
               attacks: tuple[str, ...] | None = None, counts: tuple[int, ...] | None = None,
               frozenlake: bool | None = None, before: bool = False,
               frozenlake_only: bool = False, no_honest: bool = False) -> dict[str, Any]:
    cfg = dict(QUICK if quick else FULL)
    seed_list = (list(seed_list) if seed_list
                 else [2024 + 101 * k for k in range(seeds or cfg["seeds"])])
    envs = [cfg["env"]] + (["frozenlake8x8"] if (cfg["frozenlake"] if frozenlake is None
                                                  else frozenlake) else [])
    if frozenlake_only:
        envs = ["frozenlake8x8"]
    rows: list[dict[str, Any]] = []
    for env in envs:
        if before and env == cfg["env"]:  # the same all-honest runs without the defences
            rows.append(await _series(broker_url, env, cfg, None, 0, seed_list, None, defences=False))
        if no_honest and env in HONEST_TYPICAL:  # a part of a matrix whose baseline ran elsewhere
            base = {seed: HONEST_TYPICAL[env] for seed in seed_list}
        else:
            honest = await _series(broker_url, env, cfg, None, 0, seed_list, None)
            rows.append(honest)
            base = {r["seed"]: r["steps"] for r in honest["runs"]}
        plan = ([(a, c) for a in (attacks or cfg["attacks"]) for c in (counts or cfg["counts"])]
                if env == cfg["env"] else [("invert", 2)])
        for attack, count in plan:
            rows.append(await _series(broker_url, env, cfg, attack, count, seed_list, base))
    return judge(rows, quick=quick)


def judge(rows: list[dict[str, Any]], *, quick: bool = False) -> dict[str, Any]:
    """Slowdowns against each env's all-honest row, the targets, and the verdict."""
    honest = {r["env"]: r for r in rows if not r["attack"] and r.get("defences", True)}
    undefended = {r["env"]: r for r in rows if not r.get("defences", True)}
    table = []
    for r in rows:
        if not r.get("defences", True):
            table.append({"env": r["env"], "attack": None, "count": 0, "defences": False,
                          "steps": r["steps"], "steps_per_seed": r["steps_per_seed"]})
            continue
        h = honest.get(r["env"])
        base = h["steps"] if h else None
        r["slowdown"] = round(r["steps"] / base, 3) if (base and r["steps"]) else None
        if r["attack"]:
            limit = LIMITS.get(r["count"], LIMITS[3]) if not quick else GIVE_UP
            r["slowdown_limit"] = limit
            r["meets_slowdown"] = r["slowdown"] is not None and r["slowdown"] <= limit
            if r["attack"] in QUARANTINE_JUDGED and r["env"] not in SLOWDOWN_ONLY_ENVS:
                rq = r["rounds_to_quarantine"]
                r["meets_quarantine"] = rq is not None and rq <= 10
        else:
            u = undefended.get(r["env"])
            before = u["steps"] if u else HONEST_BEFORE.get(r["env"])
            r["before_defences"] = before
            r["vs_before_defences"] = round(r["steps"] / before, 3) if (before and r["steps"]) else None
            r["meets_slowdown"] = (r["vs_before_defences"] is None or r["vs_before_defences"] <= 1.1) \
                and r["steps"] is not None
            if r["env"] not in SLOWDOWN_ONLY_ENVS:
                r["meets_no_false_quarantine"] = r["honest_quarantine_rounds"] <= 1
        table.append({k: r.get(k) for k in (
            "env", "attack", "count", "steps", "slowdown", "before_defences", "vs_before_defences",
            "rounds_to_quarantine", "rounds_to_exclusion",
            "honest_quarantine_rounds", "steps_per_seed", "rounds_to_quarantine_per_seed",
            "meets_slowdown", "meets_quarantine", "meets_no_false_quarantine") if k in r})
    checks = [v for row in table for k, v in row.items() if k.startswith("meets_")]
    return {"table": table, "rows": rows, "pass": bool(checks) and all(checks),
            "missed": [row for row in table
                       if any(v is False for k, v in row.items() if k.startswith("meets_"))]}


def _log(r: dict[str, Any]) -> None:
    print(f"# poisoners {r}", file=sys.stderr, flush=True)


def run(quick: bool = False, broker_url: str | None = None, **kw: Any) -> dict[str, Any]:
    """Run the poisoner experiments; starts a mosquitto (else amqtt) broker unless given one."""
    if broker_url:
        return asyncio.run(_run(quick, broker_url, **kw))
    with Broker("mosquitto" if find_mosquitto() else "amqtt") as broker:
        return asyncio.run(_run(quick, broker.url, **kw))


def merge(paths: list[Path]) -> dict[str, Any]:
    """One report from partial ones (the matrix run in parts): rows deduplicated by (env, attack, count)."""
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    for p in paths:
        for r in json.loads(p.read_text())["rows"]:
            seen[(r["env"], r["attack"], r["count"], r.get("defences", True))] = r
    return judge(list(seen.values()))


def merge_logs(paths: list[Path]) -> dict[str, Any]:
    """One report from the ``# poisoners {...}`` lines partial runs print on stderr, one per run.

    For a matrix cut short (the JSON of a part is written only when the part
    ends): every finished run is in its log line.
    """
    import ast

    per: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for p in paths:
        for line in p.read_text().splitlines():
            if line.startswith("# poisoners {"):
                r = ast.literal_eval(line[len("# poisoners "):])
                per.setdefault((r["env"], r["attack"], r["count"], r.get("defences", True)),
                               []).append(r)
    rows = []
    for (env, attack, count, defences), runs in per.items():
        rq = [r["rounds_to_quarantine"] for r in runs]
        rows.append({"env": env, "attack": attack, "count": count, "defences": defences,
                     "steps_per_seed": [r["steps"] for r in runs],
                     "steps": _median([r["steps"] for r in runs]),
                     "rounds_to_quarantine_per_seed": rq,
                     "rounds_to_quarantine": _median(rq) if attack else None,
                     "honest_quarantine_rounds": max(r["honest_quarantine_rounds"] for r in runs),
                     "sybil_identities": max(r.get("sybil_identities", 0) for r in runs),
                     "runs": runs})
    return judge(rows)


if __name__ == "__main__":
    import argparse

    from peerd import logs

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seeds", type=int, default=None,
                   help="how many seeds: 2024, 2125, 2226, ... (default: 3, --quick 1)")
    p.add_argument("--seed-list", default=None,
                   help="comma-separated seeds instead of --seeds (to extend a matrix measured "
                        "elsewhere; merge the logs with --merge-logs)")
    p.add_argument("--attacks", default=None, help="comma-separated kinds (default: all)")
    p.add_argument("--counts", default=None, help="comma-separated liar counts (default: 2,3)")
    p.add_argument("--no-frozenlake", action="store_true")
    p.add_argument("--frozenlake-only", action="store_true")
    p.add_argument("--no-honest", action="store_true",
                   help="skip the all-honest series (give up at GIVE_UP x the build-before steps); "
                        "for parts of a matrix merged with --merge-logs")
    p.add_argument("--before", action="store_true",
                   help="also the all-honest runs without the defences (same seeds)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--merge", type=Path, nargs="+", default=None)
    p.add_argument("--merge-logs", type=Path, nargs="+", default=None,
                   help="one report from the stderr logs of partial runs")
    args = p.parse_args()
    logs.configure("warning")
    if args.merge:
        doc = merge(args.merge)
    elif args.merge_logs:
        doc = merge_logs(args.merge_logs)
    else:
        if args.seeds is not None and args.seed_list:
            p.error("give --seeds or --seed-list, not both")
        try:
            chosen = tuple(int(x) for x in args.seed_list.split(",")) if args.seed_list else None
        except ValueError:
            p.error(f"--seed-list wants comma-separated integers, got {args.seed_list!r}")
        doc = run(args.quick, seeds=args.seeds, seed_list=chosen,
                  attacks=tuple(args.attacks.split(",")) if args.attacks else None,
                  counts=tuple(int(c) for c in args.counts.split(",")) if args.counts else None,
                  frozenlake=False if args.no_frozenlake else None, before=args.before,
                  frozenlake_only=args.frozenlake_only, no_honest=args.no_honest)
    text = json.dumps(doc, indent=2)
    if args.out:
        args.out.write_text(text)
    print(json.dumps(doc["table"], indent=1) if args.out else text)
