"""`gpulet run (MODEL | --role ROLE) -- COMMAND ...`: hold a lease while COMMAND runs."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
from types import FrameType

from gpulet.cli.lease import acquire_lease
from gpulet.client import Client
from gpulet.errors import GpuletError
from gpulet.lease import renew_in_thread

__all__ = ["run"]


def run(client: Client, ns: argparse.Namespace) -> int:
    command: list[str] = ns.command
    if not command:
        print("gpulet run: no COMMAND given (gpulet run MODEL -- COMMAND ...)", file=sys.stderr)
        return 2
    lease = acquire_lease(client, ns)
    stop = threading.Event()
    renewer = renew_in_thread(
        lease, ns.ttl, lambda: client.renew(lease.lease_id, lease.token, ttl=ns.ttl), stop
    )
    try:
        try:
            child = subprocess.Popen(command, env={**os.environ, **lease.env()})
        except OSError as e:
            print(f"gpulet run: cannot start {command[0]!r}: {e.strerror}", file=sys.stderr)
            return 127

        # Pass interrupts to the command and keep waiting: the lease is released only when
        # the command has really ended, so its GPU memory is free by then.
        def forward(sig: int, frame: FrameType | None) -> None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(sig)

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, forward)
        code = child.wait()
    finally:
        stop.set()
        renewer.join()
        if not lease.lost.is_set():
            with contextlib.suppress(GpuletError):
                client.release(lease.lease_id, lease.token)
    if lease.lost.is_set():
        print(
            f"gpulet run: warning: the lease was lost while the command ran: {lease.lost_reason}",
            file=sys.stderr,
        )
    # A command killed by a signal exits like a shell reports it: 128 + the signal number.
    return code if code >= 0 else 128 - code
