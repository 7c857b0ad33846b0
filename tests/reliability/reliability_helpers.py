"""Helpers for the reliability suite: run the real CLI in-process, check the error contract.

The contract every bad input must meet (SPEC section 6, issue 9): exit code 2, exactly one line on
stderr naming the problem and the fix (no traceback), and no result file that looks complete.
Every bad file is made in a temporary folder by the test that needs it; the committed fixtures are
only ever copied, never modified.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from spatialmech.cli import main
from spatialmech.errors import EXIT_BAD_INPUT

WHATSUP_FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "whatsup"


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def messages(self) -> list[str]:
        """Lines the CLI itself printed to stderr (progress bars and library chatter left out)."""
        return [line for line in self.err.splitlines() if line.startswith("spatialmech ")]


def run_cli(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> CliResult:
    """`spatialmech ARGV` in this process, as a user would type it."""
    capsys.readouterr()  # drop anything printed before
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def assert_bad_input(result: CliResult, *fragments: str) -> str:
    """Exit 2 with one 'problem; fix' line (containing every fragment, case-insensitive); return it."""
    assert "Traceback" not in result.err, result.err
    assert result.code == EXIT_BAD_INPUT, (result.code, result.err)
    assert len(result.messages) == 1, result.err
    message = result.messages[0]
    assert ": error: " in message, message
    assert "; " in message.split(": error: ", 1)[1], f"no fix after the problem: {message}"
    for fragment in fragments:
        assert fragment.lower() in message.lower(), f"{fragment!r} not in {message!r}"
    _record(result.code, message)
    return message


def _record(code: int, message: str) -> None:
    """With RELIABILITY_LOG=FILE, append (test, exit code, message) as JSON lines: the suite's report."""
    log = os.environ.get("RELIABILITY_LOG")
    if log:
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]
        with open(log, "a", encoding="utf-8") as stream:
            stream.write(json.dumps({"test": test, "code": code, "message": message}) + "\n")


def assert_no_partial_result(out: Path) -> None:
    """No result.json, no leftover temporary files, and every JSON file present is complete."""
    if not out.exists():
        return
    assert not list(out.rglob("result.json")), sorted(out.rglob("*"))
    assert not list(out.rglob("*.tmp")), sorted(out.rglob("*.tmp"))
    for path in out.rglob("*.json"):
        json.loads(path.read_text())
