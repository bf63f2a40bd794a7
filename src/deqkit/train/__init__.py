"""Training deep equilibrium models: a config dataclass in, a run folder out.

``train(TrainConfig(...))`` runs the loop (single process, or data-parallel under
``torchrun``), writing ``config.json``, ``metrics.jsonl``, ``metrics.csv``, ``eval.csv`` and
``checkpoint.pt`` to the run folder; ``train(config, resume=True)`` continues it exactly.
:func:`evaluate` scores a model with a chosen solver budget (an :class:`Evaluation`),
:func:`load_checkpoint` rebuilds one from its checkpoint. ``python -m deqkit.train --config
cfg.toml`` is the command-line entry.

The pieces a run is made of, for code that needs exactly what :func:`train` uses:
:class:`Data` (the batches and evaluation sets of a config, as pure functions of seed and
step) and :class:`Objective` (the loss of one training step, recipes included).
"""

from ._checkpoint import load_checkpoint
from ._config import RESUMABLE_FIELDS, TrainConfig, load_config
from ._data import Data
from ._evaluate import Evaluation, evaluate
from ._loop import StepEvent, TrainResult, train
from ._model import Objective, model_from_config

__all__ = [
    "Data",
    "Evaluation",
    "Objective",
    "RESUMABLE_FIELDS",
    "StepEvent",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "load_checkpoint",
    "load_config",
    "model_from_config",
    "train",
]
