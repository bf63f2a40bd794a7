"""Does forcing a contraction limit what a DEQ learns? Measured on finished training runs.

    .venv/bin/python experiments/contraction/measure.py [--out runs/experiments/training] \
        [--variants TASK/VARIANT,...]   (default: the three lipschitz variants, their
                                         control "averaged", phantom_jitter)
    .venv/bin/python experiments/contraction/measure.py --task mazes \
        [--out runs/experiments/mazes] [--variants VARIANT,...]   (experiments/mazes/run.sh)

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

With ``--task mazes`` (runs of ``experiments/mazes/run.sh``): the exact-maze accuracy of
the run's sweep (``sweep.json``) on 9x9, 13x13 and 17x17 mazes at the training budget of 50
evaluations and at 300, the spectral norm at the fixed points of 9x9 mazes (19 x 19
pixels), and the influence of input pixel ``i`` on output pixel ``j`` against their
Chebyshev distance (one 3 x 3 convolution crosses one pixel of it), fitted between
distances 6 and 12 and set beside the same bound ``L ** (1 / 5)`` per pixel: the 2-D cell
is the 1-D one with 3 x 3 convolutions, 5 of them per application.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from deqkit.analysis import contraction, influence
from deqkit.tasks import mazes, prefix_sums
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


def sweep_accuracy(folder: Path) -> dict[str, float]:
    """``{"D@K": accuracy}`` for mazes of size D at budgets K = 50 and 300, from sweep.json."""
    curves = json.loads((folder / "sweep.json").read_text())
    acc = {}
    for size, curve in curves.items():
        for budget in (50, 300):
            if budget in curve["iterations"]:
                acc[f"{size}@{budget}"] = curve["metric"][curve["iterations"].index(budget)]
    return acc


def measure(folder: Path, x: torch.Tensor, fit: tuple[int, int], mazes_task: bool) -> dict:
    """One finished run: its accuracies, contraction at z*, and influence decay."""
    model, _, _ = load_checkpoint(folder / "run")
    model = model.double()
    lipschitz = getattr(model, "lipschitz", None)
    inf = influence(model, x, tol=1e-6, max_iter=500, fit_offsets=fit)
    fixed = contraction(
        model, x, tol=1e-6, max_iter=500, generator=torch.Generator().manual_seed(0)
    )
    return {
        "lipschitz": lipschitz,
        "accuracy": sweep_accuracy(folder) if mazes_task else accuracy(folder),
        "median_norm": fixed.median_norm,
        "median_radius": fixed.median_radius,
        "decay": inf.decay,
        "bound": None if lipschitz is None else lipschitz ** (1 / REACH),
        "converged": inf.converged,
        "influence": inf.to_dict()["by_offset"],
        "metric": inf.metric,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("prefix32", "mazes"), default="prefix32")
    parser.add_argument("--out", default=None, help="runs folder (default by --task)")
    parser.add_argument("--variants", default=None, help="comma-separated (default by --task)")
    parser.add_argument("--n", type=int, default=None, help="inputs measured per run")
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    on_mazes = args.task == "mazes"
    if on_mazes:
        out = Path(args.out or "runs/experiments/mazes")
        variants = args.variants or "lipschitz050,lipschitz090,lipschitz099,averaged,deq_phantom"
        x, _ = mazes(args.n or 8, 9, seed=2026)
        fit = (6, 12)
        done = "run/done"
        columns = [f"{d}x{d} @ {k}" for d in (9, 13, 17) for k in (50, 300)]
        keys = [f"{d}@{k}" for d in (9, 13, 17) for k in (50, 300)]
        unit = "pixel"
    else:
        out = Path(args.out or "runs/experiments/training")
        variants = args.variants or (
            "prefix32/lipschitz050,prefix32/lipschitz090,prefix32/lipschitz099,"
            "prefix32/averaged,prefix32/phantom_jitter"
        )
        x, _ = prefix_sums(args.n or 16, 64, seed=2026)
        fit = (6, 40)
        done = "done"
        columns = ["32 bits", "64 bits", "128 bits"]
        keys = [32, 64, 128]
        unit = "position"
    x = x.double()
    results: dict[str, dict] = {}
    header = ["variant", "seed", "L", *columns, "||J|| at z* (median)"]
    header += [f"influence decay / {unit}", "bound L^(1/5)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for variant in variants.split(","):
        folders = sorted(out.glob(f"{variant}-seed*"))
        for folder in folders:
            if not (folder / done).is_file() or (
                on_mazes and not (folder / "sweep.json").is_file()
            ):
                continue
            seed = folder.name.rpartition("-seed")[2]
            r = results[f"{variant}-seed{seed}"] = measure(folder, x, fit, on_mazes)
            acc = r["accuracy"]
            cells = [
                variant,
                seed,
                "-" if r["lipschitz"] is None else f"{r['lipschitz']:g}",
                *(f"{100 * acc[k]:.1f}" if k in acc else "-" for k in keys),
                f"{r['median_norm']:.2f}",
                f"{r['decay']:.3f}",
                "-" if r["bound"] is None else f"{r['bound']:.3f}",
            ]
            print("| " + " | ".join(cells) + " |", flush=True)
    path = out / "contraction.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)


if __name__ == "__main__":
    main()
