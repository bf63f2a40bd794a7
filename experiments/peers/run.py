"""The same DEQ trained three ways: torchdeq's defaults, torchdeq's implicit setting, deqkit's.

    .venv/bin/python experiments/peers/run.py                      # 3 variants x seeds 0 1 2
    .venv/bin/python experiments/peers/run.py --variants deqkit_default --seeds 0 --steps 20

Only the DEQ layer differs between the variants. Everything else is fixed and shared:

* data: scikit-learn's 8x8 digits, ``deqkit.tasks.load_digits_dataset()`` (its fixed split,
  1,437 train / 360 test);
* model: ``deqkit.models.DEQConv(channels=(32,))``, one resolution of 32 channels: its
  injection ``model.inject(x)``, cell ``model.cell(z, u)`` (start ``model.cell.initial_state(u)``,
  zeros) and readout ``model.readout(z)``. The cell keeps deqkit's parametrisation in every
  variant: torchdeq's weight norm (``torchdeq.norm.apply_norm``, part of its MDEQ recipe) is
  NOT applied, so the three variants train the very same function class from the very same
  initial weights;
* training: 600 steps of batch 64 (a fresh permutation each epoch, last partial batch
  dropped), AdamW (lr 2e-3, PyTorch's default weight decay 0.01), 50-step linear warm-up
  then cosine to 0, cross-entropy. A seed fixes the initial weights and the batch order,
  identically for every variant (the JSON records checksums of both).

Variants (the DEQ layer; ``u = model.inject(x)``, ``f(z) = model.cell(z, u)``):

* ``torchdeq_default``: ``torchdeq.get_deq()`` with no arguments (torchdeq 0.1.0: the
  ``sliced`` core, ``fixed_point_iter`` forward, ``f_max_iter=40``, ``f_tol=1e-3``,
  ``f_stop_mode='abs'``, phantom gradient ``grad=1, tau=1``, i.e. ``ift=False``: one
  differentiable step ``f(z*)`` from the detached fixed point, the Jacobian-free gradient).
* ``torchdeq_implicit``: ``get_deq(ift=True, ...)`` with ``fixed_point_iter`` forward and
  backward, 40 iterations each, ``f_tol=1e-3``, ``b_tol=1e-6``, absolute stop both ways.
* ``deqkit_implicit_fallback``: deqkit's ``Implicit(fallback=Phantom())`` gradient, the
  model's other defaults: the exact implicit gradient where the solves converged.
* ``deqkit_phantom_k16`` / ``deqkit_phantom_k40``: ``Phantom(16, 0.8)`` / ``Phantom(40, 1.0)``,
  longer phantom horizons than the default's ``k=5, tau=0.5``; ``deqkit_phantom_k10`` /
  ``deqkit_phantom_k8``: ``Phantom(10, 0.5)`` / ``Phantom(8, 0.7)``, the horizons between.
* ``deqkit_default``: ``model.deq`` as it is, i.e. ``deqkit.DEQ``'s defaults at run time
  (nothing is hard-coded here; the settings used are written into each JSON).

Measured per (variant, seed): final test accuracy (the test set in batches of 64, each
layer in eval mode, no gradient), the median wall time of a training step (forward,
backward, optimiser and schedule step; the first 5 steps excluded), the mean forward
iterations per step (deqkit: ``info.iterations``, the evaluations charged to each sample;
torchdeq: ``info['nstep']``, the step at which each sample reached its lowest residual), and
the fraction of forward solves (samples) that converged (deqkit: ``info.converged``;
torchdeq: the sample's lowest residual under the layer's stop mode ``<= f_tol``). Also
recorded: the number of cell calls per forward (solver evaluations of the whole batch plus
the differentiable step the gradient hangs on, counted by a hook; torchdeq stops only when
the worst sample of the batch has converged, so its ``nstep`` understates the evaluations
the batch paid for), and, for the implicit gradients, the fraction of adjoint solves that
converged.

Resumable: each (variant, seed) writes ``OUT/VARIANT-seedS.json`` atomically when it ends,
and a run whose file exists is skipped (a file made with other settings is an error, not
silently reused). At the end the Markdown table is printed and written to
``OUT/summary.md``. Timings are only comparable between runs on the same machine under the
same load; ``--threads`` (default 1) sets ``torch.set_num_threads``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.metadata
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from deqkit import Implicit, Phantom
from deqkit.models import DEQConv
from deqkit.tasks import load_digits_dataset
from deqkit.utils import atomic_write_text

VARIANTS = (
    "torchdeq_default",
    "torchdeq_implicit",
    "deqkit_default",
    "deqkit_implicit_fallback",
    "deqkit_phantom_k16",
    "deqkit_phantom_k40",
    "deqkit_phantom_k10",
    "deqkit_phantom_k8",
)
# deqkit variants: DEQ settings given to the model (none: the library's defaults)
DEQKIT_VARIANTS = {
    "deqkit_default": {},
    "deqkit_implicit_fallback": {"backward": Implicit(fallback=Phantom())},
    # longer phantom horizons (torchdeq's implicit setting is in effect 40 undamped terms)
    "deqkit_phantom_k16": {"backward": Phantom(16, 0.8)},
    "deqkit_phantom_k40": {"backward": Phantom(40, 1.0)},
    "deqkit_phantom_k10": {"backward": Phantom(10, 0.5)},
    "deqkit_phantom_k8": {"backward": Phantom(8, 0.7)},
}
TORCHDEQ_VARIANTS = ("torchdeq_default", "torchdeq_implicit")
CHANNELS = (32,)
BATCH = 64
LR = 2e-3
WARMUP = 50
SKIP_TIMED = 5  # first steps left out of the median step time (allocator warm-up)
SUMMARY_KEYS = (
    "test_accuracy",
    "median_step_s",
    "mean_fwd_iters",
    "fwd_converged",
    "mean_cell_calls_fwd",
    "mean_bwd_iters",
    "bwd_converged",
)


def int_list(text: str) -> list[int]:
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 0, got {text!r}")
    return list(dict.fromkeys(values))


def variant_list(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown variant(s) {', '.join(unknown) or repr(text)}; valid: {', '.join(VARIANTS)}"
        )
    return list(dict.fromkeys(names))


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


parser = argparse.ArgumentParser(
    description="Train one DEQConv on digits under three DEQ implementations.",
    formatter_class=argparse.ArgumentDefaultsHelpFormatter,
)
parser.add_argument(
    "--variants", type=variant_list, default=list(VARIANTS), help=", ".join(VARIANTS)
)
parser.add_argument("--seeds", type=int_list, default=[0, 1, 2], help="comma-separated seeds")
parser.add_argument("--steps", type=positive_int, default=600, help="training steps")
parser.add_argument("--out", type=Path, default=Path("runs/experiments/peers"))
parser.add_argument("--threads", type=positive_int, default=1, help="torch.set_num_threads")
args = parser.parse_args()
if args.steps <= SKIP_TIMED:
    parser.error(f"--steps must exceed {SKIP_TIMED} (the untimed warm-up steps)")
torch.set_num_threads(args.threads)

# -- torchdeq is optional (the `bench` extra); without it only deqkit runs ---------------------
try:
    import torchdeq
except ImportError:
    torchdeq = None
try:
    TORCHDEQ_VERSION = importlib.metadata.version("torchdeq") if torchdeq else None
except importlib.metadata.PackageNotFoundError:  # importable, but not pip-installed
    TORCHDEQ_VERSION = "unknown"
wanted_td = [v for v in args.variants if v in TORCHDEQ_VARIANTS]
if torchdeq is None and wanted_td:
    print(
        f"torchdeq is not installed (pip install 'deqkit[bench]'): skipping {', '.join(wanted_td)}"
    )
    args.variants = [v for v in args.variants if v not in TORCHDEQ_VARIANTS]
elif wanted_td and TORCHDEQ_VERSION != "0.1.0":
    print(f"note: torchdeq {TORCHDEQ_VERSION} is installed; this script was written for 0.1.0")

# -- data (the same split for every variant and seed) ------------------------------------------
data = load_digits_dataset()
x_train, y_train, x_test, y_test = data.tensors()
print(f"{data}; torch {torch.__version__}, {torch.get_num_threads()} thread(s)")


def make_torchdeq(variant: str):
    """The torchdeq layer of a variant, and its resolved settings (for the JSON)."""
    if variant == "torchdeq_default":
        deq = torchdeq.get_deq()
    else:
        # get_deq ignores keys it does not know, so a misspelt name would silently fall back
        # to a default: the resolved attributes are checked below.
        deq = torchdeq.get_deq(
            ift=True,
            f_solver="fixed_point_iter",
            b_solver="fixed_point_iter",
            f_max_iter=40,
            b_max_iter=40,
            f_tol=1e-3,
            b_tol=1e-6,
            f_stop_mode="abs",
            b_stop_mode="abs",
        )
    settings = {
        "core": type(deq).__name__,
        "f_solver": deq.f_solver.__name__,
        "b_solver": deq.b_solver.__name__,
        "f_max_iter": deq.f_max_iter,
        "b_max_iter": deq.b_max_iter,
        "eval_f_max_iter": deq.eval_f_max_iter,
        "f_tol": deq.f_tol,
        "b_tol": deq.b_tol,
        "f_stop_mode": deq.f_stop_mode,
        "b_stop_mode": deq.b_stop_mode,
        "ift": deq.args.get("ift", False),
        "grad": deq.args.get("grad", 1),
        "tau": deq.args.get("tau", 1.0),
        "gradient_fn": [g.__name__ for g in deq.produce_grad],
        "torchdeq": TORCHDEQ_VERSION,
    }
    if variant == "torchdeq_implicit":
        expected = {"f_solver": "fixed_point_iter", "b_solver": "fixed_point_iter"}
        expected |= {"f_max_iter": 40, "b_max_iter": 40, "f_tol": 1e-3, "b_tol": 1e-6}
        expected |= {"f_stop_mode": "abs", "b_stop_mode": "abs", "gradient_fn": ["func_ift"]}
        wrong = {k: settings[k] for k, v in expected.items() if settings[k] != v}
        if wrong:
            raise RuntimeError(f"torchdeq did not take the implicit settings: {wrong}")
    return deq, settings


def deqkit_settings(deq) -> dict:
    s = deq.settings
    out = {f.name: getattr(s, f.name) for f in dataclasses.fields(s)}
    out = {k: v if isinstance(v, str | int | float | None) else repr(v) for k, v in out.items()}
    out["resolved_solver"] = repr(s.solver_obj)
    out["resolved_gradient"] = repr(s.gradient)
    out["resolved_adjoint"] = repr(s.bound)
    return out


def lr_factor(step: int) -> float:
    if step < WARMUP:
        return (step + 1) / WARMUP
    span = max(args.steps - WARMUP, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - WARMUP, span) / span))


def checksum(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def batch_order(seed: int) -> list[torch.Tensor]:
    """The index batches of all steps: a seeded permutation per epoch, partial batch dropped."""
    gen = torch.Generator().manual_seed(seed)
    per_epoch = len(x_train) // BATCH
    batches = []
    while len(batches) < args.steps:
        perm = torch.randperm(len(x_train), generator=gen)
        batches += [perm[i * BATCH : (i + 1) * BATCH] for i in range(per_epoch)]
    return batches[: args.steps]


def train_one(variant: str, seed: int) -> dict:
    # Same seed -> same initial weights: the model is built right after seeding, and the
    # torchdeq layer (no parameters, no random draws) only afterwards.
    torch.manual_seed(seed)
    model = DEQConv(1, data.num_classes, channels=CHANNELS, **DEQKIT_VARIANTS.get(variant, {}))
    init_sum = checksum(model.state_dict().values())
    if variant in DEQKIT_VARIANTS:
        td, settings = None, deqkit_settings(model.deq)
    else:
        td, settings = make_torchdeq(variant)
    batches = batch_order(seed)
    order_sum = checksum(batches)

    calls = [0]  # cell calls, counted by a hook: the compute each forward really paid
    model.cell.register_forward_pre_hook(lambda module, inputs: calls.__setitem__(0, calls[0] + 1))
    bwd_stats: list[dict] = []  # torchdeq's adjoint solver stats, through backward_writer
    last: dict = {}  # deqkit's DEQInfo of the latest forward (its adjoint result lands there)

    def deq_forward(x: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        """Logits, mean forward iterations, fraction of samples converged."""
        u = model.inject(x)
        if td is None:
            z, info = model.deq(u)
            last["info"] = info
            iters = info.iterations.float().mean().item()
            conv = info.converged.float().mean().item()
        else:
            z_out, info = td(
                lambda z: model.cell(z, u),
                model.cell.initial_state(u),
                backward_writer=bwd_stats.append,
            )
            z = z_out[-1]
            residual = info[f"{td.f_stop_mode}_lowest"]
            iters = info["nstep"].float().mean().item()
            conv = (residual <= td.f_tol).float().mean().item()
        return model.readout(z), iters, conv

    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    log = {k: [] for k in ("loss", "step_s", "fwd_iters", "fwd_converged", "cell_calls")}
    log["bwd_converged"], log["bwd_iters"] = [], []
    model.train()
    if td is not None:
        td.train()
    t_run = time.perf_counter()
    for step, idx in enumerate(batches):
        x, y = x_train[idx], y_train[idx]
        calls[0] = 0
        bwd_stats.clear()
        t0 = time.perf_counter()
        logits, iters, conv = deq_forward(x)
        fwd_calls = calls[0]
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        dt = time.perf_counter() - t0
        log["loss"].append(loss.item())
        log["step_s"].append(dt)
        log["fwd_iters"].append(iters)
        log["fwd_converged"].append(conv)
        log["cell_calls"].append(fwd_calls)
        # The adjoint solve of an implicit gradient, if there was one: deqkit's lands in the
        # DEQInfo once backward() has run, torchdeq's comes through backward_writer.
        bwd_conv = bwd_iters = None
        if td is None and last["info"].backward is not None:
            back = last["info"].backward
            bwd_conv = back.converged.float().mean().item()
            bwd_iters = back.iterations.float().mean().item()
        elif td is not None and bwd_stats:
            res = bwd_stats[-1][f"{td.b_stop_mode}_lowest"]
            bwd_conv = (res <= td.b_tol).float().mean().item()
            bwd_iters = bwd_stats[-1]["nstep"].float().mean().item()
        log["bwd_converged"].append(bwd_conv)
        log["bwd_iters"].append(bwd_iters)
        if (step + 1) % max(args.steps // 6, 1) == 0 or step + 1 == args.steps:
            print(
                f"  {variant} seed {seed} step {step + 1}/{args.steps}: loss {loss.item():.4f}, "
                f"{1e3 * dt:.1f} ms, fwd iters {iters:.1f}, converged {conv:.2f}",
                flush=True,
            )
    train_s = time.perf_counter() - t_run

    # -- test: each layer in eval mode, no graph ----------------------------------------------
    model.eval()
    if td is not None:
        td.eval()
    correct, test_iters, test_conv = 0, [], []
    with torch.no_grad():
        for i in range(0, len(x_test), BATCH):
            logits, iters, conv = deq_forward(x_test[i : i + BATCH])
            correct += int((logits.argmax(1) == y_test[i : i + BATCH]).sum())
            test_iters.append(iters)
            test_conv.append(conv)

    timed = log["step_s"][SKIP_TIMED:]
    bwd = [b for b in log["bwd_converged"] if b is not None]
    bwd_its = [b for b in log["bwd_iters"] if b is not None]
    return {
        "variant": variant,
        "seed": seed,
        "steps": args.steps,
        "batch": BATCH,
        "threads": torch.get_num_threads(),
        "settings": settings,
        "init_checksum": init_sum,
        "batch_order_checksum": order_sum,
        "test_accuracy": correct / len(x_test),
        "median_step_s": statistics.median(timed),
        "mean_fwd_iters": statistics.fmean(log["fwd_iters"]),
        "fwd_converged": statistics.fmean(log["fwd_converged"]),
        "mean_cell_calls_fwd": statistics.fmean(log["cell_calls"]),
        "bwd_converged": statistics.fmean(bwd) if bwd else None,
        "mean_bwd_iters": statistics.fmean(bwd_its) if bwd_its else None,
        "final_train_loss": statistics.fmean(log["loss"][-20:]),
        "test_mean_fwd_iters": statistics.fmean(test_iters),
        "test_fwd_converged": statistics.fmean(test_conv),
        "train_wall_s": train_s,
        "torch": torch.__version__,
        "per_step": log,
    }


# -- the grid: one JSON per (variant, seed), skipped when it exists ---------------------------
args.out.mkdir(parents=True, exist_ok=True)


def current_settings(variant: str) -> dict:
    """The DEQ settings a run of ``variant`` would use now (deqkit's defaults may change)."""
    if variant in DEQKIT_VARIANTS:
        return deqkit_settings(DEQConv(channels=CHANNELS, **DEQKIT_VARIANTS[variant]).deq)
    return make_torchdeq(variant)[1]


def check_resumable(path: Path, res: dict, variant: str) -> None:
    """Exit with a clear message if ``path`` holds a run made with other settings."""
    problems = []
    if res.get("steps") != args.steps:
        problems.append(f"--steps {res.get('steps')}, not {args.steps}")
    if res.get("threads") != args.threads:
        problems.append(f"--threads {res.get('threads')}, not {args.threads} (timings differ)")
    missing = [k for k in SUMMARY_KEYS if k not in res]
    if missing:
        problems.append(f"an older format (no {', '.join(missing)})")
    old, now = res.get("settings", {}), json.loads(json.dumps(current_settings(variant)))
    for key in sorted(set(old) | set(now)):
        if old.get(key) != now.get(key):
            problems.append(f"{key}={old.get(key)!r} (now {now.get(key)!r})")
    if problems:
        sys.exit(
            f"{path} was made with other settings: {'; '.join(problems)}. "
            "Delete it or choose another --out."
        )


results: dict[tuple[str, int], dict] = {}
for variant in args.variants:
    for seed in args.seeds:
        path = args.out / f"{variant}-seed{seed}.json"
        if path.exists():
            res = json.loads(path.read_text())
            check_resumable(path, res, variant)
            print(f"{path} exists: skipped")
        else:
            print(f"{variant} seed {seed}: training {args.steps} steps", flush=True)
            res = train_one(variant, seed)
            atomic_write_text(path, json.dumps(res, indent=1) + "\n")
            print(
                f"{variant} seed {seed}: test accuracy {res['test_accuracy']:.4f}, "
                f"{1e3 * res['median_step_s']:.1f} ms/step -> {path}",
                flush=True,
            )
        results[variant, seed] = res

# -- summary: mean +- std over seeds ------------------------------------------------------------
if not results:
    sys.exit("no runs to summarise")


def mean_std(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    values = [v * scale for v in values if v is not None]
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {sd:.{digits}f}"


header = (
    "| variant | seeds | test acc % | acc % per seed | ms/step (median) | fwd iters/step "
    "| fwd converged % | cell calls/fwd | bwd iters/step | bwd converged % |"
)
lines = [
    f"Digits, DEQConv(channels={CHANNELS}), {args.steps} steps of batch {BATCH}, AdamW lr {LR} "
    f"(warm-up {WARMUP}, cosine), {torch.get_num_threads()} thread(s); mean ± std over seeds.",
    "",
    header,
    "|" + "---|" * header.count(" | ") + "---|",
]
for variant in args.variants:
    runs = [results[variant, s] for s in args.seeds]
    per_seed = ", ".join(f"{100 * r['test_accuracy']:.1f} (s{r['seed']})" for r in runs)
    lines.append(
        f"| {variant} | {len(runs)} | {mean_std([r['test_accuracy'] for r in runs], 100)} "
        f"| {per_seed} | {mean_std([r['median_step_s'] for r in runs], 1e3)} "
        f"| {mean_std([r['mean_fwd_iters'] for r in runs])} "
        f"| {mean_std([r['fwd_converged'] for r in runs], 100)} "
        f"| {mean_std([r['mean_cell_calls_fwd'] for r in runs])} "
        f"| {mean_std([r['mean_bwd_iters'] for r in runs])} "
        f"| {mean_std([r['bwd_converged'] for r in runs], 100)} |"
    )
lines += [
    "",
    "fwd iters: deqkit `info.iterations` (per sample), torchdeq `info['nstep']` (per sample, "
    "step of its lowest residual). cell calls/fwd: evaluations of the cell per training "
    "forward (batch-wide solver steps + the differentiable step). converged: deqkit "
    "`info.converged`; torchdeq lowest residual <= tol under its stop mode. bwd: the adjoint "
    "solve of an implicit gradient (deqkit `info.backward.iterations`, torchdeq `nstep`; "
    "'-' for phantom gradients).",
]
summary = "\n".join(lines) + "\n"
print()
print(summary, end="")
atomic_write_text(args.out / "summary.md", summary)
print(f"-> {args.out / 'summary.md'}")
