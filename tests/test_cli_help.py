"""``deqkit <command> --help`` states every flag's meaning, valid values and default.

Every option of every subcommand (and of ``python -m deqkit.train``) must have a help
string; every option that takes a value must state its default (the word "default", and
the default itself where it is a concrete value); every closed set of values (``choices``)
must be listed; the open registries (solvers, models, gradients) must be listed where a
flag takes one of their names. The demo's flag defaults must be ``DemoConfig``'s.
"""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from deqkit.cli import build_parser
from deqkit.models import available_models
from deqkit.nn import available_gradients
from deqkit.solvers import available as available_solvers
from deqkit.tasks import available_tasks
from deqkit.train.__main__ import build_parser as build_train_parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _parsers() -> dict[str, argparse.ArgumentParser]:
    """Every parser a user reaches: ``deqkit``, each subcommand, ``python -m deqkit.train``."""
    top = build_parser()
    out = {"deqkit": top}
    for name, parser in _subparsers(top).items():
        # "deqkit train" hands everything after "train" to the training parser
        out[f"deqkit {name}"] = build_train_parser("deqkit train") if name == "train" else parser
    out["python -m deqkit.train"] = build_train_parser()
    return out


PARSERS = _parsers()


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The action's help as ``--help`` prints it (``%(default)s`` etc. filled in), one line."""
    formatter = parser._get_formatter()
    return " ".join(formatter._expand_help(action).split())


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


def _shown(default) -> str:
    if isinstance(default, list | tuple):
        return ",".join(map(str, default))
    return str(default)


def test_every_subcommand_is_covered():
    assert set(PARSERS) == {
        "deqkit",
        "deqkit train",
        "deqkit eval",
        "deqkit sweep",
        "deqkit examine",
        "deqkit solve-bench",
        "deqkit mem-bench",
        "deqkit demo",
        "python -m deqkit.train",
    }


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_flag_has_meaning_values_and_default(name):
    parser = PARSERS[name]
    parser.format_help()  # a bad %-format in any help string raises here
    problems = []
    for action in _options(parser):
        flag = "/".join(action.option_strings) or action.dest
        text = _help(parser, action) if action.help else ""
        if not text.strip():
            problems.append(f"{flag}: no help")
            continue
        takes_value = action.nargs != 0  # store_true/store_const flags take none
        if action.option_strings and takes_value and "default" not in text:
            problems.append(f"{flag}: help does not state the default: {text!r}")
        default = action.default
        if default not in (None, False, [], argparse.SUPPRESS) and _shown(default) not in text:
            problems.append(f"{flag}: default {_shown(default)!r} not in its help: {text!r}")
        for choice in action.choices or ():
            if not isinstance(action, argparse._SubParsersAction) and str(choice) not in text:
                problems.append(f"{flag}: valid value {choice!r} not in its help: {text!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_registry_flags_list_the_registry(name):
    """--solver lists deqkit.solvers.available(), --model the built-in models, --task the
    registered tasks, etc."""
    registries = {
        "solver": available_solvers(),
        "model": available_models(),
        "backward": available_gradients(),
        "task": available_tasks(),
    }
    if name == "deqkit demo":  # the demo runs its recall-network tasks only
        registries["task"] = ["prefix_sums", "mazes"]
    for action in _options(PARSERS[name]):
        for valid in registries.get(action.dest, ()):
            assert valid in _help(PARSERS[name], action), (name, action.dest, valid)


def test_closed_sets_are_choices():
    """Flags whose values form a closed set refuse others at parse time."""
    train = PARSERS["deqkit train"]
    for flag in ("--task", "--mode", "--backward", "--device", "--amp"):
        with pytest.raises(SystemExit):
            train.parse_args([flag, "no-such-value"])
    args = train.parse_args(["--task", "digits", "--model", "mypkg.models:build"])
    assert args.task == "digits" and args.model == "mypkg.models:build"
    assert train.parse_args(["--solver", "my_registered_solver"]).solver == "my_registered_solver"


def test_demo_flag_defaults_are_democonfig_defaults():
    from deqkit.demo import DemoConfig

    args = vars(PARSERS["deqkit demo"].parse_args([]))
    for f in dataclasses.fields(DemoConfig):
        assert args[f.name] == f.default, f.name
    for action in _options(PARSERS["deqkit demo"]):
        for choice in action.choices or ():
            DemoConfig(**{action.dest: choice})  # every offered value is valid


def test_list_defaults_parse_to_lists():
    sweep = PARSERS["deqkit sweep"].parse_args(["ckpt.pt"])
    assert sweep.iterations == [1, 2, 5, 10, 20, 50, 100]
    assert PARSERS["deqkit mem-bench"].parse_args([]).iterations == [5, 10, 20, 40, 80]
