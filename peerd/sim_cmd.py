"""``peerd sim``: a federation of nodes on a real RL task over a real MQTT broker.

The simulator is the ``[sim]`` extra (gymnasium, matplotlib, rich, amqtt):
an edge install has none of it, so this module imports them only inside
``run``, and without them ``peerd sim`` prints how to install them and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["SIM_INSTALL_HINT", "SIM_MODULES", "add_parser", "missing_sim_modules", "run"]

def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``sim`` on a CLI's subparsers (``peerd/cli.py``)."""
    p = subparsers.add_parser(
        "sim", help="simulate a federation of nodes on a real RL task over a real MQTT broker",
        description="Run N peerd nodes in one process, each on its own environment instance, "
        "gossiping over an MQTT broker (the embedded one by default), next to the same nodes "
        "learning alone (isolated) and one table fed by all environments (centralized, the "
        "limit). Prints steps per node until the greedy policy reaches the task's target and "
        "the speedup over isolated learning.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--env", default="taxi",
                   help="taxi | frozenlake8x8 | cliffwalking | frozenlake | routing | any "
                   "Gymnasium id with discrete spaces (e.g. FrozenLake-v1)")
    p.add_argument("--nodes", type=int, default=8, help="nodes in the federation")
    p.add_argument("--seeds", type=int, default=1, help="repetitions; results are medians")
    p.add_argument("--modes", default="federated,isolated,centralized",
                   help="comma-separated: federated, isolated, centralized, naive")
    p.add_argument("--broker", default=None,
                   help="mqtt://host:port of an existing broker; default: start the embedded one")
    p.add_argument("--broker-kind", default="amqtt", choices=["amqtt", "mosquitto", "auto"],
                   help="which broker to start when --broker is not given")
    p.add_argument("--publish-every", type=int, default=10, help="interactions between deltas")
    p.add_argument("--max-lag", type=int, default=0,
                   help="ticks a delta may arrive late, counted from when its publish was due, "
                   "before the simulation waits for the network: peers' cells are then at most "
                   "publish-every + max-lag ticks old (default: 0, a network faster than the "
                   "interactions; publish-every was the default before 2026-11-30)")
    p.add_argument("--half-life", type=float, default=None, help="evidence half-life in ticks "
                   "(default: the task's)")
    p.add_argument("--strategy", default="weighted_average", help="merge strategy")
    p.add_argument("--trust-every", type=int, default=100, metavar="TICKS",
                   help="ticks between trust rounds: signature exchange and the deviation "
                   "quarantine (federated)")
    p.add_argument("--step-cap", type=int, default=None, help="give up after this many steps")
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--attack", action="append", default=[], metavar="KIND:COUNT",
                   help="add COUNT validly signed liars telling lie KIND (repeatable): invert, "
                   "extreme, ipm, alie, inflate, focus, copycat, sybil (see peerd.sim.attacks)")
    p.add_argument("--out", type=Path, default=None, help="write results.json and curves.png here")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (no display)")
    p.add_argument("--peer-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="give up when the nodes have not all connected and seen each other's "
                   "birth by then (broker unreachable, or retained messages not delivered)")
    p.set_defaults(func=run)
    return p


#: What ``peerd sim`` needs beyond the daemon: the ``[sim]`` extra (pyproject.toml).
SIM_MODULES = ("gymnasium", "matplotlib", "rich", "amqtt")
SIM_INSTALL_HINT = "pip install 'peerd[sim]'"


def missing_sim_modules() -> list[str]:
    """The ``[sim]`` extra's modules that cannot be imported (an edge install has none of them)."""
    return [name for name in SIM_MODULES if _find_spec(name) is None]


def _find_spec(name: str) -> object | None:
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):  # ValueError: sys.modules[name] is None or has no spec
        return None


def run(args: argparse.Namespace) -> int:
    """``peerd sim``: run the simulation, print the table, write results; return the exit status."""
    missing = missing_sim_modules()
    if missing:
        print(f"peerd sim: the simulator is not installed (missing {', '.join(missing)}); "
              f"install it with: {SIM_INSTALL_HINT}", file=sys.stderr)
        return 2
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from peerd import logs
    from peerd.errors import SimulationError
    from peerd.sim import report
    from peerd.sim.attacks import AttackSpec
    from peerd.sim.runner import SimSettings, Simulation, summarize

    # errors only: a broker that cannot be reached is reported once, in one line, by
    # SimulationError, not by a warning per reconnect attempt and node
    logs.configure("error")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    try:
        attacks = tuple(AttackSpec.parse(a) for a in args.attack)
    except ValueError as exc:
        print(f"peerd sim: {exc}", file=sys.stderr)
        return 2
    settings = SimSettings(env=args.env, nodes=args.nodes, seeds=args.seeds, modes=modes,
                           broker_url=args.broker, broker_kind=args.broker_kind,
                           publish_every=args.publish_every, max_lag=args.max_lag,
                           half_life=args.half_life, step_cap=args.step_cap,
                           strategy=args.strategy, seed=args.seed,
                           peer_timeout=args.peer_timeout, attacks=attacks,
                           trust_every=args.trust_every)
    if args.nodes < 1 or args.seeds < 1 or not args.peer_timeout > 0:
        print("peerd sim: --nodes and --seeds must be >= 1, --peer-timeout > 0", file=sys.stderr)
        return 2
    console = Console(stderr=True)
    try:
        sim = Simulation(settings)
    except ValueError as exc:
        print(f"peerd sim: {exc}", file=sys.stderr)
        return 2
    spec = sim.spec
    if not args.json:
        console.print(f"[bold]peerd sim[/]: {args.nodes} nodes on {spec.name} "
                      f"({spec.metric} ≥ {spec.target:g}), modes {', '.join(modes)}, "
                      f"{args.seeds} seed(s), broker "
                      f"{args.broker or 'embedded ' + args.broker_kind}")
    with Progress(SpinnerColumn(), TextColumn("{task.description:<12}"),
                  TextColumn("{task.completed:>7,.0f} steps/node"),
                  TextColumn("best {task.fields[best]}"), TimeElapsedColumn(),
                  console=console, disable=args.json, transient=False) as progress:
        bars: dict[str, Any] = {}

        def on_progress(mode: str, tick: int, best: float, cap: int) -> None:
            if mode not in bars:
                bars[mode] = progress.add_task(mode, total=cap, best="–")
            progress.update(bars[mode], completed=tick, best=f"{best:.2f}")

        sim.progress = on_progress
        try:
            results = asyncio.run(sim.run())
        except SimulationError as exc:
            progress.stop()
            print(f"peerd sim: {exc}", file=sys.stderr)
            return 1
    summary = summarize(results)
    meta = {"env": spec.name, "metric": spec.metric, "target": spec.target, "nodes": args.nodes,
            "seeds": args.seeds, "half_life": sim.half_life, "publish_every": args.publish_every,
            "max_lag": sim.max_lag, "strategy": args.strategy, "trust_every": args.trust_every,
            "attacks": [f"{a.kind}:{a.count}" for a in attacks],
            "broker": args.broker or f"embedded {args.broker_kind}"}
    if args.out:
        path = report.write_results(args.out, summary, results, meta)
        report.plot(results, args.out / "curves.png", title=f"{spec.name}: {args.nodes} nodes",
                    metric=spec.metric, target=spec.target)
        if not args.json:
            console.print(f"wrote {path} and {args.out / 'curves.png'}")
    if args.json:
        print(json.dumps({**meta, **summary}, indent=2))
    else:
        Console().print(report.table(summary, target=spec.target, metric=spec.metric))
    return 0
