"""`gpulet run (MODEL | --role ROLE) -- COMMAND ...`: hold a lease while COMMAND runs.

Exit status (as timeout(1) and shells report it):
  COMMAND's own status, or 128+N if signal N killed it;
  75 (EX_TEMPFAIL) if the lease was lost and gpulet stopped COMMAND because of it;
  126 COMMAND cannot be executed, 127 COMMAND not found (both checked before anything is
  acquired); 2 usage; 128+N if gpulet itself got signal N before COMMAND started.
Errors talking to the daemon end with the CLI's usual codes (see `gpulet --help`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from gpulet.cli.lease import progress_printer
from gpulet.cli.run_child import (
    LOST_GRACE_S,
    CommandError,
    Relay,
    Signalled,
    exit_status,
    parse_on_lost,
    resolve,
    start,
    stop,
    supervise,
)
from gpulet.client import Client

__all__ = ["EXIT_LEASE_LOST", "run"]

# The lease went away under the command (expired, backend died, revoked): a distinct code,
# like timeout(1)'s 124, whatever the command made of the signal; running again may succeed.
EXIT_LEASE_LOST = 75


def _say(message: str) -> None:
    print(f"gpulet run: {message}", file=sys.stderr, flush=True)


def _printable(text: str, limit: int = 300) -> str:
    # The reason comes from the daemon: one line, no terminal control characters.
    flat = "".join(c if c.isprintable() else ("?" if not c.isspace() else " ") for c in text)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def run(client: Client, ns: argparse.Namespace) -> int:
    command: list[str] = ns.command
    if not command:
        _say("no COMMAND given (gpulet run MODEL -- COMMAND ...)")
        return 2
    # `--on-lost` is read with a default so that this works whether or not the flag exists.
    try:
        action = parse_on_lost(getattr(ns, "on_lost", None) or "term")
    except ValueError as e:
        _say(str(e))
        return 2
    try:
        executable = resolve(command[0])
    except CommandError as e:
        _say(e.message)
        return e.code
    try:
        with Relay() as relay:
            return _run(client, ns, command, executable, action, relay)
    except Signalled as s:
        if sys.stderr.isatty():
            sys.stderr.write("\r\033[K")  # over the queue/loading progress line
        _say(f"stopped by {signal.Signals(s.sig).name} before COMMAND started")
        return 128 + s.sig
    except CommandError as e:  # the exec shim (gpulet's own Python) could not be started
        _say(e.message)
        return e.code


def _run(
    client: Client,
    ns: argparse.Namespace,
    command: list[str],
    executable: str,
    action: int | None,
    relay: Relay,
) -> int:
    show = progress_printer(sys.stderr.isatty())
    noticed = False

    def report_lost(lease_id: str, reason: str) -> None:
        nonlocal noticed
        noticed = True
        what = f"lease {lease_id} lost ({_printable(reason or 'no reason')})"
        if action is None:
            _say(f"warning: {what}; {command[0]} keeps running (--on-lost=ignore)")
        else:
            sent = f"sent {signal.Signals(action).name} to {command[0]}"
            if action != signal.SIGKILL:
                sent += f" (SIGKILL in {LOST_GRACE_S:g} s)"
            _say(f"{what}; {sent}")

    with client.lease(
        ns.model,
        role=ns.role,
        # The daemon takes names of at most 128 characters: a long path is cut, not refused.
        client_name=ns.client_name or f"gpulet run {os.path.basename(command[0])}"[:128],
        ttl=ns.ttl,
        priority=ns.priority,
        exclusive=ns.exclusive,
        timeout=ns.timeout,
        on_progress=show,
        vram_mb=getattr(ns, "vram", None),
    ) as lease:
        if show is not None:
            sys.stderr.write("\r\033[K")
        child = start(command, executable, {**os.environ, **lease.env()}, relay)
        try:
            code, told = supervise(
                child, lease.lost, action, lambda: report_lost(lease.lease_id, lease.lost_reason)
            )
        except BaseException:
            # gpulet itself failed: the command must not outlive the lease released below.
            stop(child)
            raise
        finally:
            # The command has ended: the lease is released only now, so that its GPU memory
            # is free by then; signals from here on no longer concern anyone.
            relay.done()
            child.close()
    if told:
        return EXIT_LEASE_LOST
    if lease.lost.is_set() and not noticed:
        # Lost while the command ran, but it ended by itself first: its own status stands.
        _say(f"warning: lease {lease.lease_id} was lost ({_printable(lease.lost_reason)})")
    return exit_status(code)
