"""Training loop: config, files, exact resume, Ctrl-C, data-parallel equivalence, AMP, eval."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import deqkit
from deqkit.train import (
    Data,
    Evaluation,
    StepEvent,
    TrainConfig,
    evaluate,
    load_checkpoint,
    load_config,
    model_from_config,
    train,
)
from deqkit.train.__main__ import main


class SeqCell(nn.Module):
    """f(z, u) = tanh(W z + u) with ||W||_2 = 0.5: a contraction, so solves are short."""

    def __init__(self, width: int):
        super().__init__()
        self.lin = nn.Linear(width, width, bias=False)
        with torch.no_grad():
            self.lin.weight.mul_(0.5 / torch.linalg.matrix_norm(self.lin.weight, 2))

    def forward(self, z, u):
        return torch.tanh(self.lin(z) + u)


class SeqModel(nn.Module):
    """A stand-in following the equilibrium-model protocol: x [N, 1, L] -> logits [N, 2, L]."""

    def __init__(self, input_shape, width: int = 16):
        super().__init__()
        self.length = input_shape[-1]
        self.embed = nn.Linear(input_shape[0] * self.length, width)
        self.deq = deqkit.DEQ(SeqCell(width))
        self.head = nn.Linear(width, 2 * self.length)
        self.width = width

    @property
    def cell(self):
        return self.deq.f

    def inject(self, x):
        return self.embed(x.flatten(1))

    def initial_state(self, x):
        return x.new_zeros(x.shape[0], self.width)

    def readout(self, z):
        return self.head(z).view(-1, 2, self.length)

    def forward(self, x, z0=None, **overrides):
        z, info = self.deq(self.inject(x), self.initial_state(x) if z0 is None else z0, **overrides)
        return self.readout(z), info

    def iterate(self, x, iterations, z0=None, every=True):
        u, z = self.inject(x), self.initial_state(x) if z0 is None else z0
        outs = []
        for _ in range(iterations):
            z = self.cell(z, u)
            outs.append(self.readout(z))
        return outs if every else outs[-1:]

    def num_parameters(self):
        return sum(p.numel() for p in self.parameters())


STAND_IN = f"{__name__}:SeqModel"


pytestmark = pytest.mark.usefixtures("one_thread")


def small(tmp_path: Path, name: str = "run", **changes) -> TrainConfig:
    """A run of a few milliseconds per step: deq_mlp on scikit-learn digits."""
    base = dict(
        task="digits",
        model="deq_mlp",
        model_kwargs={"hidden": 16, "groups": 4},
        steps=6,
        batch_size=16,
        lr=1e-2,
        eval_size=64,
        max_iter=15,
        out_dir=str(tmp_path / name),
    )
    return TrainConfig(**{**base, **changes})


def without_time(records):
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


def read_jsonl(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- config --------------------------------------------------------------------------------


def test_config_round_trips_through_dict_json_and_toml(tmp_path):
    c = TrainConfig(
        task="mazes",
        difficulty=5,
        eval_difficulties=[5, 7],
        model_kwargs={"width": 8},
        solver="picard",
        solver_options={"beta": 0.5},
        backward="phantom",
        backward_options={"k": 3, "tau": 0.5},
        lr=3e-4,
        steps=10,
        out_dir=str(tmp_path / "x"),
    )
    assert c.eval_difficulties == (5, 7)
    assert TrainConfig.from_dict(c.to_dict()) == c
    assert TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    (tmp_path / "c.json").write_text(json.dumps(c.to_dict()))
    assert load_config(tmp_path / "c.json") == c
    (tmp_path / "c.toml").write_text(
        'task = "mazes"\ndifficulty = 5\neval_difficulties = [5, 7]\nsteps = 10\nlr = 3e-4\n'
        f'out_dir = "{tmp_path / "x"}"\nsolver = "picard"\nbackward = "phantom"\n'
        "[model_kwargs]\nwidth = 8\n[solver_options]\nbeta = 0.5\n"
        "[backward_options]\nk = 3\ntau = 0.5\n"
    )
    assert load_config(tmp_path / "c.toml") == c


DEQ_TABLE = {
    "solver": "picard",
    "solver_options": {"beta": 0.5},
    "tol": 1e-3,
    "max_iter": 12,
    "backward": {"name": "implicit", "fallback": {"name": "phantom", "k": 3}},
}


def test_a_deq_table_and_the_older_top_level_keys_give_the_same_config(tmp_path):
    flat = TrainConfig.from_dict({"model_kwargs": {"width": 8}, **DEQ_TABLE})
    nested = TrainConfig.from_dict({"model_kwargs": {"width": 8}, "deq": DEQ_TABLE})
    assert flat == nested == TrainConfig(model_kwargs={"width": 8}, **DEQ_TABLE)
    assert nested.deq == DEQ_TABLE and nested.to_dict()["deq"] == DEQ_TABLE
    assert "tol" not in nested.to_dict()  # one place: the deq table
    assert (nested.tol, nested.max_iter, nested.stop) == (1e-3, 12, None)  # views of deq
    (tmp_path / "nested.toml").write_text(
        '[model_kwargs]\nwidth = 8\n[deq]\nsolver = "picard"\ntol = 1e-3\nmax_iter = 12\n'
        '[deq.solver_options]\nbeta = 0.5\n[deq.backward]\nname = "implicit"\n'
        'fallback = { name = "phantom", k = 3 }\n'
    )
    (tmp_path / "flat.toml").write_text(
        'solver = "picard"\ntol = 1e-3\nmax_iter = 12\n'
        'backward = { name = "implicit", fallback = { name = "phantom", k = 3 } }\n'
        "[model_kwargs]\nwidth = 8\n[solver_options]\nbeta = 0.5\n"
    )
    assert load_config(tmp_path / "nested.toml") == load_config(tmp_path / "flat.toml") == flat
    (tmp_path / "c.json").write_text(json.dumps(nested.to_dict()))
    assert load_config(tmp_path / "c.json") == nested
    # every experiment config keeps loading, with its DEQ settings in the table
    root = Path(__file__).resolve().parents[1] / "experiments"
    for path in sorted(root.rglob("*.toml")):
        config = load_config(path)
        assert config.deq.get("solver") in (None, "anderson", "picard"), path


def test_every_experiment_config_writes_its_deq_settings_in_the_deq_table():
    # the shipped configs are what users copy: the one nested form, not the older flat keys
    from deqkit.train._choices import DEQ_KEYS

    root = Path(__file__).resolve().parents[1] / "experiments"
    paths = sorted(root.rglob("*.toml"))
    assert len(paths) > 50
    flat = {
        str(path.relative_to(root)): sorted(set(DEQ_KEYS) & set(tomllib.loads(path.read_text())))
        for path in paths
    }
    assert {k: v for k, v in flat.items() if v} == {}


def test_a_deq_setting_given_both_ways_is_an_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match=r"^max_iter given both in the deq table and as top"):
        TrainConfig.from_dict({"max_iter": 5, "deq": {"max_iter": 6, "tol": 1e-3}})
    (tmp_path / "both.toml").write_text('tol = 1e-3\n[deq]\ntol = 1e-4\nsolver = "picard"\n')
    with pytest.raises(ValueError, match="tol given both"):
        load_config(tmp_path / "both.toml")
    # a top-level None (a checkpoint's config from before the deq table) is "not given"
    assert TrainConfig.from_dict({"tol": None, "deq": {"tol": 1e-4}}).deq == {"tol": 1e-4}
    with pytest.raises(ValueError, match=r"unknown deq setting\(s\): tols; valid: solver, tol"):
        TrainConfig(deq={"tols": 1e-3})
    with pytest.raises(ValueError, match=r"^Invalid max_iter: 2\.5 \(expected an integer >= 1\)$"):
        TrainConfig(deq={"max_iter": 2.5})
    with pytest.raises(TypeError, match="deq must be a dict"):
        TrainConfig(deq=[("tol", 1e-3)])


def test_flat_deq_keywords_set_and_unset_entries_of_the_table():
    c = TrainConfig(tol=1e-3, max_iter=20)
    assert c.deq == {"tol": 1e-3, "max_iter": 20}
    assert dataclasses.replace(c, tol=1e-5).deq == {"tol": 1e-5, "max_iter": 20}
    assert dataclasses.replace(c, max_iter=None).deq == {"tol": 1e-3}
    assert c.with_overrides(tol=2e-3).deq == {"tol": 2e-3, "max_iter": 20}
    assert c.with_overrides(deq={"solver": "picard"}).deq == {"solver": "picard"}
    assert TrainConfig(tol=1).deq == {"tol": 1.0} and isinstance(TrainConfig(tol=1).tol, float)


def test_the_model_is_built_with_the_configs_deq_settings():
    # The config's settings used to be passed as overrides on every call: the model's own
    # DEQ kept its defaults, and so did every study of a trained model.
    c = TrainConfig(model_kwargs={"width": 8}, deq=DEQ_TABLE)
    model = model_from_config(c)
    want = deqkit.DEQSettings(**{**DEQ_TABLE, "tol": 1e-3})
    assert model.deq.settings == want
    # the model's own defaults stay where the config gives nothing (recall1d: tol=1e-3)
    assert model_from_config(TrainConfig(max_iter=7)).deq.settings == deqkit.DEQSettings(
        tol=1e-3, max_iter=7
    )
    mono = TrainConfig(task="digits", model="monotone_mlp", model_kwargs={"hidden": 16})
    assert model_from_config(mono).deq.settings.solver == "picard"
    # a setting in model_kwargs yields to the deq table, as the per-call overrides did
    both = TrainConfig(model_kwargs={"width": 8, "max_iter": 9}, max_iter=11)
    assert model_from_config(both).deq.settings.max_iter == 11
    # recurrent mode: max_iter is the evaluation iteration count, not the DEQ's budget
    rec = TrainConfig(mode="recurrent", model_kwargs={"width": 8}, max_iter=7)
    assert model_from_config(rec).deq.settings.max_iter == 30
    # checked with the DEQSettings defaults (anderson) in the config, with picard here
    with pytest.raises(TypeError, match=r"model 'monotone_mlp' with the deq settings .*picard"):
        model_from_config(dataclasses.replace(mono, solver_options={"m": 3}))


def test_a_misspelt_model_argument_is_named_as_a_model_argument(tmp_path):
    # was "unknown DEQ setting(s) widht; valid: solver, tol, ...": no word of the model
    with pytest.raises(ValueError) as err:
        model_from_config(TrainConfig(model_kwargs={"widht": 8}))
    message = str(err.value)
    assert "unknown argument(s) widht" in message and "unknown DEQ setting" not in message
    assert " width," in message and "num_blocks" in message


def test_a_checkpoint_with_the_older_flat_config_resumes_and_evaluates(tmp_path):
    # Checkpoints written before the deq table hold every DEQ setting as a top-level key
    # (None where not given); they resume bit for bit and evaluate as before.
    changes = dict(task="prefix_sums", model="recall1d", difficulty=6, schedule="constant")
    c = small(tmp_path, "full", steps=4, tol=1e-3, backward="phantom", **changes)
    c = dataclasses.replace(c, model_kwargs={"width": 8, "num_blocks": 1})
    full = train(c, progress=False)
    old = dataclasses.replace(c, out_dir=str(tmp_path / "old"), steps=2)
    train(old, progress=False)
    path = Path(old.out_dir) / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    flat = {k: None for k in ("solver", "solver_options", "stop", "backward_options")}
    flat.update(backward_solver=None, backward_tol=None, backward_max_iter=None)
    state["config"].update(flat, **state["config"].pop("deq"))
    assert state["config"]["max_iter"] == 15 and "deq" not in state["config"]
    torch.save(state, path)
    (Path(old.out_dir) / "config.json").write_text(json.dumps(state["config"]))
    model, config, _ = load_checkpoint(path)
    assert config.deq == {"tol": 1e-3, "max_iter": 15, "backward": "phantom"}
    assert model.deq.settings.max_iter == 15
    assert main(["--resume", old.out_dir, "--steps", "4", "--no-progress"]) == 0
    resumed, _, _ = load_checkpoint(Path(old.out_dir) / "checkpoint.pt")
    for a, b in zip(full.model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    assert evaluate(resumed, config, 6, 32) == evaluate(full.model, c, 6, 32)


def test_train_flags_set_entries_of_a_config_files_deq_table(tmp_path):
    from deqkit.train.__main__ import build_parser, config_from_args

    path = tmp_path / "c.toml"
    path.write_text('[deq]\nsolver = "picard"\ntol = 1e-3\nmax_iter = 12\n')
    args = build_parser().parse_args(
        ["--config", str(path), "--tol", "1e-5", "--set", "max_iter=20", "--set", "stop=abs"]
    )
    assert config_from_args(args).deq == {
        "solver": "picard",
        "tol": 1e-5,
        "max_iter": 20,
        "stop": "abs",
    }
    # the same entry by its place in the table; a name that is no DEQ setting is refused
    args = build_parser().parse_args(
        ["--config", str(path), "--set", "deq.max_iter=30", "--set", 'deq.backward="phantom"']
    )
    assert config_from_args(args).deq == {
        "solver": "picard",
        "tol": 1e-3,
        "max_iter": 30,
        "backward": "phantom",
    }
    args = build_parser().parse_args(["--config", str(path), "--set", "deq.tols=1e-3"])
    with pytest.raises(ValueError, match=r"unknown deq setting 'tols' \(in deq\.tols\); valid: "):
        config_from_args(args)


def test_config_defaults_follow_the_task():
    c = TrainConfig()
    assert (c.task, c.model_name, c.train_difficulty, c.eval_levels) == (
        "prefix_sums",
        "recall1d",
        16,
        (16,),
    )
    assert TrainConfig(task="mazes").model_name == "recall2d"
    assert TrainConfig(task="mazes").train_difficulty == 9
    assert TrainConfig(task="digits").model_name == "deq_conv"
    assert TrainConfig(task="mnist1d").model_name == "deq_mlp"
    assert TrainConfig(task="digits").eval_levels == (None,)
    assert TrainConfig().solver_overrides() == {}
    assert TrainConfig(tol=1e-6, max_iter=50).solver_overrides() == {"tol": 1e-6, "max_iter": 50}
    assert str(TrainConfig(seed=3).run_dir) == os.path.join(
        "runs", "prefix_sums-recall1d-deq-seed3"
    )


def test_unknown_config_keys_are_named():
    with pytest.raises(ValueError, match="unknown config key.*batchsize.*learning_rate"):
        TrainConfig.from_dict({"batchsize": 3, "learning_rate": 1.0, "lr": 0.1})
    with pytest.raises(ValueError, match="unknown config key.*nope"):
        TrainConfig().with_overrides(nope=1)


@pytest.mark.parametrize(
    ("changes", "error", "field"),
    [
        ({"task": "cifar100"}, ValueError, "task"),
        ({"difficulty": 0}, ValueError, "difficulty"),
        ({"task": "digits", "difficulty": 8}, ValueError, "difficulty"),
        ({"task": "digits", "eval_difficulties": [8]}, ValueError, "eval_difficulties"),
        ({"eval_difficulties": []}, ValueError, "eval_difficulties"),
        ({"task": "mnist"}, ValueError, "data_root"),
        ({"epochs": 2}, ValueError, "epochs"),
        ({"task": "digits", "epochs": 2, "steps": 5}, ValueError, "steps or epochs"),
        ({"mode": "solve"}, ValueError, "mode"),
        ({"solver": "newtonian"}, ValueError, "solver"),
        ({"backward": "adjoint"}, ValueError, "backward"),
        ({"tol": -1.0}, ValueError, "tol"),
        ({"max_iter": 0}, ValueError, "max_iter"),
        ({"backward_options": {"k": 0}, "backward": "phantom"}, ValueError, "k"),
        ({"mode": "recurrent", "solver": "picard"}, ValueError, "solver"),
        ({"train_iters": 5}, ValueError, "train_iters"),
        ({"optimizer": "lbfgs"}, ValueError, "optimizer"),
        ({"lr": 0.0}, ValueError, "lr"),
        ({"lr": float("nan")}, ValueError, "lr"),
        ({"lr": "fast"}, ValueError, "Invalid lr: 'fast' .expected a finite number > 0"),
        ({"momentum": 0.9}, ValueError, "momentum"),
        ({"schedule": "linear"}, ValueError, "schedule"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"batch_size": 2.0}, ValueError, r"Invalid batch_size: 2.0 \(expected an integer >= 1\)"),
        ({"steps": True}, ValueError, "Invalid steps: True"),
        ({"seed": -1}, ValueError, "seed"),
        ({"device": "tpu"}, ValueError, "device"),
        ({"amp": "fp16"}, ValueError, "amp"),
        ({"dtype": "float16"}, ValueError, "dtype"),
        ({"compile": "yes"}, ValueError, r"Invalid compile: 'yes' \(expected a bool\)"),
        ({"compile": True, "jac_penalty": 0.1}, ValueError, "double backward"),
        ({"model_kwargs": [1]}, TypeError, "model_kwargs"),
        ({"grad_clip": 0}, ValueError, "grad_clip"),
    ],
)
def test_invalid_config_values_name_the_field(changes, error, field):
    with pytest.raises(error, match=field):
        TrainConfig(**changes)


# -- data ----------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["prefix_sums", "digits"])
def test_batches_depend_on_seed_and_step_only_so_shards_tile_the_global_batch(task):
    c = TrainConfig(task=task, batch_size=8, **({"difficulty": 6} if task == "prefix_sums" else {}))
    data = Data(c)
    x, y = data.batch(3, 0, 8)
    halves = [Data(c).batch(3, lo, lo + 4) for lo in (0, 4)]
    assert torch.equal(torch.cat([h[0] for h in halves]), x)
    assert torch.equal(torch.cat([h[1] for h in halves]), y)
    assert not torch.equal(data.batch(4, 0, 8)[0], x)
    other = Data(dataclasses.replace(c, seed=1)).batch(3, 0, 8)[0]
    assert not torch.equal(other, x)


def test_augment_shift_moves_each_image_by_its_own_offset_and_keeps_shards_exact():
    plain = Data(TrainConfig(task="digits", batch_size=16))
    c = TrainConfig(task="digits", batch_size=16, augment_shift=1)
    data = Data(c)
    x0, y0 = plain.batch(2, 0, 16)
    x, y = data.batch(2, 0, 16)
    assert torch.equal(y, y0) and x.shape == x0.shape
    padded = torch.nn.functional.pad(x0, (1, 1, 1, 1), mode="replicate")
    offsets = []
    for j in range(16):  # each output is one of the 9 windows of its padded original
        hits = [
            (dy, dx)
            for dy in range(3)
            for dx in range(3)
            if torch.equal(x[j], padded[j, :, dy : dy + 8, dx : dx + 8])
        ]
        assert hits, j
        offsets.append(hits[0])
    assert len(set(offsets)) > 3  # offsets differ between samples
    assert (x != x0).any(dim=(1, 2, 3)).float().mean() > 0.5
    halves = [Data(c).batch(2, lo, lo + 8)[0] for lo in (0, 8)]
    assert torch.equal(torch.cat(halves), x)  # per-sample draws: shards tile the batch
    assert torch.equal(data.eval_set(None, None)[0], plain.eval_set(None, None)[0])
    with pytest.raises(ValueError, match="augment_shift applies to data sets only"):
        TrainConfig(task="prefix_sums", augment_shift=1)
    with pytest.raises(ValueError, match="augment_shift"):
        TrainConfig(task="digits", augment_shift=-1)


def test_data_set_epochs_visit_each_sample_once():
    c = TrainConfig(task="digits", epochs=2, batch_size=256)
    data = Data(c)
    spe = data.steps_per_epoch
    assert spe == 1437 // 256 and data.total_steps() == 2 * spe
    ys = torch.cat([data.batch(s, 0, 256)[1] for s in range(spe)])
    perm = data._perm[1]
    assert torch.equal(torch.sort(perm).values, torch.arange(1437))
    assert torch.equal(ys, data.dataset.y_train[perm[: spe * 256]])
    assert data.epoch(spe - 1) == 0 and data.epoch(spe) == 1
    assert not torch.equal(data.batch(0, 0, 256)[1], data.batch(spe, 0, 256)[1])


# -- training ------------------------------------------------------------------------------


def test_training_decreases_the_loss_and_writes_the_run_folder(tmp_path):
    c = small(tmp_path, steps=40, batch_size=64, log_every=5, eval_every=20, backward="implicit")
    c = dataclasses.replace(c, warmup_steps=0)  # the cosine decay alone
    c = dataclasses.replace(c, model_kwargs={"hidden": 32, "groups": 4})
    result = train(c, progress=False)
    folder = Path(c.out_dir)
    assert {p.name for p in folder.iterdir()} == {
        "checkpoint.pt",
        "config.json",
        "eval.csv",
        "metrics.csv",
        "metrics.jsonl",
    }
    assert TrainConfig.from_dict(json.loads((folder / "config.json").read_text())) == c
    records = read_jsonl(folder / "metrics.jsonl")
    train_recs = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train_recs] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert [r["step"] for r in evals] == [20, 40]
    assert train_recs[-1]["loss"] < 0.75 * train_recs[0]["loss"]
    assert evals[-1]["accuracy"] > 0.3  # chance is 0.1
    for r in train_recs:
        assert 1 <= r["iters_mean"] <= r["iters_max"] <= 15
        assert 0 <= r["converged"] <= 1 and r["residual_mean"] >= 0
        assert r["backward_iters"] > 0 and r["grad_norm"] > 0 and r["lr"] > 0
    assert train_recs[-1]["lr"] < train_recs[0]["lr"]  # cosine
    csv_lines = (folder / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("step,epoch,loss,") and len(csv_lines) == 9
    assert len((folder / "eval.csv").read_text().splitlines()) == 3
    assert result.step == 40 and result.train == train_recs[-1]
    assert without_time(result.eval) == without_time(evals[-1:])
    model, config, state = load_checkpoint(folder)
    assert config == c and state["step"] == 40 and state["records"] == records
    for a, b in zip(model.state_dict().values(), result.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_refuses_to_overwrite_a_run_folder(tmp_path):
    c = small(tmp_path, steps=2)
    train(c, progress=False)
    before = {p.name: p.read_bytes() for p in Path(c.out_dir).iterdir()}
    with pytest.raises(FileExistsError, match="not empty.*resume"):
        train(c, progress=False)
    with pytest.raises(FileExistsError, match="not empty"):
        train(dataclasses.replace(c, seed=1), progress=False)
    assert {p.name: p.read_bytes() for p in Path(c.out_dir).iterdir()} == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        train(small(tmp_path, "other"), progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint.pt"):
        train(small(tmp_path, "other"), resume=True, progress=False)
    with pytest.raises(ValueError, match=r"lr: 0\.01 -> 0\.02"):
        train(dataclasses.replace(c, lr=0.02), resume=True, progress=False)
    assert {p.name: p.read_bytes() for p in Path(c.out_dir).iterdir()} == before


def test_rank_zero_sends_its_folder_errors_as_type_and_message(tmp_path):
    """What rank 0 finds travels to every rank as (exception class, message), pickled."""
    import pickle

    from deqkit.train._folder import RankError, check_folder

    c = small(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("")
    error, state = check_folder(c, False, Data(c))
    assert state is None and error.type is FileExistsError and "not empty" in error.message
    assert pickle.loads(pickle.dumps(error)) == error
    error, _ = check_folder(c, True, Data(c))
    assert error == RankError(FileNotFoundError, f"cannot resume: no checkpoint.pt in {c.run_dir}")
    with pytest.raises(FileNotFoundError, match="cannot resume: no checkpoint.pt"):
        error.throw()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc/self/fd")
def test_metrics_logs_are_made_durable_at_every_checkpoint(tmp_path, monkeypatch):
    """Appends are not fsync-ed one by one (too slow per step); each checkpoint syncs them."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd):
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    train(small(tmp_path, steps=4, checkpoint_every=2), progress=False)
    for name in ("metrics.jsonl", "metrics.csv", "eval.csv"):
        assert synced.count(name) == 2, (name, synced)  # at steps 2 and 4


def test_an_empty_existing_folder_is_fine(tmp_path):
    (tmp_path / "empty").mkdir()
    assert train(small(tmp_path, "empty", steps=1), progress=False).step == 1


class Interrupt:
    """Raises KeyboardInterrupt after step ``at``: an injected Ctrl-C."""

    def __init__(self, at: int):
        self.at = at

    def __call__(self, event: StepEvent) -> None:
        if event.step == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {
            "task": "prefix_sums",
            "difficulty": 6,
            "model": STAND_IN,
            "model_kwargs": {"width": 8},
            "jac_penalty": 0.1,
        },
        {"backward": "phantom", "optimizer": "sgd", "momentum": 0.9, "warmup_steps": 3},
    ],
    ids=["digits-implicit", "prefix-penalty", "phantom-sgd"],
)
def test_resume_after_interruption_is_bit_identical(tmp_path, changes):
    c = small(tmp_path, "full", steps=8, eval_every=4, checkpoint_every=3, **changes)
    full = train(c, progress=False)
    cut = dataclasses.replace(c, out_dir=str(tmp_path / "cut"))
    with pytest.raises(KeyboardInterrupt):
        train(cut, progress=False, callback=Interrupt(5))
    assert load_checkpoint(cut.out_dir)[2]["step"] == 5
    resumed = train(cut, resume=True, progress=False)
    assert resumed.step == full.step == 8
    for (k, a), b in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    a = read_jsonl(Path(c.out_dir) / "metrics.jsonl")
    b = read_jsonl(Path(cut.out_dir) / "metrics.jsonl")
    assert without_time(a) == without_time(b)
    _, _, sa = load_checkpoint(c.out_dir)
    _, _, sb = load_checkpoint(cut.out_dir)
    assert without_time(sa["records"]) == without_time(sb["records"])
    for name in ("metrics.csv", "eval.csv"):
        lines = [(Path(d) / name).read_text().splitlines() for d in (c.out_dir, cut.out_dir)]
        assert [x.rsplit(",", 1)[0] for x in lines[0]] == [x.rsplit(",", 1)[0] for x in lines[1]]


def test_resume_may_extend_the_run_but_a_finished_run_does_nothing_more(tmp_path):
    c = small(tmp_path, steps=3, schedule="constant")
    train(c, progress=False)
    again = train(c, resume=True, progress=False)
    assert again.step == 3 and len(again.eval) == 1
    longer = train(dataclasses.replace(c, steps=5), resume=True, progress=False)
    assert longer.step == 5
    steps = [r["step"] for r in read_jsonl(Path(c.out_dir) / "metrics.jsonl")]
    assert steps == [1, 2, 3, 3, 4, 5, 5]


def test_resume_with_more_steps_does_not_respan_the_cosine_schedule(tmp_path, capsys):
    # Past the warm-up a cosine schedule is planned for its step count: a new count would
    # make the learning rate jump (neither this run continued nor a fresh longer one).
    c = small(tmp_path, steps=4, warmup_steps=2)
    train(c, progress=False)
    before = {p.name: p.read_bytes() for p in Path(c.out_dir).iterdir()}
    for steps in (8, 3):
        with pytest.raises(ValueError, match=r"cosine .* planned for 4 steps .* step 4, past"):
            train(dataclasses.replace(c, steps=steps), resume=True, progress=False)
    assert main(["--resume", c.out_dir, "--steps", "8", "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deqkit: error: cannot resume"), lines
    assert "fresh run with steps=8" in lines[0] and "schedule='constant'" in lines[0]
    assert {p.name: p.read_bytes() for p in Path(c.out_dir).iterdir()} == before
    # an interrupted cosine run past its warm-up: the same
    cut = small(tmp_path, "cut", steps=6, warmup_steps=2)
    with pytest.raises(KeyboardInterrupt):
        train(cut, progress=False, callback=Interrupt(3))
    with pytest.raises(ValueError, match="planned for 6 steps"):
        train(dataclasses.replace(cut, steps=8), resume=True, progress=False)
    # within the warm-up the count does not matter yet: resuming with more steps is the
    # fresh run with that many, bit for bit
    warm = small(tmp_path, "warm", steps=2, warmup_steps=3)
    train(warm, progress=False)
    longer = train(dataclasses.replace(warm, steps=5), resume=True, progress=False)
    fresh = train(small(tmp_path, "fresh", steps=5, warmup_steps=3), progress=False)
    assert longer.step == fresh.step == 5
    for a, b in zip(fresh.model.parameters(), longer.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_resume_of_a_checkpoint_written_before_a_config_field_existed(tmp_path):
    # A run saved by an older deqkit has no entry for fields added since (here the recipe
    # fields); they take their defaults, which reproduce the old behaviour.
    c = small(tmp_path, steps=3, schedule="constant")
    train(c, progress=False)
    path = Path(c.out_dir) / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    for key in ("pretrain_solver", "init", "max_iter_jitter"):
        del state["config"][key]
    torch.save(state, path)
    assert train(dataclasses.replace(c, steps=4), resume=True, progress=False).step == 4


def test_resume_refuses_a_model_whose_default_deq_settings_changed(tmp_path, capsys):
    # The config holds only the DEQ settings given; a checkpoint records the ones its model
    # ran with, so a default changed by a newer deqkit (DEQConv's gradient did) cannot
    # silently change a resumed run. A checkpoint without the record is not checked.
    c = small(tmp_path, steps=3, schedule="constant")
    train(c, progress=False)
    path = Path(c.out_dir) / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    assert state["deq_settings"].startswith("DEQSettings(solver=")
    old = state["deq_settings"]
    state["deq_settings"] = old.replace("backward=", "backward=Phantom(k=2), was=")
    torch.save(state, path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"cannot resume .*trained with DEQSettings.*k=2.*builds"):
        train(dataclasses.replace(c, steps=4), resume=True, progress=False)
    assert main(["--resume", c.out_dir, "--steps", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a default changed" in err[0], err
    assert path.read_bytes() == before
    del state["deq_settings"]  # written before the record existed
    torch.save(state, path)
    assert train(dataclasses.replace(c, steps=4), resume=True, progress=False).step == 4


def test_sigint_finishes_the_step_saves_and_raises(tmp_path):
    def ctrl_c(event: StepEvent) -> None:
        if event.step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    c = small(tmp_path, steps=10)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train(c, progress=False, callback=ctrl_c)
    assert signal.getsignal(signal.SIGINT) is handler
    model, config, state = load_checkpoint(c.out_dir)
    assert config == c and state["step"] == 3  # the flag is read at the end of a step
    assert [r["step"] for r in state["records"]] == [1, 2, 3]
    assert not list(Path(c.out_dir).glob(".*.tmp"))
    assert train(c, resume=True, progress=False).step == 10


def test_interruption_inside_a_step_keeps_a_consistent_checkpoint(tmp_path, monkeypatch):
    c = small(tmp_path, steps=6, checkpoint_every=2)
    calls = {"n": 0}
    real = torch.optim.AdamW.step

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # during the 4th update: parameters may be half written
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", flaky)
    with pytest.raises(KeyboardInterrupt):
        train(c, progress=False)
    assert load_checkpoint(c.out_dir)[2]["step"] == 2  # the last consistent one, not 3
    monkeypatch.setattr(torch.optim.AdamW, "step", real)
    resumed = train(c, resume=True, progress=False)
    full = train(dataclasses.replace(c, out_dir=str(tmp_path / "full")), progress=False)
    for a, b in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_amp_bf16_trains_on_cpu(tmp_path):
    result = train(small(tmp_path, amp="bf16", steps=4), progress=False)
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    assert torch.isfinite(torch.tensor(result.train["loss"]))
    assert result.train["iters_mean"] >= 1 and result.eval[0]["accuracy"] >= 0
    with pytest.raises(ValueError, match="float32"):
        train(small(tmp_path, "f64", amp="bf16", dtype="float64"), progress=False)


def test_eval_max_iter_is_the_budget_of_the_runs_evaluations_and_nothing_else(tmp_path):
    """Training solves stop at max_iter; the eval records, evaluate() and deqkit eval
    without a budget use eval_max_iter; a budget given to evaluate() still wins."""
    kw = dict(max_iter=2, tol=1e-12, steps=3, log_every=1)
    r = train(small(tmp_path, "long", eval_max_iter=40, **kw), progress=False)
    short = train(small(tmp_path, "short", **kw), progress=False)
    log, short_log = read_jsonl(r.metrics), read_jsonl(short.metrics)
    assert max(x["iters_max"] for x in log if x["kind"] == "train") == 2
    assert without_time(log[:-1]) == without_time(short_log[:-1])  # training unchanged
    (got,), (base,) = r.eval, short.eval
    assert got["max_iter"] == 40 and got["iters_mean"] > 2 and base["max_iter"] == 2
    model, config, _ = load_checkpoint(r.checkpoint)
    fields = evaluate(model, config).to_dict()
    assert fields == {k: got[k] for k in fields}
    assert evaluate(model, config, max_iter=3).max_iter == 3
    out = subprocess.run(
        [sys.executable, "-m", "deqkit.cli", "eval", str(r.checkpoint)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout)["max_iter"] == 40


def test_eval_max_iter_errors(tmp_path):
    with pytest.raises(ValueError, match=r"Invalid eval_max_iter: 0 \(expected an integer >= 1"):
        small(tmp_path, "x", eval_max_iter=0)
    with pytest.raises(ValueError, match="eval_max_iter apply to mode='deq' only"):
        small(tmp_path, "x", mode="recurrent", eval_max_iter=5, max_iter=None)
    with pytest.raises(ValueError, match="eval_max_iter needs an equilibrium model"):
        train(small(tmp_path, "e", model="explicit_mlp", eval_max_iter=5), progress=False)


def test_float64_and_explicit_models_and_the_stand_in_protocol(tmp_path):
    r = train(small(tmp_path, "f64", dtype="float64", steps=2), progress=False)
    assert all(p.dtype == torch.float64 for p in r.model.parameters())
    r = train(small(tmp_path, "explicit", model="explicit_mlp", steps=2), progress=False)
    assert r.train["iters_mean"] is None and r.eval[0]["max_iter"] is None
    with pytest.raises(ValueError, match="jac_penalty needs an equilibrium model"):
        train(small(tmp_path, "exp2", model="explicit_mlp", jac_penalty=0.1), progress=False)
    c = small(tmp_path, "standin", task="prefix_sums", difficulty=5, model=STAND_IN, steps=2)
    c = dataclasses.replace(c, model_kwargs={})
    r = train(c, progress=False)
    assert isinstance(r.model, SeqModel) and r.model.length == 5
    with pytest.raises(
        ValueError, match="unknown model 'mlp'; valid: deq_attention, deq_conv, deq_mlp"
    ):
        train(small(tmp_path, "bad0", model="mlp"), progress=False)
    with pytest.raises(ValueError, match="cannot import"):
        train(small(tmp_path, "bad", model="no_such_module_xyz:Model"), progress=False)
    with pytest.raises(ValueError, match="model_kwargs"):
        train(small(tmp_path, "bad2", model_kwargs={"wdth": 3}), progress=False)


@pytest.mark.parametrize(
    ("task", "model_kwargs", "cls"),
    [
        ("prefix_sums", {"width": 8, "num_blocks": 1}, "RecallNet"),
        ("mazes", {"width": 8, "num_blocks": 1}, "RecallNet"),
        ("digits", {"channels": [8, 16]}, "DEQConv"),
        ("mnist1d", {"hidden": 16, "groups": 4}, "DEQMLP"),
    ],
)
def test_each_task_trains_its_default_model(tmp_path, task, model_kwargs, cls):
    difficulty = {"prefix_sums": 6, "mazes": 3}.get(task)
    c = TrainConfig(
        task=task,
        difficulty=difficulty,
        model_kwargs=model_kwargs,
        steps=2,
        batch_size=8,
        eval_size=16,
        max_iter=10,
        out_dir=str(tmp_path / task),
    )
    r = train(c, progress=False)
    assert type(r.model).__name__ == cls
    assert 1 <= r.train["iters_mean"] <= 10 and r.eval[0]["n"] == 16


def test_the_recall_nets_take_the_tasks_class_count_and_a_wrong_one_is_named(tmp_path):
    # recall2d on Sudoku (9 classes a cell) was built with 2 output channels, the class
    # count never reaching for_mazes, and training died in cross_entropy: "Target 5 is out
    # of bounds"
    base = dict(task="sudoku", difficulty=20, model="recall2d", steps=1, batch_size=2)
    base.update(eval_size=2, max_iter=3, warmup_steps=1)
    c = TrainConfig(**base, model_kwargs={"width": 8, "num_blocks": 1}, out_dir=str(tmp_path / "a"))
    model = model_from_config(c)
    assert model(torch.zeros(2, 10, 9, 9))[0].shape == (2, 9, 9, 9)
    assert train(c, progress=False).step == 1
    ps = model_from_config(TrainConfig(model="recall1d", model_kwargs={"width": 8}))
    assert ps(torch.zeros(3, 1, 5))[0].shape == (3, 2, 5)
    wrong = dataclasses.replace(
        c,
        model_kwargs={"width": 8, "num_blocks": 1, "out_channels": 2},
        out_dir=str(tmp_path / "b"),
    )
    with pytest.raises(ValueError) as err:
        train(wrong, progress=False)
    assert str(err.value).startswith(
        "model 'recall2d' gives 2 classes along dim 1 (logits (2, 2, 9, 9)), the task "
        "'sudoku' has 9"
    )


def test_solver_settings_left_unset_keep_the_models_own(tmp_path):
    c = small(tmp_path, model="monotone_mlp", model_kwargs={"hidden": 16}, max_iter=None, steps=1)
    r = train(c, progress=False)
    assert r.eval[0]["max_iter"] == 100  # monotone_mlp's default budget (and picard)
    assert r.model.deq.settings.solver == "picard"


def test_recurrent_mode_uses_the_progressive_loss(tmp_path):
    c = TrainConfig(
        task="prefix_sums",
        difficulty=6,
        mode="recurrent",
        train_iters=4,
        progressive_alpha=0.5,
        model_kwargs={"width": 8, "num_blocks": 1},
        steps=3,
        batch_size=8,
        eval_size=16,
        out_dir=str(tmp_path / "rec"),
    )
    r = train(c, progress=False)
    assert r.train["iters_mean"] is None and r.train["accuracy"] is None
    assert r.eval[0]["max_iter"] == 4 and r.eval[0]["iters_mean"] == 4
    assert evaluate(r.model, c, 6, 16, max_iter=7).max_iter == 7


def test_evaluate_sets_the_budget_and_matches_the_logged_evaluation(tmp_path):
    c = small(
        tmp_path, task="prefix_sums", model="recall1d", difficulty=6, eval_difficulties=[6, 9]
    )
    c = dataclasses.replace(c, model_kwargs={"width": 8, "num_blocks": 1})
    result = train(c, progress=False)
    model, config, _ = load_checkpoint(Path(c.out_dir) / "checkpoint.pt")
    logged = {r["difficulty"]: r for r in result.eval}
    for d in (6, 9):
        out = evaluate(model, config, d)
        assert without_time([{"kind": "eval", "step": 6, **out.to_dict()}]) == without_time(
            [logged[d]]
        )
    short = evaluate(model, config, 9, 20, max_iter=2)
    assert short.n == 20 and short.max_iter == 2 and short.iters_max <= 2
    loose = evaluate(model, config, 9, 20, tol=0.5)
    assert loose.tol == 0.5 and loose.converged == 1.0
    assert evaluate(model, config).difficulty == 6
    with pytest.raises(ValueError, match="max_iter"):
        evaluate(model, config, 6, max_iter=0)
    digits = small(tmp_path, "d", steps=1)
    m = train(digits, progress=False).model
    assert evaluate(m, digits).n == 64
    with pytest.raises(ValueError, match="difficulty"):
        evaluate(m, digits, 8)


def test_evaluate_returns_a_frozen_record_whose_dict_is_the_logged_columns(tmp_path):
    """``deqkit eval`` prints to_dict(): the keys of eval.csv less step and time."""
    from deqkit.train._files import EVAL_COLUMNS

    c = small(tmp_path, task="prefix_sums", model="recall1d", difficulty=6)
    c = dataclasses.replace(c, model_kwargs={"width": 8, "num_blocks": 1})
    torch.manual_seed(0)
    out = evaluate(model_from_config(c), c, 6, 8, max_iter=3)
    assert isinstance(out, Evaluation) and out.n == 8 and out.max_iter == 3
    assert tuple(out.to_dict()) == tuple(k for k in EVAL_COLUMNS if k not in ("step", "time"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.accuracy = 1.0


def test_compile_with_double_backward_is_refused_up_front():
    with pytest.raises(ValueError, match="double backward"):
        TrainConfig(compile=True, jac_penalty=1.0)


@pytest.mark.slow
# Both warnings are torch's own: inductor imports a TorchScript module, and dynamo reads the
# .grad of the non-leaf input while tracing.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
def test_compiled_cell_trains_like_the_eager_one(tmp_path):
    eager = train(small(tmp_path, "eager", steps=3, dtype="float64"), progress=False)
    comp = train(small(tmp_path, "comp", steps=3, dtype="float64", compile=True), progress=False)
    assert eager.model.state_dict().keys() == comp.model.state_dict().keys()
    for a, b in zip(eager.model.parameters(), comp.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


# -- command line ----------------------------------------------------------------------------


def test_module_entry_point_trains_and_resumes(tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(small(tmp_path, steps=2).to_dict()))
    run = tmp_path / "cli"
    assert (
        main(["--config", str(cfg), "--out-dir", str(run), "--set", "seed=4", "--no-progress"]) == 0
    )
    assert capsys.readouterr().out.strip() == str(run)
    saved = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    assert saved.seed == 4 and saved.steps == 2
    assert main(["--config", str(cfg), "--out-dir", str(run), "--no-progress"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["--resume", str(run), "--steps", "3", "--no-progress"]) == 0
    assert load_checkpoint(run)[2]["step"] == 3
    assert main(["--config", str(cfg), "--set", "bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_train_without_task_or_config_trains_the_default_config(tmp_path, capsys):
    run = tmp_path / "default"
    args = ["--out-dir", str(run), "--steps", "1", "--batch-size", "4", "--width", "8"]
    assert main([*args, "--set", "eval_size=4", "--no-progress"]) == 0, capsys.readouterr().err
    config = load_checkpoint(run)[1]
    assert config.task == "prefix_sums" and config.train_difficulty == 16
    assert config == TrainConfig(
        model_kwargs={"width": 8}, steps=1, batch_size=4, eval_size=4, out_dir=str(run)
    )


# -- data parallel -----------------------------------------------------------------------------


def _free_ports(n: int) -> list[int]:
    """``n`` free ports below the kernel's ephemeral range.

    A port from the ephemeral range (what binding to port 0 hands out) can be taken before
    the rank-0 store binds it by any outgoing connection, gloo's own included; ports below
    the range are never chosen for outgoing connections. (The rendezvous that once hung
    here, "1/2 clients joined", was not this but the gloo destructor deadlock of the test
    below: the other rank never left the previous run.)
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    ports: list[int] = []
    while len(ports) < n:
        port = rng.randrange(max(1024, low - 12000), low)
        if port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    return ports


def _join_or_fail(context, seconds: float, message: str) -> None:
    """Wait for the processes of ``mp.spawn(..., join=False)``; past ``seconds``, kill them
    and fail the test with ``message`` (a hang costs minutes, not the store's 30)."""
    deadline = time.monotonic() + seconds
    while not context.join(timeout=2):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(message)


def _record_grads(store):
    def callback(event: StepEvent) -> None:
        params = event.model.named_parameters()
        store.append({n: p.grad.clone() for n, p in params if p.grad is not None})

    return callback


def _ddp_worker(rank: int, world: int, ports: list, configs: dict, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    for port, (case, config) in zip(ports, configs.items(), strict=True):
        # Each train() joins and leaves the group itself, as under torchrun; a fresh port per
        # run, since a rank that re-joins on the old port could meet the previous store.
        os.environ["MASTER_PORT"] = str(port)
        grads: list = []
        result = train(TrainConfig.from_dict(config), progress=False, callback=_record_grads(grads))
        torch.save(
            {"grads": grads, "weights": result.model.state_dict(), "evals": result.eval},
            Path(out) / f"{case}-rank{rank}.pt",
        )


DDP_CASES = {
    "deq_mlp-implicit": {},
    "recall1d-phantom": {
        "task": "prefix_sums",
        "difficulty": 6,
        "model": "recall1d",
        "model_kwargs": {"width": 4, "num_blocks": 1},
        "backward": "phantom",
    },
    "recall1d-recurrent": {
        "task": "prefix_sums",
        "difficulty": 6,
        "model": "recall1d",
        "model_kwargs": {"width": 4, "num_blocks": 1},
        "mode": "recurrent",
        "train_iters": 3,
        "max_iter": None,
    },
    # The injection of a recall-free DEQ gets no gradient: DDP must be told to expect that.
    # (This cell does not converge; plain iteration keeps rounding differences small.)
    "recall1d-no-recall": {
        "task": "prefix_sums",
        "difficulty": 6,
        "model": "recall1d",
        "model_kwargs": {"width": 4, "num_blocks": 1, "recall": False},
        "solver": "picard",
        "max_iter": 5,
        "backward": "phantom",
    },
}


def test_two_process_gloo_runs_match_one_process_on_the_combined_batch(tmp_path):
    """DDP (implicit and phantom DEQ gradients, recurrent progressive loss): the averaged
    gradients of every step on both ranks, the final weights and the logged metrics equal
    those of one process on the whole batch."""
    configs = {
        case: small(tmp_path, case, steps=3, batch_size=8, dtype="float64", eval_size=16, **changes)
        for case, changes in DDP_CASES.items()
    }
    context = mp.spawn(
        _ddp_worker,
        args=(
            2,
            _free_ports(len(configs)),
            {k: c.to_dict() for k, c in configs.items()},
            str(tmp_path),
        ),
        nprocs=2,
        join=False,
    )
    # A rendezvous that hangs would otherwise wait for the store's 30-minute timeout.
    _join_or_fail(context, 600, "the two gloo ranks did not finish within 10 minutes")
    for case, c in configs.items():
        grads: list = []
        single = train(
            dataclasses.replace(c, out_dir=str(tmp_path / f"{case}-single")),
            progress=False,
            callback=_record_grads(grads),
        )
        ranks = [torch.load(tmp_path / f"{case}-rank{r}.pt", weights_only=True) for r in (0, 1)]
        for got in ranks:
            assert len(got["grads"]) == len(grads) == 3
            for step_got, step_want in zip(got["grads"], grads, strict=True):
                assert step_got.keys() == step_want.keys()
                for name, g in step_want.items():
                    torch.testing.assert_close(step_got[name], g, rtol=1e-9, atol=1e-12)
            for name, w in single.model.state_dict().items():
                torch.testing.assert_close(got["weights"][name], w, rtol=1e-9, atol=1e-12)
        assert ranks[0]["evals"] and not ranks[1]["evals"]  # only rank 0 evaluates and writes
        _, _, state = load_checkpoint(c.out_dir)
        assert state["world_size"] == 2 and state["step"] == 3
        want = without_time(read_jsonl(tmp_path / f"{case}-single" / "metrics.jsonl"))
        got = without_time(read_jsonl(Path(c.out_dir) / "metrics.jsonl"))
        for a, b in zip(got, want, strict=True):
            assert a.keys() == b.keys()
            for k in a:
                if isinstance(a[k], float):  # solver statistics agree to rounding
                    assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9), (case, k)
                else:
                    assert a[k] == b[k], (case, k)


def test_batch_size_must_split_evenly_over_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        train(small(tmp_path, batch_size=8), progress=False)


def test_torchrun_entry_point(tmp_path):
    c = small(tmp_path, "tr", steps=3, batch_size=8)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(c.to_dict()))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "deqkit.train",
        "--config",
        str(cfg),
        "--no-progress",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "tr")
    single = train(dataclasses.replace(c, out_dir=str(tmp_path / "one")), progress=False)
    model, _, state = load_checkpoint(tmp_path / "tr")
    assert state["world_size"] == 2
    for a, b in zip(model.parameters(), single.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _close_worker(rank: int, ports: list, out: str) -> None:
    from deqkit.train import _dist

    os.environ.update(MASTER_ADDR="127.0.0.1", WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK="0")
    torch.set_num_threads(1)
    config = TrainConfig(device="cpu")
    for port in ports:
        os.environ["MASTER_PORT"] = str(port)
        group = _dist.setup(config)
        model = group.wrap(nn.Linear(4, 4))
        model(torch.ones(2, 4)).sum().backward()
        group.all_reduce(torch.zeros(3))
        group.barrier()
        group.close()
        del model  # the wrapper goes last, as when train() returns
    Path(out, f"rank{rank}").touch()


def test_ddp_close_does_not_deadlock_in_the_gloo_destructor(tmp_path):
    """Thirty join-wrap-reduce-leave cycles on two gloo ranks finish. Before ``Dist.close``
    released the DDP reducer first, the reducer freed the group with the GIL held while a
    gloo worker thread waited for the GIL to drop a finished collective's tensors: every
    run of this loop hung within ten cycles (one test run in four of the DDP test above)."""
    context = mp.spawn(_close_worker, args=(_free_ports(30), str(tmp_path)), nprocs=2, join=False)
    _join_or_fail(context, 300, "the two gloo ranks deadlocked leaving the group (Dist.close)")
    assert {p.name for p in tmp_path.iterdir()} == {"rank0", "rank1"}
