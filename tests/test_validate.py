"""One rule for bad settings across packages (deqkit._validate), and the writers of deqkit._io."""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest
import torch

import deqkit
import deqkit.utils
from deqkit import _io, _validate
from deqkit.nn import Recipe
from deqkit.train import TrainConfig
from deqkit.train._files import save_atomic

D = torch.float64


# ------------------------------------------------------------------------------ one error


def _error(make):
    with pytest.raises(Exception) as info:
        make()
    return info.value


MAX_ITER_2_5 = {
    "deqkit.solve": lambda: deqkit.solve(lambda z: z / 2, torch.zeros(2, 3, dtype=D), max_iter=2.5),
    "TrainConfig": lambda: TrainConfig(max_iter=2.5),
    "DEQ": lambda: deqkit.DEQ(lambda z, x: z / 2, max_iter=2.5),
    "DEQ call override": lambda: deqkit.DEQ(lambda z, x: z / 2)(torch.ones(1, 2), max_iter=2.5),
}


def test_max_iter_2_5_is_the_same_error_everywhere():
    """A float budget was ValueError from solve, TypeError from TrainConfig; now one error."""
    errors = {where: _error(make) for where, make in MAX_ITER_2_5.items()}
    for where, err in errors.items():
        assert type(err) is ValueError, where
        assert str(err) == "Invalid max_iter: 2.5 (expected an integer >= 1)", where
    # Same type and form where the argument has another name:
    others = {
        "prefix_sums n": (lambda: deqkit.tasks.prefix_sums(2.5, 8), "n"),
        "Recipe pretrain_iters": (lambda: Recipe(pretrain_iters=2.5), "pretrain_iters"),
        "TrainConfig pretrain_iters": (lambda: TrainConfig(pretrain_iters=2.5), "pretrain_iters"),
        "anderson m": (lambda: deqkit.solvers.Anderson(m=2.5), "m for anderson"),
        "Phantom k": (lambda: deqkit.Phantom(k=2.5), "k for Phantom"),
    }
    for where, (make, name) in others.items():
        err = _error(make)
        assert type(err) is ValueError, where
        assert str(err) == f"Invalid {name}: 2.5 (expected an integer >= 1)", where


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TrainConfig(lr="fast"), "Invalid lr: 'fast' (expected a finite number > 0)"),
        (
            lambda: TrainConfig(batch_size=True),
            "Invalid batch_size: True (expected an integer >= 1)",
        ),
        (lambda: TrainConfig(compile=1), "Invalid compile: 1 (expected a bool)"),
        (lambda: TrainConfig(stop="max"), "Invalid stop: 'max' (expected one of 'abs', 'rel')"),
        (lambda: Recipe(weight_norm="yes"), "Invalid weight_norm: 'yes' (expected a bool)"),
        (
            lambda: deqkit.solve(lambda z: z, torch.zeros(1, 2, dtype=D), tol="1e-5"),
            "Invalid tol: '1e-5' (expected a finite number > 0)",
        ),
        (
            lambda: deqkit.tasks.prefix_sums(2, 4, seed=1.0),
            "Invalid seed: 1.0 (expected an integer >= 0)",
        ),
    ],
)
def test_a_value_of_the_wrong_kind_is_a_value_error_with_the_common_message(make, message):
    err = _error(make)
    assert type(err) is ValueError and str(err) == message


def test_checks_normalise_and_describe_ranges():
    assert _validate.integer("n", np.int64(3), 1) == 3 and type(_validate.integer("n", 3)) is int
    assert _validate.real("x", 1, 0, 2) == 1.0 and type(_validate.real("x", 1)) is float
    assert _validate.integer("n", None, 1, optional=True) is None
    assert _validate.choice("dim", np.int64(2), (1, 2)) == 2
    assert _validate.flag("f", False) is False
    assert deqkit.solvers.Anderson(beta=1).beta == 1.0  # stored as a float
    cases = [
        (lambda: _validate.integer("k", 9, 1, 8), "Invalid k: 9 (expected an integer in [1, 8])"),
        (lambda: _validate.integer("k", 9, high=8), "Invalid k: 9 (expected an integer <= 8)"),
        (lambda: _validate.real("b", 0.0, 0, 2, low_open=True), "(expected a number in (0, 2])"),
        (lambda: _validate.real("b", math.nan), "Invalid b: nan (expected a finite number)"),
        (lambda: _validate.real("b", math.nan, finite=False), "Invalid b: nan (expected a number)"),
        (lambda: _validate.real("b", math.inf, 0), "(expected a finite number >= 0)"),
        (
            lambda: _validate.choice("r", 1, (True, False)),
            "Invalid r: 1 (expected one of True, False)",
        ),
        (lambda: _validate.choice("d", True, (1, 2)), "Invalid d: True (expected one of 1, 2)"),
        (lambda: _validate.integer("m", 0, 1, of="anderson"), "Invalid m for anderson: 0"),
    ]
    for make, text in cases:
        err = _error(make)
        assert type(err) is ValueError and text in str(err), (str(err), text)
    assert _validate.real("s", math.inf, 1, low_open=True, finite=False) == math.inf


# ------------------------------------------------------------------------------ atomic files


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "out.json"
    path.write_text("old", encoding="utf-8")

    def broken(fh):
        fh.write(b"half of the new cont")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _io.write_atomic(path, broken)
    assert path.read_text(encoding="utf-8") == "old"

    def no_rename(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="rename failed"):
        _io.write_text_atomic(path, "new")
    with pytest.raises(OSError, match="rename failed"):
        _io.save_torch_atomic({"w": torch.ones(2)}, path)
    monkeypatch.undo()
    with pytest.raises(TypeError):  # not JSON: nothing is written
        _io.write_json_atomic(path, {"x": object()})
    assert path.read_text(encoding="utf-8") == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_writes_fsync_the_file_and_the_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}") if sys.platform == "linux" else None)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    path = _io.write_json_atomic(tmp_path / "sub" / "a.json", {"a": 1})
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": 1}
    assert len(synced) >= 1
    if sys.platform == "linux":
        assert synced == [False, True]  # the file's data, then the folder's entry
    # the writers everyone else imports go through the same path
    synced.clear()
    deqkit.utils.atomic_write_text(tmp_path / "b.txt", "x")
    save_atomic({"w": torch.ones(1)}, tmp_path / "c.pt")  # checkpoints
    assert len(synced) >= 2
    assert torch.load(tmp_path / "c.pt", weights_only=True)["w"].item() == 1.0


def test_written_files_get_the_usual_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        path = _io.write_text_atomic(tmp_path / "p.txt", "x")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644


# ------------------------------------------------------------------------------ figures


def test_figures_are_saved_without_pyplot_state(tmp_path):
    pytest.importorskip("matplotlib")
    was_loaded = "matplotlib.pyplot" in sys.modules
    before = sys.modules["matplotlib.pyplot"].get_fignums() if was_loaded else None
    fig = _io.new_figure(figsize=(3, 2))
    fig.subplots().plot([1, 2, 3])
    path = _io.save_figure(fig, tmp_path / "f.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    deqkit.analysis.plot_residuals({"x": torch.rand(5, 3)}, tmp_path / "r.png")
    from deqkit.bench.memory import MemoryRow, plot_memory

    rows = [MemoryRow("m", k, 2**20 * k, 1.0 * k) for k in (1, 2)]
    plot_memory(rows, tmp_path / "m.png")
    if was_loaded:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == before
    else:
        assert "matplotlib.pyplot" not in sys.modules  # never imported, so no state at all
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "m.png", "r.png"]


def test_plots_are_written_through_the_durable_writer(tmp_path, monkeypatch):
    """analysis plots had their own temp-file-and-rename writer, without fsync."""
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = tmp_path / "r.png"
    path.write_bytes(b"old")
    deqkit.analysis.plot_residuals({"x": torch.rand(5, 3)}, path)
    assert synced and path.read_bytes()[:4] == b"\x89PNG"
    synced.clear()
    deqkit.analysis.plot_spectral_histogram({"x": torch.rand(8)}, tmp_path / "h.png")
    assert synced
