"""Peak memory of one training step against test accuracy, DEQ and explicit twins.

    python experiments/memory/measure.py runs/experiments/memory
    python experiments/memory/measure.py runs/experiments/prefix_sums_32

For every finished run under the folder (``<name>-seed<k>/checkpoint.pt`` or
``<name>-seed<k>/run/checkpoint.pt``, with ``done`` next to it): test accuracy
(``deqkit.train.evaluate``: the whole test split of a data set; for prefix sums the training
length at the training budget), and the peak bytes of tensor storage allocated by one
training step (the run's own objective, forward and backward: a recurrent net's progressive
loss included) on a fixed batch of 128 (training images, or strings of the training
length), counted exactly by ``deqkit.bench.memory.PeakMemory`` (parameters themselves
excluded, their gradients included). DEQs are measured with the backward they
were trained with and, for reference, with the other two (implicit; phantom; unrolled:
autograd through every solver iteration). Writes ``memory.json``, ``memory.csv``, ``memory.md`` and
``memory.png`` into the folder.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from deqkit.bench.memory import PeakMemory
from deqkit.tasks import load_dataset, prefix_sums
from deqkit.train import (
    Objective,  # the training loss of a run, as train() computes it
    evaluate,
    load_checkpoint,
)
from deqkit.utils import atomic_write_text, save_figure

BATCH = 128


def step_peak(objective: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[int, float]:
    """Peak bytes of one training step and the mean forward iterations (NaN if none)."""
    model = objective.model
    model.train()
    model.zero_grad(set_to_none=True)
    generator = torch.Generator().manual_seed(0)
    with PeakMemory() as mem:
        loss, _, info, _ = objective(x, y, generator, objective.config.pretrain_steps)
        loss.backward()
    model.zero_grad(set_to_none=True)
    its = float(info.forward.iterations.float().mean()) if info is not None else float("nan")
    return mem.peak, its


def batch(config) -> tuple[torch.Tensor, torch.Tensor]:
    if config.task == "prefix_sums":
        return prefix_sums(BATCH, config.difficulty, seed=0)
    data = load_dataset(config.task)
    return data.x_train[:BATCH], data.y_train[:BATCH]


def measure(folder: Path) -> list[dict]:
    rows = []
    ckpts = sorted(folder.glob("*-seed*/checkpoint.pt")) + sorted(
        folder.glob("*-seed*/run/checkpoint.pt")
    )
    for ckpt in ckpts:
        run = ckpt.parent
        if not (run / "done").is_file():
            continue
        name_dir = run if run.name != "run" else run.parent
        torch.manual_seed(0)
        model, config, _ = load_checkpoint(ckpt)
        acc = evaluate(model, config).accuracy
        x, y = batch(config)
        name = re.sub(r"-seed\d+$", "", name_dir.name)
        params = sum(p.numel() for p in model.parameters())
        if getattr(model, "deq", None) is None or config.mode == "recurrent":
            variants = {name: config}
        else:  # the backward it was trained with first, then the others for reference
            trained = config.backward or model.deq.settings.backward
            order = [trained] + [b for b in ("implicit", "phantom", "unrolled") if b != trained]
            variants = {
                (name if b == trained else f"{name}, measured with {b} backward"): replace(
                    config, backward=b
                )
                for b in order
            }
        for label, cfg in variants.items():
            objective = Objective(model, cfg, torch.device("cpu"))
            step_peak(objective, x, y)  # warm-up: lazy buffers, caches
            peak, its = step_peak(objective, x, y)
            rows.append(
                {
                    "model": label,
                    "run": name_dir.name,
                    "parameters": params,
                    "test_accuracy": acc,
                    "peak_mib": peak / 2**20,
                    "forward_iterations": its,
                }
            )
            print(
                f"{name_dir.name:28s} {label:44s} acc {100 * acc:5.1f}%  "
                f"peak {peak / 2**20:8.2f} MiB"
            )
    return rows


def summarise(rows: list[dict]) -> str:
    groups = defaultdict(list)
    for r in rows:
        groups[r["model"]].append(r)

    def ms(values, fmt):
        values = [v for v in values if not math.isnan(v)]
        if not values:
            return "-"
        if len(values) == 1:
            return fmt.format(values[0])
        return f"{fmt.format(statistics.fmean(values))} ± {fmt.format(statistics.pstdev(values))}"

    lines = [
        "| model | runs | parameters | test accuracy (%) | peak MiB per step (batch 128) | "
        "forward iterations |",
        "|---|---|---|---|---|---|",
    ]
    for label, g in groups.items():
        lines.append(
            f"| {label} | {len(g)} | {g[0]['parameters']:,} | "
            f"{ms([100 * r['test_accuracy'] for r in g], '{:.1f}')} | "
            f"{ms([r['peak_mib'] for r in g], '{:.2f}')} | "
            f"{ms([r['forward_iterations'] for r in g], '{:.1f}')} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    groups = defaultdict(list)
    for r in rows:
        groups[r["model"]].append(r)
    for label, g in groups.items():
        ax.scatter(
            [r["peak_mib"] for r in g], [100 * r["test_accuracy"] for r in g], label=label, s=25
        )
    ax.set_xscale("log")
    ax.set_xlabel("peak memory of one training step (MiB, batch 128)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{path.parent.name}: peak memory against accuracy (one point per run)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def main(folder: str) -> None:
    root = Path(folder)
    rows = measure(root)
    if not rows:
        raise SystemExit(f"no finished runs under {root}")
    table = summarise(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(root / "memory.csv", buf.getvalue())
    atomic_write_text(root / "memory.json", json.dumps(rows, indent=2))
    atomic_write_text(root / "memory.md", table + "\n")
    plot(rows, root / "memory.png")
    print(table)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/experiments/memory")
