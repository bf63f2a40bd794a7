"""Spectral radius and spectral norm of ``J = df/dz``, per sample, from Jacobian products."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._autodiff import jvp
from .._validate import integer, real
from ..nn import Packer, State
from ._common import check_callable, flat_map, random_like

__all__ = ["SpectralEstimate", "spectral_norm", "spectral_radius"]


@dataclass(frozen=True)
class SpectralEstimate:
    """An estimate per sample of the spectral radius or the spectral norm of ``J = df/dz``.

    Attributes:
        value: ``[B]`` the estimate (``rho(J_b)`` or ``||J_b||_2``), in the state's dtype
            (float32 for half-precision states). NaN where ``f`` or its derivative was not
            finite.
        converged: ``[B]`` bool, whether ``residual <= tol``.
        residual: ``[B]`` float64 relative Ritz residual ``||A x - theta x|| / |theta|`` of the
            returned Ritz pair ``(theta, x)``, ``A = J`` (radius) or ``J^T J`` (norm). Zero
            when the Krylov space became invariant (the answer is exact up to rounding).
        iterations: ``[B]`` long, Jacobian products spent on the sample until it converged
            (``J v`` for the radius; ``J v`` then ``J^T w`` for the norm, counted as one).
        eigenvalue: ``[B]`` complex128 dominant Ritz value (radius only, else ``None``): its
            sign or phase tells a negative or complex dominant eigenvalue (oscillating
            iterates) from a positive one.
        tol: The tolerance used.
    """

    value: Tensor
    converged: Tensor
    residual: Tensor
    iterations: Tensor
    eigenvalue: Tensor | None
    tol: float


def spectral_radius(
    f: Callable[[State], State],
    z: State,
    *,
    krylov_dim: int = 20,
    restarts: int = 4,
    tol: float = 1e-4,
    generator: torch.Generator | None = None,
) -> SpectralEstimate:
    r"""Spectral radius ``rho(J_b) = max |lambda(J_b)|`` of ``J = df/dz`` at ``z``, per sample.

    ``rho < 1`` makes plain iteration converge locally (eventually contractive) even where
    ``||J||_2 >= 1``; compare with :func:`spectral_norm`.

    Plain power iteration fails when the dominant eigenvalue is not unique in modulus (a real
    ``+-`` pair, or the complex pair of a rotation), which is common for DEQ cells. This uses
    its Krylov generalisation instead: ``krylov_dim`` steps of Arnoldi per sample,

    .. math:: J V_k = V_k H_k + h_{k+1,k} v_{k+1} e_k^\top,

    one Jacobian-vector product (``torch.func.jvp``) per step, batched over the samples; the
    estimate is the largest-modulus eigenvalue ``theta`` of the small Hessenberg matrix
    ``H_k`` (a Ritz value, complex in general), with residual ``|h_{k+1,k}| |e_k^\top y|``
    for its unit eigenvector ``y``. A sample not converged after ``krylov_dim`` steps restarts
    from its dominant Ritz vector, at most ``restarts`` times (Saad, "Numerical Methods for
    Large Eigenvalue Problems", 2011, ch. 6).

    Args:
        f: The map at a fixed input, ``z -> f(z, x)`` (for a cell: ``lambda z: cell(z, u)``),
            tensor or tuple-of-tensors states. Samples must not interact: ``J`` is read as one
            block per sample.
        z: ``[B, ...]`` point (usually the fixed point); not modified, never differentiated.
        krylov_dim: Arnoldi steps per cycle, >= 1 (capped at the state size). Default ``20``.
        restarts: Restarts after the first cycle, >= 0. Default ``4``.
        tol: Relative Ritz residual at which a sample counts as converged, > 0. Default
            ``1e-4``.
        generator: Random generator for the starting vectors. Default: the global one.

    Returns:
        A :class:`SpectralEstimate` with ``value = |theta|`` and the complex ``eigenvalue``.

    Raises:
        ValueError: bad ``krylov_dim``/``restarts``/``tol``, or ``f`` returning another shape.
        TypeError: ``f`` not callable, ``z`` not a tensor or tuple of tensors.
    """
    _, flat, fz, work = _setup(f, z, krylov_dim, restarts, tol)

    def matvec(v: Tensor) -> Tensor:
        return jvp(fz, (flat,), (v.to(flat.dtype),))[1].to(work)

    with torch.no_grad():
        theta, res, count = _dominant(
            matvec, random_like(flat, generator, work), krylov_dim, restarts, tol, symmetric=False
        )
    value = theta.abs().to(device=flat.device, dtype=work)
    return SpectralEstimate(
        value=value,
        converged=(res <= tol).to(flat.device),
        residual=res.to(flat.device),
        iterations=count.to(flat.device),
        eigenvalue=theta.to(flat.device),
        tol=float(tol),
    )


def spectral_norm(
    f: Callable[[State], State],
    z: State,
    *,
    krylov_dim: int = 20,
    restarts: int = 4,
    tol: float = 1e-4,
    generator: torch.Generator | None = None,
) -> SpectralEstimate:
    r"""Spectral norm ``||J_b||_2 = sqrt(lambda_max(J_b^T J_b))`` of ``J = df/dz``, per sample.

    ``||J||_2 < 1`` makes ``f`` a contraction near ``z`` in the Euclidean norm: every step of
    plain iteration shrinks the error, not just eventually. A norm above 1 with a radius
    (:func:`spectral_radius`) below 1 marks an eventually contractive, non-normal layer, where
    the residual can grow for a while before it falls.

    Power iteration on ``J^T J`` (one ``torch.func.jvp`` then one vector-Jacobian product per
    step) generalised to Lanczos: ``krylov_dim`` steps of Arnoldi on the symmetric operator
    ``J^T J``, batched over the samples, then the largest eigenvalue ``theta`` of the small
    tridiagonal matrix; ``value = sqrt(theta)``. Lanczos' estimate is never worse than the
    Rayleigh quotient power iteration reaches with as many products. Restarts as in
    :func:`spectral_radius`.

    Args:
        f: The map at a fixed input, ``z -> f(z, x)``; samples must not interact.
        z: ``[B, ...]`` point (tensor or tuple of tensors).
        krylov_dim: Lanczos steps per cycle, >= 1 (capped at the state size). Default ``20``.
        restarts: Restarts after the first cycle, >= 0. Default ``4``.
        tol: Relative Ritz residual (of ``theta``, an estimate of ``||J||_2^2``) at which a
            sample counts as converged, > 0. Default ``1e-4``.
        generator: Random generator for the starting vectors. Default: the global one.

    Returns:
        A :class:`SpectralEstimate` (``eigenvalue`` is ``None``).

    Raises:
        ValueError / TypeError: as :func:`spectral_radius`.
    """
    _, flat, fz, work = _setup(f, z, krylov_dim, restarts, tol)

    with torch.no_grad():
        _, vjp_fn = torch.func.vjp(fz, flat)

        def matvec(v: Tensor) -> Tensor:
            jv = jvp(fz, (flat,), (v.to(flat.dtype),))[1]
            return vjp_fn(jv)[0].to(work)

        theta, res, count = _dominant(
            matvec, random_like(flat, generator, work), krylov_dim, restarts, tol, symmetric=True
        )
    value = theta.real.clamp(min=0).sqrt().to(device=flat.device, dtype=work)
    return SpectralEstimate(
        value=value,
        converged=(res <= tol).to(flat.device),
        residual=res.to(flat.device),
        iterations=count.to(flat.device),
        eigenvalue=None,
        tol=float(tol),
    )


def _setup(f, z, krylov_dim, restarts, tol):
    check_callable("f", f)
    integer("krylov_dim", krylov_dim, 1)
    integer("restarts", restarts, 0)
    real("tol", tol, 0.0, low_open=True)
    packer = Packer.of(z, "z")
    flat = packer.pack(z, "z").detach()
    if not flat.is_floating_point():
        raise TypeError(f"z must be floating point, got dtype {flat.dtype}")
    if flat.numel() == 0:
        raise ValueError(f"z must have a non-empty batch and state, got shapes {packer.shapes}")
    work = torch.float32 if flat.dtype in (torch.float16, torch.bfloat16) else flat.dtype
    return packer, flat, flat_map(f, packer), work


def _dominant(
    matvec: Callable[[Tensor], Tensor],
    v: Tensor,
    krylov_dim: int,
    restarts: int,
    tol: float,
    symmetric: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Restarted Arnoldi; per sample the dominant Ritz value, its residual, products used.

    Returns CPU tensors: ``theta`` complex128 ``[B]``, relative residual float64 ``[B]``,
    products long ``[B]``. Each sample keeps the estimate with the lowest residual seen and
    stops counting products once converged (the batch runs on while any sample is not).
    """
    B, n = v.shape
    k = min(krylov_dim, n)
    theta = torch.full((B,), complex(torch.nan, torch.nan), dtype=torch.complex128)
    res = torch.full((B,), torch.inf, dtype=torch.float64)
    count = torch.zeros(B, dtype=torch.long)
    done = torch.zeros(B, dtype=torch.bool)
    for _ in range(restarts + 1):
        V, H = _arnoldi(matvec, v, k)
        t, r, x, bad = _ritz(V, H, symmetric)
        count += k * ~done
        take = ~done & ~bad & (r <= res)
        theta = torch.where(take, t, theta)
        res = torch.where(take, r, res)
        done |= bad | (res <= tol)
        if bool(done.all()):
            break
        v = torch.where(bad.to(v.device)[:, None], v, x)
    return theta, res, count


def _arnoldi(matvec: Callable[[Tensor], Tensor], v: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``k`` batched Arnoldi steps from ``v`` (classical Gram-Schmidt, applied twice).

    Returns the basis ``V [B, k + 1, n]`` and Hessenberg ``H [B, k + 1, k]``. A sample whose
    Krylov space turns invariant (the new direction is rounding noise) gets a zero vector
    and zero subdiagonal from there on, so its ``H`` is block diagonal with a zero block.
    """
    B, n = v.shape
    noise = 100 * torch.finfo(v.dtype).eps
    V = v.new_zeros(B, k + 1, n)
    H = v.new_zeros(B, k + 1, k)
    V[:, 0] = v / torch.linalg.vector_norm(v, dim=1, keepdim=True)
    for j in range(k):
        w = matvec(V[:, j])
        size = torch.linalg.vector_norm(w, dim=1)
        basis = V[:, : j + 1]
        for _ in range(2):
            c = torch.bmm(basis, w[:, :, None])[:, :, 0]
            w = w - torch.bmm(c[:, None, :], basis)[:, 0]
            H[:, : j + 1, j] += c
        beta = torch.linalg.vector_norm(w, dim=1)
        alive = beta > noise * size
        H[:, j + 1, j] = torch.where(alive, beta, 0.0)
        V[:, j + 1] = torch.where(alive[:, None], w / torch.where(alive, beta, 1.0)[:, None], 0.0)
    return V, H


def _ritz(V: Tensor, H: Tensor, symmetric: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Dominant Ritz value (CPU complex128), relative residual, real restart vector, bad."""
    k = H.shape[2]
    Hc = H.detach().to("cpu", torch.float64)
    bad = ~torch.isfinite(Hc).flatten(1).all(dim=1)
    Hc = torch.where(bad[:, None, None], 0.0, Hc)
    Hk = Hc[:, :k, :k]
    rows = torch.arange(H.shape[0])
    if symmetric:
        vals, vecs = torch.linalg.eigh((Hk + Hk.mT) / 2)
        idx = vals.argmax(dim=1)
        vals, vecs = vals.to(torch.complex128), vecs.to(torch.complex128)
    else:
        vals, vecs = torch.linalg.eig(Hk)
        idx = vals.abs().argmax(dim=1)
    theta = vals[rows, idx]
    y = vecs[rows, :, idx]
    tiny = torch.finfo(torch.float64).tiny
    res = Hc[:, k, k - 1].abs() * y[:, -1].abs() / theta.abs().clamp(min=tiny)
    res = torch.where(bad, torch.inf, res)
    theta = torch.where(bad, complex(torch.nan, torch.nan), theta)
    # Ritz vector x = V_k y, turned real: rotate its largest entry onto the real axis (the
    # real part of a complex eigenvector spans the same real invariant plane).
    x = torch.einsum("bkn,bk->bn", V[:, :k].to(torch.complex128), y.to(V.device))
    big = x.abs().argmax(dim=1)
    top = x[rows.to(V.device), big]
    x = (x * (top.conj() / top.abs().clamp(min=tiny))[:, None]).real
    x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp(min=tiny)
    return theta, res, x.to(V.dtype), bad
