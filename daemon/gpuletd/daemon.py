"""The daemon assembled: the core restored from the store, the executor and its sinks in order,
the supervisor, the lease API; and the three ways it can end (stop, hand off, crash).

- **Start**: the core is restored from the last snapshot (leases keep their ids, tokens and
  expiries), then the supervisor reconciles the previous daemon's backend records with it —
  adopting what still runs, cleaning up what died — before the socket serves anyone.
- **Stop** (SIGTERM, SIGINT, SIGQUIT): waiting requests are refused, every backend is stopped
  (to its SIGKILL if need be) and the saved state is cleared: nothing is left running, and
  the next start begins empty.
- **Handoff** (SIGUSR2): for an upgrade or a restart that must not unload models. The state is
  saved and the daemon exits leaving its backends running; the next gpuletd adopts them with
  the same pids, and every lease stays valid.
- **Crash** (kill -9, OOM): the store sink writes before any decision takes effect, so the next
  start is the same as after a handoff (unless saving failed: `gpulet profile show` then
  warns that the state is not being saved).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from gpuletd.active_profile import ActiveProfile
from gpuletd.backends import become_subreaper
from gpuletd.config import Config
from gpuletd.config_errors import ConfigError
from gpuletd.executor import Clock, Executor
from gpuletd.labels import LabelsWriter
from gpuletd.leases import LeaseManager
from gpuletd.log_sink import LogSink
from gpuletd.measurements import Measurements
from gpuletd.metrics import MetricsSink
from gpuletd.probe.simulated import SimulatedProbe
from gpuletd.runtime import Runtime
from gpuletd.scheduler import Scheduler, SnapshotError
from gpuletd.simulated_sink import SimulatedGpuSink
from gpuletd.state_dir import STATE_FILE
from gpuletd.store import StateStore, StoreError
from gpuletd.store_sink import StoreSink
from gpuletd.supervisor import Supervisor
from gpuletd.watch import WatchSink

__all__ = ["Daemon"]

log = structlog.get_logger("gpuletd")


def _build_core(rt: Runtime, store: StateStore | None, clock: Clock) -> Scheduler:
    profile, models, gpus = rt.profile, rt.registry.models, rt.gpus
    preload = rt.config.preload
    saved = store.load_core() if store is not None else None
    if saved is not None:
        now = clock.mono()
        # Monotonic time runs on across a restart within one boot; after a reboot only the
        # wall clock links the two runs.
        same_boot = store is not None and saved.same_boot(store.boot_id)
        shift = 0.0 if same_boot else (now - clock.wall()) - (saved.mono - saved.wall)
        try:
            core = Scheduler.restore(
                saved.snapshot, profile, models, gpus, now=now, shift=shift, preload=preload
            )
        except Exception as e:
            # A snapshot this gpuletd cannot read (SnapshotError) or one that trips a bug:
            # either way starting empty beats a crash loop. Its backends are still found by
            # their records and marks, and stopped.
            log.warning(
                "state.not_restored",
                reason=str(e) or repr(e),
                action="starting empty",
                exc_info=not isinstance(e, SnapshotError),
            )
        else:
            leases = core.leases()
            log.info(
                "state.restored",
                leases=len(leases),
                models={m: v.state.value for m, v in core.models().items() if v.holds_memory},
                saved_s_ago=round(clock.wall() - saved.wall, 1),
            )
            return core
    core = Scheduler(profile, models, gpus, preload=preload)
    if store is not None:
        # Measured footprints and load times outlive a state file that was set aside.
        for mid, fp in store.footprints().items():
            core.learn(mid, measured_mb=fp.measured_mb, load_seconds=fp.load_seconds)
    return core


class Daemon:
    def __init__(
        self,
        runtime: Runtime,
        *,
        state_dir: Path | None,
        log_dir: Path,
        stop_grace_s: float = 10.0,
        check_invariants: bool = False,
        labels_file: Path | None = None,
    ) -> None:
        self.runtime = runtime
        self.store: StateStore | None = None
        if state_dir is not None:
            try:
                self.store = StateStore.open(state_dir / STATE_FILE)
            except StoreError as e:
                # A disk that is full or failing: serve anyway (a restart will lose what this
                # run holds), and say so where operators look.
                runtime.store_error = str(e)
                log.error("store.unavailable", error=str(e), action="serving without saving")
        clock = Clock()
        self.executor = Executor(
            _build_core(runtime, self.store, clock), clock=clock, check=check_invariants
        )
        self.supervisor = Supervisor(
            runtime,
            self.executor.backend_outcome,
            log_dir=log_dir,
            store=self.store,
            stop_grace_s=stop_grace_s,
            mark=str(state_dir) if state_dir is not None else None,
            load_times=self._learnt_load_s,
        )
        self._store_sink = StoreSink(self.store, self.executor, runtime) if self.store else None
        self.leases = LeaseManager(runtime, self.executor, commits=self._store_sink)
        self.watch = WatchSink(self.executor, commits=self._store_sink)
        # The order is the design: on disk first, then processes, then what people see.
        if self._store_sink is not None:
            self.executor.add_sink(self._store_sink)
        self.executor.add_sink(self.supervisor)
        if isinstance(runtime.poller.probe, SimulatedProbe):
            self.executor.add_sink(
                SimulatedGpuSink(runtime.poller.probe, self.executor, self.supervisor)
            )
        self.executor.add_sink(self.watch)
        # Always fed, served only with --metrics (main.py, metrics_http.start_metrics): the
        # counters then cover the whole run, restore and adoption included, and cost a dict
        # lookup or two per decision when nobody scrapes.
        self.metrics = MetricsSink(self.executor, runtime)
        self.executor.add_sink(self.metrics)
        # Load and unload times and peak memory per model, for `gpulet models` (seed 003).
        self.measurements = Measurements(self.executor, self.store)
        self.executor.add_sink(self.measurements)
        # --labels-file: node labels for node-feature-discovery, rewritten when they change.
        self.labels = LabelsWriter(labels_file, runtime) if labels_file is not None else None
        if self.labels is not None:
            self.executor.add_sink(self.labels)
        self.executor.add_sink(LogSink(self._client_of))
        self.executor.add_sink(self.leases)

    def _learnt_load_s(self, model_id: str) -> float | None:
        """The load time the core learnt for a model: what its next start's health checks
        expect."""
        view = self.core.model(model_id)
        return view.load_seconds if view is not None else None

    @property
    def core(self) -> Scheduler:
        return self.executor.core

    def _client_of(self, lease_id: str) -> str:
        view = self.core.lease(lease_id)
        return view.client if view is not None else ""

    async def open(self) -> None:
        """Before serving: become the subreaper of every backend, and reconcile the previous
        daemon's backends with the restored core."""
        if become_subreaper():
            # Orphaned workers are reparented to us from now on; someone must reap them.
            self.supervisor.start_reaper()
        else:
            log.warning(
                "daemon.no_subreaper",
                detail="workers that leave their backend's process group may outlive it",
            )
        await self.supervisor.recover(self.core.models())
        if self._store_sink is not None:
            self._store_sink.save()

    def start(self) -> None:
        self.runtime.poller.subscribe(self.executor.probe)
        self.executor.start()
        if self.labels is not None:
            self.labels.start()

    # -- reload -------------------------------------------------------------------------------

    def reload(self, load: Callable[[], tuple[Config, ActiveProfile]]) -> bool:
        """Re-read the configuration; a valid one takes effect as a core event (no lease is
        dropped), an invalid one is refused and the old one keeps serving."""
        try:
            config, active = load()
        except (ConfigError, ValueError, OSError) as e:
            self.runtime.reload_error = str(e)
            log.error("config.reload_refused", error=str(e), action="keeping the old config")
            return False
        old = self.runtime.profile.name
        self.runtime.config, self.runtime.active = config, active
        self.runtime.reload_error = ""
        self.executor.feed(
            lambda c, now: c.reconfigure(
                active.profile, config.registry.models, now=now, preload=config.preload
            )
        )
        log.info(
            "config.reloaded",
            profile=active.profile.name,
            previous_profile=old,
            source=active.source.value,
            models=len(config.registry.models),
        )
        for w in active.warnings:
            log.warning("profile.warned", warning=w)
        return True

    def status(self) -> dict[str, object]:
        """What SIGUSR1 logs: a one-line picture of the daemon."""
        core = self.core
        return {
            "profile": self.runtime.profile.name,
            "models": {m: v.state.value for m, v in core.models().items() if v.holds_memory},
            "leases": len(core.leases()),
            "waiting": core.waiting_count(),
            "backends": self.supervisor.leaders(),
        }

    # -- the end ------------------------------------------------------------------------------

    def quiesce(self) -> None:
        """Before the server's graceful stop: end the streams that would hold it open until
        its grace runs out. Waiting Acquires are told UNAVAILABLE (and nothing new is granted),
        Watch subscribers that the daemon is shutting down. Called again by stop and handoff,
        for callers (tests) that skip it; the second time does nothing."""
        self.leases.drain()
        self.watch.close()

    async def stop(self) -> None:
        """A clean stop: every backend stopped, nothing left running, the saved state cleared."""
        self.quiesce()
        await self.executor.stop()
        if self.labels is not None:
            await self.labels.close(remove=True)
        await self.supervisor.close()
        if self._store_sink is not None:
            # A grouped commit still scheduled would fire on a closed store.
            self._store_sink.save()
        if self.store is not None:
            try:
                self.store.clear_state()
            except StoreError as e:
                log.error("store.clear_failed", error=str(e))
            self.store.close()

    async def handoff(self) -> None:
        """Leave the backends running for the next gpuletd: save the state and close the store.
        The caller then exits at once (see main.py: the event loop's own shutdown would cancel
        the tasks that own starting backends, and a cancelled start kills its process)."""
        self.quiesce()
        await self.executor.stop()
        if self.labels is not None:
            await self.labels.close(remove=False)
        self.supervisor.freeze()
        if self.store is not None and self._store_sink is not None:
            self._store_sink.save()
            self.store.close()
        log.info(
            "daemon.handed_off",
            backends=self.supervisor.leaders(),
            leases=len(self.core.leases()),
            pid=os.getpid(),
            at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
