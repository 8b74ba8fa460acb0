"""Finding backends again after a daemon restart, and clearing out what is left of the dead.

A backend outlives its daemon: it writes to its own log file and sits in its own session.
A restarted daemon reads the records it persisted and, for each, either adopts the backend (the
leader is still the same process) or reaps what is left of it (the leader is gone, workers
may not be).
"""

from __future__ import annotations

import asyncio
import signal
import time

import structlog

from gpuletd.backends.handles import AdoptedHandle
from gpuletd.backends.members import Members
from gpuletd.backends.procfs import boot_id, read_proc_stat
from gpuletd.backends.record import BackendRecord
from gpuletd.backends.running import RunningBackend

__all__ = ["adopt", "reap_leftovers"]

_log = structlog.get_logger("gpuletd.backends")

_POLL_S = 0.02


def _refusal(record: BackendRecord) -> str | None:
    """Why `record`'s leader cannot be adopted, or None if it can."""
    if record.boot_id != boot_id():
        return "recorded in another boot"
    stat = read_proc_stat(record.pid)
    if stat is None:
        return "its process is gone"
    if stat.starttime != record.start_time:
        return "its pid now names another process"
    if stat.zombie:
        return "its process has exited"
    return None


def adopt(
    record: BackendRecord,
    *,
    orphan_grace_s: float = 2.0,
    kill_wait_s: float = 5.0,
    member_refresh_s: float = 1.0,
) -> RunningBackend | None:
    """A `RunningBackend` around `record`'s leader if it still runs, else None.

    Adopted only if the record is from this boot and /proc/<pid> is a live process with the
    recorded start time. Its exit is watched through a pidfd (its exit code is unknowable: it
    is not our child), and stop(), kill(), pids() and log_tail() work as for one we started.
    Call it on the event loop. Whether it is still healthy is the caller's question (see
    `check_health` and `ProcessBackend.wait_healthy`).
    """
    reason = _refusal(record)
    handle = AdoptedHandle.open(record.pid, record.start_time) if reason is None else None
    if handle is None:
        _log.info(
            "backend.adoption_refused",
            model=record.model_id,
            pid=record.pid,
            reason=reason or "its process exited",
        )
        return None
    backend = RunningBackend(
        record,
        handle,
        orphan_grace_s=orphan_grace_s,
        kill_wait_s=kill_wait_s,
        member_refresh_s=member_refresh_s,
    )
    _log.info(
        "backend.adopted",
        model=record.model_id,
        pid=record.pid,
        healthy=record.healthy,
        age_s=round(time.time() - record.spawned_at, 1),
    )
    return backend


async def reap_leftovers(
    record: BackendRecord, *, grace_s: float = 2.0, kill_wait_s: float = 5.0
) -> list[int]:
    """SIGTERM, then SIGKILL after `grace_s`, whatever is left of a backend not adopted.

    For a record whose leader is gone: its group and its known members may live on (workers
    hold GPU memory until they exit). Every signal is checked against start times, and a
    record from another boot names nothing alive. The leader itself is signalled too if it is
    somehow still the same process. Returns the pids it signalled, after waiting at most
    `grace_s + kill_wait_s` for them to go.
    """
    if record.boot_id != boot_id():
        return []
    members = Members(record.pid, record.start_time, record.pgid, record.members)
    signalled = set(members.signal(signal.SIGTERM))
    if not signalled:
        return []
    if not await _gone_within(members, grace_s):
        signalled.update(members.signal(signal.SIGKILL))
        if not await _gone_within(members, kill_wait_s):
            _log.warning("backend.leftovers_remain", model=record.model_id, pids=members.scan())
    _log.info("backend.leftovers_reaped", model=record.model_id, pids=sorted(signalled))
    return sorted(signalled)


async def _gone_within(members: Members, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while members.scan():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_POLL_S)
    return True
