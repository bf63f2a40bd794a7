"""Anderson acceleration (type II), safeguarded, per sample."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from .._validate import assign, integer, real
from . import _native
from ._core import Evaluator, Point, Solver, put


@dataclass(eq=False, slots=True)
class _History:
    """Anderson's state. Mutable: a step updates it (and its buffers) in place."""

    D: Tensor  # [B, m, n] dZ + beta dG = dF - (1 - beta) dG of consecutive accepted iterates
    dG: Tensor  # [B, m, n] differences of g(z) = f(z) - z
    A: Tensor  # [B, m, m] float64 dG dG^T plus the ridge on its diagonal; an unused column
    # is zero off the diagonal and _TINY on it, so that its weight is 0
    rhs: Tensor  # [B, m] float64 dG g_k for the current iterate (valid columns only count)
    accepted: Tensor | None  # [B] long, differences recorded since the last reset; the
    # ring's next column is accepted % m and its valid columns are 0..min(accepted, m) - 1.
    # None while every sample has recorded `steps` (host checks free, no sample reset).
    steps: int  # differences recorded by every sample while `accepted` is None
    rows: Tensor  # [B] long, 0..B-1
    consts: _Constants  # per (m, lam, device), shared between solves
    # The uniform path's buffers and views, made once per solve. They are written in place
    # while autograd is off and `A` is still `A0` (the per-sample path and autograd replace
    # `A`, and then `D` and `dG` too, by new tensors).
    A0: Tensor  # the [B, m, m] buffer A starts as
    rhs_col: Tensor  # [B, m, 1] view of rhs, the Cholesky solve's right-hand side
    gram: Tensor  # [B, 2, m] float64: the new Gram row (row 0) and rhs (row 1); rhs views it
    row: Tensor  # [B, m] view gram[:, 0]
    dGT: Tensor  # [B, n, m] view dG^T, the Gram product's right operand
    columns: tuple  # per k: (D[:, k], dG[:, k], A[:, k], A[:, :, k]) views
    weights: Tensor  # [B, m, 1] gamma in the state dtype
    weights_row: Tensor  # [B, 1, m] view of weights
    pairs: tuple  # two [B, 2, n] buffers, used in turn: (dg, g) of a step, so that the Gram
    # product reads both from one tensor (g is written there by the evaluation)
    safeguard: Tensor  # 0-dim, Anderson.safeguard in the state dtype


class _Constants:
    """Index and ridge tensors that depend on ``(m, lam, device)`` only."""

    def __init__(self, m: int, lam: float, device: torch.device):
        eye = torch.eye(m, dtype=torch.float64, device=device)
        cols = torch.arange(m, device=device)
        ks = cols[:, None].expand(m, m)
        self.cols = cols  # [m] long, 0..m-1
        self.eye = eye  # [m, m] float64 identity: eye[k] puts the ridge on column k's diagonal
        self.empty = eye * _TINY  # [m, m] the A of a sample with no history
        # cross[k] = ((k, .., k, 0, .., m-1), (0, .., m-1, k, .., k)): row k, then column k
        self.cross = torch.stack(
            (torch.cat((ks, cols.expand(m, m)), 1), torch.cat((cols.expand(m, m), ks), 1)), 1
        )
        # Per column k, lam e_k and tiny e_k: row + (lam e_k row + tiny e_k) is the row with
        # the ridge on its diagonal entry k, exactly row elsewhere (x + 0).
        self.ridge = tuple(zip((eye * lam).unbind(0), self.empty.unbind(0), strict=True))


@functools.lru_cache(maxsize=16)
def _constants(m: int, lam: float, device: torch.device) -> _Constants:
    with torch.no_grad():
        return _Constants(m, lam, device)


@dataclass(frozen=True)
class Anderson(Solver):
    r"""Anderson acceleration, type II, in difference form with a per-column relative ridge.

    With residual ``g(z) = f(z) - z`` and the last ``m_k <= m`` differences
    ``dG = [g_{i+1} - g_i]``, ``dF = [f(z_{i+1}) - f(z_i)]`` (so ``dZ = dF - dG``):

    .. math::

        \gamma_k &= \arg\min_\gamma \|g_k - dG\,\gamma\|^2
                   + \lambda \textstyle\sum_i \|dG_i\|^2 \gamma_i^2 \\
        z_{k+1} &= z_k + \beta g_k - (dZ + \beta\, dG)\,\gamma_k

    which equals the classical form ``z_{k+1} = sum_i alpha_i f(z_i)`` (``sum alpha = 1``,
    ``alpha`` minimising ``||G alpha||``) for ``beta = 1, lambda = 0`` (Walker & Ni 2011,
    SIAM J. Numer. Anal. 49(4)).

    How this differs from the DEQ tutorial (Kolter, Duvenaud & Johnson), torchdeq 0.1 and
    jaxopt, and why:

    1. The ridge is relative: each weight is penalised in proportion to its own column's
       ``||dG_i||^2`` (a Tikhonov term on the column-normalised problem), so it is invariant
       to the scale of ``f`` and of each difference. An absolute ``lam = 1e-4`` on the Gram
       matrix (tutorial, torchdeq) damps the method into being slower than plain iteration on
       most problems and stalls it near ``1e-4`` residual. A ridge relative to the trace
       ``tr(dG^T dG) / m`` (also scale invariant) still damps the newest, much smaller
       differences of a fast solve: with ``m >= n`` on a linear map it took 13 evaluations
       where GMRES-equivalent Anderson takes 10; the per-column ridge takes 10.
    2. The ``m x m`` system is solved per sample in float64 by a Cholesky factorisation that
       reports failure per sample (``cholesky_ex``); a failing sample takes a plain damped step
       and clears its history instead of aborting the batch with "singular U". (Measured on
       the CPU at ``B = 64..128, m = 5..10``: LAPACK's batched Cholesky, LU ``solve_ex`` and
       NumPy all cost 35-70 us per batch, per-matrix call overhead, while a Gaussian
       elimination written in tensor operations costs 4-8 operations per column, 250-500 us.)
    3. Safeguard: a proposal whose residual ``||g||`` is non-finite or grows by more than
       ``safeguard`` times over the last accepted iterate is rejected; that sample clears its
       history and its next step is a plain damped step. Weights with ``||gamma|| > max_weight``
       are rejected the same way. None of the three references has a safeguard.
    4. Converged samples are frozen by the shared loop; the tutorial and torchdeq keep updating
       them until the whole batch meets the tolerance, which drives their differences to zero,
       the Gram matrix singular, and sometimes the sample back out of convergence.
    5. The Gram matrix (with its ridge) and ``dG g_k`` are updated incrementally: after an
       evaluation one batched product against the history gives both the new Gram row and
       the next right-hand side, so a step costs two passes over the history instead of
       rebuilding ``m^2 n`` Gram entries. ``dZ + beta dG`` is stored instead of ``dF``, so
       ``beta != 1`` costs no third pass.
    6. History is a preallocated ring per sample with its own length, so samples may reset
       independently; it is written in place (no allocation of history per step). Nothing
       in the step synchronises with the host on an accelerator (there the ``m x m`` solve
       is two batched triangular solves: torch's batched CUDA ``cholesky_solve`` calls
       MAGMA, which waits for the device on every call). On the CPU, where reading a
       value is free, the step checks whether every sample accepted and none failed, and
       while that holds (the usual case) it skips every per-sample mask and select: all
       rings are then the same length and written at the same column with a plain slice.
       Both paths give the same iterates, bit for bit. The uniform path is written for
       the CPU, where a small tensor operation costs about as much as 1/20 of an
       evaluation of a 64 x 256 tanh layer: every buffer and view it uses is made once per
       solve (the residual of each evaluation is written straight into the buffer the Gram
       product reads), one host read of the whole batch's weight norm bounds every
       sample's, and a step is about 30 operations, 20 beyond plain iteration.

    Args:
        m: History length (number of differences), >= 1. Default ``5``.
        beta: Mixing (damping) in ``(0, 2]``. Default ``1.0``.
        lam: Relative ridge ``lambda`` >= 0 (bounds the condition number of the
            column-normalised system by about ``m / lambda``). Default ``1e-8``.
        safeguard: Growth factor of ``||g||`` above which an accelerated proposal is
            rejected, > 1 (``inf`` disables). Default ``10.0``; a factor of 2 stalls on
            non-normal maps, whose residual may legitimately grow by ``||M||`` per step.
        max_weight: Largest accepted ``||gamma||``. Default ``1e6``.
        native: Run the whole solve in a C++ extension, one call per evaluation of ``f``
            (:meth:`fused`): the loop's bookkeeping (residuals, per-sample stopping, the best
            iterate, counts) and the step's (safeguard, history, Gram update, the ``m x m``
            solve, the extrapolation) done sample by sample while its rows are in cache.
            Compiled on first use (about 40 s; it needs a C++ compiler and ``ninja``,
            ``RuntimeError`` says so where it cannot be built). CPU only, float32 or float64
            state. Where the solve records a trace or iterates, calls ``on_step``, or runs
            under autograd (the unrolled backward), the eager steps run instead. ``f``
            receives one of two buffers the extension reuses (each is rewritten two
            evaluations later): an ``f`` that keeps its input must copy it. Same
            semantics as the default (statuses, per-sample counts), but its sums run in
            another order and its ``m x m`` solve is not LAPACK's, so its iterates agree
            with the default's to rounding, not bit for bit; every trained number in the
            docs was made with the default. Measured by ``deqkit solve-bench --native``.
            Default ``False``.
        history_dtype: With ``native=True``, the dtype the two ``[B, m, n]`` history rings
            are stored in: ``None`` (the state's dtype), ``torch.bfloat16``, or
            ``torch.float32`` under a float64 state, or its name (``"bfloat16"``, for
            TOML and JSON configs: ``solver_options = {native = true, history_dtype =
            "bfloat16"}``). A step reads ``2 m`` history columns, so
            at large ``B x n`` the solve is a pass over memory, and a narrower history both
            halves that traffic and leaves more of the cache to ``f``. Each difference is
            rounded once where it is written (bfloat16: 8 significant bits); the Gram
            matrix, right-hand side and extrapolation use the stored values in the state's
            precision. Residuals, stopping and the returned iterate are exact whatever the
            history: a rounded history changes which points are proposed (the evaluation
            count may move), never what a point's residual is. Where the eager steps run
            instead (see ``native``) the history is kept in the state's dtype.
            Default ``None``.
    """

    m: int = 5
    beta: float = 1.0
    lam: float = 1e-8
    safeguard: float = 10.0
    max_weight: float = 1e6
    native: bool = False
    history_dtype: torch.dtype | str | None = None
    name = "anderson"
    capturable = True  # no host read under the accelerator policy, fixed shapes

    def __post_init__(self):
        of = self.name
        assign(
            self,
            m=integer("m", self.m, 1, of=of),
            beta=real("beta", self.beta, 0.0, 2.0, low_open=True, of=of),
            lam=real("lam", self.lam, 0.0, of=of),
            safeguard=real("safeguard", self.safeguard, 1.0, low_open=True, finite=False, of=of),
            max_weight=real("max_weight", self.max_weight, 0, low_open=True, finite=False, of=of),
        )
        if not isinstance(self.native, bool):
            raise TypeError(f"{of}: native must be True or False, got {self.native!r}")
        h = self.history_dtype
        if isinstance(h, str):  # a config's name for it (TOML and JSON have no dtypes)
            h = _HISTORY_NAMES.get(h, h)
            assign(self, history_dtype=h)
        if h is not None:
            if h not in _HISTORY:
                raise ValueError(
                    f"{of}: history_dtype must be None, torch.bfloat16, torch.float32 or "
                    f"torch.float64 (or their names, 'bfloat16'...), got {h!r}"
                )
            if not self.native:
                raise ValueError(
                    f"{of}: history_dtype={h} needs native=True (the eager step keeps its "
                    "history in the state's dtype)"
                )

    def init(self, ev: Evaluator, p: Point, active: Tensor) -> _History:
        B, n = p.z.shape
        m, dev = self.m, p.z.device
        if self.native:
            self._check_native(p.z)
        c = _constants(m, self.lam, dev)
        D, dG = p.z.new_zeros(B, m, n), p.z.new_zeros(B, m, n)
        A = c.empty.expand(B, m, m).clone()
        gram = torch.zeros(B, 2, m, dtype=torch.float64, device=dev)
        rhs = gram[:, 1]
        weights = p.z.new_zeros(B, m, 1)
        return _History(
            D=D,
            dG=dG,
            A=A,
            rhs=rhs,
            accepted=None if ev.host_checks_free else torch.zeros(B, dtype=torch.long, device=dev),
            steps=0,
            rows=torch.arange(B, device=dev),
            consts=c,
            A0=A,
            rhs_col=rhs[..., None],
            gram=gram,
            row=gram[:, 0],
            dGT=dG.transpose(1, 2),
            columns=tuple(zip(D.unbind(1), dG.unbind(1), A.unbind(1), A.unbind(2), strict=True)),
            weights=weights,
            weights_row=weights.view(B, 1, m),
            pairs=(p.z.new_empty(B, 2, n), p.z.new_empty(B, 2, n)),
            safeguard=torch.tensor(self.safeguard, dtype=p.z.dtype, device=dev),
        )

    def _check_native(self, z: Tensor) -> str:
        """Refuse what the extension cannot run; the history's name for it."""
        if z.device.type != "cpu" or z.dtype not in (torch.float32, torch.float64):
            raise ValueError(
                f"{self.name}: native=True runs on the CPU with a float32 or float64 state, "
                f"got device {z.device.type} and state dtype {z.dtype}"
            )
        h = self.history_dtype
        if h is None or h == z.dtype:
            return "state"
        if h.itemsize > z.dtype.itemsize:
            raise ValueError(
                f"{self.name}: history_dtype {h} is wider than the state dtype {z.dtype}; "
                "expected torch.bfloat16, or torch.float32 under a float64 state"
            )
        return _HISTORY[h]

    def fused(self, ev: Evaluator, p: Point, active: Tensor, failed: Tensor, tol: float):
        """The whole solve in the C++ extension (``native=True``); ``None`` otherwise.

        One call per evaluation of ``f``: ``f`` runs here, in Python, on the extension's
        proposal buffer, and the call after it does everything up to the next proposal
        (see ``_native.cpp``). Returns ``(best_z, best_res, nfev, failed)``.
        """
        if not self.native:
            return None
        history = self._check_native(p.z)
        loop = _native.load().start(
            p.z.contiguous(), p.fz.contiguous(), p.g.contiguous(), p.gnorm.contiguous(),
            p.res.contiguous(), active, failed, self.m, self.beta, self.lam, _TINY,
            self.safeguard, self.max_weight, tol, ev.relative, ev.eps, ev.max_iter, history,
        )  # fmt: skip
        running = loop.running()
        while running:
            running = loop.advance(ev.evaluate(loop.proposal()).contiguous())
        return tuple(loop.result())

    def step(self, ev: Evaluator, p: Point, active: Tensor, h: _History):
        # The uniform path (h.accepted is None) runs only where host checks are free, and
        # leaves for the per-sample path, for good, at the first step where a sample fails
        # or is rejected. Both give the same iterates: the uniform path only skips masks
        # that select everything.
        uniform = h.accepted is None
        if uniform and h.steps:
            return self._step_uniform(ev, p, active, h)
        m = self.m
        if uniform:
            count = None
            empty = h.steps == 0
        else:
            count = h.accepted.clamp(max=m)
            empty = False
        failed = None
        if empty:  # no history anywhere: the plain step, as gamma = 0 would give
            prop = p.fz if self.beta == 1.0 else p.z + self.beta * p.g
        else:
            rhs = h.rhs if uniform else torch.where(h.consts.cols < count[:, None], h.rhs, 0.0)
            chol, info = torch.linalg.cholesky_ex(h.A)
            gamma = _cholesky_solve(rhs[..., None], chol)[..., 0]
            weight = torch.linalg.vector_norm(gamma, dim=-1)
            # On the uniform path two host reads replace the per-sample mask (NaN fails <=).
            if uniform and (
                bool(info.any()) or not float(weight.detach().max()) <= self.max_weight
            ):
                uniform = False
            if not uniform:
                failed = (info != 0) | ~(weight <= self.max_weight)
                gamma = gamma.masked_fill(failed[:, None], 0.0)
            gamma = gamma.to(p.z.dtype)[:, None, :]
            if self.beta == 1.0:  # f(z_k) - dF gamma in one product
                prop = torch.baddbmm(p.fz[:, None, :], gamma, h.D, alpha=-1.0)[:, 0]
            else:
                prop = p.z + self.beta * p.g - torch.bmm(gamma, h.D)[:, 0]
        q = ev.point(ev.propose(active, prop, p.z))

        ok = None
        if not empty:
            # NaN compares False, so a non-finite accelerated proposal is rejected here.
            ok = q.gnorm <= self.safeguard * p.gnorm
            if uniform and not bool(ok.all()):
                uniform = False
                failed = (info != 0) | ~(weight <= self.max_weight)  # all False
        if uniform:
            return q, None, self._record_all(p, q, h)
        accepted = h.accepted
        if accepted is None:  # leaving the uniform path
            accepted = torch.full_like(h.rows, h.steps)
            count = accepted.clamp(max=m)
        if failed is None:
            accept, reset = active, torch.zeros_like(active)
        else:
            accepted = accepted.masked_fill(failed, 0)
            count = count.masked_fill(failed, 0)
            accept = active & (ok | (count == 0))
            reset = failed | (active & ~accept)
        return q, accept, self._record(ev, p, q, h, accepted, count, accept, reset)

    def _step_uniform(self, ev: Evaluator, p: Point, active: Tensor, h: _History):
        """A step of the uniform path with history: every sample has recorded ``h.steps``
        differences and runs. Its operations are the general path's with every mask that
        selects everything left out, so the iterates are the same; it hands over to the
        per-sample path, as the general path does, where a sample fails or is rejected."""
        chol, info = torch.linalg.cholesky_ex(h.A)
        gamma = _cholesky_solve(h.rhs_col, chol)  # [B, m, 1]
        failed = None
        # Two host reads replace the per-sample checks. The norm of the whole batch's
        # weights bounds every sample's, so below the bound (with room for rounding) no
        # sample's weight is too large; NaN fails <=.
        if info.count_nonzero() or not (
            float(torch.linalg.vector_norm(gamma.detach())) <= self.max_weight * (1.0 - 1e-6)
        ):
            weight = torch.linalg.vector_norm(gamma[..., 0], dim=-1)
            failed = (info != 0) | ~(weight <= self.max_weight)
            gamma = gamma.masked_fill(failed[:, None, None], 0.0)
        if not torch.is_grad_enabled() and h.A is h.A0:  # the weights into a buffer
            h.weights.copy_(gamma)
            gamma = h.weights_row
            pair = h.pairs[h.steps % 2]  # receives q.g (the evaluation) and dg (_record_all)
        else:
            gamma = gamma.to(p.z.dtype).view(-1, 1, self.m)
            pair = None
        if self.beta == 1.0:  # f(z_k) - dF gamma in one product
            prop = torch.baddbmm(p.fz.unsqueeze(1), gamma, h.D, alpha=-1.0).squeeze(1)
        else:
            prop = p.z + self.beta * p.g - torch.bmm(gamma, h.D).squeeze(1)
        z = ev.propose(active, prop, p.z)
        q = ev.point(z) if pair is None else ev.point(z, g_out=pair[:, 1])
        # NaN compares False, so a non-finite accelerated proposal is rejected here.
        ok = torch.le(q.gnorm, torch.mul(p.gnorm, h.safeguard))
        if failed is None:
            if bool(ok.all()):
                return q, None, self._record_all(p, q, h, pair)
            failed = torch.zeros_like(active)
        return self._leave_uniform(ev, p, q, h, active, ok, failed)

    def _leave_uniform(self, ev, p, q, h, active, ok, failed):
        """The end of a uniform step where a sample failed (``failed``, ``[B]``) or was
        rejected by the safeguard (``~ok``): every sample had ``h.steps`` differences, and
        from here on each keeps its own count (the per-sample path)."""
        accepted = torch.full_like(h.rows, h.steps).masked_fill(failed, 0)
        count = accepted.clamp(max=self.m)
        accept = active & (ok | (count == 0))
        reset = failed | (active & ~accept)
        return q, accept, self._record(ev, p, q, h, accepted, count, accept, reset)

    def _differences(self, p: Point, q: Point) -> tuple[Tensor, Tensor]:
        """``(dZ + beta dG, dG)`` between the current and the proposed point."""
        dg = q.g - p.g
        d = q.fz - p.fz
        return (d if self.beta == 1.0 else d - (1.0 - self.beta) * dg), dg

    def _record_all(self, p: Point, q: Point, h: _History, pair: Tensor | None = None) -> _History:
        """Every sample records its difference in column ``steps % m`` (the uniform path).
        ``pair``: the buffer whose row 1 is ``q.g``, to receive ``dg`` in row 0."""
        k = h.steps % self.m
        lam_k, tiny_k = h.consts.ridge[k]
        h.steps += 1
        if not torch.is_grad_enabled() and h.A is h.A0:  # in place: no allocation
            D_k, dG_k, A_k, A_col_k = h.columns[k]
            if pair is None:
                dg = torch.sub(q.g, p.g, out=dG_k)
                pair = torch.stack((dg, q.g), dim=1)
            else:
                dg = dG_k.copy_(torch.sub(q.g, p.g, out=pair[:, 0]))
            d = torch.sub(q.fz, p.fz, out=D_k)
            if self.beta != 1.0:
                d.sub_((1.0 - self.beta) * dg)
            # One pass over the history: the new Gram row (dG dg) and next rhs (dG g_{k+1}),
            # into h.gram (h.rhs views its row 1). [B, 2, n] x [B, n, m] is the layout BLAS
            # handles well (about 5x faster than the transposed product). Columns not
            # written yet are zero, and so are their entries.
            h.gram.copy_(torch.bmm(pair, h.dGT))
            row = torch.add(h.row, torch.addcmul(tiny_k, h.row, lam_k))  # the ridge on entry k
            A_k.copy_(row)  # row k and column k of A (the diagonal twice, same value)
            A_col_k.copy_(row)
            return h
        # Autograd records (unrolled backward): the same values, out of place.
        d, dg = self._differences(p, q)
        h.D, h.dG = h.D.select_scatter(d, 1, k), h.dG.select_scatter(dg, 1, k)
        both = torch.bmm(torch.stack((dg, q.g), dim=1), h.dG.transpose(1, 2)).to(torch.float64)
        row = both[:, 0]
        row = torch.add(row, torch.addcmul(tiny_k, row, lam_k))
        cross = h.consts.cross[k]
        h.A = h.A.index_put((h.rows[:, None], cross[0], cross[1]), row.repeat(1, 2))
        h.rhs = both[:, 1]
        h.rhs_col = h.rhs[..., None]
        return h

    def _record(
        self,
        ev: Evaluator,
        p: Point,
        q: Point,
        h: _History,
        accepted: Tensor,
        count: Tensor,
        accept: Tensor,
        reset: Tensor,
    ) -> _History:
        """Each accepted sample records its difference in its own column ``accepted % m``.

        The others write their difference into a column that is invalid for them (a reset
        sample) or never read again (a frozen one), where its weight is exactly 0; where
        that difference is not finite (or on an accelerator, where the check would
        synchronise) they write zeros instead. Selects, not multiplications, keep a rejected
        NaN proposal out of the history: 0 * NaN is NaN.
        """
        slot = accepted % self.m
        keep = accept[:, None]
        d, dg = self._differences(p, q)
        if not (ev.host_checks_free and bool(torch.isfinite(q.gnorm).all())):
            d, dg = torch.where(keep, d, 0.0), torch.where(keep, dg, 0.0)
        D = put(h.D, (h.rows, slot), d)
        dG = put(h.dG, (h.rows, slot), dg)
        both = torch.bmm(torch.stack((dg, q.g), dim=1), dG.transpose(1, 2)).to(torch.float64)
        c = h.consts
        A = torch.where(reset[:, None, None], c.empty, h.A)
        row = torch.where((c.cols <= count[:, None]) & keep, both[:, 0], 0.0)
        row = torch.addcmul(row, c.eye[slot], row * self.lam + _TINY)  # the ridge on entry k
        ij = c.cross[slot]
        A = put(A, (h.rows[:, None], ij[:, 0], ij[:, 1]), row.repeat(1, 2))
        h.accepted = torch.where(accept, accepted + 1, accepted * ~reset)
        h.D, h.dG, h.A, h.rhs = D, dG, A, both[:, 1]
        return h


def _cholesky_solve(rhs: Tensor, chol: Tensor) -> Tensor:
    """``A^{-1} rhs`` from the lower Cholesky factor ``chol`` of ``A`` (``[B, m, m]``).

    On the CPU LAPACK's ``cholesky_solve``. Elsewhere two batched triangular solves: for a
    batch of more than one matrix torch's CUDA ``cholesky_solve`` calls MAGMA, whose batched
    solve allocates device memory and waits for the device on every call, a host
    synchronisation per step that CUDA graphs cannot record either; cuBLAS's batched
    triangular solves do neither. (Their sums may round differently from LAPACK's, so the
    CPU keeps LAPACK: every result computed there so far came from it.)
    """
    if chol.device.type == "cpu":
        return torch.cholesky_solve(rhs, chol)
    return _triangular_solves(rhs, chol)


def _triangular_solves(rhs: Tensor, chol: Tensor) -> Tensor:
    """``(L L^T)^{-1} rhs`` as ``L^{-T} (L^{-1} rhs)``, for :func:`_cholesky_solve`."""
    y = torch.linalg.solve_triangular(chol, rhs, upper=False)
    return torch.linalg.solve_triangular(chol.mT, y, upper=True)


_TINY = torch.finfo(torch.float64).tiny
# history_dtype -> the extension's name for the rings' storage
_HISTORY = {torch.bfloat16: "bfloat16", torch.float32: "float32", torch.float64: "float64"}
_HISTORY_NAMES = {name: dtype for dtype, name in _HISTORY.items()}
