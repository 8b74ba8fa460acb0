"""The CLI's exit codes: one per kind of failure a script would handle differently."""

from __future__ import annotations

from enum import IntEnum

from gpulet.admin import ModelLeased
from gpulet.errors import (
    DaemonUnavailable,
    DeadlineExceeded,
    GpuletError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    UnknownRole,
)

__all__ = ["HELP", "Exit", "exit_code"]


class Exit(IntEnum):
    OK = 0
    ERROR = 1  # anything else: a backend that failed to start, a bug in gpuletd
    USAGE = 2  # a bad flag or argument, found by the CLI or refused by gpuletd
    NOT_FOUND = 3  # no such model, role, profile or lease (or the lease has ended)
    REFUSED = 4  # not your lease (wrong token), queue full, model too large
    TIMEOUT = 5  # --timeout passed while waiting
    UNREACHABLE = 6  # gpuletd is not running, not reachable, or shutting down
    INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT


HELP = """\
exit codes:
  0    ok
  1    error (e.g. a model's backend failed to start)
  2    usage: a bad flag or argument
  3    not found: no such model, role, profile or lease, or the lease has ended
  4    refused: not your lease (wrong token), queue full, or model too large
  5    timeout: --timeout passed while waiting
  6    gpuletd unreachable: not running, wrong --address, or shutting down
  130  interrupted (Ctrl-C)
`gpulet run` exits with its command's code (128+N if signal N ended it), 75 if
the lease was lost, 126/127 if the command cannot be run."""


def exit_code(e: GpuletError) -> Exit:
    """The most specific class decides: UnknownRole is an InvalidArgument on the wire, but
    for a person it is a role that does not exist, like a model that does not."""
    if isinstance(e, DaemonUnavailable):
        return Exit.UNREACHABLE
    if isinstance(e, DeadlineExceeded):
        return Exit.TIMEOUT
    if isinstance(e, NotFound | UnknownRole):
        return Exit.NOT_FOUND
    if isinstance(e, InvalidArgument):
        return Exit.USAGE
    if isinstance(e, PermissionDenied | ResourceExhausted | ModelLeased):
        return Exit.REFUSED
    return Exit.ERROR
