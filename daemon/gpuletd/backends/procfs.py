"""What /proc says about a backend's processes: identity, parent, group, liveness, this boot."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "ProcStat",
    "boot_id",
    "children_of",
    "is_same_process",
    "process_start_time",
    "read_proc_stat",
    "scan_tree",
]


@dataclass(frozen=True)
class ProcStat:
    pid: int
    state: str
    ppid: int
    pgrp: int
    # Field 22: clock ticks after boot. (pid, starttime) names a process for good: a reused pid
    # gets a later start time, which is what lets a restarted daemon re-adopt a backend safely.
    starttime: int

    @property
    def zombie(self) -> bool:
        # A zombie has exited and holds no memory; it only waits for its parent to reap it.
        return self.state in ("Z", "X")


def read_proc_stat(pid: int) -> ProcStat | None:
    """Parse /proc/<pid>/stat; None when the process is gone (or /proc is not Linux's)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    # Field 2 is the command name in parentheses and may itself hold spaces and ')':
    # split after the last ')'. The rest starts at field 3.
    close = raw.rfind(")")
    rest = raw[close + 2 :].split()
    try:
        return ProcStat(
            pid=pid,
            state=rest[0],
            ppid=int(rest[1]),
            pgrp=int(rest[2]),
            starttime=int(rest[19]),
        )
    except (IndexError, ValueError):
        return None


def process_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks after boot (/proc/<pid>/stat field 22)."""
    stat = read_proc_stat(pid)
    return None if stat is None else stat.starttime


def is_same_process(pid: int, start_time: int) -> bool:
    """True while `pid` is still the live (not zombie) process that started at `start_time`."""
    stat = read_proc_stat(pid)
    return stat is not None and not stat.zombie and stat.starttime == start_time


@functools.cache
def boot_id() -> str:
    """This boot's random id. Start times count from boot, so they only compare within one."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def _all_stats() -> list[ProcStat]:
    stats = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if name.isdigit():
            stat = read_proc_stat(int(name))
            if stat is not None:
                stats.append(stat)
    return stats


def children_of(ppid: int) -> list[ProcStat]:
    """Every process whose parent is `ppid`, zombies included."""
    return [s for s in _all_stats() if s.ppid == ppid]


def scan_tree(pgid: int | None, roots: Mapping[int, int]) -> dict[int, int]:
    """One pass over /proc: live members of group `pgid`, the `roots` (pid -> start time) that
    are still the same processes, and every descendant of either; as pid -> start time.

    All three, because each alone misses some: a worker that called setsid() leaves the group
    but is still a descendant (until its parent dies), and a worker whose parent died is
    reparented away but stays in the group. Roots remembered from earlier scans keep a setsid'd
    worker found after its parent is gone. Pass `pgid=None` when the group id may name someone
    else's group. Zombies are left out: they hold no memory and no GPU context.
    """
    stats = [s for s in _all_stats() if not s.zombie]
    children: dict[int, list[ProcStat]] = {}
    for s in stats:
        children.setdefault(s.ppid, []).append(s)
    found = {
        s.pid: s.starttime
        for s in stats
        if (pgid is not None and s.pgrp == pgid) or roots.get(s.pid) == s.starttime
    }
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child.pid not in found:
                found[child.pid] = child.starttime
                todo.append(child.pid)
    return found
