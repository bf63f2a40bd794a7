"""Training aids: Jacobian regularisation and mixed initial states."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._validate import integer, real
from ._state import Packer, State

__all__ = ["jacobian_frobenius", "mixed_init"]


def jacobian_frobenius(
    f: Callable[[State], State],
    z: State,
    samples: int = 1,
    *,
    create_graph: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Hutchinson estimate of ``||J||_F^2 / n`` per sample, ``J = df/dz`` at ``z``.

    .. math:: \frac{1}{n}\|J\|_F^2 = \frac{1}{n}\,\mathbb{E}_{\epsilon \sim N(0, I)}
              \|\epsilon^\top J\|^2

    averaged over ``samples`` draws, one vector-Jacobian product each (Bai, Koltun & Kolter
    2021, "Stabilizing Equilibrium Models by Jacobian Regularization"). Add
    ``gamma * jacobian_frobenius(lambda z: cell(z, x), z_star).mean()`` to the loss to keep
    the fixed point well conditioned; with ``create_graph=True`` (default) it is
    differentiable with respect to ``f``'s parameters.

    Args:
        f: The map at fixed ``x``, ``z -> f(z, x)``; ``z`` a tensor or tuple of tensors.
        z: ``[B, ...]`` point (usually the fixed point). It is detached: the estimate is a
            function of the parameters at ``z``, not of the path that produced ``z``.
        samples: Number of probe vectors, >= 1. Default ``1``.
        create_graph: Keep the graph so the estimate can be backpropagated. Default ``True``.
        generator: Random generator for the probes. Default: the global one.

    Returns:
        ``[B]`` estimate of ``||J_b||_F^2 / n`` per sample (``n`` the flattened state size).

    Raises:
        ValueError: ``samples < 1`` or ``f`` returning another shape than ``z``.
    """
    samples = integer("samples", samples, 1)
    packer = Packer.of(z, "z")
    flat = packer.pack(z, "z").detach().requires_grad_()
    with torch.enable_grad():
        fz = packer.pack(f(packer.unpack(flat)), "f(z)")
        total = flat.new_zeros(flat.shape[0])
        for i in range(samples):
            eps = torch.randn(fz.shape, generator=generator, dtype=fz.dtype).to(fz.device)
            (vjp,) = torch.autograd.grad(
                fz,
                flat,
                eps,
                retain_graph=i < samples - 1 or create_graph,
                create_graph=create_graph,
            )
            total = total + vjp.pow(2).sum(dim=1)
    return total / (samples * flat.shape[1])


def mixed_init(
    z0: State,
    p: float = 0.5,
    scale: float = 1.0,
    *,
    generator: torch.Generator | None = None,
) -> State:
    """Replace a random fraction ``p`` of the samples of ``z0`` by Gaussian noise.

    A training aid for path independence (Anil et al. 2022): a model trained from mixed zero
    and random initial states learns a fixed point that does not depend on where the solver
    starts. Pass the result as ``z0`` to :class:`DEQ`.

    Args:
        z0: ``[B, ...]`` state (tensor or tuple of tensors), usually ``f.initial_state(x)``.
        p: Probability that a sample is re-initialised, in ``[0, 1]``. Default ``0.5``.
        scale: Standard deviation of the noise, > 0. Default ``1.0``.
        generator: Random generator. Default: the global one.

    Returns:
        A new state of the same structure, shapes and dtypes.

    Raises:
        ValueError: ``p`` outside ``[0, 1]`` or ``scale <= 0``.
    """
    p = real("p", p, 0.0, 1.0)
    scale = real("scale", scale, 0.0, low_open=True)
    packer = Packer.of(z0, "z0")
    flat = packer.pack(z0, "z0")
    pick = torch.rand(flat.shape[0], generator=generator).to(flat.device) < p
    noise = scale * torch.randn(flat.shape, generator=generator, dtype=flat.dtype).to(flat.device)
    return packer.unpack(torch.where(pick[:, None], noise, flat))
