"""Shared pytest configuration for the deqkit tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module, restored afterwards.

    The tests' problems are tiny: intra-op threads cost more than they save, and on a busy
    two-core runner OpenMP spin-waits made a batched 16 x 16 solve take 15 ms instead of
    20 us. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_configure(config):
    # torch >= 2.9 builds its forward-mode (jvp) decompositions with torch.jit.script the first
    # time forward AD runs in a process, and warns that torch.jit.script is deprecated. The
    # warning is torch's own, not deqkit's; with warnings as errors it would fail whichever
    # test first calls torch.func.jvp (Newton-Krylov, the DEQ gradients).
    config.addinivalue_line(
        "filterwarnings",
        "ignore:`torch.jit.script` is deprecated:DeprecationWarning",
    )
