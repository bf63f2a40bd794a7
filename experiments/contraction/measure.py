"""Does forcing a contraction limit what a DEQ learns? Measured on finished training runs.

    .venv/bin/python experiments/contraction/measure.py [--out runs/experiments/training] \
        [--variants TASK/VARIANT,...]   (default: the three lipschitz variants, their
                                         control "averaged", phantom_jitter)

For every finished seed of each variant (``experiments/training/run.sh``): the held-out
accuracy at 32, 64 and 128 bits (the run's own evaluations), the spectral norm of
``df/dz`` at the fixed point of 64-bit strings (median over samples), and the influence of
bit ``i`` on output ``j`` through ``z*`` (:func:`deqkit.analysis.influence`, exact
Jacobian) on 64-bit strings: its fitted decay per position of offset ``j - i`` between
offsets 6 and 40, beside the fading-memory bound ``L ** (1 / r)`` of a cell that is
``L``-Lipschitz by construction and reaches ``r = 5`` positions per application (the recall
convolution and two blocks of two 3-wide convolutions). A parity of every earlier bit needs
the influence not to fade; a decay well under 1 cannot compute it at long offsets.
Writes ``contraction.json`` under ``--out`` and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from deqkit.analysis import contraction, influence
from deqkit.tasks import prefix_sums
from deqkit.train import load_checkpoint

REACH = 5  # positions one application of the recall cell moves information


def accuracy(folder: Path) -> dict[int, float]:
    """Held-out accuracy by length: the run's final eval records and run.sh's eval-D.json."""
    run = folder / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = max(r["step"] for r in records)
    acc = {
        r["difficulty"]: r["accuracy"] for r in records if r["kind"] == "eval" and r["step"] == last
    }
    for path in folder.glob("eval-*.json"):
        r = json.loads(path.read_text())
        acc[r["difficulty"]] = r["accuracy"]
    return acc


def measure(folder: Path, x: torch.Tensor) -> dict:
    """One finished run: its accuracies, contraction at z*, and influence decay."""
    model, _, _ = load_checkpoint(folder / "run")
    model = model.double()
    lipschitz = getattr(model, "lipschitz", None)
    inf = influence(model, x, tol=1e-6, max_iter=500, fit_offsets=(6, 40))
    fixed = contraction(
        model, x, tol=1e-6, max_iter=500, generator=torch.Generator().manual_seed(0)
    )
    return {
        "lipschitz": lipschitz,
        "accuracy": accuracy(folder),
        "median_norm": fixed.median_norm,
        "median_radius": fixed.median_radius,
        "decay": inf.decay,
        "bound": None if lipschitz is None else lipschitz ** (1 / REACH),
        "converged": inf.converged,
        "influence": inf.to_dict()["by_offset"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/experiments/training")
    parser.add_argument(
        "--variants",
        default="prefix32/lipschitz050,prefix32/lipschitz090,prefix32/lipschitz099,"
        "prefix32/averaged,prefix32/phantom_jitter",
    )
    parser.add_argument("--n", type=int, default=16, help="64-bit strings measured per run")
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    x, _ = prefix_sums(args.n, 64, seed=2026)
    x = x.double()
    results: dict[str, dict] = {}
    print(
        "| variant | seed | L | 32 bits | 64 bits | 128 bits | ||J|| at z* (median) "
        "| influence decay / position | bound L^(1/5) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for variant in args.variants.split(","):
        folders = sorted(Path(args.out).glob(f"{variant}-seed*"))
        for folder in folders:
            if not (folder / "done").is_file():
                continue
            seed = folder.name.rpartition("-seed")[2]
            r = results[f"{variant}-seed{seed}"] = measure(folder, x)
            acc = r["accuracy"]
            cells = [
                variant,
                seed,
                "-" if r["lipschitz"] is None else f"{r['lipschitz']:g}",
                *(f"{100 * acc[d]:.1f}" if d in acc else "-" for d in (32, 64, 128)),
                f"{r['median_norm']:.2f}",
                f"{r['decay']:.3f}",
                "-" if r["bound"] is None else f"{r['bound']:.3f}",
            ]
            print("| " + " | ".join(cells) + " |", flush=True)
    path = Path(args.out) / "contraction.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)


if __name__ == "__main__":
    main()
