"""The command line: help on every command, clean errors, exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from spatialmech.cli import HANDLERS, main


@pytest.mark.parametrize("command", sorted(HANDLERS))
def test_help_on_every_command(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "spatialmech.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "reproduce" in result.stdout


def test_models_lists_families(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for family in ("qwen2-vl", "gemma3", "llava", "internvl"):
        assert family in out
