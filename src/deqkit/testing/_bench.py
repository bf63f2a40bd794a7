r"""The solver benchmark's problems: tanh layers of a given width, batch and spectrum.

.. math:: f(z)_b = \tanh(g_b\, W z_b + \sigma\, U x_b)

with ``W`` scaled to a given spectral norm or spectral radius (see :class:`TanhSpec`).
:mod:`deqkit.bench` runs them (as ``ProblemSpec``, ``Problem``, ``build_problem`` and
``default_problems``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._validate import integer, invalid, real

__all__ = ["TanhProblem", "TanhSpec", "benchmark_problems", "build_tanh"]


@dataclass(frozen=True)
class TanhSpec:
    r"""A tanh-layer fixed-point problem, described by its hyperparameters.

    .. math:: f(z)_b = \tanh(g_b\, W z_b + \sigma\, U x_b), \qquad b = 1..B

    ``W`` (``[width, width]``) has i.i.d. Gaussian entries scaled to spectral norm ``norm``
    (``||W||_2``) or to spectral radius ``radius`` (``max |eig(W)|``); ``U`` is Gaussian with
    variance ``1 / width`` and ``x_b ~ N(0, I)``, so ``U x_b`` has unit-variance entries and
    ``sigma = inject`` sets the scale of the input. The gains ``g_b`` are evenly spaced over
    ``gain`` across the batch. A small ``inject`` keeps pre-activations where ``tanh`` is nearly
    linear, so the rate of plain iteration approaches ``g * radius``: a hard problem.

    Attributes:
        name: Short unique name, used in tables and file names.
        width: Size ``n`` of each sample's state, >= 1. Default ``256``.
        batch: Batch size ``B``, >= 1. Default ``64``.
        norm: Spectral norm of ``W``; exactly one of ``norm`` and ``radius`` is set.
        radius: Spectral radius of ``W``.
        gain: ``(lo, hi)``, both > 0: ``g_b`` evenly spaced from ``lo`` (first sample) to
            ``hi`` (last). Default ``(1.0, 1.0)``.
        inject: Scale ``sigma`` >= 0 of the input injection. Default ``1.0``.

    Raises:
        ValueError: on an invalid field (the message names it).
    """

    name: str
    width: int = 256
    batch: int = 64
    norm: float | None = None
    radius: float | None = None
    gain: tuple[float, float] = (1.0, 1.0)
    inject: float = 1.0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise ValueError(f"Invalid name: {self.name!r} (expected a non-empty string, no '/')")
        integer("width", self.width, 1)
        integer("batch", self.batch, 1)
        if (self.norm is None) == (self.radius is None):
            raise ValueError(
                f"Set exactly one of norm and radius, got norm={self.norm!r}, "
                f"radius={self.radius!r}"
            )
        scale = self.norm if self.norm is not None else self.radius
        real("norm" if self.norm is not None else "radius", scale, 0.0, low_open=True)
        if len(self.gain) != 2 or not all(0.0 < g < math.inf for g in self.gain):
            raise invalid("gain", self.gain, "(lo, hi), both finite and > 0")
        real("inject", self.inject, 0.0)

    def describe(self) -> str:
        """One line: what the problem is."""
        scale = f"||W||_2 = {self.norm:g}" if self.norm is not None else f"rho(W) = {self.radius:g}"
        lo, hi = self.gain
        gain = f"g = {lo:g}" if lo == hi else f"g_b evenly in [{lo:g}, {hi:g}]"
        return (
            f"tanh(g W z + {self.inject:g} U x), {scale}, {gain}, "
            f"width {self.width}, batch {self.batch}"
        )


@dataclass(frozen=True, eq=False)
class TanhProblem:
    """A built problem: the map, the starting point, and the weight it uses.

    Attributes:
        spec: The :class:`TanhSpec` it was built from.
        f: The map, ``[batch, width] -> [batch, width]``; it keeps no autograd graph (its
            tensors do not require grad).
        z0: ``[batch, width]`` zeros, the starting point.
        weight: ``[width, width]`` ``W`` before the gains, in the problem's dtype and device.
    """

    spec: TanhSpec
    f: Callable[[Tensor], Tensor]
    z0: Tensor
    weight: Tensor


def build_tanh(
    spec: TanhSpec,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TanhProblem:
    """Build the map of ``spec`` from a seeded generator (same seed, same problem).

    ``W``, ``U`` and ``x`` are drawn in float64 on the CPU from ``torch.Generator`` seeded with
    ``seed``, scaled there (``torch.linalg.matrix_norm(W, 2)`` or ``torch.linalg.eigvals``),
    then moved to ``device`` and ``dtype``; problems that share ``width`` share the direction
    of ``W``.

    Args:
        spec: What to build.
        seed: Seed of the generator. Default ``0``.
        device: Where ``f`` runs. Default ``"cpu"``.
        dtype: Floating dtype of ``f`` and ``z0``. Default ``torch.float32``.

    Returns:
        A :class:`TanhProblem`.
    """
    n, B = spec.width, spec.batch
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(n, n, generator=gen, dtype=torch.float64)
    if spec.norm is not None:
        W *= spec.norm / torch.linalg.matrix_norm(W, ord=2)
    else:
        W *= spec.radius / torch.linalg.eigvals(W).abs().max()
    U = torch.randn(n, n, generator=gen, dtype=torch.float64) / math.sqrt(n)
    x = torch.randn(B, n, generator=gen, dtype=torch.float64)
    drive = (spec.inject * x @ U.T).to(device, dtype)
    weight = W.to(device, dtype)
    lo, hi = spec.gain
    if lo == hi:
        Wt = (lo * W.T).to(device, dtype).contiguous()

        def f(z: Tensor) -> Tensor:
            return torch.tanh(torch.addmm(drive, z, Wt))

    else:
        Wt = W.T.to(device, dtype).contiguous()
        g = torch.linspace(lo, hi, B, dtype=torch.float64).to(device, dtype)[:, None]

        def f(z: Tensor) -> Tensor:
            return torch.tanh(torch.addcmul(drive, g, z @ Wt))

    z0 = torch.zeros(B, n, device=device, dtype=dtype)
    return TanhProblem(spec=spec, f=f, z0=z0, weight=weight)


def benchmark_problems(*, quick: bool = False) -> tuple[TanhSpec, ...]:
    """The benchmark's problems.

    * ``tanh-0.9`` / ``tanh-2.0``: the tanh layer of REFERENCE.md section 1 at
      ``||W||_2 = 0.9`` and ``2.0`` (width 256, batch 64, unit input).
    * ``near-linear-0.99``: ``rho(W) = 1``, ``g = 0.99``, input scale 0.1: nearly linear,
      plain iteration converges at a rate close to 0.99.
    * ``mixed-0.5-0.99``: the same ``W`` and input with ``g_b`` evenly in ``[0.5, 0.99]``, so
      samples finish at very different times.
    * ``wide-tanh-0.9`` / ``wide-tanh-2.0``: width 1024, batch 128, where the per-iteration
      overhead is measured.

    Args:
        quick: The same problems at a fraction of the size (width 32 and 128, batch 8 and 16),
            to check the pipeline in seconds; the targets are stated for the full sizes.

    Returns:
        A tuple of :class:`TanhSpec`.
    """
    n, B, wide_n, wide_B = (32, 8, 128, 16) if quick else (256, 64, 1024, 128)
    return (
        TanhSpec("tanh-0.9", n, B, norm=0.9),
        TanhSpec("tanh-2.0", n, B, norm=2.0),
        TanhSpec("near-linear-0.99", n, B, radius=1.0, gain=(0.99, 0.99), inject=0.1),
        TanhSpec("mixed-0.5-0.99", n, B, radius=1.0, gain=(0.5, 0.99), inject=0.1),
        TanhSpec("wide-tanh-0.9", wide_n, wide_B, norm=0.9),
        TanhSpec("wide-tanh-2.0", wide_n, wide_B, norm=2.0),
    )
