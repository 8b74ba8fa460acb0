"""Why a backend did not start, in words a person can act on.

    BackendError
    └── BackendStartError            could not spawn it (command not found, not executable, ...)
        ├── BackendCrashedDuringStart    it exited before it was healthy
        └── BackendStartTimeout          it was not healthy in time, and was stopped

`BackendConfigError` (a `ValueError`, in `placeholders`) is the other family: the registry
entry itself is wrong, found at config load or before anything is spawned.
The gRPC layer maps every `BackendStartError` to FAILED_PRECONDITION with `str(error)`.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "BackendCrashedDuringStart",
    "BackendError",
    "BackendStartError",
    "BackendStartTimeout",
    "describe_returncode",
]

# Lines of a log tail shown in a message, and how much of each: enough to see a traceback's
# last frames and its error, short enough for a gRPC status message and a terminal.
TAIL_IN_MESSAGE = 20
_LINE_CHARS = 300


def describe_returncode(returncode: int | None) -> str:
    """asyncio's returncode (negative for a signal) as words: 'exited with code 3'.

    None is the exit of a process that was not our child (adopted after a daemon restart):
    only its parent could learn how it ended.
    """
    if returncode is None:
        return "exited (not our child: status unknown)"
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"was killed by {name}"


class BackendError(Exception):
    """Base of every error about a backend's process."""


class BackendStartError(BackendError):
    """A backend could not be started; nothing of it is left running."""

    def __init__(
        self,
        model_id: str,
        reason: str,
        log_tail: Sequence[str] = (),
        *,
        exit_code: int | None = None,
        pid: int | None = None,
        log_path: Path | None = None,
        hint: str | None = None,
        reproduce: str | None = None,
    ) -> None:
        self.model_id = model_id
        self.reason = reason
        self.log_tail = list(log_tail[-TAIL_IN_MESSAGE:]) if log_tail else []
        # asyncio's convention: negative means killed by that signal. None: it never ran, it
        # was still running when it was stopped, or it was not our child (adopted).
        self.exit_code = exit_code
        self.pid = pid
        self.log_path = log_path
        self.hint = hint
        # A shell command line that runs the backend as the daemon did, to see the failure live.
        self.reproduce = reproduce
        super().__init__(model_id, reason)

    def __str__(self) -> str:
        text = f"backend for model {self.model_id!r} failed to start: {self.reason}."
        if self.hint:
            text += f" {self.hint}"
        if self.log_path is not None:
            text += f" Full output: {self.log_path}."
        if not self.log_tail:
            text += " It printed nothing."
        else:
            lines = [
                line if len(line) <= _LINE_CHARS else line[:_LINE_CHARS] + "..."
                for line in self.log_tail
            ]
            text += f" Last {len(lines)} lines of its output:\n"
            text += "\n".join("    " + line for line in lines)
        if self.reproduce:
            # On a line of its own, so that it can be copied without the prose around it.
            text += f"\nTo see it fail, run it by hand:\n    {self.reproduce}"
        return text


class BackendCrashedDuringStart(BackendStartError):
    """The process exited before its health URL answered; reported as soon as it exits."""


class BackendStartTimeout(BackendStartError):
    """The health URL did not answer 2xx within the start timeout; the process was stopped."""
