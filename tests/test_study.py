"""Studies of trained models (``deqkit.analysis``: sweep, examine and the adjoint it solves),
and the compatibility path ``deqkit.study``."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest
import torch
from torch import nn

import deqkit.study
from deqkit import analysis, solve
from deqkit.analysis import EXAMPLE_COLUMNS, EquilibriumLike, examine, sweep
from deqkit.analysis._examine import adjoint_map
from deqkit.train import TrainConfig, model_from_config

pytestmark = pytest.mark.usefixtures("one_thread")


class Linear(nn.Module):
    """``f(z) = A z + b`` with a readout of two classes: an adjoint with a closed form."""

    def __init__(self, A: torch.Tensor):
        super().__init__()
        self.A = A
        self.head = nn.Linear(A.shape[0], 2, dtype=torch.float64)

    def readout(self, z):
        return self.head(z)


def test_adjoint_map_is_the_transposed_jacobian_and_its_fixed_point_solves_the_system():
    torch.manual_seed(0)
    n, B = 6, 3
    A = torch.randn(n, n, dtype=torch.float64)
    A = 0.7 * A / torch.linalg.matrix_norm(A, 2)
    model = Linear(A)
    b = torch.randn(B, n, dtype=torch.float64)

    def f(z):
        return z @ A.T + b

    z = solve(f, torch.zeros(B, n, dtype=torch.float64), "anderson", tol=1e-12, max_iter=200).z
    y = torch.tensor([0, 1, 1])
    adj, g = adjoint_map(model, f, z, y)
    # g is the gradient of the summed cross-entropy at z
    zz = z.clone().requires_grad_(True)
    nn.functional.cross_entropy(model.readout(zz), y, reduction="sum").backward()
    torch.testing.assert_close(g, zz.grad)
    u = torch.randn(B, n, dtype=torch.float64)
    torch.testing.assert_close(adj(u), u @ A + g)  # J^T u per sample, J = A
    # its fixed point is (I - A^T)^{-1} g, the adjoint of the implicit gradient
    res = solve(adj, g, "anderson", tol=1e-12, max_iter=200)
    exact = torch.linalg.solve(torch.eye(n, dtype=torch.float64) - A.T, g.T).T
    torch.testing.assert_close(res.z, exact, rtol=1e-8, atol=1e-10)


def tiny(tmp_path, **changes):
    config = TrainConfig(
        task="prefix_sums",
        difficulty=8,
        model="recall1d",
        model_kwargs={"width": 8, "num_blocks": 1},
        out_dir=str(tmp_path / "run"),
        **changes,
    )
    torch.manual_seed(0)
    return model_from_config(config), config


def test_examine_measures_every_sample_and_is_self_consistent(tmp_path):
    model, config = tiny(tmp_path)
    out = examine(
        model, config, [8, 12], n=6, max_iter=40, readout_iters=15, batch_size=4, out_dir=tmp_path
    )
    assert list(out.difficulties) == [8, 12]
    assert out.files == (
        tmp_path / "examples.csv",
        tmp_path / "examine.json",
        tmp_path / "readout.png",
    )
    with open(tmp_path / "examples.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12 and tuple(rows[0]) == EXAMPLE_COLUMNS
    assert (tmp_path / "readout.png").stat().st_size > 0
    saved = json.loads((tmp_path / "examine.json").read_text())
    assert saved == json.loads(json.dumps(out.to_dict()))
    assert (saved["method"], saved["max_iter"], saved["readout_iters"]) == ("anderson", 40, 15)
    for d, s in out.difficulties.items():
        fields = {f.name for f in dataclasses.fields(s)}
        assert set(saved["difficulties"][str(d)]) == fields
        for key, value in s.to_dict().items():
            assert value == pytest.approx(saved["difficulties"][str(d)][key], nan_ok=True), key
        assert s.n == 6
        assert len(s.readout_curve_solver) == len(s.readout_curve_picard) == 15
        assert s.oracle_accuracy >= s.accuracy
        assert s.median_norm >= s.median_radius - 1e-3  # rho(J) <= ||J||_2
        assert 0 <= s.picard_fails_solver_converges <= 1 - s.picard_converged
        assert s.picard_fixed_point + s.picard_cycle + s.picard_neither == 1
    for r in rows:
        assert 1 <= int(r["best_readout_iterate"]) <= 15
        assert float(r["best_readout_accuracy"]) >= 0
        assert (r["correct"] == "True") == (float(r["position_accuracy"]) == 1.0)
        assert float(r["norm"]) >= float(r["radius"]) - 1e-3
        if r["converged"] == "True":
            assert int(r["iterations"]) <= 40


def test_examine_sees_a_contraction_as_one(tmp_path):
    """Scaled down to a contraction, plain iteration converges and every score agrees."""
    model, config = tiny(tmp_path)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv1d):
                m.weight.mul_(0.05)
    out = examine(model, config, [8], n=4, max_iter=100, readout_iters=10)
    s = out.difficulties[8]
    assert out.files == ()
    assert s.converged == 1 and s.picard_converged == 1
    assert s.backward_converged == 1 and s.backward_picard_converged == 1
    assert s.frac_radius_below_1 == 1 and s.median_path_score > 0.99
    assert s.picard_fixed_point == 1 and s.picard_residual_grows == 0


def test_the_studies_return_frozen_records_whose_dicts_keep_the_old_keys(tmp_path):
    """The records' to_dict() has the keys the dicts of deqkit.study had (and still have)."""
    model, config = tiny(tmp_path)
    x, _ = analysis._model.run_data(config).eval_set(8, 3)
    rows, traces = analysis.compare_solvers(model, x, ("picard", "anderson"), repeats=1)
    assert [r.method for r in rows] == list(traces) == ["picard", "anderson"]
    keys = ["method", "median_evals", "max_evals", "converged", "median_residual", "time_ms"]
    assert list(rows[0].to_dict()) == keys
    with pytest.raises(dataclasses.FrozenInstanceError):
        rows[0].method = "broyden"
    c = analysis.contraction(model, x, generator=torch.Generator().manual_seed(0))
    assert c.radius.shape == c.norm.shape == c.path_score.shape == (3,)
    assert list(c.to_dict()) == [
        "converged",
        "median_radius",
        "median_norm",
        "frac_radius_below_1",
        "frac_norm_below_1",
        "median_path_score",
        "frac_path_independent",
    ]
    old = deqkit.study.contraction(model, x, generator=torch.Generator().manual_seed(0))
    assert list(old)[:4] == ["converged", "radius", "norm", "path_score"]
    torch.testing.assert_close(old["radius"], c.radius)
    old_rows, _ = deqkit.study.compare_solvers(model, x, ("picard",), repeats=1)
    assert list(old_rows[0]) == keys
    old_examine = deqkit.study.examine(model, config, [8], n=2, max_iter=5, readout_iters=3)
    assert list(old_examine) == [
        "method",
        "tol",
        "max_iter",
        "readout_iters",
        "difficulties",
        "files",
    ]
    assert list(old_examine["difficulties"]) == ["8"] and old_examine["files"] == []


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n": 0}, "n"),
        ({"tol": 0.0}, "tol"),
        ({"max_iter": 1.5}, "max_iter"),
        ({"readout_iters": 0}, "readout_iters"),
        ({"batch_size": -1}, "batch_size"),
    ],
)
def test_examine_names_bad_arguments(tmp_path, kwargs, name):
    model, config = tiny(tmp_path)
    with pytest.raises(ValueError, match=name):
        examine(model, config, [8], **kwargs)


def test_examine_refuses_a_model_that_is_not_an_equilibrium_model(tmp_path):
    _, config = tiny(tmp_path)
    with pytest.raises(TypeError, match="equilibrium model"):
        examine(nn.Linear(2, 2), config)


def test_sweep_of_a_run_at_the_default_difficulty_uses_its_evaluation_difficulties(tmp_path):
    """difficulty=None in the config means the task's default (16 bits), not "none"."""
    config = TrainConfig(
        task="prefix_sums", model="recall1d", model_kwargs={"width": 8, "num_blocks": 1}
    )
    torch.manual_seed(0)
    model = model_from_config(config)
    assert list(sweep(model, config, iterations=[1, 2], n=4).curves) == [16]
    config = TrainConfig(
        task="prefix_sums",
        difficulty=8,
        eval_difficulties=(8, 12),
        model="recall1d",
        model_kwargs={"width": 8, "num_blocks": 1},
    )
    assert list(sweep(model, config, iterations=[1, 2], n=4).curves) == [8, 12]


def test_the_old_import_path_keeps_its_names():
    for name in ("EXAMPLE_COLUMNS", "SweepResult", "sweep"):
        assert getattr(deqkit.study, name) is getattr(analysis, name), name


def test_models_follow_the_public_protocol_and_others_are_named_missing_parts(tmp_path):
    model, config = tiny(tmp_path)
    assert isinstance(model, EquilibriumLike)
    assert not isinstance(nn.Linear(2, 2), EquilibriumLike)
    x, _ = analysis._model.run_data(config).eval_set(8, 2)
    for study in (analysis.compare_solvers, analysis.contraction):
        with pytest.raises(TypeError, match="without cell, inject, initial_state, readout, deq"):
            study(nn.Linear(2, 2), x)
