"""A running process backend: its record, its members, its exit, its log, and how it is stopped."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any

import structlog

from gpuletd.backends.errors import TAIL_IN_MESSAGE, describe_returncode
from gpuletd.backends.handles import ProcessHandle
from gpuletd.backends.logs import read_log_tail
from gpuletd.backends.members import Members
from gpuletd.backends.record import BackendRecord

__all__ = ["ExitCallback", "ExitStatus", "RecordCallback", "RunningBackend"]

_log = structlog.get_logger("gpuletd.backends")

# "Every member is gone" has no event to wait on; it is polled this often while stopping.
_GROUP_POLL_S = 0.02

# The event loop keeps only weak references to tasks; these must finish even if nobody awaits.
_background: set[asyncio.Task[Any]] = set()


def _spawn(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


@dataclass(frozen=True)
class ExitStatus:
    """How a backend's main process ended."""

    # asyncio's convention: negative means killed by that signal. None: the process was not
    # our child (an adopted backend), so its exit code went to its parent, not to us.
    returncode: int | None
    # True when the daemon asked it to stop; False is a crash the daemon must react to.
    expected: bool

    def describe(self) -> str:
        return describe_returncode(self.returncode)


ExitCallback = Callable[["RunningBackend", ExitStatus], None]
RecordCallback = Callable[[BackendRecord], None]


class RunningBackend:
    """A backend process tree, spawned by `ProcessBackend.start` or found again by `adopt`."""

    def __init__(
        self,
        record: BackendRecord,
        handle: ProcessHandle,
        *,
        orphan_grace_s: float,
        kill_wait_s: float,
        member_refresh_s: float = 1.0,
        log_inode: int | None = None,
    ) -> None:
        """`log_inode` names the log file this start wrote, should a later start rotate it."""
        self.model_id = record.model_id
        self.pid = record.pid
        # start_new_session made it the leader of its own session and process group.
        self.pgid = record.pgid
        self.port = record.port
        self.endpoint = record.endpoint
        self.health_url = record.health_url
        self.command = record.command
        self.gpu_uuids = record.gpu_uuids
        self.log_path = record.log_path
        self.log_offset = record.log_offset
        # With the pid, this names the process for good within this boot.
        self.process_start_time = record.start_time
        self.adopted = not handle.is_child
        # The monotonic clock does not survive a daemon: an adopted backend's spawn time is
        # carried over from the wall clock of the record.
        self.started_at = time.monotonic() - max(0.0, time.time() - record.spawned_at)
        self.healthy_at: float | None = None
        self.exited_at: float | None = None
        self._record = record
        self._healthy = record.healthy
        self._handle = handle
        self._log_inode = log_inode
        self._orphan_grace_s = orphan_grace_s
        self._kill_wait_s = kill_wait_s
        self._member_refresh_s = member_refresh_s
        self._members = Members(record.pid, record.start_time, record.pgid, record.members)
        self._members_seen = self._members.version
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int | None] = self._loop.create_future()
        self._exit_status: ExitStatus | None = None
        self._callbacks: list[ExitCallback] = []
        self._record_callbacks: list[RecordCallback] = []
        self._stop_requested = False
        self._stop_task: asyncio.Task[None] | None = None
        self._detached = False
        self._watch_task = _spawn(self._watch_exit())
        self._track_task = _spawn(self._track_members())

    # -- state ---------------------------------------------------------------------------

    @property
    def record(self) -> BackendRecord:
        """What to persist to find this backend again: current members and health."""
        return replace(self._record, healthy=self._healthy, members=self._members.pairs())

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def returncode(self) -> int | None:
        return None if self._exit_status is None else self._exit_status.returncode

    @property
    def exit_status(self) -> ExitStatus | None:
        return self._exit_status

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    @property
    def load_seconds(self) -> float | None:
        """Spawn to first healthy answer: the measured load time the scheduler learns from."""
        return None if self.healthy_at is None else self.healthy_at - self.started_at

    def mark_healthy(self) -> None:
        """Its health URL answered 2xx (called by `ProcessBackend.wait_healthy`)."""
        if self.healthy_at is None:
            self.healthy_at = time.monotonic()
        if not self._healthy:
            self._healthy = True
            self._record_changed()

    def log_tail(self, n: int = TAIL_IN_MESSAGE) -> list[str]:
        """The last `n` lines this start of the backend wrote to its stdout or stderr."""
        if self.log_path is None:
            return []
        return read_log_tail(self.log_path, self.log_offset, n, inode=self._log_inode)

    def pids(self) -> list[int]:
        """The live processes of the backend (leader, descendants, group, members that left
        it), for GPU accounting. One pass over /proc."""
        if self._stop_task is not None and self._stop_task.done():
            return []  # all gone; the group id may even name someone else's group by now
        return self._scan()

    def add_record_callback(self, callback: RecordCallback) -> None:
        """Call `callback(record)` whenever the record changes (members found, healthy)."""
        self._record_callbacks.append(callback)

    # -- exit ----------------------------------------------------------------------------

    def add_exit_callback(self, callback: ExitCallback) -> None:
        """Call `callback(backend, status)` on the loop as soon as the main process exits.

        Registered after it already exited, the callback still runs (soon), so there is no race
        between `start` returning and the caller subscribing.
        """
        if self._exit_status is not None:
            self._loop.call_soon(self._run_callback, callback, self._exit_status)
        else:
            self._callbacks.append(callback)

    async def wait_exit(self) -> int | None:
        """Wait until the main process exits; its returncode (negative: killed by a signal;
        None: not our child, unknown)."""
        # Shielded: a cancelled waiter must not cancel the future other waiters share.
        return await asyncio.shield(self._exited)

    def detach(self) -> None:
        """Stop watching the backend and leave it running, for a daemon that exits without
        stopping it (a new daemon adopts it from its record). Use the object no more."""
        self._detached = True
        self._watch_task.cancel()
        self._track_task.cancel()
        self._handle.close()
        _log.info("backend.detached", model=self.model_id, pid=self.pid)

    async def _watch_exit(self) -> None:
        returncode = await self._handle.wait()
        self.exited_at = time.monotonic()
        status = ExitStatus(returncode, expected=self.stop_requested)
        self._exit_status = status
        self._exited.set_result(returncode)
        if status.expected:
            _log.info("backend.exited", model=self.model_id, pid=self.pid, how=status.describe())
        else:
            _log.warning(
                "backend.died",
                model=self.model_id,
                pid=self.pid,
                how=status.describe(),
                log_tail=self.log_tail(5),
            )
            # Workers of a dead leader may still hold GPU memory; clear them out.
            self._begin_stop(self._orphan_grace_s)
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            self._run_callback(callback, status)

    def _run_callback(self, callback: ExitCallback, status: ExitStatus) -> None:
        try:
            callback(self, status)
        except Exception:
            _log.exception("backend.exit_callback_failed", model=self.model_id)

    # -- members -------------------------------------------------------------------------

    async def _track_members(self) -> None:
        # A worker that leaves the group (setsid) can be found only as a descendant, that is,
        # only while its parent lives: scan often enough to see it before the parent dies.
        while not self._exited.done():
            self._scan()
            await asyncio.wait((self._exited,), timeout=self._member_refresh_s)

    def _scan(self) -> list[int]:
        pids = self._members.scan()
        self._check_members()
        return pids

    def _check_members(self) -> None:
        if self._members.version != self._members_seen:
            self._members_seen = self._members.version
            _log.debug(
                "backend.members_changed", model=self.model_id, members=self._members.pairs()
            )
            self._record_changed()

    def _record_changed(self) -> None:
        if not self._record_callbacks:
            return
        record = self.record
        for callback in list(self._record_callbacks):
            try:
                callback(record)
            except Exception:
                _log.exception("backend.record_callback_failed", model=self.model_id)

    # -- stop ----------------------------------------------------------------------------

    async def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM every member, SIGKILL them after `grace_s`; return when all are gone.

        Idempotent: later and concurrent calls join the first one (whose grace applies).
        Bounded: after SIGKILL it waits at most `kill_wait_s` more; a process stuck in the
        kernel (a hung GPU driver call) is logged and left, since nothing can do more.
        """
        # Shielded: a caller that is cancelled (its request went away, the daemon shuts down)
        # must not cut the escalation short and leave the group running.
        await asyncio.shield(self._begin_stop(grace_s))

    def kill(self) -> None:
        """SIGKILL every member now, without waiting: for paths that cannot await.

        Outside a running event loop (an atexit hook) it only sends the signals.
        """
        self._stop_requested = True
        self._signal(signal.SIGKILL)
        if self._stop_task is None:
            with contextlib.suppress(RuntimeError):  # no running loop
                self._begin_stop(0.0)

    def _begin_stop(self, grace_s: float) -> asyncio.Task[None]:
        self._stop_requested = True
        if self._stop_task is None:
            self._stop_task = _spawn(self._stop(grace_s))
        return self._stop_task

    async def _stop(self, grace_s: float) -> None:
        gone = grace_s > 0 and await self._signal_and_wait(signal.SIGTERM, grace_s)
        if not gone and not await self._signal_and_wait(signal.SIGKILL, self._kill_wait_s):
            _log.warning(
                "backend.stop_incomplete",
                model=self.model_id,
                pgid=self.pgid,
                pids=self._scan(),
                waited_s=grace_s + self._kill_wait_s,
            )
        _log.info("backend.stopped", model=self.model_id, pid=self.pid)

    async def _signal_and_wait(self, sig: signal.Signals, timeout_s: float) -> bool:
        """Send `sig` to every member; True once all of them are gone."""
        self._signal(sig)
        deadline = time.monotonic() + timeout_s
        while True:
            if self._exited.done() and not self._scan():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._exited.done():
                await asyncio.sleep(min(_GROUP_POLL_S, remaining))
            else:
                # The leader's exit is an event: wake at once, poll the rest only after it.
                await asyncio.wait((self._exited,), timeout=remaining)

    def _signal(self, sig: signal.Signals) -> None:
        # Every signal goes through the members' (pid, start time) checks: never to a pid
        # that was reused by someone else since we saw it.
        self._members.signal(sig)
        self._check_members()
