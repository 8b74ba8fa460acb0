"""The scheduler core: events and a clock in, decisions out.

A plain object, single-threaded and deterministic: no I/O, no asyncio, no clock, no
randomness, no logging. The daemon's shell calls one event method at a time with the current
monotonic time, executes the returned decisions in order, and feeds results back as events.
Every event method first runs what the clock has made due (lease expiry, deadlines, load
timeouts, grace unloads), then the event, then one scheduling pass over the queue.

`Scheduler` composes functions over one plain `State` (state.py); it is the only public entry
point. Its events are named in `events.SchedulerEvents`.

Contract with the shell:
- call `start` once, first (also after `restore`);
- answer every StartBackend with exactly one of load_succeeded / load_failed / backend_died;
- answer every StopBackend with exactly one unload_finished, once the process is gone (a
  StopBackend may also come for a model still loading: its load timed out, or it was retired);
- feed probe readings regularly (~1 Hz) with `read_at` on the same clock as `now`;
- call `tick` at `next_wakeup()` (or sooner); late or duplicate events are harmless;
- send configuration changes as `reconfigure` events, never by building a new core;
- send an administrator's actions as `revoke` (end a lease), `unload` (stop an idle model at
  once) and `pin` (keep a model warm, or stop doing so) events.

Across a restart: save `snapshot()` (JSON-serialisable) as often as it likes, and on start
build the core with `Scheduler.restore(...)`, with `shift` = (new monotonic clock) - (old
monotonic clock) so the saved times land on the new clock. Pending requests are not saved
(their RPC streams died with the daemon). Then, as for any StartBackend / StopBackend it had
been sent before the restart:
- answer each restored LOADING model with exactly one of load_succeeded / load_failed /
  backend_died (the load's waiters are gone, so a success leaves it loaded and idle);
- answer each restored UNLOADING model with unload_finished once its process is gone;
- report backend_died for each LOADED model whose backend turns out to be gone (its leases end
  with reason backend_died); a LOADED model whose backend is alive needs no event.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gpuletd.probe.types import GpuSnapshot
from gpuletd.profiles import Profile
from gpuletd.registry import Model
from gpuletd.scheduler import handlers as h
from gpuletd.scheduler.accounting import held_on
from gpuletd.scheduler.decisions import Decision
from gpuletd.scheduler.reconfigure import on_reconfigure
from gpuletd.scheduler.snapshot import restore_state, snapshot_state
from gpuletd.scheduler.snapshot_delta import SnapshotDelta, SnapshotWriter
from gpuletd.scheduler.state import Inherited, State, Tuning, drop_caches, instance, new_state
from gpuletd.scheduler.timers import next_wakeup
from gpuletd.scheduler.views import (
    GpuView,
    LeaseView,
    ModelView,
    QueueEntry,
    gpu_views,
    lease_view,
    model_view,
    model_views,
    queue_entries,
    waiting_count,
)

if TYPE_CHECKING:
    from gpuletd.scheduler.events import SchedulerEvents

__all__ = ["Scheduler", "Tuning"]


class Scheduler:
    """See the module docstring and docs/scheduling.md."""

    __slots__ = ("_st",)

    def __init__(
        self,
        profile: Profile,
        models: Mapping[str, Model],
        gpus: Sequence[GpuSnapshot],
        *,
        queue_limit: int = 256,
        preload: Sequence[str] = (),
        tuning: Tuning | None = None,
    ) -> None:
        self._st: State = new_state(
            profile, models, gpus, queue_limit=queue_limit, preload=preload, tuning=tuning
        )

    # -- persistence -----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything but pending requests and the clock, as JSON values (version 1; see
        snapshot.py for the format). `json.dumps(..., allow_nan=False)` accepts it."""
        return snapshot_state(self._st)

    def snapshot_delta(self, writer: SnapshotWriter) -> SnapshotDelta:
        """What changed since `writer` last wrote the snapshot (see snapshot_delta.py)."""
        return writer.delta(self._st)

    @classmethod
    def restore(
        cls,
        snapshot: dict[str, Any],
        profile: Profile,
        models: Mapping[str, Model],
        gpus: Sequence[GpuSnapshot],
        *,
        now: float,
        shift: float = 0.0,
        queue_limit: int = 256,
        preload: Sequence[str] = (),
        tuning: Tuning | None = None,
    ) -> Scheduler:
        """A core that resumes from `snapshot`, every saved time moved by `shift`. Raises
        SnapshotError (a ValueError) for a malformed snapshot or an unknown version. Models
        removed or redefined meanwhile keep their instance, retired, while they hold memory or
        leases. Call `start(now)` next, then honour the shell's contract in the module
        docstring."""
        core = cls.__new__(cls)
        core._st = restore_state(
            snapshot,
            profile,
            models,
            gpus,
            now=now,
            shift=shift,
            queue_limit=queue_limit,
            preload=preload,
            tuning=tuning,
        )
        # What restore may have memoised while it rebuilt the records is recomputed from them.
        drop_caches(core._st)
        return core

    def learn(
        self, model_id: str, *, measured_mb: int | None = None, load_seconds: float | None = None
    ) -> None:
        """Seed what an earlier run measured for a model (its footprint once healthy, its load
        time) when no snapshot carries it. For before `start`; not an event: it decides
        nothing. Ignored for an unknown model or one that holds memory (its own measurement
        is newer)."""
        rec = self._st.models.get(model_id)
        # What the last pass concluded may rest on what is learnt here.
        self._st.quiet = None
        if rec is None or rec.holds_memory:
            return
        if measured_mb is not None and measured_mb > 0:
            rec.measured_mb = measured_mb
        if load_seconds is not None and math.isfinite(load_seconds) and load_seconds >= 0:
            rec.load_seconds = load_seconds

    # -- events --------------------------------------------------------------------------------

    def start(self, now: float) -> list[Decision]:
        """Load the profile's `preload` list (concurrent_full only). Call once, first."""
        return h.on_start(self._st, now)

    def tick(self, now: float) -> list[Decision]:
        return h.on_tick(self._st, now)

    def request(
        self,
        request_id: str,
        model_id: str,
        *,
        now: float,
        client: str = "",
        priority: int = 0,
        ttl_s: float | None = None,
        exclusive: bool = False,
        deadline: float | None = None,
        secret: str = "",
        claim_within_s: float | None = None,
        vram_mb: int | None = None,
    ) -> list[Decision]:
        """Ask for a lease on `model_id`. Its fate comes back, now or from a later event, as
        Granted or Rejected, possibly after Queued(position) and Loading updates.

        `priority`: higher first. `ttl_s`: lease length (default `Tuning.default_ttl_s`).
        `deadline`: absolute time on the same clock as `now` after which it stops waiting.
        `secret`: opaque to the core, kept with the lease (`lease_secret`).
        `claim_within_s`: the grant ends (LeaseEnded, reason cancelled) unless its caller
        renews or releases it within this many seconds: it never reached the caller.
        `vram_mb`: a *memory lease* instead (`model_id` is ignored): `vram_mb` MiB of raw VRAM
        on one GPU, for a holder that loads something not in the registry. It is held on a
        reservation record `vram:<request_id>` (`memory_model_id`) that the request creates,
        queued, admitted, evicted for and granted like any model; when its lease ends the
        reservation is stopped, and the record is forgotten once it holds nothing.
        Raises ValueError only for a request id already pending or leased (a shell bug)."""
        return h.on_request(
            self._st,
            request_id,
            model_id,
            now=now,
            client=client,
            priority=priority,
            ttl_s=ttl_s,
            exclusive=exclusive,
            deadline=deadline,
            secret=secret,
            claim_within_s=claim_within_s,
            vram_mb=vram_mb,
        )

    def cancel(self, request_id: str, *, now: float) -> list[Decision]:
        """The client went away or gave up. Pending: Rejected(CANCELLED). Already granted (a
        race): the lease ends with reason cancelled. Unknown: nothing."""
        return h.on_cancel(self._st, request_id, now=now)

    def renew(self, lease_id: str, *, now: float, ttl_s: float | None = None) -> list[Decision]:
        """Extend a lease to now + ttl (default: its own ttl). Answers Renewed, or LeaseRefused
        (NOT_FOUND with reason LEASE_ENDED / UNKNOWN_LEASE, or INVALID_ARGUMENT)."""
        return h.on_renew(self._st, lease_id, now=now, ttl_s=ttl_s)

    def release(self, lease_id: str, *, now: float) -> list[Decision]:
        """End a lease (LeaseEnded reason released), or LeaseRefused NOT_FOUND if gone."""
        return h.on_release(self._st, lease_id, now=now)

    def revoke(self, lease_id: str, message: str, *, now: float) -> list[Decision]:
        """End a live lease now (an administrator): LeaseEnded reason revoked with `message`;
        a later renew/release of it is refused saying "revoked: <message>". Unknown or ended:
        LeaseRefused NOT_FOUND, as for renew."""
        return h.on_revoke(self._st, lease_id, message, now=now)

    def unload(self, model_id: str, *, now: float, message: str) -> list[Decision]:
        """Stop an idle loaded model now (an administrator): StopBackend reason admin with
        `message`, answered by unload_finished as any other. It is no longer kept warm (pinned
        or preloaded), so it does not come back by itself; a request still loads it again.
        Refused, changing nothing, while it has leases (LeaseRefused FAILED_PRECONDITION,
        reason MODEL_LEASED, one per lease, naming the holder) or is loading (reason
        MODEL_LOADING, lease_id ""). Not loaded (or unknown, or already unloading): nothing
        beyond forgetting its keep-warm."""
        return h.on_unload(self._st, model_id, now=now, message=message)

    def pin(self, model_id: str, keep_warm: bool, *, now: float) -> list[Decision]:
        """Set or clear keep-warm at run time (an administrator). A pinned model is never
        unloaded for idleness but stays evictable under pressure, as a preloaded one; pinned
        while unloaded (or failed), it is loaded like a preload: when it fits without evicting,
        else PreloadSkipped. Survives snapshot/restore and reconfigure. Cleared (also for a
        preloaded model, until the next reconfigure or restore), an idle loaded model's grace
        period starts now. Unknown model: PreloadSkipped."""
        return h.on_pin(self._st, model_id, keep_warm, now=now)

    def load_succeeded(
        self,
        model_id: str,
        *,
        now: float,
        measured_mb: int | None = None,
        endpoint: str = "",
    ) -> list[Decision]:
        """The backend is healthy. `measured_mb`: its memory across all its GPUs, if known.
        `endpoint`: where it answers (every Granted carries it; default: the registry's)."""
        return h.on_load_succeeded(
            self._st, model_id, now=now, measured_mb=measured_mb, endpoint=endpoint
        )

    def load_failed(self, model_id: str, reason: str, *, now: float) -> list[Decision]:
        """The backend did not become healthy (and the shell made sure it is gone)."""
        return h.on_load_failed(self._st, model_id, reason, now=now)

    def backend_died(self, model_id: str, reason: str, *, now: float) -> list[Decision]:
        return h.on_backend_died(self._st, model_id, reason, now=now)

    def unload_finished(self, model_id: str, *, now: float) -> list[Decision]:
        return h.on_unload_finished(self._st, model_id, now=now)

    def probe(self, readings: Sequence[GpuSnapshot], *, now: float) -> list[Decision]:
        """Fresh GPU readings. Unknown GPUs are ignored (the GPU set is fixed at start)."""
        return h.on_probe(self._st, readings, now=now)

    def reconfigure(
        self,
        profile: Profile,
        models: Mapping[str, Model],
        *,
        now: float,
        preload: Sequence[str] = (),
    ) -> list[Decision]:
        """A new profile, registry and preload list (SIGHUP). See reconfigure.py for what
        happens to each model; what no longer fits drains without stopping anything in use."""
        return on_reconfigure(self._st, profile, models, now=now, preload=preload)

    def next_wakeup(self) -> float | None:
        """The earliest time at which `tick` would do something; None when nothing is timed.
        The shell sleeps until then (or until the next event)."""
        return next_wakeup(self._st)

    # -- views -----------------------------------------------------------------------------------

    @property
    def profile(self) -> Profile:
        return self._st.profile

    @property
    def now(self) -> float:
        """The latest time the core has been given."""
        return self._st.now

    @property
    def queue_limit(self) -> int:
        return self._st.queue_limit

    @property
    def bypass_limit(self) -> int:
        return self._st.tuning.bypass_limit

    @property
    def concurrent_load_margin_mb(self) -> int | None:
        """None: one load per GPU at a time; else loads share a GPU with this much to spare."""
        return self._st.tuning.concurrent_load_margin_mb

    @property
    def patience_max_s(self) -> float:
        """The longest a request may hold off an eviction for a cheaper one (patience)."""
        return self._st.tuning.patience_max_s

    @property
    def inherited(self) -> Inherited | None:
        """Use above the profile's limits left by a reconfigure or restore, being drained
        (None: the profile's limits hold). Its ceilings only go down."""
        return self._st.inherited

    def model(self, model_id: str) -> ModelView | None:
        rec = instance(self._st, model_id)
        return None if rec is None else model_view(self._st, rec)

    def models(self) -> dict[str, ModelView]:
        return model_views(self._st)

    def leases(self) -> list[LeaseView]:
        return [lease_view(le) for le in self._st.leases.values()]

    def lease(self, lease_id: str) -> LeaseView | None:
        le = self._st.leases.get(lease_id)
        return None if le is None else lease_view(le)

    def waiting_count(self) -> int:
        """Requests waiting for their turn: O(n), no ordering (asked on every Queued update)."""
        return waiting_count(self._st)

    def lease_secret(self, lease_id: str) -> str | None:
        """The opaque secret given with the request of a live lease (never in a view)."""
        le = self._st.leases.get(lease_id)
        return None if le is None else le.secret

    def queue(self) -> list[QueueEntry]:
        """Every pending request: those with a turn first, in turn order, then those waiting
        on a load, in arrival order."""
        return queue_entries(self._st)

    def reserved_mb_by_gpu(self) -> dict[str, int]:
        return {u: held_on(self._st, u) for u in self._st.gpus}

    def gpus(self) -> list[GpuView]:
        return gpu_views(self._st)


if TYPE_CHECKING:
    # mypy checks here that Scheduler implements the named event interface exactly.
    _IMPLEMENTS: type[SchedulerEvents] = Scheduler
