"""Peak memory of one training step against test accuracy, DEQ and explicit twins.

    python experiments/memory/measure.py runs/experiments/memory

For every finished run under the folder (``<name>-seed<k>/checkpoint.pt``, ``done``):
test accuracy on the whole digits test split (``deqkit.train.evaluate``), and the peak bytes
of tensor storage allocated by one training step (forward, loss, backward) on a fixed batch
of 128 training images, counted exactly by ``deqkit.bench.memory.PeakMemory`` (parameters
themselves excluded, their gradients included). DEQs are measured with their own implicit
backward and, for reference, unrolled (autograd through every solver iteration) and with
the phantom gradient. Writes ``memory.json``, ``memory.csv``, ``memory.md`` and
``memory.png`` into the folder.
"""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from deqkit.bench.memory import PeakMemory
from deqkit.tasks import load_dataset
from deqkit.train import evaluate, load_checkpoint
from deqkit.utils import atomic_write_text, save_figure

BATCH = 128


def step_peak(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **overrides) -> tuple[int, float]:
    """Peak bytes of one training step and the mean forward iterations (NaN if explicit)."""
    model.train()
    model.zero_grad(set_to_none=True)
    with PeakMemory() as mem:
        logits, info = model(x, **overrides) if overrides else model(x)
        nn.functional.cross_entropy(logits, y).backward()
    model.zero_grad(set_to_none=True)
    its = float(info.forward.iterations.float().mean()) if info is not None else float("nan")
    return mem.peak, its


def measure(folder: Path) -> list[dict]:
    data = load_dataset("digits")
    x = data.x_train[:BATCH]
    y = data.y_train[:BATCH]
    rows = []
    for ckpt in sorted(folder.glob("*-seed*/checkpoint.pt")):
        run = ckpt.parent
        if not (run / "done").is_file():
            continue
        torch.manual_seed(0)
        model, config, _ = load_checkpoint(ckpt)
        acc = evaluate(model, config)["accuracy"]
        name = re.sub(r"-seed\d+$", "", run.name)
        params = sum(p.numel() for p in model.parameters())
        if getattr(model, "deq", None) is None:
            variants = {name: {}}
        else:
            variants = {
                f"{name} (implicit)": {},
                f"{name} (phantom)": {"backward": "phantom"},
                f"{name} (unrolled)": {"backward": "unrolled"},
            }
        for label, overrides in variants.items():
            step_peak(model, x, y, **overrides)  # warm-up: lazy buffers, caches
            peak, its = step_peak(model, x, y, **overrides)
            rows.append(
                {
                    "model": label,
                    "run": run.name,
                    "parameters": params,
                    "test_accuracy": acc,
                    "peak_mib": peak / 2**20,
                    "forward_iterations": its,
                }
            )
            print(f"{run.name:24s} {label:22s} acc {100 * acc:5.1f}%  peak {peak / 2**20:7.2f} MiB")
    return rows


def summarise(rows: list[dict]) -> str:
    groups = defaultdict(list)
    for r in rows:
        groups[r["model"]].append(r)

    def ms(values, fmt):
        if len(values) == 1:
            return fmt.format(values[0])
        return f"{fmt.format(statistics.fmean(values))} ± {fmt.format(statistics.pstdev(values))}"

    lines = [
        "| model | seeds | parameters | test accuracy (%) | peak MiB per step (batch 128) | "
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
    ax.set_title("digits: DEQ against explicit twins (one point per seed)")
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
