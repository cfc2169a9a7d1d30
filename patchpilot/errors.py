"""One error type for everything a user can fix, and the exit codes the CLI returns.

Core code raises `PatchpilotError` (or a subclass); only the CLI boundary turns it into one
line on stderr, a hint, and an exit code. Nothing below the CLI calls ``sys.exit``.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes; documented in docs/operations.md and stable across releases."""

    OK = 0
    FAILED = 1  # a run failed (and what could be rolled back was)
    BAD_INPUT = 2  # usage error, unreadable or invalid file, unknown host
    PAUSED = 3  # a run is waiting for `patchpilot approve`
    PARTIAL = 4  # a run finished with some hosts failed within the failure budget
    LOCKED = 5  # another run holds the lock on overlapping hosts
    ENVIRONMENT = 6  # missing prerequisite on this machine: not root, a tool not installed
    INTERNAL = 70  # a bug: please report it with the --debug output
    INTERRUPTED = 130  # Ctrl-C


class PatchpilotError(Exception):
    """An error a user can act on: a one-line message, a hint, and the exit code."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, hint: str | None = None, exit_code: ExitCode | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code


class BadInputError(PatchpilotError):
    """The user gave something we cannot use: a path, a name, a value."""

    exit_code = ExitCode.BAD_INPUT


class EnvironmentProblem(PatchpilotError):
    """This machine lacks something patchpilot needs (root, a tool, a kernel feature)."""

    exit_code = ExitCode.ENVIRONMENT


class LabError(PatchpilotError):
    """The local lab fleet could not be built, booted, changed or torn down."""

    exit_code = ExitCode.FAILED
