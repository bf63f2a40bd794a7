"""The Sudoku tables of docs/results.md section 9, from what `run.sh` wrote.

    python experiments/sudoku/summarize.py            # OUT=runs/experiments/sudoku

Per run (VARIANT-seedS): exact boards per tier against the solver budget (sweep.json), the
intermediate iterates against the fixed point (examine/examine.json), and per-board adaptive
stopping against a fixed budget of the same mean cost (adaptive-D.json, fixed-D.json).
Missing files are skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def _load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def main() -> None:
    out = Path(os.environ.get("OUT", "runs/experiments/sudoku"))
    runs = sorted(p for p in out.iterdir() if p.is_dir()) if out.is_dir() else []
    print("### Exact boards (%) against the budget (evaluations of f per board)\n")
    for run in runs:
        sweep = _load(run / "sweep.json")
        if sweep is None:
            continue
        budgets = next(iter(sweep.values()))["iterations"]
        print(f"{run.name}\n")
        print("| blanks | " + " | ".join(map(str, budgets)) + " |")
        print("|---|" + "---|" * len(budgets))
        for tier, row in sweep.items():
            cells = " | ".join(f"{100 * a:.0f}" for a in row["metric"])
            print(f"| {tier} | {cells} |")
        print()
    print("### Intermediate iterates and stopping\n")
    print(
        "| run | blanks | exact at z* | some iterate exact, z* not | exact at some iterate "
        "(oracle) | converged | adaptive: exact / mean evals | fixed budget: evals / exact |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for run in runs:
        examine = _load(run / "examine" / "examine.json")
        tiers = examine["difficulties"] if examine else {}
        for d in ("30", "40", "45", "50"):
            e = tiers.get(d)
            a, f = _load(run / f"adaptive-{d}.json"), _load(run / f"fixed-{d}.json")
            if e is None and a is None:
                continue
            left = (
                f"{100 * e['accuracy']:.0f} | {100 * e['ever_correct_not_at_fixed_point']:.0f} | "
                f"{100 * e['oracle_accuracy']:.0f} | {100 * e['converged']:.0f}"
                if e
                else "- | - | - | -"
            )
            ad = f"{100 * a['accuracy']:.0f} / {a['iters_mean']:.1f}" if a else "-"
            fx = f"{f['max_iter']} / {100 * f['accuracy']:.0f}" if f else "-"
            print(f"| {run.name} | {d} | {left} | {ad} | {fx} |")


if __name__ == "__main__":
    main()
