"""Signals that never reach a stranger: every one is checked against (pid, start time).

pid_max is often 32768, so over a daemon's lifetime (and across its restarts) a backend's pid
is reused for sure; a SIGKILL sent on a stale pid would kill some other program.
"""

from __future__ import annotations

import contextlib
import os
import signal

from gpuletd.backends.procfs import read_proc_stat

__all__ = ["signal_group", "signal_process"]


def signal_process(pid: int, start_time: int, sig: signal.Signals) -> bool:
    """Send `sig` to `pid` if it is still the live process that started at `start_time`.

    Through a pidfd: once it is open it names that one process, so the start-time check made
    after opening it cannot be outdated by the time the signal goes (kill(2) would race a pid
    that is reused in between). True if the signal was sent.
    """
    pidfd: int | None
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except OSError:
        pidfd = None  # no pidfds (old kernel, seccomp): check and kill, with the small race
    try:
        stat = read_proc_stat(pid)
        if stat is None or stat.zombie or stat.starttime != start_time:
            return False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if pidfd is None:
                os.kill(pid, sig)
            else:
                signal.pidfd_send_signal(pidfd, sig)
            return True
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)


def signal_group(pgid: int, leader_start_time: int, sig: signal.Signals) -> bool:
    """killpg(`pgid`, `sig`) unless that id provably names another group now.

    A group id is its leader's pid, and the kernel does not reuse a pid while a group or
    session still carries it. So if a live process holds the pid with another start time, our
    group emptied out at some point and this is someone else's. If nobody holds the pid, the
    group may still be ours (the leader died, workers remain) and is signalled: only a group
    made by a reused pid whose own leader also died already would be mistaken, which needs pid
    wraparound and a leaderless stranger group at once. True if the signal was sent.
    """
    leader = read_proc_stat(pgid)
    if leader is not None and leader.starttime != leader_start_time:
        return False
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True
