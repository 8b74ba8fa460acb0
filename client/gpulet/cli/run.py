"""`gpulet run (MODEL | --role ROLE) -- COMMAND ...`: hold a lease while COMMAND runs."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from types import FrameType

from gpulet.cli.lease import progress_printer
from gpulet.client import Client

__all__ = ["run"]


def run(client: Client, ns: argparse.Namespace) -> int:
    command: list[str] = ns.command
    if not command:
        print("gpulet run: no COMMAND given (gpulet run MODEL -- COMMAND ...)", file=sys.stderr)
        return 2
    child: subprocess.Popen[bytes] | None = None

    # Installed before the lease is taken: a signal from now on must not release the lease
    # while the command keeps running. SIGINT is not forwarded: a Ctrl-C at the terminal
    # already reaches the command (same process group); passing it on would deliver it twice.
    def forward(sig: int, frame: FrameType | None) -> None:
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(sig)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    show = progress_printer(sys.stderr.isatty())
    with client.lease(
        ns.model,
        role=ns.role,
        client_name=ns.client_name or f"gpulet run {command[0]}",
        ttl=ns.ttl,
        priority=ns.priority,
        exclusive=ns.exclusive,
        timeout=ns.timeout,
        on_progress=show,
    ) as lease:
        if show is not None:
            sys.stderr.write("\r\033[K")
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            child = subprocess.Popen(command, env={**os.environ, **lease.env()})
        except OSError as e:
            print(f"gpulet run: cannot start {command[0]!r}: {e.strerror}", file=sys.stderr)
            return 127
        finally:
            # The command is ours to wait for: the lease is released only when it has really
            # ended, so that its GPU memory is free by then.
            if child is None:
                signal.signal(signal.SIGINT, previous)
        code = child.wait()
    if lease.lost.is_set():
        print(
            f"gpulet run: warning: the lease was lost while the command ran: {lease.lost_reason}",
            file=sys.stderr,
        )
    # A command killed by a signal exits like a shell reports it: 128 + the signal number.
    return code if code >= 0 else 128 - code
