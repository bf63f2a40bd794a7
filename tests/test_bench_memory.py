"""Smoke tests of deqkit.bench.memory: the methods, the targets, the settings."""

from __future__ import annotations

import dataclasses

import pytest

from deqkit.bench import MemoryConfig, MemoryRow, check_memory_targets, run_memory_benchmark
from deqkit.bench.solvers import torchdeq_available

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(**kwargs) -> MemoryConfig:
    return MemoryConfig(iterations=(2, 4), width=8, batch=4, repeats=2, **kwargs)


def test_both_gradients_run_and_targets_skip_without_torchdeq():
    rows = run_memory_benchmark(_tiny(include_torchdeq=False))
    methods = {r.method for r in rows}
    assert {"deqkit implicit", "deqkit phantom", "unrolled (tied)", "explicit (untied)"} == methods
    assert all(r.peak_bytes > 0 and r.time_ms > 0 for r in rows)
    lines = check_memory_targets(rows, at=(2, 4))
    skips = [line for line in lines if line.startswith("SKIP")]
    # per gradient: the peak comparison and the step time at 2 and 4 iterations
    assert len(skips) == 6 and all("torchdeq did not run" in line for line in skips)


def test_against_torchdeq():
    if not torchdeq_available():
        pytest.skip("needs torchdeq")
    rows = run_memory_benchmark(_tiny(clock="cpu", threads=1))
    assert {"torchdeq implicit", "torchdeq phantom"} <= {r.method for r in rows}
    lines = check_memory_targets(rows, at=(2, 4))
    timed = [line for line in lines if "step time" in line]
    assert len(timed) == 4 and all(line.split(":")[0] in ("PASS", "FAIL") for line in timed)


def _rows(ours_ms: float, theirs_ms: float, ours_peak: int = 100) -> list[MemoryRow]:
    rows = []
    for grad in ("implicit", "phantom"):
        for n in (20, 80):
            rows.append(MemoryRow(f"deqkit {grad}", n, ours_peak, ours_ms))
            rows.append(MemoryRow(f"torchdeq {grad}", n, 150, theirs_ms))
    return rows


def test_step_time_and_memory_targets():
    lines = check_memory_targets(_rows(7.9, 10.0))
    assert len(lines) == 8 and all(line.startswith("PASS") for line in lines), lines
    lines = check_memory_targets(_rows(8.1, 10.0, ours_peak=200))
    verdicts = [line.split(":")[0] for line in lines]
    # flat stays PASS; below torchdeq's peak and the step times FAIL
    assert verdicts == ["PASS", "FAIL", "FAIL", "FAIL"] * 2, lines
    assert "= 0.81, need <= 0.8" in lines[2]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clock": "gpu"}, "clock"),
        ({"clock": "cpu", "device": "cuda"}, "clock"),
        ({"threads": 0}, "threads"),
        ({"repeats": 0}, "repeats"),
        ({"cell": "conv"}, r"Invalid cell: 'conv' \(expected one of"),
        ({"cell": "attention", "width": 6}, r"Invalid width: 6 \(expected a multiple of 4"),
        ({"tokens": 0}, "tokens"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MemoryConfig(**kwargs)


def test_the_attention_cell_runs_every_method_with_flat_deq_memory():
    cfg = MemoryConfig(
        cell="attention", iterations=(2, 4, 8), width=8, tokens=5, batch=3, repeats=1
    )
    rows = run_memory_benchmark(dataclasses.replace(cfg, include_torchdeq=False))
    peak = {(r.method, r.iterations): r.peak_bytes for r in rows}
    # the untied net holds one transformer block per iteration: its activations grow with
    # them, the DEQ's do not (the target for the attention DEQ)
    assert peak["explicit (untied)", 8] > 1.8 * peak["explicit (untied)", 4]
    lines = check_memory_targets(rows, at=())
    assert [line for line in lines if not line.startswith("SKIP")] == [
        line for line in lines if line.startswith("PASS")
    ]
    assert sum("flat" in line or "linearly" in line for line in lines) == 4, lines
    # the attention step's activations are [B, T, d] tokens: larger than the tanh layer's
    tanh = run_memory_benchmark(dataclasses.replace(cfg, cell="tanh", include_torchdeq=False))
    tanh_peak = {(r.method, r.iterations): r.peak_bytes for r in tanh}
    assert peak["unrolled (tied)", 8] > 4 * tanh_peak["unrolled (tied)", 8]


def test_the_cli_offers_the_benchmarks_cells():
    from deqkit.bench.memory import CELLS
    from deqkit.cli import build_parser

    args = build_parser().parse_args(["mem-bench", "--cell", "attention", "--tokens", "9"])
    assert (args.cell, args.tokens) == ("attention", 9)
    (action,) = [
        a
        for a in build_parser()._subparsers._group_actions[0].choices["mem-bench"]._actions
        if a.dest == "cell"
    ]
    assert tuple(action.choices) == CELLS
