"""Supervision of the models' serving processes: start, measure, watch and stop them, and
report each outcome exactly once. The one owner of what is running (to be persisted later)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Protocol

import structlog

from gpuletd.backends import ExitStatus, ProcessBackend, RunningBackend
from gpuletd.registry import Backend
from gpuletd.runtime import Runtime
from gpuletd.scheduler.decisions import StartBackend, StopBackend

__all__ = ["BackendEvents", "Supervisor"]

log = structlog.get_logger(__name__)


class BackendEvents(Protocol):
    """Where outcomes go (the broker, which feeds them to the scheduler core)."""

    def loaded(self, model_id: str, measured_mb: int | None) -> None: ...
    def load_failed(self, model_id: str, reason: str) -> None: ...
    def died(self, model_id: str, reason: str) -> None: ...
    def unloaded(self, model_id: str) -> None: ...


class Supervisor:
    def __init__(
        self,
        runtime: Runtime,
        events: BackendEvents,
        *,
        backends: ProcessBackend | None = None,
        log_dir: Path | None = None,
        stop_grace_s: float = 10.0,
    ) -> None:
        self._rt = runtime
        self._events = events
        self._backends = backends or ProcessBackend()
        self._log_dir = log_dir
        self._stop_grace_s = stop_grace_s
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._stopping: dict[str, asyncio.Task[None]] = {}
        self._running: dict[str, RunningBackend] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- what is running ------------------------------------------------------------------

    def endpoint(self, model_id: str) -> str | None:
        rb = self._running.get(model_id)
        return rb.endpoint if rb is not None else None

    def leaders(self) -> dict[str, int]:
        """Model id → pid of its serving process."""
        return {mid: rb.pid for mid, rb in self._running.items()}

    def pids(self) -> dict[int, str]:
        """Every pid of every backend's process tree → its model."""
        return {pid: mid for mid, rb in self._running.items() for pid in rb.pids()}

    # -- decisions ------------------------------------------------------------------------

    def start(self, d: StartBackend) -> None:
        self._starting[d.model_id] = self._spawn(self._start(d))

    def stop(self, d: StopBackend) -> None:
        self._stopping[d.model_id] = self._spawn(self._stop(d))

    async def close(self) -> None:
        """Stop every backend, including those starting or stopping: nothing is left running."""
        for task in self._starting.values():
            task.cancel()  # a cancelled start kills its process group
        await asyncio.gather(
            *self._starting.values(), *self._stopping.values(), return_exceptions=True
        )
        running = list(self._running.values())
        self._running.clear()
        await asyncio.gather(
            *(rb.stop(self._stop_grace_s) for rb in running), return_exceptions=True
        )
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- the work -------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("backend task failed", error=repr(exc), exc_info=exc)

    async def _start(self, d: StartBackend) -> None:
        model = self._rt.registry.get(d.model_id)
        assert model is not None
        try:
            if model.backend is Backend.RESERVATION:
                # Nothing to start: the holder loads the model itself.
                self._events.loaded(d.model_id, None)
                return
            timeout = model.autostart_timeout_seconds or self._rt.profile.autostart_timeout_seconds
            try:
                rb = await self._backends.start(
                    model, d.gpu_uuids, timeout_s=timeout, log_dir=self._log_dir
                )
            except Exception as e:  # any failure to start is the model's failure to load
                log.warning("backend failed to start", model=d.model_id, error=str(e))
                self._events.load_failed(d.model_id, str(e) or repr(e))
                return
            self._running[d.model_id] = rb
            rb.add_exit_callback(self._on_exit)
            measured = await self._measure(rb)
            log.info(
                "backend healthy",
                model=d.model_id,
                pid=rb.pid,
                endpoint=rb.endpoint,
                measured_mb=measured,
            )
            self._events.loaded(d.model_id, measured)
        finally:
            if self._starting.get(d.model_id) is asyncio.current_task():
                del self._starting[d.model_id]

    async def _measure(self, rb: RunningBackend) -> int | None:
        """The backend's memory as the probe sees it: its whole process tree (model servers
        fork workers), summed over its GPUs. None when the probe cannot say."""
        pids = set(rb.pids())
        total, known = 0, False
        for uuid in rb.gpu_uuids:
            for p in await self._rt.poller.processes(uuid):
                if p.pid in pids and p.used_mb is not None:
                    total += p.used_mb
                    known = True
        return total if known else None

    def _on_exit(self, rb: RunningBackend, status: ExitStatus) -> None:
        if status.expected or self._running.get(rb.model_id) is not rb:
            return
        del self._running[rb.model_id]
        tail = "; ".join(rb.log_tail(5))
        reason = f"backend {status.describe()}" + (f"; last log lines: {tail}" if tail else "")
        log.warning("backend died", model=rb.model_id, pid=rb.pid, reason=reason)
        self._events.died(rb.model_id, reason)
        # Its process group may have left workers holding memory: make sure they are gone.
        self._spawn(rb.stop(self._stop_grace_s))

    async def _stop(self, d: StopBackend) -> None:
        try:
            starting = self._starting.pop(d.model_id, None)
            if starting is not None:
                # A load timed out in the core: cancelling the start kills the process group.
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
            rb = self._running.pop(d.model_id, None)
            if rb is not None:
                # Shielded: at shutdown this stop must run to its SIGKILL, not be cut short.
                await asyncio.shield(rb.stop(self._stop_grace_s))
        finally:
            if self._stopping.get(d.model_id) is asyncio.current_task():
                del self._stopping[d.model_id]
            # Even if stopping failed, the core must learn the model is no longer loading or
            # loaded, or its reservation would be held for ever.
            self._events.unloaded(d.model_id)
        # Read the GPUs now rather than at the next poll: the next placement waits until the
        # freed memory shows up in a reading.
        await self._rt.poller.poll_once()
