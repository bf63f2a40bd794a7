"""Test problems with known answers, and the tanh layers the benchmarks and tests use.

For testing a solver, a DEQ layer or a gradient against answers that are known, and for
benchmarking on the same problems that deqkit's own tests and benchmarks use:

* **The problem zoo**: every builder returns a :class:`Problem`, a batched map ``f``, a
  start ``z0`` (batch first), the answer ``z_star`` where it is known and unique, the
  methods that must converge on it (and those that must not), and the budget to run them
  with. Problems are small (``n <= 64``, ``B <= 16``) and float64 unless asked otherwise, so
  that exactness checks are meaningful and the whole zoo runs in seconds:
  :func:`linear` (``z* = (I - M)^-1 c``; slow, or where plain iteration diverges),
  :func:`non_normal_linear`, :func:`cyclic_shift` (windowed Anderson stagnates),
  :func:`cos_map` (the Dottie number), :func:`sqrt2_map`, :func:`affine_scalar`,
  :func:`nan_map` (one sample turns NaN), :func:`pressure_network` (SciPy's nonlinear test
  set), and the tanh layers :func:`tanh_contraction`, :func:`hard_tanh`,
  :func:`mixed_tanh`, :func:`expansive_tanh`, :func:`tanh_at_fixed_point`.
  :func:`all_problems` lists them in a fixed order, :func:`by_name` finds one.
* **The benchmark's tanh layers**: :class:`TanhSpec` describes one by width, batch and
  spectrum; :func:`build_tanh` builds it from a seed; :func:`benchmark_problems` are the
  problems of ``deqkit solve-bench``.
* :class:`TanhCell`: the tanh layer as a module ``f(z, x)`` with parameters, for DEQs.

Everything here is public and stable enough for tests; nothing in the library's normal
path imports it except :mod:`deqkit.bench`.
"""

from ._bench import TanhProblem, TanhSpec, benchmark_problems, build_tanh
from ._maps import (
    affine_scalar,
    cos_map,
    cyclic_shift,
    linear,
    nan_map,
    non_normal_linear,
    pressure_network,
    sqrt2_map,
)
from ._problem import ACCELERATED, ALL, COS_FIXED_POINT, METHODS, Problem, orthogonal
from ._tanh import (
    TanhCell,
    expansive_tanh,
    hard_tanh,
    mixed_tanh,
    tanh_at_fixed_point,
    tanh_contraction,
    tanh_fixed_point,
)
from ._zoo import all_problems, by_name

__all__ = [
    "ACCELERATED",
    "ALL",
    "COS_FIXED_POINT",
    "METHODS",
    "Problem",
    "TanhCell",
    "TanhProblem",
    "TanhSpec",
    "affine_scalar",
    "all_problems",
    "benchmark_problems",
    "build_tanh",
    "by_name",
    "cos_map",
    "cyclic_shift",
    "expansive_tanh",
    "hard_tanh",
    "linear",
    "mixed_tanh",
    "nan_map",
    "non_normal_linear",
    "orthogonal",
    "pressure_network",
    "sqrt2_map",
    "tanh_at_fixed_point",
    "tanh_contraction",
    "tanh_fixed_point",
]
