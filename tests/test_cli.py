"""The command line and the demo, end to end in fast mode."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deqkit.cli import build_parser, main
from deqkit.demo import DemoConfig, run_demo

COMMANDS = ["train", "eval", "sweep", "examine", "solve-bench", "mem-bench", "demo"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deqkit.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"] if command else ["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: deqkit" in out


def test_bad_flags_give_one_line_not_a_traceback():
    for args in (["train", "--no-such-flag"], ["sweep", "x.pt", "--iterations", "0,5"], ["frob"]):
        proc = run_cli(*args)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("deqkit: error:"), proc.stderr
        assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["sweep", "x.pt", "--n", "0"],
            "argument --n: Invalid value: 0 (expected an integer >= 1)",
        ),
        (["eval", "x.pt", "--max-iter", "2.5"], "Invalid value: '2.5' (expected an integer >= 1)"),
        (
            ["sweep", "x.pt", "--iterations", "1,0"],
            "Invalid value: '1,0' (expected comma-separated integers >= 1)",
        ),
    ],
)
def test_bad_integer_flags_are_worded_as_every_other_setting(args, message, capsys):
    """The command line's integer checks say what deqkit._validate says elsewhere."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_files_and_values_give_one_line(tmp_path):
    proc = run_cli("eval", str(tmp_path / "missing.pt"))
    assert proc.returncode == 2 and "missing.pt" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run_cli("train", "--config", str(tmp_path / "nope.toml"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = run_cli("train", "--task", "chess", "--out-dir", str(tmp_path / "r"))
    assert proc.returncode == 2 and "chess" in proc.stderr and "Traceback" not in proc.stderr
    assert main(["train", "--set", "nonsense"]) == 2


def test_train_eval_sweep_round_trip(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--task",
            "prefix_sums",
            "--difficulty",
            "8",
            "--width",
            "8",
            "--steps",
            "3",
            "--batch-size",
            "8",
            "--out-dir",
            str(run),
            "--no-progress",
            "--set",
            "eval_size=16",
            "--set",
            'model_kwargs={"width": 8, "num_blocks": 1}',
        ]
    )
    assert code == 0
    ckpt = run / "checkpoint.pt"
    assert ckpt.is_file() and (run / "config.json").is_file()
    capsys.readouterr()
    assert main(["eval", str(ckpt), "--difficulty", "16", "--n", "16", "--max-iter", "5"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= record["accuracy"] <= 1.0
    out = tmp_path / "sweep"
    assert (
        main(
            [
                "sweep",
                str(ckpt),
                "--difficulties",
                "8,16",
                "--iterations",
                "1,3",
                "--n",
                "8",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert {"sweep.csv", "sweep.json", "sweep.png"} <= {p.name for p in out.iterdir()}
    last = tmp_path / "sweep-last"
    args = ["sweep", str(ckpt), "--difficulties", "8", "--iterations", "1,3", "--n", "8"]
    assert main([*args, "--pick", "last", "--batch-size", "3", "--out", str(last)]) == 0
    assert json.loads((last / "sweep.json").read_text())["8"]["pick"] == "last"
    capsys.readouterr()
    ex = tmp_path / "examine"
    args = ["examine", str(ckpt), "--difficulties", "8", "--n", "4", "--max-iter", "20"]
    assert main([*args, "--readout-iters", "5", "--out", str(ex)]) == 0
    assert "| 8 |" in capsys.readouterr().out
    assert {"examples.csv", "examine.json", "readout.png"} <= {p.name for p in ex.iterdir()}
    # a second run into the same folder is refused, not overwritten
    assert main(["train", "--steps", "1", "--out-dir", str(run), "--no-progress"]) == 2


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A finished one-step prefix-sum run (8 bits, recall1d of width 8): its run folder."""
    from deqkit.train import TrainConfig, train

    run = tmp_path_factory.mktemp("cli") / "run"
    config = TrainConfig(
        task="prefix_sums",
        difficulty=8,
        model_kwargs={"width": 8, "num_blocks": 1},
        steps=1,
        batch_size=4,
        eval_size=4,
        out_dir=str(run),
    )
    train(config, progress=False)
    return run


def test_sweep_without_out_writes_next_to_checkpoint(tmp_path, tiny_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    args = ["sweep", str(run / "checkpoint.pt"), "--difficulties", "8", "--iterations", "1,3"]
    assert main([*args, "--n", "4"]) == 0
    assert {"sweep.csv", "sweep.json", "sweep.png"} <= {p.name for p in run.iterdir()}
    wrote = capsys.readouterr().out.strip().splitlines()[-1]
    assert wrote.startswith("wrote ") and str(run / "sweep.csv") in wrote


def test_corrupt_or_truncated_checkpoint_gives_one_line_naming_the_file(tmp_path, tiny_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    ckpt = run / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])  # truncated
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    for args, path in (
        (["eval", str(bad)], bad),
        (["eval", str(ckpt)], ckpt),
        (["sweep", str(ckpt), "--n", "4", "--out", str(tmp_path / "sweep")], ckpt),
        (["examine", str(bad)], bad),
        (["train", "--resume", str(run), "--no-progress"], ckpt),
    ):
        capsys.readouterr()
        assert main(args) == 2, args
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("deqkit: error:"), lines
        assert str(path) in lines[0] and "weights_only" not in lines[0]
        assert "truncated or corrupt" in lines[0]
    assert not (tmp_path / "sweep").exists()


def test_mem_bench_tiny(tmp_path, capsys):
    assert (
        main(
            [
                "mem-bench",
                "--iterations",
                "2,4,6",
                "--width",
                "8",
                "--batch",
                "4",
                "--repeats",
                "1",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "deqkit implicit" in text and "unrolled (tied)" in text
    assert (tmp_path / "mem_bench.png").stat().st_size > 0
    rows = json.loads((tmp_path / "mem_bench.json").read_text())
    assert {r["method"] for r in rows} >= {"deqkit implicit", "explicit (untied)"}


def test_demo_fast_end_to_end(tmp_path):
    out = tmp_path / "demo"
    page = run_demo(DemoConfig(fast=True, out_dir=str(out)))
    assert page == out / "report.html"
    html = page.read_text()
    assert html.count('src="data:image/png;base64,') >= 3
    assert html.count("<table>") >= 3 and "Test-time compute" in html
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"compute_curve", "solvers", "contraction", "final_train"} <= set(metrics)
    assert {r["method"] for r in metrics["solvers"]} == {"picard", "anderson", "broyden"}
    assert (out / "run" / "checkpoint.pt").is_file() and (out / "config.json").is_file()
    assert (out / "report.md").read_text().startswith("# deqkit demo")
    with pytest.raises(FileExistsError):
        run_demo(DemoConfig(fast=True, out_dir=str(out)))


def test_demo_config_validation():
    with pytest.raises(ValueError, match="task"):
        DemoConfig(task="sudoku")
    with pytest.raises(ValueError, match="steps"):
        DemoConfig(steps=0)


def test_parser_lists_every_command():
    text = build_parser().format_help()
    for command in COMMANDS:
        assert command in text


@pytest.mark.slow
def test_report_opens_in_headless_chromium(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (make test-slow installs it)")
    page = run_demo(DemoConfig(fast=True, out_dir=str(tmp_path / "demo")))
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    shot = tmp_path / "shot.png"
    subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 10_000
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", page.as_uri()],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert dom.count("<img") >= 3 and dom.count("<table>") >= 3
    assert Path(shot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
