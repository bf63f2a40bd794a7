"""The task registry: one entry per task, read by the config, the data, the CLI and studies."""

from __future__ import annotations

import pytest
import torch

from deqkit import analysis, tasks
from deqkit.tasks import Task, available_tasks, get_task, register_task
from deqkit.tasks._registry import _TASKS
from deqkit.train import Data, TrainConfig, evaluate, model_from_config, train
from deqkit.train.__main__ import build_parser

pytestmark = pytest.mark.usefixtures("one_thread")


def copy_bits(n: int, length: int, *, seed: int | None = None):
    """A toy task: copy a bit string (``x [n, 1, length]`` -> ``y [n, length]``)."""
    g = torch.Generator().manual_seed(0 if seed is None else seed)
    bits = torch.randint(0, 2, (n, length), generator=g)
    return bits[:, None].float(), bits


@pytest.fixture
def copy_task():
    task = register_task(
        Task(
            "copy",
            "recall1d",
            tasks.exact_match,
            generate=copy_bits,
            difficulty="string length",
            difficulty_label="length",
            default_difficulty=6,
            min_difficulty=1,
            num_classes=2,
            default_model_kwargs={"width": 4, "num_blocks": 1},
        )
    )
    yield task
    del _TASKS["copy"]


def test_the_built_in_tasks_are_what_the_config_used_to_spell_out():
    assert available_tasks() == [
        "prefix_sums",
        "mazes",
        "sudoku",
        "digits",
        "mnist_subset",
        "mnist1d",
        "mnist",
        "fashion_mnist",
        "cifar10",
    ]
    assert available_tasks(procedural=True) == ["prefix_sums", "mazes", "sudoku"]
    for name, model, difficulty in [
        ("prefix_sums", "recall1d", 16),
        ("mazes", "recall2d", 9),
        ("digits", "deq_conv", None),
        ("mnist1d", "deq_mlp", None),
    ]:
        config = TrainConfig(task=name)
        assert config.task_spec is get_task(name)
        assert (config.model_name, config.train_difficulty) == (model, difficulty)
    assert [n for n in available_tasks() if get_task(n).reads_files] == [
        "mnist",
        "fashion_mnist",
        "cifar10",
    ]
    assert tasks.describe_difficulties() == (
        "string length (prefix_sums), cells per side k (mazes), "
        "blank cells (20/30/40/45/50/54/58) (sudoku)"
    )


def test_adding_a_task_is_one_registration(copy_task, tmp_path):
    """Config, data stream, training, evaluation, the studies and the CLI all take it."""
    assert "copy" in available_tasks(procedural=True)
    config = TrainConfig(
        task="copy", steps=2, batch_size=4, eval_size=4, out_dir=str(tmp_path / "run")
    )
    assert config.model_name == "recall1d" and config.eval_levels == (6,)
    x, y = Data(config).batch(0, 0, 3)
    assert x.shape == (3, 1, 6) and torch.equal(x[:, 0].long(), y)
    model = train(config, progress=False).model
    assert model.width == 4  # the task's default model arguments
    assert evaluate(model, config, 8, 4).difficulty == 8
    result = analysis.sweep(model, config, iterations=[1, 2], n=4, out_dir=tmp_path / "sweep")
    assert list(result.curves) == [6] and (tmp_path / "sweep" / "sweep.png").is_file()
    with pytest.raises(ValueError, match="Invalid difficulty: 0"):
        TrainConfig(task="copy", difficulty=0)
    assert build_parser().parse_args(["--task", "copy"]).task == "copy"


def test_a_data_set_entry_names_no_difficulty_and_the_legend_names_it(tmp_path):
    config = TrainConfig(task="digits", model="deq_mlp", model_kwargs={"hidden": 8, "groups": 2})
    torch.manual_seed(0)
    out = analysis.sweep(model_from_config(config), config, iterations=[1], n=8)
    assert list(out.curves) == [None] and "| digits |" in out.table


@pytest.mark.parametrize(
    "changes, error, match",
    [
        ({"name": ""}, ValueError, "Invalid name for Task"),
        ({"load": tasks.load_digits_dataset}, ValueError, "either generate or load"),
        ({"generate": None}, ValueError, "either generate or load"),
        ({"min_difficulty": 0}, ValueError, "Invalid min_difficulty for toy"),
        ({"default_difficulty": 0}, ValueError, "Invalid default_difficulty for toy"),
        ({"num_classes": None}, ValueError, "Invalid num_classes for toy"),
        ({"metric": "exact"}, TypeError, "metric of task 'toy' must be callable"),
    ],
)
def test_a_bad_entry_is_refused_naming_the_field(changes, error, match):
    fields = dict(
        name="toy",
        default_model="recall1d",
        metric=tasks.exact_match,
        generate=copy_bits,
        difficulty="string length",
        difficulty_label="length",
        default_difficulty=4,
        min_difficulty=1,
        num_classes=2,
    )
    with pytest.raises(error, match=match):
        Task(**{**fields, **changes})


def test_a_data_set_entry_takes_no_difficulty_and_names_are_unique():
    with pytest.raises(ValueError, match="default_difficulty of task 'x' apply to procedural"):
        Task("x", "deq_mlp", tasks.top1, load=tasks.load_digits_dataset, default_difficulty=3)
    with pytest.raises(ValueError, match="'digits' is registered already"):
        register_task(get_task("digits"))
    with pytest.raises(ValueError, match="Invalid task: 'imagenet' \\(expected one of 'prefix"):
        get_task("imagenet")
    with pytest.raises(TypeError, match="takes a Task"):
        register_task("digits")
