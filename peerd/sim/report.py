"""What a simulation shows a person: a results table, ``results.json`` and a learning-curve plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from peerd.sim.runner import RunResult

COLORS = {"federated": "tab:blue", "isolated": "tab:gray", "centralized": "tab:green",
          "naive": "tab:red"}


def curves(runs: list[RunResult]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Median, lower and upper quartile of the per-node metric over nodes and seeds, per step.

    Runs stop when all their nodes reached the target: a finished run keeps its
    last value for the later steps, so the curve does not drop when it ends.
    """
    steps = sorted({s for r in runs for s in r.curve_steps})
    if not steps:
        empty = np.empty(0)
        return empty, empty, empty, empty
    rows = []
    for r in runs:
        if not r.curve_steps:
            continue
        m = np.array(r.curve_metric)  # [evals, nodes]
        idx = np.searchsorted(r.curve_steps, steps, side="right") - 1
        rows.append(m[np.clip(idx, 0, len(m) - 1)])  # [steps, nodes]
    allv = np.concatenate(rows, axis=1)
    return (np.array(steps), np.median(allv, axis=1), np.percentile(allv, 25, axis=1),
            np.percentile(allv, 75, axis=1))


def plot(results: dict[str, list[RunResult]], path: Path, *, title: str, metric: str,
         target: float) -> None:
    """PNG of evaluation metric vs steps per node, one line per mode, shaded quartiles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for mode, runs in results.items():
        x, med, lo, hi = curves(runs)
        if not x.size:
            continue
        c = COLORS.get(mode)
        ax.plot(x, med, label=mode, color=c, lw=1.8)
        ax.fill_between(x, lo, hi, color=c, alpha=0.2, lw=0)
    ax.axhline(target, color="black", ls="--", lw=1, label=f"target {target:g}")
    ax.set_xlabel("steps per node")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(title)
    ax.set_xscale("log")
    if metric == "mean_return":  # early returns of -700 would flatten the interesting part
        ax.set_ylim(bottom=min(-50.0, target - 20), top=max(target + 5.0, target * 1.3))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_results(out: Path, summary: dict[str, Any], results: dict[str, list[RunResult]],
                  meta: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    doc = {**meta, **summary, "runs": {
        m: [{"seed": r.seed, "steps_to_target": r.steps_to_target, "node_steps": r.node_steps,
             "curve_steps": r.curve_steps,
             "curve_median": [float(np.median(v)) for v in r.curve_metric],
             "messages_per_node": r.messages_per_node, "bytes_per_node": r.bytes_per_node,
             "lag_wait_s": r.lag_wait_s, "wall_s": r.wall_s} for r in runs]
        for m, runs in results.items()}}
    path = out / "results.json"
    path.write_text(json.dumps(doc, indent=2))
    return path


def table(summary: dict[str, Any], *, target: float, metric: str) -> Any:
    """A rich table of the summary."""
    from rich.table import Table

    t = Table(title=f"steps per node until the greedy policy reaches {metric} ≥ {target:g}")
    for col in ("mode", "steps", "speedup", "msgs/node", "KiB/node", "agree", "conv", "visits"):
        t.add_column(col, justify="right" if col != "mode" else "left")
    for mode, m in summary["modes"].items():
        steps = m["steps_to_target"]
        t.add_row(
            mode,
            f"{steps:,}" if steps else "not reached",
            f"{m['speedup']:.2f}×" if m["speedup"] else "–",
            f"{m['messages_per_node']:.0f}" if m["messages_per_node"] else "–",
            f"{m['bytes_per_node'] / 1024:.0f}" if m["bytes_per_node"] else "–",
            f"{m['policy_agreement']:.2f}" if m["policy_agreement"] is not None else "–",
            f"{m['convergence']:.2f}" if m["convergence"] is not None else "–",
            f"{m['visits_total']:,}" if m["visits_total"] < 1e15 else f"{m['visits_total']:.2e}",
        )
    return t
