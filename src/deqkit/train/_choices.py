"""The values a training config's fields may take, its defaults, and the groups of fields
that the checks and a resume treat alike."""

from __future__ import annotations

import dataclasses

from ..nn import DEQSettings

# What each task is (generator or loader, default model, difficulty range, metric) is its
# entry in the task registry, deqkit.tasks (tasks/_registry.py); nothing here names a task.
DEFAULT_STEPS = 1000
DEFAULT_EVAL_SIZE = 1000
MODES = ("deq", "recurrent")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")
DEVICES = ("auto", "cpu", "cuda")
AMP = ("none", "bf16")
DTYPES = ("float32", "float64")
DIST_BACKENDS = ("auto", "gloo", "nccl")

# The DEQ settings a config may give, in its ``deq`` table (or as top-level keys, the older
# form): the fields of deqkit.DEQSettings but ``correction``, which is a recipe field here
# (it comes with its loss weights, correction_gamma).
DEQ_KEYS = tuple(f.name for f in dataclasses.fields(DEQSettings) if f.name not in ("correction",))

# Fields a resumed run may change: they do not alter the optimisation trajectory up to the
# checkpoint. ``steps`` and ``epochs`` would bend a cosine schedule from there on, so
# train() refuses a new step count for a cosine run past its warm-up (constant: allowed).
RESUMABLE_FIELDS = frozenset(
    {
        "steps",
        "epochs",
        "eval_every",
        "eval_size",
        "eval_batch_size",
        "eval_max_iter",
        "eval_difficulties",
        "checkpoint_every",
        "log_every",
        "out_dir",
        "device",
        "compile",
        "dist_backend",
    }
)

# Config fields of the training recipes -> the deqkit.nn.Recipe fields they set.
RECIPE_FIELDS = {
    "jac_penalty": "jac_weight",
    "jac_samples": "jac_samples",
    "jac_every": "jac_every",
    "jac_start": "jac_start",
    "jac_stop": "jac_stop",
    "pretrain_steps": "pretrain_steps",
    "pretrain_iters": "pretrain_iters",
    "pretrain_solver": "pretrain_solver",
    "pretrain_backward": "pretrain_gradient",
    "correction": "correction",
    "correction_gamma": "correction_gamma",
    "init": "init",
    "init_p": "init_p",
    "init_scale": "init_scale",
    "max_iter_jitter": "max_iter_jitter",
    "weight_norm": "weight_norm",
}
# Fields of the DEQ recipes: in recurrent mode they must stay at their defaults, and so
# must the ``deq`` settings but ``max_iter`` (the evaluation iteration count there).
DEQ_ONLY_FIELDS = tuple(RECIPE_FIELDS)
RECURRENT_ONLY_FIELDS = ("train_iters", "progressive_alpha")
