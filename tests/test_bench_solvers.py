"""Smoke tests of deqkit.bench.solvers: problems, runner, table, targets, plot, report."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import deqkit
from deqkit.bench import (
    BenchConfig,
    ProblemSpec,
    Row,
    build_problem,
    check_limit_targets,
    check_targets,
    default_problems,
    format_table,
    plot_convergence,
    run_solver_benchmark,
    write_report,
)
from deqkit.bench import _run as bench_run

TINY = (
    ProblemSpec("tiny-0.9", width=8, batch=3, norm=0.9),
    ProblemSpec("tiny-mixed", width=8, batch=4, radius=1.0, gain=(0.5, 0.99), inject=0.1),
)


def _config(**kwargs) -> BenchConfig:
    return BenchConfig(problems=TINY, repeats=1, max_iter=80, **kwargs)


@pytest.fixture(scope="module")
def ours_rows() -> list[Row]:
    return run_solver_benchmark(_config(include_torchdeq=False))


def test_build_problem_scales_w_and_is_reproducible():
    p = build_problem(ProblemSpec("n", width=16, batch=2, norm=0.9), seed=3)
    assert torch.linalg.matrix_norm(p.weight.double(), ord=2).item() == pytest.approx(0.9, rel=1e-5)
    q = build_problem(ProblemSpec("r", width=16, batch=2, radius=1.0), seed=3)
    radius = torch.linalg.eigvals(q.weight.double()).abs().max().item()
    assert radius == pytest.approx(1.0, rel=1e-5)
    again = build_problem(ProblemSpec("n", width=16, batch=2, norm=0.9), seed=3)
    assert torch.equal(p.f(p.z0), again.f(again.z0))
    assert p.z0.shape == p.f(p.z0).shape == (2, 16)


def test_mixed_gain_is_per_sample():
    spec = ProblemSpec("m", width=6, batch=3, radius=1.0, gain=(0.5, 1.0), inject=0.0)
    p = build_problem(spec, dtype=torch.float64)
    z = torch.full((3, 6), 0.01, dtype=torch.float64)
    expected = torch.tanh(
        torch.tensor([0.5, 0.75, 1.0], dtype=torch.float64)[:, None] * (z @ p.weight.T)
    )
    torch.testing.assert_close(p.f(z), expected)


def test_default_problems_cover_the_issue():
    names = {p.name: p for p in default_problems()}
    assert names["tanh-0.9"].norm == 0.9 and names["tanh-2.0"].norm == 2.0
    assert (names["tanh-2.0"].width, names["tanh-2.0"].batch) == (256, 64)
    assert any((p.width, p.batch) == (1024, 128) for p in names.values())
    assert names["mixed-0.5-0.99"].gain == (0.5, 0.99)


def test_runner_ours_only(ours_rows):
    assert [(r.problem, r.solver) for r in ours_rows] == [
        (p.name, m) for p in TINY for m in ("anderson", "broyden", "picard")
    ]
    for r in ours_rows:
        assert r.impl == "deqkit" and r.pair is None and r.evals_ratio is None
        assert 1 <= r.evals <= r.calls <= 80
        assert len(r.converged_mask) == len(r.checked_mask) == r.batch
        assert r.converged == sum(r.converged_mask) / r.batch
        assert r.trace.shape == (r.calls, r.batch)
        assert r.time_ms > 0 and r.f_ms > 0 and len(r.times_ms) == 1
        assert r.overhead is not None and math.isfinite(r.overhead)
    json.dumps([r.to_dict() for r in ours_rows])


def test_runner_counts_match_solve(ours_rows):
    p = build_problem(TINY[0])
    result = deqkit.solve(p.f, p.z0, "anderson", tol=1e-5, max_iter=80)
    row = next(r for r in ours_rows if r.problem == TINY[0].name and r.solver == "anderson")
    assert row.evals == int(result.iterations.max())
    assert row.converged_mask == tuple(bool(c) for c in result.converged)


def test_format_table(ours_rows):
    table = format_table(ours_rows)
    lines = table.splitlines()
    assert len(lines) == 2 + len(ours_rows)
    assert lines[0].startswith("| problem | library | solver | f-evals |")
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "| tiny-mixed | deqkit | broyden |" in table


def test_rows_report_the_evaluation_only_limit(ours_rows):
    for r in ours_rows:
        assert r.limit_ms == pytest.approx(r.calls * r.f_ms)
        assert r.limit_ratio == pytest.approx(r.time_ms / r.limit_ms)
        assert r.overhead_share == pytest.approx(1 - r.limit_ms / r.time_ms)
    head = format_table(ours_rows).splitlines()[0]
    assert "| limit ms | time/limit | overhead share |" in head


def test_limit_targets_without_torchdeq(ours_rows):
    """Measured from deqkit's rows alone: the shapes of the targets are not in TINY (SKIP),
    the comparison with plain iteration is PASS, FAIL or SKIP per problem."""
    lines = check_limit_targets(ours_rows)
    assert [line.split()[0] for line in lines[:2]] == ["SKIP", "SKIP"]
    assert len(lines) == 2 + len(TINY)
    assert all(line.split()[0] in ("PASS", "FAIL", "SKIP") for line in lines)
    lines = check_limit_targets(ours_rows, wide=(8, 3, 1e9), narrow=(8, 4, 1e-9))
    assert lines[0].startswith("PASS  anderson vs its evaluation-only limit on tiny-0.9")
    assert lines[1].startswith("FAIL  anderson vs its evaluation-only limit on tiny-mixed")


def _limit_row(solver: str, evals: int, time_ms: float, f_ms: float = 1.0, width: int = 256):
    return Row(
        problem="p",
        impl="deqkit",
        solver=solver,
        width=width,
        batch=64,
        evals=evals,
        calls=evals,
        evals_to_tol=None,
        converged=1.0,
        checked=1.0,
        time_ms=time_ms,
        times_ms=(time_ms,),
        f_ms=f_ms,
        limit_ms=evals * f_ms,
        overhead_share=1 - evals * f_ms / time_ms,
    )


@pytest.mark.parametrize(
    ("anderson", "picard", "verdicts"),
    [
        ((10, 29.0), (12, 30.0), ["SKIP", "PASS", "PASS"]),  # 2.9x its limit, faster
        ((10, 31.0), (10, 30.0), ["SKIP", "FAIL", "FAIL"]),  # 3.1x, slower at equal evals
        ((13, 20.0), (12, 30.0), ["SKIP", "PASS", "SKIP"]),  # more evals: no comparison
    ],
)
def test_limit_targets_pass_and_fail(anderson, picard, verdicts):
    rows = [_limit_row("anderson", *anderson), _limit_row("picard", *picard)]
    lines = check_limit_targets(rows)
    assert [line.split()[0] for line in lines] == verdicts
    wide = [_limit_row("anderson", 10, 11.4, width=1024), _limit_row("picard", 10, 11.0, 1.0)]
    wide = [dataclasses.replace(r, batch=128, width=1024) for r in wide]
    assert check_limit_targets(wide)[0].startswith("PASS")
    assert check_limit_targets([dataclasses.replace(wide[0], time_ms=11.6)])[0].startswith("FAIL")


def test_targets_skip_without_torchdeq(ours_rows):
    lines = check_targets(ours_rows)
    assert lines and all(line.startswith("SKIP") for line in lines)


def _row(solver: str, impl: str, evals: int, mask: tuple[bool, ...], time_ms: float = 1.0) -> Row:
    return Row(
        problem="p",
        impl=impl,
        solver=solver,
        width=4,
        batch=len(mask),
        evals=evals,
        calls=evals,
        evals_to_tol=None,
        converged=sum(mask) / len(mask),
        checked=sum(mask) / len(mask),
        time_ms=time_ms,
        times_ms=(time_ms,),
        f_ms=0.1,
        converged_mask=mask,
        checked_mask=mask,
    )


def test_check_targets_pass_and_fail():
    theirs = [
        _row("anderson", "torchdeq", 20, (True, True), time_ms=10.0),
        _row("fixed_point_iter", "torchdeq", 15, (True, False)),
        _row("broyden", "torchdeq", 12, (True, True)),
    ]
    good = [_row("anderson", "deqkit", 12, (True, True), time_ms=3.0)]
    lines = check_targets(good + theirs)
    assert [line.split()[0] for line in lines] == ["PASS", "PASS", "PASS", "SKIP"]
    missed = [_row("anderson", "deqkit", 12, (True, False), time_ms=5.0)]
    lines = check_targets(missed + theirs)
    assert [line.split()[0] for line in lines] == ["FAIL", "FAIL", "FAIL", "SKIP"]
    slow = [_row("anderson", "deqkit", 16, (True, True))]
    assert check_targets(slow + theirs)[0].startswith("FAIL")


def test_torchdeq_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(bench_run, "torchdeq_available", lambda: False)
    with pytest.raises(ModuleNotFoundError, match="include_torchdeq=False"):
        run_solver_benchmark(_config())


def test_against_torchdeq():
    pytest.importorskip("torchdeq")
    config = BenchConfig(problems=TINY[:1], repeats=1, max_iter=80, ours=("anderson", "picard"))
    rows = run_solver_benchmark(config)
    assert [(r.impl, r.solver) for r in rows[:5]] == [
        ("deqkit", "anderson"),
        ("deqkit", "picard"),
        ("torchdeq", "anderson"),
        ("torchdeq", "broyden"),
        ("torchdeq", "fixed_point_iter"),
    ]
    ours = [r for r in rows if r.impl == "deqkit"]
    assert [r.pair for r in ours[:2]] == ["anderson", "fixed_point_iter"]
    for r in ours:
        ref = next(
            t
            for t in rows
            if t.problem == r.problem and t.impl == "torchdeq" and t.solver == r.pair
        )
        assert r.evals_ratio == pytest.approx(r.evals / ref.evals)
        assert r.time_ratio == pytest.approx(r.time_ms / ref.time_ms)
    for r in rows:
        if r.impl == "torchdeq":
            assert r.evals == r.calls and r.overhead is None
    lines = check_targets(rows)
    assert all(line.split()[0] in ("PASS", "FAIL") for line in lines[:-1])
    assert lines[-1].startswith("SKIP  overhead")


def test_plot_convergence_writes_png(tmp_path):
    p = build_problem(TINY[1])
    result = deqkit.solve(p.f, p.z0, "anderson", tol=1e-6, max_iter=80, record_trace=True)
    assert torch.isnan(result.trace).any()  # stopped samples: NaN, must be handled
    traces = {"solve trace": result.trace, "flat": torch.rand(7), "zeros": torch.zeros(3, 2)}
    out = plot_convergence(traces, tmp_path / "new" / "conv.png", tol=1e-6, title="t")
    assert out == tmp_path / "new" / "conv.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [f.name for f in out.parent.iterdir()] == ["conv.png"]


def test_plot_convergence_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="traces"):
        plot_convergence({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="steps, B"):
        plot_convergence({"cube": torch.rand(2, 2, 2)}, tmp_path / "x.png")


def test_write_report(ours_rows, tmp_path):
    config = _config(include_torchdeq=False)
    paths = write_report(ours_rows, check_targets(ours_rows), config, tmp_path / "out")
    assert [p.name for p in paths[:2]] == ["solver_bench.md", "solver_bench.json"]
    assert {p.name for p in paths[2:]} == {f"solver_bench-{s.name}.png" for s in TINY}
    assert all(p.stat().st_size > 0 for p in paths)
    payload = json.loads(paths[1].read_text())
    assert len(payload["rows"]) == len(ours_rows) and payload["config"]["repeats"] == 1
    assert format_table(ours_rows) in paths[0].read_text()
    assert "wall clock" in paths[0].read_text()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"repeats": 0}, "repeats"),
        ({"ours": ("nope",)}, "valid methods: .*anderson"),
        ({"theirs": ("newton",)}, "theirs"),
        ({"max_iter": 1}, "max_iter"),
        ({"threads": 0}, "threads"),
        ({"problems": TINY + TINY[:1]}, "duplicate"),
        ({"clock": "gpu"}, "clock"),
        ({"clock": "cpu", "device": "cuda"}, "clock"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BenchConfig(**{"problems": TINY, **kwargs})


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"norm": 1.0, "radius": 1.0}, {"norm": -1.0}, {"norm": 1.0, "gain": (0.0, 1.0)}],
)
def test_problem_spec_validation(kwargs):
    with pytest.raises(ValueError):
        ProblemSpec("p", **kwargs)


def test_cpu_clock_runs():
    config = BenchConfig(problems=TINY[:1], repeats=2, max_iter=80, include_torchdeq=False)
    rows = run_solver_benchmark(dataclasses.replace(config, clock="cpu", ours=("picard",)))
    assert rows[0].time_ms > 0 and rows[0].f_ms > 0 and len(rows[0].times_ms) == 2
