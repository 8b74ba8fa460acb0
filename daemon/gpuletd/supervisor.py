"""Supervision of the models' serving processes: the one owner of backend records.

A sink: StartBackend and StopBackend decisions come in; each is answered with exactly one
outcome (Loaded / LoadFailed / BackendDied / Unloaded) sent back to the executor as a core
event. Every backend's record (pid, start time, port, GPUs, endpoint, command, log file) is
written to the store as soon as its process exists and removed once it is gone, so that a
daemon restarted after a crash finds it again (`recover`) and adopts it instead of starting a
second copy or leaving an orphan behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, assert_never

import structlog

from gpuletd.backends import (
    BackendRecord,
    ExitStatus,
    ProcessBackend,
    RunningBackend,
    adopt,
    check_health,
    reap_leftovers,
    reap_orphans,
)
from gpuletd.backends.engines import Placement
from gpuletd.backends.strays import kill_processes, marked_processes
from gpuletd.executor import BackendDied, BackendOutcome, Loaded, LoadFailed, Unloaded
from gpuletd.probe.poller import ProbePoller
from gpuletd.registry import Backend, Model
from gpuletd.runtime import Runtime
from gpuletd.scheduler import (
    Decision,
    Granted,
    LeaseEnded,
    LeaseRefused,
    Loading,
    ModelState,
    ModelStateChanged,
    ModelView,
    PreloadSkipped,
    Queued,
    Rejected,
    Renewed,
    StartBackend,
    StopBackend,
)
from gpuletd.store import StateStore, StoreError

__all__ = ["Supervisor"]


def _state(view: ModelView | None) -> ModelState | None:
    return None if view is None else view.state


log = structlog.get_logger(__name__)

# An adopted backend gets this long to answer its health URL once after a restart.
_ADOPT_HEALTH_TIMEOUT_S = 5.0
# How often orphaned workers reparented to the daemon (it is their subreaper) are reaped.
_REAP_INTERVAL_S = 1.0


class Supervisor:
    def __init__(
        self,
        runtime: Runtime,
        outcomes: Callable[[BackendOutcome], None],
        *,
        log_dir: Path,
        store: StateStore | None = None,
        backends: ProcessBackend | None = None,
        stop_grace_s: float = 10.0,
        mark: str | None = None,
        load_times: Callable[[str], float | None] | None = None,
    ) -> None:
        """`mark`: the value of GPULET_BACKEND_OF this daemon's backends carry (its state dir);
        with it, `recover` also stops marked processes that no record names.

        `load_times(model_id)`: the load time learnt for a model (the core's, seeded from the
        store's footprints at start), around which a start's health checks are fastest.
        Without it, or for a model never loaded, nothing is expected: fast at first, then
        backing off."""
        self._rt = runtime
        self._outcomes = outcomes
        self._store = store
        self._backends = backends or ProcessBackend()
        self._log_dir = log_dir
        self._stop_grace_s = stop_grace_s
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._stopping: dict[str, asyncio.Task[None]] = {}
        self._running: dict[str, RunningBackend] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._frozen = False
        self._reaper: asyncio.Task[None] | None = None
        self._mark = mark
        self._load_times = load_times
        # Told when a backend joins the running set, before it is measured (the simulated
        # GPUs list it as a process from then on).
        self._watch_listeners: list[Callable[[], None]] = []

    @property
    def poller(self) -> ProbePoller:
        return self._rt.poller

    # -- what is running ------------------------------------------------------------------

    def leaders(self) -> dict[str, int]:
        """Model id → pid of its serving process."""
        return {mid: rb.pid for mid, rb in self._running.items()}

    def pids(self) -> dict[int, str]:
        """Every pid of every backend's process tree → its model."""
        return {pid: mid for mid, rb in self._running.items() for pid in rb.pids()}

    # -- the sink -------------------------------------------------------------------------

    def apply(self, decisions: Sequence[Decision]) -> None:
        for d in decisions:
            match d:
                case StartBackend() | StopBackend() if self._frozen:
                    log.info("backend.deferred", model=d.model_id, to="the next gpuletd")
                case StartBackend():
                    if self._closing:
                        self._report(LoadFailed(d.model_id, "gpuletd is shutting down"))
                    else:
                        self._starting[d.model_id] = self._spawn(self._start(d))
                case StopBackend():
                    self._stopping[d.model_id] = self._spawn(self._stop(d.model_id))
                case (
                    Queued()
                    | Loading()
                    | Granted()
                    | Renewed()
                    | Rejected()
                    | LeaseRefused()
                    | LeaseEnded()
                    | ModelStateChanged()
                    | PreloadSkipped()
                ):
                    pass
                case _:
                    assert_never(d)

    def _report(self, outcome: BackendOutcome) -> None:
        if not self._frozen:
            self._outcomes(outcome)

    def freeze(self) -> None:
        """Handing off: from now on nothing is started, stopped or reported. What the core
        decides after this is saved with it, and the next gpuletd carries it out (a restored
        LOADING model without a process is answered as a failed load, an UNLOADING one has
        its backend stopped)."""
        self._frozen = True

    def start_reaper(self) -> None:
        self._reaper = asyncio.create_task(self._reap_loop(), name="orphan-reaper")

    async def close(self) -> None:
        """Stop every backend, including those starting or stopping: nothing is left running."""
        self._closing = True
        for task in self._starting.values():
            task.cancel()  # a cancelled start kills its process group
        await asyncio.gather(
            *self._starting.values(), *self._stopping.values(), return_exceptions=True
        )
        running = list(self._running.items())
        self._running.clear()
        await asyncio.gather(
            *(rb.stop(self._stop_grace_s) for _, rb in running), return_exceptions=True
        )
        for mid, _ in running:
            self._forget(mid)
        if self._reaper is not None:
            self._reaper.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        reap_orphans(skip=())

    # -- after a restart --------------------------------------------------------------------

    async def recover(self, models: Mapping[str, ModelView]) -> None:
        """Reconcile the backend records of the previous daemon with the restored core: adopt
        what still runs, clean up what died, and answer every restored LOADING / UNLOADING
        model (the core's contract after `restore`). Call before the first event: nothing
        has been started yet, so every marked process no record names is a stray."""
        records: list[BackendRecord] = []
        for mid, raw in (self._store.backends() if self._store is not None else {}).items():
            try:
                records.append(BackendRecord.from_dict(raw))
            except ValueError as e:
                log.warning("backend.record_unreadable", model=mid, error=str(e))
                self._forget(mid)
        await self._stop_strays(records)
        # Concurrently: one backend slow to answer its health check must not hold up the
        # others while their holders cannot renew.
        await asyncio.gather(
            *(self._recover_one(r, _state(models.get(r.model_id))) for r in records)
        )
        recorded = {r.model_id for r in records}
        for mid, view in models.items():
            if mid in recorded or not view.holds_memory:
                continue
            model = self._rt.registry.get(mid)
            if view.memory or (model is not None and model.backend is Backend.RESERVATION):
                # No process (a reservation, or a memory lease's raw VRAM): the holder loads
                # it; the restart changed nothing for it.
                if view.state is ModelState.LOADING:
                    endpoint = (model.endpoint or "") if model is not None else ""
                    self._report(Loaded(mid, None, endpoint))
                elif view.state is ModelState.UNLOADING:
                    self._report(Unloaded(mid))
            else:
                # Its process was never recorded (the daemon died between the decision and
                # the spawn) or its record was lost with a discarded state file.
                self._answer_gone(mid, view.state, "its process was not found after a restart")

    async def _stop_strays(self, records: Sequence[BackendRecord]) -> None:
        if self._mark is None:
            return
        recorded = {pid for r in records for pid in (r.pid, *(p for p, _ in r.members))}
        strays = marked_processes(self._mark, exclude={os.getpid(), *recorded})
        if strays:
            killed = await kill_processes(strays, grace_s=self._stop_grace_s)
            log.warning(
                "backend.strays_stopped",
                pids=strays,
                killed=killed,
                detail="backend processes no record named (a lost state file?)",
            )

    async def _recover_one(self, record: BackendRecord, state: ModelState | None) -> None:
        mid = record.model_id
        rb = adopt(record)
        if rb is None:
            killed = await reap_leftovers(
                record, grace_s=self._stop_grace_s, kill_wait_s=self._stop_grace_s
            )
            log.warning("backend.gone", model=mid, pid=record.pid, leftovers_killed=killed)
            self._forget(mid)
            self._answer_gone(mid, state, f"its process {record.pid} exited while gpuletd was down")
            return
        log.info("backend.adopted", model=mid, pid=rb.pid, state=state.value if state else None)
        if state is ModelState.LOADED:
            if await check_health(record.health_url, _ADOPT_HEALTH_TIMEOUT_S):
                self._watch(rb)
                return
            why = f"{record.health_url} did not answer after a restart"
        elif state is ModelState.LOADING:
            self._watch(rb)
            self._starting[mid] = self._spawn(self._finish_adopted_load(rb, record))
            return
        else:
            why = "no longer the core's (its state was set aside)"
        # Being unloaded, not healthy, or nobody's: stop it.
        await rb.stop(self._stop_grace_s)
        self._forget(mid)
        self._answer_gone(mid, state, why)

    def _answer_gone(self, mid: str, state: ModelState | None, why: str) -> None:
        """The answer the core expects for a model in `state` whose backend is gone."""
        if state is ModelState.LOADED:
            self._report(BackendDied(mid, why))
        elif state is ModelState.LOADING:
            self._report(LoadFailed(mid, why))
        elif state is ModelState.UNLOADING:
            self._report(Unloaded(mid))

    async def _finish_adopted_load(self, rb: RunningBackend, record: BackendRecord) -> None:
        model = self._rt.registry.get(rb.model_id)
        timeout = self._autostart_s(model) - (time.time() - record.spawned_at)
        try:
            try:
                await self._backends.wait_healthy(
                    rb,
                    max(timeout, 1.0),
                    expected_load_s=self._expected_load_s(rb.model_id),
                    ready_log_pattern=model.ready_log_pattern if model is not None else None,
                )
            except Exception as e:
                if self._running.get(rb.model_id) is rb:
                    del self._running[rb.model_id]
                    self._forget(rb.model_id)
                self._report(LoadFailed(rb.model_id, str(e) or repr(e)))
                return
            self._persist(rb.record)
            self._report(Loaded(rb.model_id, await self._measure(rb), rb.endpoint))
        finally:
            if self._starting.get(rb.model_id) is asyncio.current_task():
                del self._starting[rb.model_id]

    # -- the work -------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("backend.task_failed", error=repr(exc), exc_info=exc)

    def _autostart_s(self, model: Model | None) -> float:
        t = model.autostart_timeout_seconds if model is not None else None
        return self._rt.profile.autostart_timeout_seconds if t is None else t

    def _expected_load_s(self, model_id: str) -> float | None:
        return self._load_times(model_id) if self._load_times is not None else None

    def _persist(self, record: BackendRecord) -> None:
        if self._store is None:
            return
        try:
            self._store.put_backend(record.model_id, record.to_dict())
        except StoreError as e:
            # The backend runs on; a successor would find it by its mark and stop it.
            self._rt.store_error = str(e)
            log.error("backend.record_not_saved", model=record.model_id, error=str(e))

    def _forget(self, model_id: str) -> None:
        if self._store is None:
            return
        try:
            self._store.delete_backend(model_id)
        except StoreError as e:
            log.error("backend.record_not_removed", model=model_id, error=str(e))

    def on_watch(self, listener: Callable[[], None]) -> None:
        self._watch_listeners.append(listener)

    def _watch(self, rb: RunningBackend) -> None:
        self._running[rb.model_id] = rb
        for listener in self._watch_listeners:
            listener()
        rb.add_exit_callback(self._on_exit)
        # Workers found later (and so their escapees) must be in the record a successor reads.
        rb.add_record_callback(self._persist)

    def _placement(self, d: StartBackend) -> Placement:
        """What an engine preset needs beyond the GPUs: the shares, the GPUs' sizes (for the
        memory fraction) and the active profile's engine table."""
        totals = {g.uuid: g.total_mb for g in self._rt.gpus}
        return Placement(
            gpu_reservations_mb=d.gpu_reservations_mb,
            gpu_totals_mb=tuple(totals.get(u) for u in d.gpu_uuids),
            profile_engine=self._rt.profile.engine,
        )

    async def _start(self, d: StartBackend) -> None:
        model = self._rt.registry.get(d.model_id)
        try:
            if model is None or model.backend is Backend.RESERVATION:
                # Nothing to start: the holder loads the model itself.
                endpoint = (model.endpoint or "") if model is not None else ""
                self._report(Loaded(d.model_id, None, endpoint))
                return
            try:
                rb = await self._backends.start(
                    model,
                    d.gpu_uuids,
                    timeout_s=self._autostart_s(model),
                    log_dir=self._log_dir,
                    on_spawn=self._persist,
                    expected_load_s=self._expected_load_s(d.model_id),
                    placement=self._placement(d),
                )
            except asyncio.CancelledError:
                self._forget(d.model_id)
                raise
            except Exception as e:  # any failure to start is the model's failure to load
                log.warning("backend.start_failed", model=d.model_id, error=str(e))
                self._forget(d.model_id)
                self._report(LoadFailed(d.model_id, str(e) or repr(e)))
                return
            self._watch(rb)
            measured = await self._measure(rb)
            self._persist(rb.record)
            log.info("backend.ready", model=d.model_id, pid=rb.pid, measured_mb=measured)
            self._report(Loaded(d.model_id, measured, rb.endpoint))
        finally:
            if self._starting.get(d.model_id) is asyncio.current_task():
                del self._starting[d.model_id]

    async def _measure(self, rb: RunningBackend) -> int | None:
        """The backend's memory as the probe sees it: its whole process tree (model servers
        fork workers), summed over its GPUs. None when the probe cannot say."""
        pids = set(rb.pids())
        total, known = 0, False
        for uuid in rb.record.gpu_uuids:
            for p in await self.poller.processes(uuid):
                if p.pid in pids and p.used_mb is not None:
                    total += p.used_mb
                    known = True
        return total if known else None

    def _on_exit(self, rb: RunningBackend, status: ExitStatus) -> None:
        if status.expected or self._running.get(rb.model_id) is not rb:
            return
        del self._running[rb.model_id]
        self._forget(rb.model_id)
        tail = "; ".join(rb.log_tail(5))
        reason = f"backend {status.describe()}" + (f"; last log lines: {tail}" if tail else "")
        log.warning("backend.died", model=rb.model_id, pid=rb.pid, reason=reason)
        # During an adopted load its wait reports the same death as a failed load: the core
        # takes the first answer and ignores the late one.
        self._report(BackendDied(rb.model_id, reason))

    async def _stop(self, model_id: str) -> None:
        try:
            starting = self._starting.pop(model_id, None)
            if starting is not None:
                # A load timed out in the core: cancelling the start kills the process group.
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
            rb = self._running.pop(model_id, None)
            if rb is not None:
                # Shielded: at shutdown this stop must run to its SIGKILL, not be cut short.
                await asyncio.shield(rb.stop(self._stop_grace_s))
        finally:
            if self._stopping.get(model_id) is asyncio.current_task():
                del self._stopping[model_id]
            self._forget(model_id)
            # Even if stopping failed, the core must learn the model is no longer loading or
            # loaded, or its reservation would be held for ever.
            self._report(Unloaded(model_id))
        # Read the GPUs now rather than at the next poll: the next placement waits until the
        # freed memory shows up in a reading.
        await self.poller.poll_once()

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(_REAP_INTERVAL_S)
            with contextlib.suppress(Exception):
                for pid, status in reap_orphans(skip=set(self.leaders().values())):
                    log.info("backend.orphan_reaped", pid=pid, status=status)
