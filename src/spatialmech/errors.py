"""Error types that map to the command line's exit codes.

A user mistake (bad path, corrupt file, unknown model, ...) is a `UserInputError`: the CLI prints its
one-line message (problem and fix) and exits 2, never a traceback. Anything else is an internal failure
(exit 1).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2


class SpatialmechError(Exception):
    """Base class: an error the CLI reports in one line."""

    exit_code = EXIT_INTERNAL


class UserInputError(SpatialmechError):
    """Bad input from the user. The message must name the problem and the fix, on one line."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, problem: str, fix: str | None = None):
        message = problem if fix is None else f"{problem}; {fix}"
        super().__init__(" ".join(message.split()))


class NotAvailableError(UserInputError):
    """A command whose machinery is not built yet (or not available in this install)."""
