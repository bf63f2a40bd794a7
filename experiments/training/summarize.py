"""Tables of the training grid (experiments/training/run.sh): one per task, one row a variant.

    .venv/bin/python experiments/training/summarize.py [OUT]     (default runs/experiments/training)

For each variant: the seeds run, the held-out exact-match accuracy of each seed at every
tested difficulty (the training length with the training budget, longer ones with the budgets
of run.sh), how many seeds reach 95% / 99% at the longest, the training time per step, the
fraction of training forward solves that converged, and the fraction of samples whose gradient
came from the phantom fallback (implicit gradient with fallback only).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def final_eval(run: Path) -> tuple[list[dict], list[dict]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = max(r["step"] for r in records)
    return [r for r in records if r["kind"] == "eval" and r["step"] == last], [
        r for r in records if r["kind"] == "train"
    ]


def one(folder: Path) -> dict | None:
    run = folder / "run"
    if not (folder / "done").is_file():
        return None
    evals, train = final_eval(run)
    acc = {r["difficulty"]: (r["accuracy"], r["max_iter"]) for r in evals}
    for path in sorted(folder.glob("eval-*.json")):
        r = json.loads(path.read_text())
        acc[r["difficulty"]] = (r["accuracy"], r["max_iter"])
    last = train[-1]
    steps = last["step"]
    conv = [r["converged"] for r in train if r["converged"] is not None]
    fell = [r["fallback"] for r in train if r.get("fallback") is not None]
    return {
        "acc": acc,
        "time_per_step": last["time"] / steps,
        "converged": statistics.fmean(conv) if conv else None,
        "fallback": statistics.fmean(fell) if fell else None,
    }


def pct(v: float) -> str:
    return f"{100 * v:.1f}"


def table(task_dir: Path) -> str:
    rows = []
    keys: set = set()
    variants: dict[str, dict[int, dict]] = {}
    for folder in sorted(task_dir.iterdir()):
        name, _, seed = folder.name.rpartition("-seed")
        res = one(folder)
        if res is not None:
            variants.setdefault(name, {})[int(seed)] = res
            keys |= set(res["acc"])
    if not variants:
        return ""
    diffs = sorted(k for k in keys if k is not None) or [None]
    budgets = {}
    for runs in variants.values():
        for r in runs.values():
            for d, (_, b) in r["acc"].items():
                budgets[d] = b
    head = ["variant", "seeds"]
    head += [f"{d} bits, {budgets[d]} it" if d is not None else "test" for d in diffs]
    head += [">= 95% at longest", ">= 99% at longest", "s / step", "converged", "fallback"]
    rows.append("| " + " | ".join(head) + " |")
    rows.append("|" + "---|" * len(head))
    for name, runs in sorted(variants.items()):
        seeds = sorted(runs)
        cells = [name, ",".join(map(str, seeds))]
        for d in diffs:
            vals = [runs[s]["acc"][d][0] for s in seeds if d in runs[s]["acc"]]
            mean = pct(statistics.fmean(vals)) if vals else "-"
            cells.append(f"{mean} ({' / '.join(pct(v) for v in vals)})")
        longest = [runs[s]["acc"].get(diffs[-1], (0.0,))[0] for s in seeds]
        cells.append(f"{sum(v >= 0.95 for v in longest)} of {len(seeds)}")
        cells.append(f"{sum(v >= 0.99 for v in longest)} of {len(seeds)}")
        cells.append(f"{statistics.fmean(runs[s]['time_per_step'] for s in seeds):.2f}")
        conv = [runs[s]["converged"] for s in seeds if runs[s]["converged"] is not None]
        cells.append(pct(statistics.fmean(conv)) if conv else "-")
        fell = [runs[s]["fallback"] for s in seeds if runs[s]["fallback"] is not None]
        cells.append(pct(statistics.fmean(fell)) if fell else "-")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(out: str = "runs/experiments/training") -> None:
    root = Path(out)
    for task_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        text = table(task_dir)
        if text:
            print(f"### {task_dir.name}\n\n{text}\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
