"""Handles on a backend's leader process: one we spawned, or one we found again.

Both answer the one question `RunningBackend` asks of the OS process: when does it exit, and
with what code, if that can be known at all. Everything else (members, signals, logs) works
from the backend's record and /proc, so it is the same for both.
"""

from __future__ import annotations

import asyncio
import os
from typing import Protocol

import structlog

from gpuletd.backends import reaper
from gpuletd.backends.procfs import is_same_process

__all__ = ["AdoptedHandle", "ChildHandle", "ProcessHandle"]

_log = structlog.get_logger("gpuletd.backends")

# Without a pidfd, how often /proc is read to notice that an adopted leader exited.
_POLL_S = 0.25


class ProcessHandle(Protocol):
    @property
    def pid(self) -> int: ...

    @property
    def is_child(self) -> bool: ...

    async def wait(self) -> int | None:
        """Wait for the exit; asyncio's returncode (negative: signal), None if unknowable."""
        ...

    def close(self) -> None:
        """Stop watching; the process is left alone."""
        ...


class ChildHandle:
    """A process this daemon spawned: asyncio's child watcher waits for it, with its code."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        # Until asyncio has its exit status, the reaper must not take it.
        reaper.claim(process.pid)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def is_child(self) -> bool:
        return True

    async def wait(self) -> int | None:
        # Our own file descriptors (not asyncio's PIPE) carry the output, so the transport has
        # no pipes and wait() returns when the process exits, not when every worker that
        # inherited its stdout has closed it too.
        returncode = await self._process.wait()
        reaper.release(self.pid)
        return returncode

    def close(self) -> None:
        # asyncio goes on waiting for it (that costs nothing), so the claim stays.
        pass


class AdoptedHandle:
    """A process this daemon did not spawn: its exit is seen through a pidfd (or /proc).

    Its exit code is not ours to know: only its parent can wait for it.
    """

    def __init__(self, pid: int, start_time: int, pidfd: int | None) -> None:
        self._pid = pid
        self._start_time = start_time
        self._pidfd = pidfd
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[None] = self._loop.create_future()
        self._poller: asyncio.Task[None] | None = None
        if pidfd is not None:
            # A pidfd becomes readable the moment the process exits: no polling delay.
            self._loop.add_reader(pidfd, self._on_exit)
        else:
            self._poller = self._loop.create_task(self._poll())

    @classmethod
    def open(cls, pid: int, start_time: int) -> AdoptedHandle | None:
        """A handle on `pid` if it is still the live process that started at `start_time`."""
        try:
            pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        except OSError as exc:
            _log.info("backend.pidfd_unavailable", pid=pid, error=str(exc))
            pidfd = None
        # Checked after opening: from then on the pidfd names that process even if the pid is
        # reused, so a match now cannot turn stale.
        if not is_same_process(pid, start_time):
            if pidfd is not None:
                os.close(pidfd)
            return None
        return cls(pid, start_time, pidfd)

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def is_child(self) -> bool:
        return False

    async def wait(self) -> int | None:
        await asyncio.shield(self._exited)
        return None

    def close(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None

    def _on_exit(self) -> None:
        self.close()
        if not self._exited.done():
            self._exited.set_result(None)

    async def _poll(self) -> None:
        while is_same_process(self._pid, self._start_time):
            await asyncio.sleep(_POLL_S)
        self._poller = None
        self._on_exit()
