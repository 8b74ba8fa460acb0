"""What /proc says about a backend's processes: start time, parent, process group, liveness."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "ProcStat",
    "alive_members",
    "process_start_time",
    "process_tree",
    "read_proc_stat",
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


def process_tree(root: int | None, pgid: int) -> list[ProcStat]:
    """Live processes of a backend: members of group `pgid`, `root`, and all their descendants.

    Both, because each alone misses some: a worker that called setsid() leaves the group but is
    still a descendant, and a worker whose parent died is reparented away but stays in the
    group. Pass `root=None` once the leader has been reaped: its pid may name someone else by
    now. Zombies are left out: they hold no memory and no GPU context.
    """
    stats = [s for s in _all_stats() if not s.zombie]
    children: dict[int, list[ProcStat]] = {}
    for s in stats:
        children.setdefault(s.ppid, []).append(s)
    found = {s.pid: s for s in stats if s.pgrp == pgid or s.pid == root}
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child.pid not in found:
                found[child.pid] = child
                todo.append(child.pid)
    return sorted(found.values(), key=lambda s: s.pid)


def alive_members(pgid: int, known: Iterable[tuple[int, int]] = ()) -> list[int]:
    """Pids still alive in group `pgid`, plus those of `known` (pid, starttime) pairs.

    A known pid counts only while its start time matches, so a pid reused by an unrelated
    process after ours died is never taken for ours (and never signalled).
    """
    alive: set[int] = set()
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        pass
    except PermissionError:
        # Someone else's group now uses that id; none of ours is in it.
        pass
    else:
        # killpg also finds zombies; look closer before calling the group alive.
        alive.update(s.pid for s in _all_stats() if s.pgrp == pgid and not s.zombie)
    for pid, starttime in known:
        stat = read_proc_stat(pid)
        if stat is not None and not stat.zombie and stat.starttime == starttime:
            alive.add(pid)
    return sorted(alive)
