"""Every process of one backend seen so far, and signalling all of them."""

from __future__ import annotations

import signal
from collections.abc import Iterable

from gpuletd.backends.procfs import read_proc_stat, scan_tree
from gpuletd.backends.signals import signal_group, signal_process

__all__ = ["Members"]


class Members:
    """A backend's processes as (pid, start time) pairs: its group plus whoever left it.

    The group alone is not enough: a worker that calls setsid() leaves it, and once that
    worker's parent dies it is no longer anyone's descendant either. So each scan remembers
    every process found, and later scans start from those too. A member that is gone is
    forgotten, which keeps a record of a backend that forks short-lived helpers bounded. The
    leader is always kept: it names the backend, and its start time guards the group id.
    """

    def __init__(
        self, leader: int, leader_start: int, pgid: int, known: Iterable[tuple[int, int]] = ()
    ) -> None:
        self.leader = leader
        self.leader_start = leader_start
        self.pgid = pgid
        self._known: dict[int, int] = dict(known)
        self._known[leader] = leader_start
        # Bumped whenever the set changes, so that the owner knows when to persist it again.
        self.version = 0

    def pairs(self) -> tuple[tuple[int, int], ...]:
        return tuple(sorted(self._known.items()))

    def scan(self) -> list[int]:
        """The backend's live pids now (one pass over /proc); remembers new ones."""
        live = scan_tree(self._group(), self._known)
        known = {**live, self.leader: self.leader_start}
        if known != self._known:
            self._known = known
            self.version += 1
        return sorted(live)

    def signal(self, sig: signal.Signals) -> list[int]:
        """Send `sig` to the group and to every member outside it; the pids that were live.

        A member still in the group gets the signal once, from killpg: a second copy could hit
        a handler that is not yet prepared for it (Python raising in its own except block).
        """
        live = self.scan()
        group = self._group()
        sent_to_group = group is not None and signal_group(group, self.leader_start, sig)
        signalled = []
        for pid in live:
            stat = read_proc_stat(pid)
            if stat is None:
                continue
            in_group = sent_to_group and stat.pgrp == group
            if in_group or signal_process(pid, self._known[pid], sig):
                signalled.append(pid)
        return signalled

    def _group(self) -> int | None:
        # The group id is usable while the pid that carries it is free or still our leader:
        # see signal_group for why that is enough.
        holder = read_proc_stat(self.pgid)
        if holder is not None and holder.starttime != self.leader_start:
            return None
        return self.pgid
