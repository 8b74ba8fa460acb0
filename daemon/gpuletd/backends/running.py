"""A running process backend: its group, its output, its exit, and how it is stopped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import structlog

from gpuletd.backends.errors import TAIL_IN_MESSAGE, describe_returncode
from gpuletd.backends.logs import LogRing
from gpuletd.backends.placeholders import Launch
from gpuletd.backends.procfs import alive_members, process_start_time, process_tree, read_proc_stat

__all__ = ["ExitCallback", "ExitStatus", "OutputPump", "RunningBackend"]

_log = structlog.get_logger("gpuletd.backends")

# "The group is empty" has no event to wait on; it is polled this often while stopping.
_GROUP_POLL_S = 0.02
# After the group is gone its output pipe hits EOF at once, unless a process that escaped the
# group still holds it; then the rest of its output is not worth waiting for.
_DRAIN_S = 0.5

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

    # asyncio's convention: negative means killed by that signal.
    returncode: int
    # True when the daemon asked it to stop; False is a crash the daemon must react to.
    expected: bool

    def describe(self) -> str:
        return describe_returncode(self.returncode)


ExitCallback = Callable[["RunningBackend", ExitStatus], None]


class OutputPump(asyncio.Protocol):
    """Feeds the read end of the backend's stdout+stderr pipe to the ring and the log file."""

    def __init__(self, ring: LogRing, log_file: BinaryIO | None) -> None:
        self._ring = ring
        self._file = log_file
        self.closed = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self._ring.feed(data)
        if self._file is not None:
            # A blocking write on the loop: it lands in the page cache and is tiny next to a
            # model load; a full disk must not stop the backend, so the file is dropped.
            try:
                self._file.write(data)
            except OSError as exc:
                _log.warning("backend.log_file_failed", path=self._file.name, error=str(exc))
                self._close_file()

    def eof_received(self) -> bool | None:
        self._ring.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._ring.close()
        self._close_file()
        self.closed.set()

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class RunningBackend:
    """A started backend process and its process group. Made by `ProcessBackend.start`."""

    def __init__(
        self,
        *,
        model_id: str,
        process: asyncio.subprocess.Process,
        launch: Launch,
        port: int,
        gpu_uuids: tuple[str, ...],
        ring: LogRing,
        output: asyncio.ReadTransport,
        pump: OutputPump,
        log_path: Path | None,
        orphan_grace_s: float,
        kill_wait_s: float,
    ) -> None:
        self.model_id = model_id
        self.pid: int = process.pid
        # start_new_session made it the leader of its own session and process group.
        self.pgid: int = process.pid
        self.port = port
        self.endpoint = launch.endpoint
        self.health_url = launch.health_url
        self.command = launch.command
        self.gpu_uuids = gpu_uuids
        self.log_path = log_path
        self.started_at = time.monotonic()
        self.healthy_at: float | None = None
        self.exited_at: float | None = None
        # With the pid, this names the process for good; persisted later to re-adopt it.
        self.process_start_time: int | None = process_start_time(self.pid)
        self._process = process
        self._ring = ring
        self._output = output
        self._pump = pump
        self._orphan_grace_s = orphan_grace_s
        self._kill_wait_s = kill_wait_s
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = self._loop.create_future()
        self._exit_status: ExitStatus | None = None
        self._callbacks: list[ExitCallback] = []
        self._stop_requested = False
        self._stop_task: asyncio.Task[None] | None = None
        # Every process of the tree seen so far, pid -> start time. A worker that left the group
        # (setsid) is found only while its parent lives, so it is remembered to be stopped too.
        self._known: dict[int, int] = {}
        if self.process_start_time is not None:
            self._known[self.pid] = self.process_start_time
        _spawn(self._watch_exit())

    # -- state ---------------------------------------------------------------------------

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

    def log_tail(self, n: int = TAIL_IN_MESSAGE) -> list[str]:
        """The last `n` lines the backend printed on stdout or stderr."""
        return self._ring.tail(n)

    def pids(self) -> list[int]:
        """The live processes of the backend (leader, descendants, group), for GPU accounting."""
        if self._stop_task is not None and self._stop_task.done():
            return []  # all gone; the group id may even name someone else's group by now
        root = None if self._exited.done() else self.pid
        tree = process_tree(root, self.pgid)
        for stat in tree:
            self._known[stat.pid] = stat.starttime
        return [stat.pid for stat in tree]

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

    async def wait_exit(self) -> int:
        """Wait until the main process exits; its returncode (negative: killed by a signal)."""
        # Shielded: a cancelled waiter must not cancel the future other waiters share.
        return await asyncio.shield(self._exited)

    async def _watch_exit(self) -> None:
        # Our own pipe (not asyncio's PIPE) carries the output, so the transport has no pipes
        # and wait() returns when the process exits. With asyncio's pipes it would wait for
        # EOF too, which never comes while a worker the backend forked still holds the pipe.
        returncode = await self._process.wait()
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

    # -- stop ----------------------------------------------------------------------------

    async def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the whole group, SIGKILL it after `grace_s`; return when it is gone.

        Idempotent: later and concurrent calls join the first one (whose grace applies).
        Bounded: after SIGKILL it waits at most `kill_wait_s` more; a process stuck in the
        kernel (a hung GPU driver call) is logged and left, since nothing can do more.
        """
        # Shielded: a caller that is cancelled (its request went away, the daemon shuts down)
        # must not cut the escalation short and leave the group running.
        await asyncio.shield(self._begin_stop(grace_s))

    def kill(self) -> None:
        """SIGKILL the group now, without waiting: for paths that cannot await.

        Outside a running event loop (an atexit hook) it only sends the signal.
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
        if not self._exited.done():
            # Snapshot the tree while the leader lives: afterwards its escaped workers are
            # reparented and can no longer be found from it.
            self.pids()
        gone = grace_s > 0 and await self._signal_and_wait(signal.SIGTERM, grace_s)
        if not gone and not await self._signal_and_wait(signal.SIGKILL, self._kill_wait_s):
            _log.warning(
                "backend.stop_incomplete",
                model=self.model_id,
                pgid=self.pgid,
                pids=self._alive(),
                waited_s=grace_s + self._kill_wait_s,
            )
        # Every writer of the output pipe is gone now, so EOF is due; take the last lines.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._pump.closed.wait(), _DRAIN_S)
        self._output.close()
        _log.info("backend.stopped", model=self.model_id, pid=self.pid)

    async def _signal_and_wait(self, sig: signal.Signals, timeout_s: float) -> bool:
        """Send `sig` to the group (and to known escapees); True once all of them are gone."""
        self._signal(sig)
        deadline = time.monotonic() + timeout_s
        while True:
            if self._exited.done() and not self._alive():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._exited.done():
                await asyncio.sleep(min(_GROUP_POLL_S, remaining))
            else:
                # The leader's exit is an event: wake at once, poll the group only after it.
                await asyncio.wait((self._exited,), timeout=remaining)

    def _signal(self, sig: signal.Signals) -> None:
        # ProcessLookupError: the group is empty. PermissionError: its id names someone else's
        # group by now. Either way none of ours is left in it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)
        for pid, starttime in list(self._known.items()):
            stat = read_proc_stat(pid)
            if stat is None or stat.starttime != starttime or stat.pgrp == self.pgid:
                continue  # gone, a reused pid, or already signalled with the group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def _alive(self) -> list[int]:
        outside = [(pid, start) for pid, start in self._known.items() if pid != self.pid]
        return alive_members(self.pgid, outside)
