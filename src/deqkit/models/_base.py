"""The protocol every model follows: equilibrium models and their explicit twins."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .._validate import integer, invalid
from ..nn import DEQ, DEQInfo, DEQSettings, apply_spectral_norm

__all__ = ["DEQ_SETTINGS", "EquilibriumModel", "ExplicitModel", "State"]

State = Tensor | tuple[Tensor, ...]

DEQ_SETTINGS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(DEQSettings))
"""Names a model accepts as DEQ settings (``solver``, ``tol``, ``max_iter``, ...): the
fields of :class:`deqkit.DEQSettings`."""


def check_groups(groups: int, channels: int, name: str = "groups") -> int:
    """GroupNorm group count that divides ``channels``."""
    groups = integer(name, groups, 1)
    if channels % groups:
        raise invalid(name, groups, f"a divisor of the channel count {channels}")
    return groups


def merge_deq_settings(
    model: type,
    defaults: Mapping[str, Any],
    deq_settings: DEQSettings | Mapping[str, Any] | None = None,
    deq_kwargs: Mapping[str, Any] | None = None,
    keywords: Mapping[str, Any] | None = None,
) -> DEQSettings:
    """The :class:`~deqkit.DEQSettings` of a ``model`` built with these arguments.

    The one place a model's DEQ settings are put together, in this order (a later layer
    wins): the :class:`~deqkit.DEQSettings` defaults, the model's own ``defaults``, then
    ``deq_settings`` (a dict of some settings, or a whole :class:`~deqkit.DEQSettings`,
    which replaces the defaults) or its alias ``deq_kwargs`` (a dict), then the keyword
    settings. A name given both in the dict and as a keyword is an error, and so is a
    keyword that disagrees with a whole settings object.

    Args:
        model: The model class (for messages: its constructor names the valid arguments).
        defaults: The model's own DEQ defaults, e.g. ``{"tol": 1e-3}``.
        deq_settings: The settings argument of the model. Default ``None``.
        deq_kwargs: Its older alias, a dict. Default ``None``.
        keywords: The keyword arguments the model did not take itself. Default ``None``.

    Raises:
        TypeError: a keyword that is neither an argument of the model nor a DEQ setting (the
            message names the model's arguments and the DEQ settings), ``deq_settings`` or
            ``deq_kwargs`` of the wrong kind or holding an unknown name.
        ValueError: a setting given twice, or an invalid value (from
            :class:`~deqkit.DEQSettings`).
    """
    keywords = dict(keywords or {})
    unknown = sorted(set(keywords) - set(DEQ_SETTINGS))
    if unknown:
        raise TypeError(
            f"{model.__name__} got unknown argument(s) {', '.join(unknown)}; valid: "
            f"{', '.join(_arguments(model))}, or a DEQ setting ({', '.join(DEQ_SETTINGS)})"
        )
    if deq_settings is not None and deq_kwargs is not None:
        raise ValueError("give deq_settings or its alias deq_kwargs, not both")
    given = deq_settings if deq_settings is not None else deq_kwargs
    name = "deq_settings" if deq_settings is not None else "deq_kwargs"
    if isinstance(given, DEQSettings):
        clash = [k for k, v in keywords.items() if given.replace(**{k: v}) != given]
        if clash:
            raise ValueError(
                f"DEQ setting(s) {', '.join(clash)} given both in {name} and as keywords"
            )
        return given
    if given is not None and not isinstance(given, Mapping):
        raise TypeError(f"{name} must be a DEQSettings, a dict or None, got {type(given).__name__}")
    given = dict(given or {})
    bad = sorted(set(given) - set(DEQ_SETTINGS))
    if bad:
        raise TypeError(
            f"unknown DEQ setting(s) {', '.join(bad)} in {name}; valid: {', '.join(DEQ_SETTINGS)}"
        )
    both = sorted(set(given) & set(keywords))
    if both:
        raise ValueError(f"DEQ setting(s) {', '.join(both)} given both in {name} and as keywords")
    return DEQSettings(**{**defaults, **given, **keywords})


def _arguments(model: type) -> list[str]:
    """The named constructor arguments of ``model`` (not ``self``, nor ``**kwargs``)."""
    try:
        params = inspect.signature(model).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [p.name for p in params if p.kind not in kinds]


def spectral_normalise(cell: nn.Module) -> nn.Module:
    """:func:`deqkit.nn.apply_spectral_norm` on ``cell`` (with its power-iteration warm-up)."""
    return apply_spectral_norm(cell)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters, each shared tensor counted once."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


class EquilibriumModel(nn.Module):
    r"""An input injection, a cell solved to its fixed point, and a readout.

    .. math:: u = \mathrm{inject}(x), \qquad z^* = f(z^*, u), \qquad
              \mathrm{logits} = \mathrm{readout}(z^*)

    The common protocol of every equilibrium model in :mod:`deqkit.models`, so that
    training and analysis code can treat them alike:

    * ``deq``: the :class:`~deqkit.DEQ` layer wrapping ``cell``; ``deq.settings`` (a
      :class:`~deqkit.DEQSettings`: solver, tolerance, budget, gradient) are the model's
      defaults merged with the ``deq_settings`` it was built with. ``cell`` is ``deq.f``,
      so its parameters are registered once, under ``deq.f``.
    * ``inject(x)`` runs once per forward; the cell re-injects ``u`` at every iteration.
    * ``readout(z)`` reads any iterate, not only the fixed point.
    * ``forward`` solves with ``deq``; ``iterate`` runs the same cell as a weight-tied
      recurrent net for a fixed number of plain steps, with autograd through every step.

    Subclasses build the three parts and may validate inputs in ``inject``. Building one
    directly from your own parts also works: ``EquilibriumModel(injection, cell, head)``.

    Args:
        injection: ``nn.Module`` mapping ``x`` to ``u``.
        cell: ``nn.Module`` ``f(z, u) -> z`` (``z`` a tensor or tuple of tensors, batch
            first) with a method ``initial_state(u)``.
        head: ``nn.Module`` mapping a state ``z`` to logits.
        deq_settings: The DEQ settings: a :class:`~deqkit.DEQSettings` (all of them) or a
            dict of some (``{"solver": "picard", "max_iter": 50}``), over the model's own
            defaults. Default ``None``: the model's defaults.
        deq_kwargs: Older alias of ``deq_settings`` (a dict); give one of the two.
        **deq_keywords: The same settings as keywords (``solver="picard"``, ``tol=1e-5``,
            ...); a name also given in ``deq_settings`` is an error.

    Raises:
        TypeError: ``cell`` without ``initial_state``; an argument that is neither the
            model's nor a DEQ setting (the message lists both).
        ValueError: invalid DEQ setting value (checked by :class:`~deqkit.DEQSettings`).
    """

    _deq_defaults: ClassVar[dict[str, Any]] = {}
    deq: DEQ

    def __init__(
        self,
        injection: nn.Module,
        cell: nn.Module,
        head: nn.Module,
        *,
        deq_settings: DEQSettings | Mapping[str, Any] | None = None,
        deq_kwargs: Mapping[str, Any] | None = None,
        **deq_keywords: Any,
    ):
        settings = merge_deq_settings(
            type(self), self._deq_defaults, deq_settings, deq_kwargs, deq_keywords
        )
        super().__init__()
        if not callable(getattr(cell, "initial_state", None)):
            raise TypeError(f"cell {type(cell).__name__} must define initial_state(u)")
        self.injection = injection
        self.deq = DEQ(cell, settings=settings)
        self.head = head

    @property
    def cell(self) -> nn.Module:
        """The map ``f(z, u) -> z`` (the module ``deq.f``)."""
        return self.deq.f

    def inject(self, x: Tensor) -> Any:
        """Input injection ``u``, computed once per forward and re-injected every iteration."""
        return self.injection(x)

    def initial_state(self, x: Tensor) -> State:
        """The default starting state for input ``x``: ``cell.initial_state(inject(x))``."""
        return self.cell.initial_state(self.inject(x))

    def readout(self, z: State) -> Tensor:
        """Logits from any state ``z`` (an iterate or the fixed point)."""
        return self.head(z)

    def forward(
        self, x: Tensor, z0: State | None = None, **overrides: Any
    ) -> tuple[Tensor, DEQInfo]:
        """Inject, solve for the fixed point with ``deq``, read out.

        Args:
            x: Input batch.
            z0: Starting state. Default ``cell.initial_state(inject(x))``.
            **overrides: DEQ settings for this call only (``max_iter=200``, ``tol=1e-6``,
                ``solver="picard"``, ...): test-time compute.

        Returns:
            ``(logits, info)``; ``info`` a :class:`~deqkit.DEQInfo`.
        """
        with self._frozen():
            z, info = self.deq(self.inject(x), z0, **overrides)
        return self.readout(z), info

    def iterate(
        self, x: Tensor, iterations: int, z0: State | None = None, *, every: bool = True
    ) -> list[Tensor]:
        r"""Run the cell as a weight-tied recurrent net for exactly ``iterations`` steps.

        .. math:: z_0 = \mathrm{initial\_state}, \quad z_{k+1} = f(z_k, u), \quad
                  \mathrm{out}_k = \mathrm{readout}(z_k), \; k = 1, \dots, \mathrm{iterations}

        Autograd records every step (backprop through time), as for the progressive loss
        of Bansal et al. (2022); wrap in ``torch.no_grad()`` to only evaluate. Parametrized
        weights (spectral norm) are computed once for the whole run, as in ``deq``.

        Args:
            x: Input batch.
            iterations: Number of cell applications, >= 1.
            z0: Starting state. Default ``cell.initial_state(inject(x))``.
            every: Return the readout of every iterate (default) or only of the last.

        Returns:
            A list of logits: ``iterations`` of them, ``out_1 ... out_n``, or with
            ``every=False`` a one-element list ``[out_n]``.

        Raises:
            ValueError: ``iterations`` not an integer >= 1.
        """
        integer("iterations", iterations, 1)
        outs = []
        with self._frozen(), parametrize.cached():
            u = self.inject(x)
            z = self.cell.initial_state(u) if z0 is None else z0
            for k in range(1, iterations + 1):
                z = self.cell(z, u)
                if every or k == iterations:
                    outs.append(self.readout(z))
        return outs

    def unroll(self, x: Tensor, iterations: int, z0: State | None = None) -> State:
        """The state after ``iterations`` plain cell steps (``z0`` itself for 0), with autograd.

        The state-level twin of :meth:`iterate`, for warm starts (the first, gradient-free
        part of the progressive loss) and for analysis of the iterates themselves.

        Raises:
            ValueError: ``iterations`` not an integer >= 0.
        """
        integer("iterations", iterations, 0)
        with self._frozen(), parametrize.cached():
            u = self.inject(x)
            z = self.cell.initial_state(u) if z0 is None else z0
            for _ in range(iterations):
                z = self.cell(z, u)
        return z

    def _frozen(self) -> contextlib.AbstractContextManager:
        """Context within which the cell is one fixed map (a hook for cells with state)."""
        return contextlib.nullcontext()

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of scalar parameters (shared tensors counted once)."""
        return count_parameters(self, trainable_only)


class ExplicitModel(nn.Module):
    r"""An explicit, fixed-depth twin: the same injection, cell and readout, weights untied.

    .. math:: u = \mathrm{inject}(x), \quad z_0 = \mathrm{initial\_state}(u), \quad
              z_{i+1} = f_i(z_i, u), \quad \mathrm{logits} = \mathrm{readout}(z_{\mathrm{depth}})

    With every ``f_i`` equal to the equilibrium model's cell this is exactly its
    ``iterate(x, depth)``; with untied ``f_i`` it is the usual deep-network baseline of the
    same per-layer size.

    Args:
        injection: ``nn.Module`` mapping ``x`` to ``u``.
        layers: The ``depth`` cells ``f_i(z, u) -> z``; the first defines ``initial_state``.
        head: ``nn.Module`` mapping a state to logits.

    Raises:
        ValueError: no layers.
    """

    def __init__(self, injection: nn.Module, layers: Sequence[nn.Module], head: nn.Module):
        super().__init__()
        if len(layers) < 1:
            raise ValueError("layers must hold at least one cell")
        self.injection = injection
        self.layers = nn.ModuleList(layers)
        self.head = head

    @property
    def depth(self) -> int:
        """Number of layers."""
        return len(self.layers)

    def inject(self, x: Tensor) -> Any:
        """Input injection ``u``, computed once and fed to every layer."""
        return self.injection(x)

    def readout(self, z: State) -> Tensor:
        """Logits from a state."""
        return self.head(z)

    def forward(self, x: Tensor) -> tuple[Tensor, None]:
        """``(logits, None)``: the same return shape as an equilibrium model's forward."""
        u = self.inject(x)
        z = self.layers[0].initial_state(u)
        for layer in self.layers:
            z = layer(z, u)
        return self.readout(z), None

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of scalar parameters."""
        return count_parameters(self, trainable_only)


def zeros_state(u: State) -> State:
    """Zeros shaped like ``u`` (a tensor or tuple of tensors)."""
    if isinstance(u, tuple):
        return tuple(torch.zeros_like(t) for t in u)
    return torch.zeros_like(u)
