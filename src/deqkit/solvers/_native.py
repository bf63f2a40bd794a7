"""The optional native solve of :class:`~deqkit.solvers.Anderson` (``native=True``).

``_native.cpp`` beside this file, compiled on first use by
:func:`torch.utils.cpp_extension.load` (a C++ compiler and ``ninja`` are needed then; the
build is cached under ``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import ModuleType

__all__ = ["load"]

_SOURCE = Path(__file__).with_name("_native.cpp")
_LOCK = threading.Lock()
_MODULE: ModuleType | None = None
_ERROR: str | None = None
_ISA = {  # torch.backends.cpu.get_cpu_capability(), lower case -> compiler flags
    "avx2": ["-mavx2", "-mfma"],
    "avx512": ["-mavx2", "-mfma", "-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl"],
}


def load() -> ModuleType:
    """The compiled extension, built on the first call (tens of seconds) and cached.

    Raises:
        RuntimeError: it cannot be built here (no compiler, no ninja, ...); the message
            says what failed and that ``native=False`` needs neither. The failure is
            remembered, so later calls raise at once instead of compiling again.
    """
    global _MODULE, _ERROR
    with _LOCK:
        if _MODULE is None and _ERROR is None:
            try:
                import torch
                from torch.utils.cpp_extension import load as build

                # Vector instructions as the CPU torch runs on has them; the name carries
                # the level, so a build cache shared between machines never hands one
                # machine another's instructions.
                level = torch.backends.cpu.get_cpu_capability().lower()
                flags = _ISA.get(level, [])
                _MODULE = build(
                    name=f"deqkit_anderson_native_{level if flags else 'default'}",
                    sources=[str(_SOURCE)],
                    extra_cflags=["-O3", "-fopenmp-simd", *flags],
                    verbose=False,
                )
            except Exception as err:  # noqa: BLE001 - any build failure is reported alike
                last = (str(err).strip().splitlines() or [""])[-1]
                _ERROR = f"{type(err).__name__}: {last[:300]}"
        if _MODULE is None:
            raise RuntimeError(
                "Anderson(native=True) needs its C++ extension, which did not build here "
                f"({_ERROR}); it needs a C++ compiler and ninja (pip install ninja). "
                "native=False, the default, needs neither"
            )
        return _MODULE
