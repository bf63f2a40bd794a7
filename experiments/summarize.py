"""Summarise experiment runs: mean and spread over seeds of every compute curve.

    python experiments/summarize.py runs/experiments/prefix_sums

Reads ``<variant>-seed<k>/sweep.json`` under the folder and prints a Markdown table per
budget column: accuracy mean +/- standard deviation over seeds, per variant and difficulty.
Writes ``summary.md``, ``summary.json`` and ``summary.png`` (accuracy against budget at each
difficulty, mean and spread over seeds, one line per variant) next to the runs.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def collect(paths: list[Path]) -> dict[str, list[tuple[str, dict]]]:
    """``{variant: [(seed, sweep dict)]}`` from ``<variant>-seed<k>[/long]/sweep.json``."""
    runs = defaultdict(list)
    for path in paths:
        run = path.parent if path.parent.name != "long" else path.parent.parent
        variant, seed = re.fullmatch(r"(.*)-seed(\d+)", run.name).groups()
        runs[variant].append((seed, json.loads(path.read_text())))
    return runs


def table(runs: dict[str, list[tuple[str, dict]]]) -> tuple[str, dict]:
    """Markdown (mean ± sd over seeds per budget, and each seed at the largest budget)."""
    summary, budgets = {}, None
    for variant, sweeps in runs.items():
        for difficulty in sweeps[0][1]:
            curves = [s[difficulty] for _, s in sweeps]
            budgets = curves[0]["iterations"]
            accs = list(zip(*[c["metric"] for c in curves], strict=True))
            summary[f"{variant}/{difficulty}"] = {
                "seeds": len(curves),
                "seed_ids": [seed for seed, _ in sweeps],
                "iterations": budgets,
                "mean": [statistics.fmean(a) for a in accs],
                "std": [statistics.pstdev(a) for a in accs],
                "per_seed_at_max": [c["metric"][-1] for c in curves],
            }
    head = "| variant | length | seeds | " + " | ".join(f"{b} it" for b in budgets)
    lines = [head + f" | each seed at {budgets[-1]} it |", "|---" * (len(budgets) + 4) + "|"]
    for key, s in summary.items():
        variant, difficulty = key.split("/")
        cells = " | ".join(
            f"{100 * m:.1f} ± {100 * d:.1f}" for m, d in zip(s["mean"], s["std"], strict=True)
        )
        each = " / ".join(f"{100 * a:.0f}" for a in s["per_seed_at_max"])
        lines.append(f"| {variant} | {difficulty} | {s['seeds']} | {cells} | {each} |")
    return "\n".join(lines), summary


def main(folder: str) -> None:
    root = Path(folder)
    runs = collect(sorted(root.glob("*-seed*/sweep.json")))
    if not runs:
        raise SystemExit(f"no */sweep.json under {root}")
    text, summary = table(runs)
    out = {"sweeps": summary}
    long_runs = collect(sorted(root.glob("*-seed*/long/sweep.json")))
    if long_runs:
        long_text, out["long"] = table(long_runs)
        text += "\n\nLonger budgets:\n\n" + long_text
    (root / "summary.md").write_text(text + "\n")
    (root / "summary.json").write_text(json.dumps(out, indent=2))
    plot(summary, root / "summary.png")
    print(text)


def plot(summary: dict, path: Path) -> None:
    """One panel per difficulty: accuracy against budget, mean line and +/- sd band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    difficulties = sorted({k.split("/")[1] for k in summary}, key=lambda d: (len(d), d))
    variants = list(dict.fromkeys(k.split("/")[0] for k in summary))
    fig, axes = plt.subplots(
        1, len(difficulties), figsize=(3.2 * len(difficulties), 3.2), sharey=True, squeeze=False
    )
    for ax, d in zip(axes[0], difficulties, strict=True):
        for v in variants:
            s = summary.get(f"{v}/{d}")
            if s is None:
                continue
            mean = [100 * m for m in s["mean"]]
            sd = [100 * x for x in s["std"]]
            line = ax.plot(s["iterations"], mean, marker=".", label=f"{v} ({s['seeds']})")[0]
            ax.fill_between(
                s["iterations"],
                [m - e for m, e in zip(mean, sd, strict=True)],
                [m + e for m, e in zip(mean, sd, strict=True)],
                color=line.get_color(),
                alpha=0.15,
            )
        ax.set_xscale("log")
        ax.set_title(f"difficulty {d}")
        ax.set_xlabel("evaluations of f")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("exact-match accuracy (%)")
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/experiments/prefix_sums")
