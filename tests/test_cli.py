"""Command line surface: version, help on every subcommand, and input errors."""

import subprocess
import sys

import pytest

from gmrseg import __version__
from gmrseg.cli import build_parser, main

SUBCOMMANDS = ("validate", "train", "predict", "evaluate", "example-data", "demo", "benchmark")


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: gmrseg {command}")


def test_every_option_documented():
    parser = build_parser()
    subparsers = next(action for action in parser._actions if action.dest == "command")
    for name, subparser in subparsers.choices.items():
        for action in subparser._actions:
            assert action.help, f"gmrseg {name}: option {action.dest} has no help text"


def test_python_module_entry():
    result = subprocess.run([sys.executable, "-m", "gmrseg", "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert __version__ in result.stdout


@pytest.mark.parametrize("option", [["--time-limit", "-1"], ["--epochs", "0"]])
def test_demo_invalid_option_writes_nothing(tmp_path, capsys, option):
    out = tmp_path / "demo"

    assert main(["demo", "--out", str(out), *option]) != 0

    assert not out.exists()
    assert option[0] in capsys.readouterr().err


@pytest.mark.parametrize("epochs", [None, 1])
def test_demo_trains_under_time_limit(tmp_path, monkeypatch, epochs):
    import importlib

    from gmrseg.demo import DEMO_TIME_LIMIT_MINUTES, run_demo

    # importlib: the packages re-export functions under the same names as these modules.
    example_data = importlib.import_module("gmrseg.data.example_data")
    evaluate_module = importlib.import_module("gmrseg.evaluation.evaluate")
    predictor_module = importlib.import_module("gmrseg.inference.predictor")
    run_module = importlib.import_module("gmrseg.training.run")

    calls = {}
    monkeypatch.setattr(example_data, "make_example_dataset", lambda out, dataset: out)
    monkeypatch.setattr(run_module, "train", lambda *args, **kwargs: calls.update(train=kwargs))
    monkeypatch.setattr(predictor_module, "predict", lambda *args, **kwargs: 0)
    monkeypatch.setattr(evaluate_module, "evaluate", lambda *args, **kwargs: {})

    result = run_demo(tmp_path / "demo", epochs=epochs)

    assert calls["train"]["epochs"] == epochs
    assert calls["train"]["time_limit_minutes"] == DEMO_TIME_LIMIT_MINUTES
    assert calls["train"]["config_path"] == "quick"
    assert set(result.seconds) == {"example data", "training", "prediction", "evaluation"}
