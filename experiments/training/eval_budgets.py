"""Test accuracy of finished runs of the training grid at several forward budgets.

    .venv/bin/python experiments/training/eval_budgets.py TASK/VARIANT [...] \
        [--budgets 30,60,100] [--bar 0.98] [--out runs/experiments/training]

For each variant (every seed found under OUT/TASK/VARIANT-seedS/run) and each budget: the
held-out accuracy per seed at the training difficulty (the test split for data sets), how
many seeds reach ``--bar``, the mean forward evaluations per sample and the fraction of
solves that met the run's tolerance. Training is not touched: the same checkpoint is
scored with ``deqkit.train.evaluate(..., max_iter=B)``, what ``deqkit eval CKPT --max-iter B``
prints, and what a run with ``eval_max_iter = B`` in its config records at its end.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from deqkit.train import evaluate, load_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="TASK/VARIANT names of the grid")
    parser.add_argument("--budgets", default="30,60,100", help="comma-separated max_iter")
    parser.add_argument("--bar", type=float, default=0.98, help="accuracy to count seeds at")
    parser.add_argument("--out", default="runs/experiments/training", help="the grid's OUT")
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    print(
        f"| variant | budget | accuracy %, mean (per seed) | seeds >= {100 * args.bar:g}% "
        "| evaluations / sample | converged % |"
    )
    print("|---|---|---|---|---|---|")
    for variant in args.variants:
        runs = sorted(Path(args.out).glob(f"{variant}-seed*/run/checkpoint.pt"))
        runs.sort(key=lambda p: int(p.parent.parent.name.rpartition("-seed")[2]))
        if not runs:
            raise SystemExit(f"eval_budgets.py: no runs of {variant} under {args.out}")
        loaded = [load_checkpoint(p) for p in runs]
        for budget in budgets:
            scores = [evaluate(model, config, max_iter=budget) for model, config, _ in loaded]
            acc = [s.accuracy for s in scores]
            per_seed = " / ".join(f"{100 * a:.1f}" for a in acc)
            print(
                f"| {variant} | {budget} | {100 * statistics.fmean(acc):.1f} ({per_seed}) "
                f"| {sum(a >= args.bar for a in acc)} of {len(acc)} "
                f"| {statistics.fmean(s.iters_mean for s in scores):.1f} "
                f"| {100 * statistics.fmean(s.converged for s in scores):.1f} |"
            )


if __name__ == "__main__":
    main()
