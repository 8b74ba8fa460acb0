"""The daemon as a child subreaper: a backend's orphaned workers come to it, and are reaped.

Without it, a worker whose parent dies is reparented to PID 1 (or systemd), out of our sight
unless a member scan saw it first. As a subreaper the daemon inherits it instead, and once it
exits it stays a zombie of ours until `reap_orphans` collects it.

Reaping must never take an exit status that someone else waits for. asyncio's child watcher
(ThreadedChildWatcher / PidfdChildWatcher) waits for each backend leader by its pid; if we
reaped a leader first, asyncio would report a made-up exit code 255 and the crash message
would be wrong. So this module keeps the set of pids that others wait for (`claim`ed by the
handle of every spawned backend), skips them, and reaps nothing while a spawn is under way
(between fork and `claim`, a new child's pid is not known yet). Never waitpid(-1): it would
take any child, claimed or not.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Collection, Iterator

import structlog

from gpuletd.backends.procfs import children_of

__all__ = [
    "become_subreaper",
    "claim",
    "is_subreaper",
    "reap_orphans",
    "release",
    "spawning",
]

_log = structlog.get_logger("gpuletd.backends")

_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37

# Pids of children whose exit status belongs to someone else (asyncio's watcher).
_claimed: set[int] = set()
_spawns_under_way = 0


def claim(pid: int) -> None:
    """`pid` is a child that someone else waits for: never reap it."""
    _claimed.add(pid)


def release(pid: int) -> None:
    """Whoever waited for `pid` has its exit status now."""
    _claimed.discard(pid)


@contextlib.contextmanager
def spawning() -> Iterator[None]:
    """Wrap a spawn up to the `claim` of its pid: until then, reap nothing."""
    global _spawns_under_way
    _spawns_under_way += 1
    try:
        yield
    finally:
        _spawns_under_way -= 1


def _prctl(option: int, arg: object) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    result: int = libc.prctl(option, arg, 0, 0, 0)
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return result


def become_subreaper() -> bool:
    """Make this process the child subreaper of its descendants; False if the kernel refused.

    Affects processes orphaned from now on, in every descendant tree of this process.
    """
    try:
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    except (OSError, AttributeError) as exc:
        _log.warning("reaper.unavailable", error=str(exc))
        return False
    _log.info("reaper.enabled", pid=os.getpid())
    return True


def is_subreaper() -> bool:
    value = ctypes.c_int(0)
    try:
        _prctl(_PR_GET_CHILD_SUBREAPER, ctypes.pointer(value))
    except (OSError, AttributeError):
        return False
    return value.value != 0


def reap_orphans(skip: Collection[int] = ()) -> list[tuple[int, int]]:
    """Reap this process's zombie children that nobody else waits for: (pid, exit code) pairs.

    The exit code follows asyncio: negative for the signal that killed it. Skipped: every
    pid `claim`ed by a backend handle, every pid in `skip` (the caller's own children that it
    waits for, spawned outside gpuletd.backends), and everything while a spawn is under way.
    Cheap enough to call every second or two: one pass over /proc.
    """
    if _spawns_under_way:
        return []
    reaped = []
    for stat in children_of(os.getpid()):
        if not stat.zombie or stat.pid in _claimed or stat.pid in skip:
            continue
        try:
            pid, status = os.waitpid(stat.pid, os.WNOHANG)
        except ChildProcessError:
            continue  # reaped meanwhile by whoever owned it after all
        if pid:
            reaped.append((pid, os.waitstatus_to_exitcode(status)))
    if reaped:
        _log.info("reaper.reaped", processes=[{"pid": p, "code": c} for p, c in reaped])
    return reaped
