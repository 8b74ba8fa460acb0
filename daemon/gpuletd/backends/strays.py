"""Backends that no record names: found by the mark every backend carries in its environment.

Every backend inherits `GPULET_BACKEND_OF=<state dir>` from its daemon (a name of our own, so
that no user's shell carries it by accident). A backend whose record was lost —
the state file was corrupt and set aside, or the daemon died between spawning it and writing
its record — is still found by that mark, so a restarted daemon can stop it instead of leaving
it holding GPU memory for ever.
"""

from __future__ import annotations

import asyncio
import os
import signal

from gpuletd.backends.procfs import is_same_process, read_proc_stat
from gpuletd.backends.signals import signal_process

__all__ = ["MARK", "kill_processes", "marked_processes"]

MARK = "GPULET_BACKEND_OF"


def _environ(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:  # gone, or not ours to read
        return None


def marked_processes(state_dir: str, *, exclude: set[int]) -> list[int]:
    """Pids of live processes carrying `GPULET_BACKEND_OF=<state_dir>`, other than `exclude`
    (the daemon itself and the backends it adopted)."""
    want = f"{MARK}={state_dir}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in exclude:
            continue
        env = _environ(int(name))
        if env is not None and want in env.split(b"\0"):
            found.append(int(name))
    return sorted(found)


async def kill_processes(pids: list[int], *, grace_s: float, poll_s: float = 0.05) -> list[int]:
    """SIGTERM each, SIGKILL what is left after `grace_s`; the pids that needed SIGKILL.
    Each is named by its start time first, so a pid reused meanwhile is never signalled."""
    named = {pid: st.starttime for pid in pids if (st := read_proc_stat(pid)) is not None}

    def alive() -> list[int]:
        return [pid for pid, start in named.items() if is_same_process(pid, start)]

    for pid in alive():
        signal_process(pid, named[pid], signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    while alive() and loop.time() < deadline:
        await asyncio.sleep(poll_s)
    left = alive()
    for pid in left:
        signal_process(pid, named[pid], signal.SIGKILL)
    return left
