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
