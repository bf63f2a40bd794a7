"""Equilibrium models, their explicit twins, and a common protocol to treat them alike.

Every equilibrium model is an :class:`EquilibriumModel`: ``inject(x)`` once, a ``cell``
``f(z, u)`` solved to its fixed point by ``deq`` (a :class:`deqkit.DEQ`), ``readout(z)`` on
any iterate; ``model(x, z0=None, **overrides) -> (logits, info)`` solves, and
``model.iterate(x, n)`` runs the same cell as a weight-tied recurrent net for ``n`` steps.
Explicit baselines (:class:`ExplicitModel`) return ``(logits, None)``. All report
``num_parameters()``.

* :class:`RecallNet`: DeepThinking-style recall network (1-D prefix sums, 2-D mazes), as
  a DEQ or a recurrent net trained with :func:`progressive_loss`; ``lipschitz=L`` makes its
  cell ``L``-Lipschitz by construction (:class:`AveragedBlock`, bounded convolutions).
* :class:`DEQMLP` / :class:`ExplicitMLP`: dense classifier and its untied twin.
* :class:`DEQConv` / :class:`ExplicitConv`: small multiscale conv classifier and its twin.
* :class:`DEQAttention` / :class:`ExplicitAttention`: a transformer-block cell
  (:class:`AttentionCell`, input injected at every application, positions explicit) over a
  sequence or grid, and its untied twin.
* :class:`MonotoneMLP`: monotone operator DEQ, convergence guaranteed (Winston & Kolter
  2020). ``spectral_norm=True`` on the others constrains their cell's weights.
* :func:`build_model` builds any of them by name (:func:`available_models`);
  :func:`model_factory` is the constructor it calls.
"""

from ._attention import AttentionCell, DEQAttention, ExplicitAttention, sinusoidal_positions
from ._base import DEQ_SETTINGS, EquilibriumModel, ExplicitModel
from ._conv import DEQConv, ExplicitConv, MultiscaleCell, VariationalDropout
from ._mlp import DEQMLP, ExplicitMLP, MLPCell
from ._monotone import MonotoneCell, MonotoneMLP
from ._recall import AveragedBlock, RecallCell, RecallNet, ResidualBlock, progressive_loss
from ._registry import available_models, build_model, model_factory

__all__ = [
    "AttentionCell",
    "AveragedBlock",
    "DEQAttention",
    "DEQConv",
    "DEQMLP",
    "DEQ_SETTINGS",
    "EquilibriumModel",
    "ExplicitAttention",
    "ExplicitConv",
    "ExplicitMLP",
    "ExplicitModel",
    "MLPCell",
    "MonotoneCell",
    "MonotoneMLP",
    "MultiscaleCell",
    "RecallCell",
    "RecallNet",
    "ResidualBlock",
    "VariationalDropout",
    "available_models",
    "build_model",
    "model_factory",
    "progressive_loss",
    "sinusoidal_positions",
]
