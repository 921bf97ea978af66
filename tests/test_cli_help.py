"""``rnncast --help`` and every subcommand's ``--help`` exit 0, cheaply."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import SUBCOMMANDS, main

REPO = Path(__file__).resolve().parents[1]

# broker and replay always; the others as soon as their module exists (then it must work).
HELP_COMMANDS = [
    name
    for name, (module, _) in SUBCOMMANDS.items()
    if name in ("broker", "replay") or importlib.util.find_spec(module) is not None
]


def _help_exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code


def test_top_level_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert _help_exit_code(["--help"]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


def test_broker_and_replay_are_listed() -> None:
    assert {"broker", "replay"} <= set(HELP_COMMANDS)


@pytest.mark.parametrize("command", HELP_COMMANDS)
def test_subcommand_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _help_exit_code([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: rnncast {command}")


def test_replay_help_documents_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    _help_exit_code(["replay", "--help"])
    out = capsys.readouterr().out
    for option in (
        "--data",
        "--bootstrap",
        "--topic",
        "--partitions",
        "--rate",
        "--speedup",
        "--streams-multiply",
        "--limit",
        "--json",
        "--sasl-password-file",
        "RNNCAST_KAFKA_PASSWORD",
    ):
        assert option in out
    assert "--sasl-password " not in out


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: rnncast" in capsys.readouterr().out


def test_broker_and_replay_modules_import_nothing_heavy() -> None:
    code = (
        "import sys, pipeline.cli_broker, pipeline.cli_replay, pipeline.broker, pipeline.kafka_config;"
        "heavy = sorted(m for m in ('kafka', 'tensorflow', 'keras', 'apache_beam', 'tqdm') if m in sys.modules);"
        "print(heavy); sys.exit(bool(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_console_script_help() -> None:
    script = Path(sys.executable).parent / "rnncast"
    assert script.exists(), "run scripts/bootstrap.sh (pip install -e . installs the rnncast script)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([str(script), "replay", "--help"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert "usage: rnncast replay" in result.stdout
