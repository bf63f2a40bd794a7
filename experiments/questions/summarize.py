"""Summarise `deqkit examine` across trained models (issue experiments 3-6).

    python experiments/questions/summarize.py runs/experiments/prefix_sums [...]

Reads ``<run>/examine/examine.json``, ``<run>/examine/examples.csv``, ``<run>/sweep.json`` and
``<run>/run/config.json`` for every run under the folders. A run's name is
``<variant>-seed<k>`` (or ``<variant>-w<width>-seed<k>``); models are grouped by folder and
variant, with mean and spread (population standard deviation) over seeds. Prints Markdown
tables and writes ``questions.md``, ``questions.json``, ``models.csv`` and ``questions.png``
into ``questions/``
next to the first folder (``runs/experiments/questions`` by default).
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
import sys
import warnings
from collections import defaultdict
from pathlib import Path


def _mean_sd(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "n/a"
    m, s = statistics.fmean(values), statistics.pstdev(values)
    return (
        f"{scale * m:.{digits}f} ± {scale * s:.{digits}f}"
        if len(values) > 1
        else (f"{scale * m:.{digits}f}")
    )


def _spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman rank correlation over the pairs without NaN; NaN when undefined."""
    from scipy.stats import spearmanr

    pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if not (math.isnan(x) or math.isnan(y))]
    if len(pairs) < 3:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant column gives NaN, said as a warning
        return float(spearmanr(*zip(*pairs, strict=True)).statistic)


def load(roots: list[str]) -> list[dict]:
    models = []
    for root in roots:
        for path in sorted(Path(root).glob("*/examine/examine.json")):
            run = path.parent.parent
            exam = json.loads(path.read_text())
            config = json.loads((run / "run" / "config.json").read_text())
            sweep = json.loads((run / "sweep.json").read_text())
            with open(path.parent / "examples.csv") as fh:
                examples = list(csv.DictReader(fh))
            models.append(
                {
                    "folder": Path(root).name,
                    "variant": re.sub(r"-seed\d+$", "", run.name),
                    "run": run.name,
                    "task": config["task"],
                    "train_difficulty": config["difficulty"],
                    "exam": exam,
                    "sweep": sweep,
                    "examples": examples,
                }
            )
    return models


def _sweep_best(model: dict, difficulty: str) -> float:
    """Accuracy at the largest budget of the model's sweep at ``difficulty`` (NaN if absent)."""
    curve = model["sweep"].get(difficulty)
    return curve["metric"][-1] if curve else float("nan")


def per_model_rows(models: list[dict]) -> list[dict]:
    rows = []
    for m in models:
        diffs = list(m["exam"]["difficulties"])
        train_d, test_d = diffs[0], diffs[-1]
        tr, te = m["exam"]["difficulties"][train_d], m["exam"]["difficulties"][test_d]
        largest = max(m["sweep"], key=lambda d: int(d) if d.isdigit() else 0)
        row = {"folder": m["folder"], "variant": m["variant"], "run": m["run"]}
        row |= {"train_difficulty": train_d, "test_difficulty": test_d}
        row |= {f"train_{k}": v for k, v in tr.items() if not k.startswith("readout_curve")}
        row |= {f"test_{k}": v for k, v in te.items() if not k.startswith("readout_curve")}
        conv = [e for e in m["examples"] if e["difficulty"] == test_d and e["converged"] == "True"]
        row["test_converged_n"] = len(conv)
        row["test_best_beats_fixed_point_converged"] = (
            sum(float(e["best_readout_accuracy"]) > float(e["position_accuracy"]) for e in conv)
            / len(conv)
            if conv
            else float("nan")
        )
        row["largest_difficulty"] = largest
        row["largest_accuracy"] = _sweep_best(m, largest)
        rows.append(row)
    return rows


def tables(models: list[dict]) -> tuple[str, dict]:
    rows = per_model_rows(models)
    groups = defaultdict(list)
    for r in rows:
        groups[(r["folder"], r["variant"])].append(r)
    out, data = [], {"groups": {}}

    def col(g, key):
        return [r[key] for r in g]

    def table(title, header, cells):
        out.append(f"### {title}\n")
        out.append("| " + " | ".join(header) + " |")
        out.append("|---" * len(header) + "|")
        for (folder, variant), g in groups.items():
            name = f"{folder}/{variant}"
            out.append(f"| {name} | {len(g)} | " + " | ".join(c(g) for c in cells) + " |")
        out.append("")

    lengths = lambda g: f"{g[0]['train_difficulty']} / {g[0]['test_difficulty']}"  # noqa: E731
    table(
        "Intermediate iterates against the fixed point (exp. 3), in % of samples",
        [
            "model",
            "seeds",
            "sizes (train / test)",
            "fixed point acc. (test)",
            "best-iterate acc. (test)",
            "best readout beats z* (test)",
            "same, converged samples only",
            "right at some iterate, wrong at z* (test)",
            "plain: fixed point / cycle / neither (test)",
        ],
        [
            lengths,
            lambda g: _mean_sd(col(g, "test_accuracy")),
            lambda g: _mean_sd(col(g, "test_oracle_accuracy")),
            lambda g: _mean_sd(col(g, "test_best_readout_beats_fixed_point")),
            lambda g: _mean_sd(col(g, "test_best_beats_fixed_point_converged")),
            lambda g: _mean_sd(col(g, "test_ever_correct_not_at_fixed_point")),
            lambda g: " / ".join(
                _mean_sd(col(g, f"test_picard_{k}"), digits=0)
                for k in ("fixed_point", "cycle", "neither")
            ),
        ],
    )
    table(
        "Contraction at z* against accuracy (exp. 4)",
        [
            "model",
            "seeds",
            "sizes (train / test)",
            "median ρ(J) train",
            "median ‖J‖₂ train",
            "ρ<1 (% samples) train",
            "median ρ(J) test",
            "acc. train (%)",
            "acc. test (%)",
            "acc. largest size, largest budget (%)",
        ],
        [
            lengths,
            lambda g: _mean_sd(col(g, "train_median_radius"), 1, 2),
            lambda g: _mean_sd(col(g, "train_median_norm"), 1, 2),
            lambda g: _mean_sd(col(g, "train_frac_radius_below_1")),
            lambda g: _mean_sd(col(g, "test_median_radius"), 1, 2),
            lambda g: _mean_sd(col(g, "train_accuracy")),
            lambda g: _mean_sd(col(g, "test_accuracy")),
            lambda g: f"{_mean_sd(col(g, 'largest_accuracy'))} ({g[0]['largest_difficulty']})",
        ],
    )
    table(
        "Model's solver (Anderson) against plain iteration, forward and backward (exp. 5), "
        "% of samples converged to 1e-4 within the budget (test size)",
        [
            "model",
            "seeds",
            "sizes (train / test)",
            "fwd Anderson",
            "fwd plain",
            "fwd plain fails, Anderson converges",
            "fwd Anderson fails, plain converges",
            "plain residual grew",
            "bwd Anderson",
            "bwd plain",
            "bwd plain fails, Anderson converges",
            "median evals fwd A / plain",
        ],
        [
            lengths,
            lambda g: _mean_sd(col(g, "test_converged")),
            lambda g: _mean_sd(col(g, "test_picard_converged")),
            lambda g: _mean_sd(col(g, "test_picard_fails_solver_converges")),
            lambda g: _mean_sd(col(g, "test_solver_fails_picard_converges")),
            lambda g: _mean_sd(col(g, "test_picard_residual_grows")),
            lambda g: _mean_sd(col(g, "test_backward_converged")),
            lambda g: _mean_sd(col(g, "test_backward_picard_converged")),
            lambda g: _mean_sd(col(g, "test_backward_picard_fails_solver_converges")),
            lambda g: (
                f"{_mean_sd(col(g, 'test_median_iterations'), 1, 0)} / "
                f"{_mean_sd(col(g, 'test_picard_median_iterations'), 1, 0)}"
            ),
        ],
    )
    table(
        "Path independence against upward generalisation (exp. 6)",
        [
            "model",
            "seeds",
            "sizes (train / test)",
            "median path score train",
            "path-independent (% samples) train",
            "path-independent (% samples) test",
            "acc. test, path-indep. samples (%)",
            "acc. test, path-dep. samples (%)",
            "acc. test (%)",
        ],
        [
            lengths,
            lambda g: _mean_sd(col(g, "train_median_path_score"), 1, 3),
            lambda g: _mean_sd(col(g, "train_frac_path_independent")),
            lambda g: _mean_sd(col(g, "test_frac_path_independent")),
            lambda g: _mean_sd(col(g, "test_accuracy_path_independent")),
            lambda g: _mean_sd(col(g, "test_accuracy_path_dependent")),
            lambda g: _mean_sd(col(g, "test_accuracy")),
        ],
    )
    # Across models: does the training-size score predict the test-size accuracy?
    corr = {
        "path_score_train_vs_test_accuracy": _spearman(
            col(rows, "train_median_path_score"), col(rows, "test_accuracy")
        ),
        "frac_path_independent_test_vs_test_accuracy": _spearman(
            col(rows, "test_frac_path_independent"), col(rows, "test_accuracy")
        ),
        "median_radius_train_vs_test_accuracy": _spearman(
            col(rows, "train_median_radius"), col(rows, "test_accuracy")
        ),
        "median_norm_train_vs_test_accuracy": _spearman(
            col(rows, "train_median_norm"), col(rows, "test_accuracy")
        ),
    }
    out.append("### Across all models (Spearman rank correlation, one point per model)\n")
    out.append(f"models: {len(rows)}\n")
    for k, v in corr.items():
        out.append(f"- {k.replace('_', ' ')}: {v:.2f}")
    out.append("")
    data["correlations"] = corr
    data["models"] = rows
    return "\n".join(out), data


def plot(rows: list[dict], path: Path) -> None:
    """Per model: contraction and path independence against accuracy at the test size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("train_median_radius", "median spectral radius of df/dz at z* (train size)", True),
        ("train_median_norm", "median spectral norm of df/dz at z* (train size)", True),
        ("test_frac_path_independent", "path-independent samples (test size)", False),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(13, 3.8), sharey=True)
    groups = defaultdict(list)
    for r in rows:
        groups[f"{r['folder']}/{r['variant']}"].append(r)
    for ax, (key, label, log) in zip(axes, panels, strict=True):
        for name, g in groups.items():
            ax.scatter([r[key] for r in g], [100 * r["test_accuracy"] for r in g], label=name)
        if log:
            ax.set_xscale("log")
            ax.axvline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xlabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("exact-match accuracy at the test size (%)")
    axes[-1].legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(roots: list[str]) -> None:
    models = load(roots)
    if not models:
        raise SystemExit(f"no */examine/examine.json under {', '.join(roots)}")
    text, data = tables(models)
    first = Path(roots[0]).parent / "questions"
    first.mkdir(parents=True, exist_ok=True)
    (first / "questions.md").write_text(text + "\n")
    (first / "questions.json").write_text(json.dumps(data, indent=2))
    rows = data["models"]
    plot(rows, first / "questions.png")
    with open(first / "models.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:] or ["runs/experiments/prefix_sums"])
