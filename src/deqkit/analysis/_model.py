"""The model protocol of the analysis, and what the studies of a trained model share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ..nn import DEQ, State

if TYPE_CHECKING:
    from ..train import Data, TrainConfig

__all__ = ["EquilibriumLike"]

PARTS = ("cell", "inject", "initial_state", "readout")


@runtime_checkable
class EquilibriumLike(Protocol):
    r"""What the analysis needs of an equilibrium model: its parts, and the layer solving it.

    .. math:: u = \mathrm{inject}(x), \qquad z^* = \mathrm{cell}(z^*, u), \qquad
              \mathrm{logits} = \mathrm{readout}(z^*)

    Every :class:`deqkit.models.EquilibriumModel` follows it; a model of your own does when
    it is an ``nn.Module`` with these members (``isinstance(model, EquilibriumLike)`` checks
    that they exist, not their signatures). States are batch first: a tensor ``[B, ...]`` or
    a tuple of them.

    Attributes:
        deq: The :class:`~deqkit.DEQ` layer that solves the model; its ``settings``
            (``solver``, ``solver_options``, ``stop``, ...) are the studies' defaults.
        cell: The map ``f(z, u) -> z``, a state shaped like ``z``.
    """

    deq: DEQ

    @property
    def cell(self) -> Callable[[State, Any], State]:
        """The map ``f(z, u)`` whose fixed point the model solves for."""
        ...

    def inject(self, x: Tensor) -> Any:
        """The input injection ``u`` of a batch ``x [B, ...]``."""
        ...

    def initial_state(self, x: Tensor) -> State:
        """The default start ``z0`` of a batch ``x`` (batch ``B``)."""
        ...

    def readout(self, z: State) -> Tensor:
        """Logits ``[B, C, ...]`` of any state ``z`` (an iterate or the fixed point)."""
        ...


def require_equilibrium(model: object, what: str) -> None:
    """Raise ``TypeError`` unless ``model`` follows :class:`EquilibriumLike` (``what`` names
    the caller in the message, with the parts that are missing)."""
    missing = [name for name in PARTS if not callable(getattr(model, name, None))]
    if getattr(model, "deq", None) is None:
        missing.append("deq")
    if missing:
        raise TypeError(
            f"{what} needs an equilibrium model (deqkit.analysis.EquilibriumLike), got "
            f"{type(model).__name__} without {', '.join(missing)}"
        )


def fixed_point_map(model: EquilibriumLike, x: Tensor) -> tuple[Callable[[State], State], State]:
    """``(f, z0)``: ``f(z) = model.cell(z, model.inject(x))`` (injection computed once) and
    ``z0 = model.initial_state(x)``."""
    u = model.inject(x)
    return (lambda z: model.cell(z, u)), model.initial_state(x)


def device_of(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (the CPU for a model without any)."""
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def run_data(config: TrainConfig) -> Data:
    """The :class:`~deqkit.train.Data` of a run, whose evaluation sets the studies use."""
    # Imported here: ``import deqkit`` imports this package, and the training stack is not
    # needed until a trained model is studied.
    from ..train import Data

    return Data(config)


def study_difficulties(config: TrainConfig, difficulties: Sequence[int] | None) -> list[int | None]:
    """The test difficulties asked for, else the config's evaluation difficulties
    (``eval_difficulties``, else the training difficulty, else the task's default);
    ``[None]`` for data sets."""
    if not config.procedural:
        return [None]
    return list(difficulties or config.eval_levels)
