"""Summarise experiment runs: mean and spread over seeds of every compute curve.

    python experiments/summarize.py runs/experiments/prefix_sums

Reads ``<variant>-seed<k>/sweep.json`` under the folder and prints a Markdown table per
budget column: accuracy mean +/- standard deviation over seeds, per variant and difficulty.
Writes ``summary.md`` and ``summary.json`` next to the runs.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def main(folder: str) -> None:
    root = Path(folder)
    runs = defaultdict(list)  # variant -> [sweep dict per seed]
    for path in sorted(root.glob("*-seed*/sweep.json")):
        variant = re.sub(r"-seed\d+$", "", path.parent.name)
        runs[variant].append(json.loads(path.read_text()))
    if not runs:
        raise SystemExit(f"no */sweep.json under {root}")
    summary, lines = {}, []
    budgets = None
    for variant, sweeps in runs.items():
        for difficulty in sweeps[0]:
            curves = [s[difficulty] for s in sweeps]
            budgets = curves[0]["iterations"]
            accs = list(zip(*[c["metric"] for c in curves], strict=True))
            summary[f"{variant}/{difficulty}"] = {
                "seeds": len(curves),
                "iterations": budgets,
                "mean": [statistics.fmean(a) for a in accs],
                "std": [statistics.pstdev(a) for a in accs],
            }
    head = "| variant | length | seeds | " + " | ".join(f"{b} it" for b in budgets) + " |"
    lines = [head, "|---" * (len(budgets) + 3) + "|"]
    for key, s in summary.items():
        variant, difficulty = key.split("/")
        cells = " | ".join(
            f"{100 * m:.1f} ± {100 * d:.1f}" for m, d in zip(s["mean"], s["std"], strict=True)
        )
        lines.append(f"| {variant} | {difficulty} | {s['seeds']} | {cells} |")
    table = "\n".join(lines)
    (root / "summary.md").write_text(table + "\n")
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    print(table)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/experiments/prefix_sums")
