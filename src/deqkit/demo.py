"""The main job (``make demo`` = ``deqkit demo``): train a small DEQ, study it, report.

1. Train a small DEQ recall network on short prefix-sum strings (16 bits), Anderson forward.
2. Evaluate it on longer strings at growing solver budgets: the test-time compute curve.
3. Compare plain iteration, Anderson and Broyden at the trained model's fixed points.
4. Measure the spectral radius and norm of the Jacobian at the fixed points, and path
   independence.
5. Write a report folder: ``report.html`` (self-contained), ``report.md``, PNG plots,
   ``metrics.json``, the checkpoint and the config.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import analysis
from ._io import write_json_atomic
from ._validate import choice, integer
from .report import Report, markdown_table
from .train import Data, TrainConfig, train

__all__ = ["DemoConfig", "run_demo"]

_TASKS = {
    # task: (model, train difficulty, test difficulties, fast train, fast test)
    "prefix_sums": ("recall1d", 16, (16, 32, 64, 128), 8, (8, 16)),
    "mazes": ("recall2d", 5, (5, 7, 9, 13), 3, (3, 4)),
}


@dataclass(frozen=True)
class DemoConfig:
    """Settings of :func:`run_demo`.

    Attributes:
        task: ``"prefix_sums"`` (default) or ``"mazes"``.
        width: Channels of the recall network. Default ``32``.
        steps: Training steps. Default ``400``.
        backward: Training gradient: ``"phantom"`` (default), ``"implicit"`` or
            ``"unrolled"``. The default is phantom because implicit training of this recall
            network lost forward convergence within ~100 steps in every setting we tried
            (``docs/results.md``); ``--backward implicit`` runs it anyway.
        max_budget: Largest solver budget of the compute curve. Default ``200``.
        device: ``"auto"`` (default: CUDA when present), ``"cpu"`` or ``"cuda"``.
        seed: Seed of the model, data and probes. Default ``0``.
        out_dir: Report folder; default ``runs/demo`` (``runs/demo-2``, ... if taken). An
            explicitly given folder must not exist or be empty.
        fast: A tiny run that checks the pipeline end to end in seconds. Default ``False``.
    """

    task: str = "prefix_sums"
    width: int = 32
    steps: int = 400
    backward: str = "phantom"
    max_budget: int = 200
    device: str = "auto"
    seed: int = 0
    out_dir: str | None = None
    fast: bool = False

    def __post_init__(self):
        choice("task", self.task, _TASKS)
        for name in ("width", "steps", "max_budget"):
            integer(name, getattr(self, name), 1)
        choice("backward", self.backward, ("implicit", "phantom", "unrolled"))

    @classmethod
    def fields(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}


def _folder(cfg: DemoConfig) -> Path:
    if cfg.out_dir is not None:
        out = Path(cfg.out_dir)
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"report folder {out} exists and is not empty; choose another")
        return out
    out, i = Path("runs/demo"), 1
    while out.exists() and any(out.iterdir()):
        i += 1
        out = Path(f"runs/demo-{i}")
    return out


def _say(msg: str) -> None:
    print(f"[deqkit demo] {msg}", flush=True)


def run_demo(cfg: DemoConfig | None = None) -> Path:
    """Run the demo and return the path of ``report.html``."""
    cfg = cfg or DemoConfig()
    t_start = time.perf_counter()
    out = _folder(cfg)
    model_name, train_d, test_ds, fast_train, fast_test = _TASKS[cfg.task]
    if cfg.fast:
        train_d, test_ds = fast_train, fast_test
    width = 8 if cfg.fast else cfg.width
    steps = 6 if cfg.fast else cfg.steps
    n_eval = 32 if cfg.fast else 300
    budgets = sorted(
        {b for b in (1, 2, 5, 10, 20, 30, 50, 100, 200, 500) if b <= cfg.max_budget}
        | {cfg.max_budget}
    )
    if cfg.fast:
        budgets = [b for b in budgets if b <= 10]

    tc = TrainConfig(
        task=cfg.task,
        difficulty=train_d,
        eval_difficulties=(train_d,),
        model=model_name,
        model_kwargs={"width": width, "num_blocks": 2, "norm_groups": 4, "spectral_norm": True},
        solver="anderson",
        tol=1e-3,
        max_iter=30,
        backward=cfg.backward,
        optimizer="adamw",
        lr=2e-3,
        warmup_steps=max(1, steps // 8),
        grad_clip=1.0,
        steps=steps,
        batch_size=64 if not cfg.fast else 16,
        eval_size=n_eval,
        log_every=max(1, steps // 50),
        seed=cfg.seed,
        out_dir=str(out / "run"),
        device=cfg.device,
    )
    _say(
        f"1/5 training {model_name} (width {width}) on {cfg.task} at difficulty {train_d}, "
        f"{steps} steps, Anderson forward, {cfg.backward} backward -> {out / 'run'}"
    )
    t0 = time.perf_counter()
    result = train(tc)
    t_train = time.perf_counter() - t0
    model = result.model.eval()
    n_params = model.num_parameters()

    _say(f"2/5 test-time compute: difficulties {list(test_ds)}, budgets {budgets}")
    curve = analysis.sweep(
        model, tc, difficulties=test_ds, iterations=budgets, n=n_eval, out_dir=out
    )
    print(curve.table, flush=True)

    data = Data(tc)
    device = next(model.parameters()).device
    x_cmp, _ = data.eval_set(test_ds[1], 32 if cfg.fast else 128)
    _say(f"3/5 solvers at the fixed points (difficulty {test_ds[1]}, {len(x_cmp)} samples)")
    solver_rows, traces = analysis.compare_solvers(
        model,
        x_cmp.to(device),
        tol=1e-4,
        max_iter=60 if cfg.fast else 300,
        repeats=1 if cfg.fast else 3,
    )
    solver_png = analysis.plot_residuals(
        traces, out / "solvers.png", title="residual at the trained model's fixed points"
    )
    solver_table = markdown_table(
        ["solver", "median evaluations", "max evaluations", "converged", "median time (ms)"],
        [
            [
                r.method,
                f"{r.median_evals:.0f}",
                r.max_evals,
                f"{100 * r.converged:.0f}%",
                f"{r.time_ms:.1f}",
            ]
            for r in solver_rows
        ],
    )
    print(solver_table, flush=True)

    _say("4/5 spectral radius / norm of df/dz at z*, and path independence")
    gen = torch.Generator().manual_seed(cfg.seed)
    stats = {}
    for d in test_ds[:2]:
        x_d, _ = data.eval_set(d, 16 if cfg.fast else 64)
        stats[d] = analysis.contraction(
            model, x_d.to(device), generator=gen, max_iter=60 if cfg.fast else 300
        )
    spec_png = analysis.plot_spectral_histogram(
        {f"radius, d={d}": s.radius for d, s in stats.items()}
        | {f"norm, d={d}": s.norm for d, s in stats.items()},
        out / "spectral.png",
        xlabel="spectral radius / spectral norm of df/dz at z*",
    )
    contraction_table = markdown_table(
        [
            "difficulty",
            "fixed points found",
            "median radius",
            "median norm",
            "radius < 1",
            "norm < 1",
            "median path score",
            "path independent (> 0.99)",
        ],
        [
            [
                d,
                f"{100 * s.converged:.0f}%",
                f"{s.median_radius:.3f}",
                f"{s.median_norm:.3f}",
                f"{100 * s.frac_radius_below_1:.0f}%",
                f"{100 * s.frac_norm_below_1:.0f}%",
                f"{s.median_path_score:.4f}",
                f"{100 * s.frac_path_independent:.0f}%",
            ]
            for d, s in stats.items()
        ],
    )
    print(contraction_table, flush=True)

    _say("5/5 writing the report")
    summary = {
        "config": dataclasses.asdict(cfg),
        "train_config": tc.to_dict(),
        "parameters": n_params,
        "train_seconds": t_train,
        "final_train": result.train,
        "final_eval": result.eval,
        "compute_curve": curve.to_dict(),
        "solvers": [r.to_dict() for r in solver_rows],
        "contraction": {str(d): s.to_dict() for d, s in stats.items()},
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": str(device),
            "threads": torch.get_num_threads(),
        },
    }
    write_json_atomic(out / "metrics.json", summary, default=str)
    write_json_atomic(out / "config.json", tc.to_dict())

    rep = Report(f"deqkit demo: a DEQ recall network on {cfg.task.replace('_', ' ')}")
    last = result.train or {}
    rep.text(
        f"A recall network ({model_name}, width {width}, {n_params:,} parameters) was "
        f"trained as a deep equilibrium model for {steps} steps on difficulty {train_d} "
        f"(Anderson forward solve, {cfg.backward} gradient) in {t_train:.0f} s on "
        f"{device}. Final training batch: loss {last.get('loss', float('nan')):.4f}, "
        f"accuracy {100 * last.get('accuracy', float('nan')):.1f}%."
    )
    rep.heading("Test-time compute: accuracy against solver budget")
    rep.text(
        "Exact-match accuracy (every position right) on held-out samples, read out at the "
        "solver's best iterate after each budget of evaluations of f. Longer inputs than "
        "the training ones need more iterations."
    )
    rep.text(curve.table)
    rep.figure(out / "sweep.png", "accuracy (left) and median residual (right) against budget")
    rep.heading("Solvers at the trained model's fixed points")
    rep.text(solver_table)
    rep.figure(solver_png, "median residual against iteration, 25-75% band")
    rep.heading("Contraction and path independence")
    rep.text(
        "Spectral radius and spectral norm of J = df/dz at the fixed point (Krylov "
        "estimates), and the path-independence score of Anil et al. (2022): cosine "
        "similarity between the limits reached from zeros and from other starts."
    )
    rep.text(contraction_table)
    rep.figure(spec_png, "per-sample spectral radius and norm")
    rep.heading("Files")
    rep.text(
        "- `metrics.json`: every number above\n- `config.json`: the training config\n"
        "- `run/checkpoint.pt`: the trained model (`deqkit eval`, `deqkit sweep`)\n"
        "- `run/metrics.jsonl`, `run/metrics.csv`: per-step training metrics\n"
        "- `sweep.csv`, `sweep.json`: the compute curves"
    )
    rep.text(f"Total wall time {time.perf_counter() - t_start:.0f} s.")
    _, page = rep.write(out)
    return page
