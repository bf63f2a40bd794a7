"""Another solver's steps in fixed chunks with no host read inside; one CUDA graph per chunk."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._validate import assign, integer
from ._core import Evaluator, Point, Solver
from ._loop import resolve, run_steps

__all__ = ["Graphed"]


@dataclass(frozen=True)
class Graphed(Solver):
    r"""Run another solver's steps ``steps`` at a time, each chunk one CUDA graph replay.

    On an accelerator the shared loop asks "is any sample still running?" before every
    step, so that ``f`` never runs once every sample has stopped; that read makes the host
    wait for the device once per step, and every step's 20-60 small kernels are launched
    one by one from Python. Where the batch's shapes are fixed and ``f`` can be recorded
    (no host synchronisation inside it), ``Graphed`` records ``steps`` steps of ``solver``,
    together with the loop's per-sample update (acceptance, non-finite samples, the best
    iterate, per-sample stopping and counts), as one CUDA graph, and replays it:

    .. math::

        \text{one host read and one graph launch per } k = \texttt{steps}
        \text{ evaluations, instead of one read and } 20\text{-}60 \text{ launches per one.}

    The graph is recorded once per solve, after one chunk run eagerly on a side stream
    (the warm-up CUDA graphs need, which is also the solve's first chunk), and replayed
    for every later chunk; inside a backward pass (the implicit gradient's adjoint solve,
    whose vector-Jacobian products run on the stream of their forward pass) the chunks run
    unrecorded. A budget that is not a multiple of ``steps`` ends with an eager
    chunk of the steps left. A recording has costs of its own (torch synchronises the
    device and empties its cache first) and is not reused between solves (``f`` may close
    over new inputs), so it can pay only in solves of many chunks; not yet measured on a
    GPU.

    What it gives: the iterates, statuses and per-sample evaluation counts of ``solver``
    run by the shared loop under the accelerator policy (no host read inside a step), bit
    for bit, on every device. What it costs: after the last sample stops, the rest of its
    chunk still evaluates ``f`` on the (frozen) batch, up to ``steps - 1`` evaluations
    charged to no sample; choose ``steps`` below the typical solve's evaluations. Since
    replays do not run Python, ``f``'s Python code runs only while a chunk is run eagerly
    or recorded: an ``f`` with side effects in Python (counters, prints, asserts on values)
    sees only those calls.

    On the CPU (no graphs) the same chunks run eagerly, step by step: the same iterates
    as on the GPU, to check a configuration there; it is not faster than ``solver`` alone.
    Where the loop must see every step (``record_trace``, ``record_iterates``, an
    ``on_step`` callback, or autograd recording), it runs ``solver``'s steps itself,
    unrecorded.

    Args:
        solver: The solver whose steps run, a :class:`Solver` with ``capturable = True``
            (:class:`Picard`, :class:`Anderson` with ``native=False``), its name, or a
            mapping of its name and options (``{"name": "anderson", "m": 8}``, for TOML and
            JSON configs: ``solver = "graphed"``, ``solver_options = {solver = {name =
            "anderson", m = 8}, steps = 8}``). Default ``"anderson"``.
        steps: Steps per chunk (per host read and graph replay), >= 1. Default ``8``.

    Raises:
        ValueError: a solver that cannot be recorded (Broyden's buffers grow with the
            solve, Newton-Krylov reads its line search on the host, Anderson's native solve
            is CPU code of its own), or ``steps < 1``.
        RuntimeError: recording failed on the GPU (``f`` or a step synchronised with the
            host); the message says what to change.
    """

    solver: Solver | str | Mapping[str, Any] = "anderson"
    steps: int = 8
    name = "graphed"
    differentiable_steps: ClassVar[bool] = False

    def __post_init__(self):
        of = self.name
        inner = self.solver
        if isinstance(inner, str):
            inner = resolve(inner)
        elif isinstance(inner, Mapping):  # a config's {name = "anderson", m = 8}
            spec = dict(inner)
            if not isinstance(spec.get("name"), str):
                raise TypeError(
                    f"{of}: a solver given as a mapping needs its method name under 'name', "
                    f"got {inner!r}"
                )
            inner = resolve(spec.pop("name"), spec)
        if not isinstance(inner, Solver):
            raise TypeError(
                f"{of}: solver must be a solver name, a Solver instance or a mapping of a "
                f"name and options, got {type(inner).__name__}"
            )
        native = getattr(inner, "native", False)
        if not inner.capturable or native:
            why = (
                "its native solve is CPU code of its own; use native=False"
                if native
                else "its steps read values on the host or change their shapes from step to step"
            )
            raise ValueError(
                f"{of}: solver {inner.name!r} cannot be recorded as a graph ({why}); "
                "capturable solvers: picard, anderson"
            )
        assign(self, solver=inner, steps=integer("steps", self.steps, 1, of=of))

    def init(self, ev: Evaluator, p: Point, active: Tensor) -> Any:
        """The inner solver's state: where the loop runs the steps itself (a trace,
        iterates, ``on_step`` or autograd asked for), they are the inner solver's, unrecorded."""
        return self.solver.init(ev, p, active)

    def step(self, ev: Evaluator, p: Point, active: Tensor, state: Any):
        """The inner solver's step (see :meth:`init`)."""
        return self.solver.step(ev, p, active, state)

    def fused(self, ev: Evaluator, p: Point, active: Tensor, failed: Tensor, tol: float):
        """The solve in chunks of ``steps`` steps; ``(best_z, best_res, nfev, failed)``."""
        inner = self.solver
        ev.host_checks_free = False  # the accelerator policy on every device
        nfev = ev.nfev  # counts the evaluation at z0 into the tensor the steps add to
        p = Point(*(t.clone() for t in p))
        # Everything a chunk reads and writes, in tensors made once: a chunk ends by
        # copying its results into them, so that a recording of it can be replayed.
        carry = (p, p.z.clone(), p.res.clone(), active.clone(), failed.clone())
        carry = (*carry, inner.init(ev, p, active))
        leaves, spec, rebuild = _flatten(carry)

        def chunk(n: int) -> None:
            q_p, best_z, best_res, act, fail, state = rebuild(leaves)
            q_p, best_z, best_res, act, state = run_steps(
                ev, inner, q_p, best_z, best_res, act, fail, state, n, tol
            )
            out, out_spec, _ = _flatten((q_p, best_z, best_res, act, fail, state))
            if out_spec != spec:
                raise RuntimeError(
                    f"{self.name}: the state of {inner.name!r} changed its structure, shapes "
                    "or dtypes over a step; a capturable solver must keep them"
                )
            _write_back(leaves, out)

        # Inside a backward pass (the implicit gradient's adjoint solve) f's vector-Jacobian
        # products run on the stream of their forward, outside any recording: unrecorded.
        record = p.z.device.type == "cuda" and not _in_backward()
        budget = ev.max_iter - 1  # steps the loop may take
        done, warm, graph = 0, False, None
        running = carry[3]
        with torch.cuda.device(p.z.device) if record else contextlib.nullcontext():
            while done < budget and bool(running.any()):
                n = min(self.steps, budget - done)
                if not record or n < self.steps:
                    chunk(n)
                elif not warm:  # CUDA graphs want the work run once before it is recorded
                    side = _streams(p.z.device)[0]
                    side.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(side):
                        chunk(n)
                    torch.cuda.current_stream().wait_stream(side)
                    warm = True
                elif graph is None:
                    graph = _record(chunk, n, p.z.device, self.name, inner.name)
                else:
                    graph.replay()
                done += n
        return carry[1], carry[2], nfev, carry[4]


def _in_backward() -> bool:
    """Whether autograd is running a backward pass in this thread (torch's id of the
    running backward pass, -1 outside one)."""
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is not None and task() != -1


_STREAMS: dict[torch.device, tuple[Any, Any]] = {}


def _streams(device: torch.device) -> tuple[Any, Any]:
    """A side stream for the warm-up and one to record on, per device, made once (each
    stream gets its own cuBLAS workspace)."""
    if device not in _STREAMS:
        _STREAMS[device] = (torch.cuda.Stream(device), torch.cuda.Stream(device))
    return _STREAMS[device]


def _record(chunk: Callable[[int], None], n: int, device, name: str, inner: str) -> Any:
    """Record a chunk of ``n`` steps as a CUDA graph on ``device`` and replay it once
    (recording runs nothing). Returns the graph."""
    graph = torch.cuda.CUDAGraph()
    stream = _streams(device)[1]
    current = torch.cuda.current_stream(device)
    try:
        # thread_local: another thread's CUDA calls (a data loader pinning memory) do not
        # invalidate the recording.
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
            chunk(n)
    except RuntimeError as err:
        torch.cuda.set_stream(current)  # a failed end of capture can leave the stream set
        raise RuntimeError(
            f"{name}: recording {n} steps of {inner!r} as a CUDA graph failed ({err}). "
            "Neither f nor the step may synchronise with the host (no .item(), "
            "bool(tensor), printing or indexing by a boolean mask), copy from CPU memory "
            f"or change its shapes; otherwise solve with {inner!r} alone"
        ) from err
    graph.replay()
    return graph


def _flatten(obj: Any) -> tuple[list[Tensor], tuple, Callable[[list[Tensor]], Any]]:
    """The tensors of a nest of tuples, named tuples and dataclasses, in order; a
    description of the rest (types, non-tensor values, tensor shapes and dtypes); and a
    function that rebuilds the nest around another such list of tensors (dataclasses by
    ``dataclasses.replace``, so ``obj`` is untouched)."""
    leaves: list[Tensor] = []

    def walk(o: Any) -> tuple[Any, Callable]:
        """``(description, build)`` of ``o``; ``build(it)`` takes its tensors from ``it``."""
        if isinstance(o, Tensor):
            leaves.append(o)
            return ("tensor", tuple(o.shape), o.dtype), next
        if isinstance(o, tuple):
            parts = [walk(x) for x in o]
            make = type(o)._make if hasattr(o, "_fields") else tuple
            spec = (type(o).__name__, tuple(d for d, _ in parts))
            return spec, lambda it: make([b(it) for _, b in parts])
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            names = [f.name for f in dataclasses.fields(o)]
            parts = [walk(getattr(o, n)) for n in names]
            spec = (type(o).__name__, tuple((n, d) for n, (d, _) in zip(names, parts, strict=True)))
            return spec, lambda it: dataclasses.replace(
                o, **{n: b(it) for n, (_, b) in zip(names, parts, strict=True)}
            )
        if o is None or isinstance(o, (bool, int, float, str)):
            return o, lambda it: o
        # shared constants: the same object, or a different state
        return ("object", id(o)), lambda it: o

    spec, build = walk(obj)
    return leaves, spec, lambda tensors: build(iter(tensors))


def _write_back(static: list[Tensor], new: list[Tensor]) -> None:
    """Copy each new tensor into its static twin (where a step replaced it). A new tensor
    that shares memory with a static one is copied first, so no write reads a value an
    earlier write of the same pass has changed."""
    ptrs = {s.untyped_storage().data_ptr() for s in static}
    pairs = [(s, t) for s, t in zip(static, new, strict=True) if t is not s]
    pairs = [(s, t.clone() if t.untyped_storage().data_ptr() in ptrs else t) for s, t in pairs]
    for s, t in pairs:
        s.copy_(t)
