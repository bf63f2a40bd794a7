"""Benchmarks of deqkit against other libraries, as library code the CLI and scripts call.

:mod:`deqkit.bench.solvers` runs deqkit's fixed-point solvers and torchdeq's (an optional
extra, ``pip install deqkit[bench]``) side by side on the same problems in one process, and
measures each solve against its evaluation-only limit (``calls x`` one evaluation of ``f``);
:mod:`deqkit.bench.memory` measures peak memory and time of one DEQ training step, with the
implicit and the phantom gradient, against torchdeq's DEQ at the same iteration counts and
against unrolled and explicit networks, as the number of iterations grows. Each states its
targets as ``PASS``/``FAIL``/``SKIP`` lines; the problems come from :mod:`deqkit.testing`.
"""

from .memory import (
    MemoryConfig,
    MemoryRow,
    PeakMemory,
    check_memory_targets,
    format_memory_table,
    plot_memory,
    run_memory_benchmark,
)
from .solvers import (
    BenchConfig,
    Problem,
    ProblemSpec,
    Row,
    build_problem,
    check_limit_targets,
    check_targets,
    default_problems,
    format_table,
    plot_convergence,
    run_solver_benchmark,
    torchdeq_available,
    write_report,
)

__all__ = [
    "BenchConfig",
    "MemoryConfig",
    "MemoryRow",
    "PeakMemory",
    "check_memory_targets",
    "format_memory_table",
    "plot_memory",
    "run_memory_benchmark",
    "Problem",
    "ProblemSpec",
    "Row",
    "build_problem",
    "check_limit_targets",
    "check_targets",
    "default_problems",
    "format_table",
    "plot_convergence",
    "run_solver_benchmark",
    "torchdeq_available",
    "write_report",
]
