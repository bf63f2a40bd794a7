"""Shared pytest configuration for the deqkit tests."""

from __future__ import annotations


def pytest_configure(config):
    # torch >= 2.9 builds its forward-mode (jvp) decompositions with torch.jit.script the first
    # time forward AD runs in a process, and warns that torch.jit.script is deprecated. The
    # warning is torch's own, not deqkit's; with warnings as errors it would fail whichever
    # test first calls torch.func.jvp (Newton-Krylov, the DEQ gradients).
    config.addinivalue_line(
        "filterwarnings",
        "ignore:`torch.jit.script` is deprecated:DeprecationWarning",
    )
