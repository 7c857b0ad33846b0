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


@pytest.mark.parametrize("command", [["run", "probe"], ["eval", "--task", "squares"]])
def test_bad_out_and_data_are_caught_before_the_model_loads(command, tmp_path, capsys):
    """A bad --out or --data is reported first, without loading (here: a model that does not exist)."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main([*command, "--model", str(tmp_path / "no-model"), "--out", str(blocker / "out")]) == 2
    assert "not writable" in capsys.readouterr().err
    data_command = ["run", "amplify", "--task", "coco-spatial"] if command[0] == "run" else ["eval", "--task", "coco-spatial"]
    assert main([*data_command, "--model", str(tmp_path / "no-model"), "--data", str(tmp_path / "no-data")]) == 2
    err = capsys.readouterr().err
    assert "no-model" not in err and "data root" in err
