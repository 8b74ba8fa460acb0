"""The `gpuletd` command's entry point, kept light on purpose.

HUP, USR1 and USR2 kill a process by default, and gpuletd installs its own handlers only once
its modules are imported and its event loop runs, hundreds of milliseconds later (after a
handoff's re-exec too). Until then they are ignored — an ignored signal stays ignored across
exec — so a reload or a status request sent too early is lost, not fatal."""

from __future__ import annotations

import signal

__all__ = ["ignore_until_handled", "main"]


def ignore_until_handled() -> None:
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)


def main() -> int:
    ignore_until_handled()
    from gpuletd.main import main as serve_or_check

    return serve_or_check()
