"""The scheduler's state and what is computed from it: memory accounting and placement
questions. The layers above add the views (`views`), the state changes (`transitions`), the
scheduling pass (`admission`) and the events (`core`).

Memory is counted twice and the smaller wins (design.md, "Lessons"):

    available(gpu) = min(live free - headroom,
                         total - headroom - sum(reservations placed there) - pending frees)

The live term comes from the last reading when it is OK (a STALE GPU is judged by accounting
alone, a LOST one is never used), except when that reading predates the last unload on the GPU
and the settle bound has passed: it is then known to be out of date. A "pending free" is memory
an unload gave back that no reading has shown free yet: it stays unavailable until a reading
shows it back, or `memory_settle_s` passes."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gpuletd.probe.types import GpuSnapshot, GpuState
from gpuletd.profiles import Profile
from gpuletd.registry import Backend, Model
from gpuletd.scheduler.decisions import ModelState
from gpuletd.scheduler.eviction import (
    Candidate,
    FutureView,
    Plan,
    ReuseEstimator,
    plan_room,
    reload_cost,
)
from gpuletd.scheduler.placement import (
    CeilingProblem,
    GpuInfo,
    Need,
    best_fit,
    ceiling_problem,
    resolve_need,
)
from gpuletd.scheduler.queue import RequestQueue
from gpuletd.scheduler.records import GpuRecord, LeaseRecord, ModelRecord

__all__ = ["Hypothesis", "SchedulerState", "Tuning"]

_MIB_PER_GIB = 1024


@dataclass(frozen=True)
class Tuning:
    """Knobs of the policy; the defaults are the documented behaviour."""

    default_ttl_s: float = 60.0
    # Delaying bypasses a blocked head of the queue tolerates (vramd uses 3).
    bypass_limit: int = 3
    # One priority level gained per this many seconds of waiting; None disables aging.
    aging_interval_s: float | None = 30.0
    # How long freed memory may take to show as free in a probe reading before we trust
    # accounting alone.
    memory_settle_s: float = 10.0
    # A reading within this much of the expected use counts as "the memory is back".
    settle_slack_mb: int = 256
    # Past autostart_timeout_seconds, how long the core waits for the shell's own verdict.
    load_timeout_slack_s: float = 5.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    # Weight of the newest gap between requests in a model's smoothed reuse pattern.
    reuse_alpha: float = 0.3
    # Expected time to the next use of a model asked for at most once.
    reuse_unknown_s: float = 600.0
    # Load time assumed for a model never measured (baselines.md: 2 s per GB).
    default_load_s_per_gib: float = 2.0
    # Weight of the newest load-time measurement in the smoothed value.
    load_time_alpha: float = 0.5
    # Up to this many eviction candidates the cheapest set is found exactly.
    exact_eviction_limit: int = 8
    # Ended leases remembered to explain a late renew/release ("expired", "backend died").
    ended_lease_memory: int = 4096


@dataclass(frozen=True)
class Hypothesis:
    """A what-if on the future view: `added` placed (pinned) and `removed` gone."""

    added_id: str | None = None
    added_shares: Mapping[str, int] | None = None
    added_total: int = 0
    removed: frozenset[str] = frozenset()


class SchedulerState:
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
        self._profile = profile
        self._tuning = tuning or Tuning()
        self._queue_limit = queue_limit
        self._preload_requested = tuple(preload)
        self._models: dict[str, ModelRecord] = {
            mid: ModelRecord(
                model=m,
                usage=ReuseEstimator(
                    alpha=self._tuning.reuse_alpha, unknown_s=self._tuning.reuse_unknown_s
                ),
            )
            for mid, m in models.items()
        }
        self._gpus: dict[str, GpuRecord] = {}
        for g in sorted(gpus, key=lambda s: s.index):
            self._gpus[g.uuid] = GpuRecord(
                uuid=g.uuid,
                index=g.index,
                name=g.name,
                total_mb=g.total_mb,
                state=g.state,
                free_mb=g.free_mb,
                read_at=g.read_at,
                lost=g.state is GpuState.LOST,
                # Nothing is placed yet: whatever is in use belongs to someone else.
                foreign_mb=(
                    max(0, g.total_mb - g.free_mb)
                    if g.total_mb is not None and g.free_mb is not None
                    else 0
                ),
            )
        self._queue = RequestQueue(self._tuning.aging_interval_s)
        self._leases: dict[str, LeaseRecord] = {}
        self._ended: OrderedDict[str, str] = OrderedDict()
        self._preload_wanted: list[str] = []
        self._seq = 0
        self._now = float("-inf")
        self._gpu_info_cache: list[GpuInfo] | None = None
        # Plans (without hypothesis) and the set of models someone waits for, memoised during
        # one scheduling pass only; every transition clears them (`_changed`).
        self._plan_cache: dict[tuple[str, bool], Plan | None] | None = None
        self._wanted_cache: set[str] | None = None

    # -- clock -------------------------------------------------------------------------------

    def _clock(self, now: float) -> float:
        # A clock that steps back (a shell bug, or two sources) must not undo expiries.
        if math.isnan(now):
            raise ValueError("now is NaN")
        self._now = max(self._now, now)
        return self._now

    # -- accounting ----------------------------------------------------------------------------

    def _gpu_infos(self) -> list[GpuInfo]:
        # Changes only with a probe reading, which clears this.
        if self._gpu_info_cache is None:
            self._gpu_info_cache = self._build_gpu_infos()
        return self._gpu_info_cache

    def _build_gpu_infos(self) -> list[GpuInfo]:
        return [
            GpuInfo(
                uuid=g.uuid,
                index=g.index,
                total_mb=g.total_mb,
                headroom_mb=self._profile.headroom_mb,
                foreign_mb=g.foreign_mb,
                lost=g.lost,
            )
            for g in self._gpus.values()
        ]

    def _need(self, rec: ModelRecord) -> Need:
        return resolve_need(rec.model, rec.reservation_mb, self._profile, self._gpu_infos())

    def _ceiling(self, rec: ModelRecord) -> CeilingProblem | None:
        return ceiling_problem(self._need(rec), self._profile, self._gpu_infos())

    def _in_flux(self) -> bool:
        """Memory is moving (a load or unload under way, or freed memory not yet seen back):
        a foreign-memory estimate taken now may be transiently wrong."""
        if any(g.pending for g in self._gpus.values()):
            return True
        return any(
            r.state in (ModelState.LOADING, ModelState.UNLOADING) for r in self._models.values()
        )

    def _held_on(self, uuid: str) -> int:
        """MiB reserved on a GPU by models loading, loaded or unloading there."""
        return sum(r.shares.get(uuid, 0) for r in self._models.values() if r.holds_memory)

    def _live_term(self, g: GpuRecord) -> int | None:
        if g.state is not GpuState.OK or g.free_mb is None:
            return None
        settled = g.last_release_at + self._tuning.memory_settle_s
        if g.read_at < g.last_release_at and self._now >= settled:
            # Taken before the last unload, and the settle bound has passed with no newer
            # reading: it still shows the unloaded model's memory as used. Trust accounting.
            return None
        return g.free_mb - self._profile.headroom_mb

    def _available_now(self, g: GpuRecord) -> int:
        assert g.total_mb is not None
        accounted = (
            g.total_mb
            - self._profile.headroom_mb
            - self._held_on(g.uuid)
            - sum(p.mb for p in g.pending)
        )
        live = self._live_term(g)
        return accounted if live is None else min(accounted, live)

    def _locked(self) -> set[str]:
        """GPUs with a load under way: nothing else is placed there until it ends."""
        return {
            u for r in self._models.values() if r.state is ModelState.LOADING for u in r.gpu_uuids
        }

    def _place_now(self, rec: ModelRecord, need: Need | None = None) -> tuple[str, ...] | None:
        """Where the model could start loading right now without evicting anything."""
        need = need or self._need(rec)
        active = [r for r in self._models.values() if r.holds_memory]
        if len(active) + 1 > self._profile.max_concurrent_models:
            return None
        if sum(r.reserved_mb for r in active) + need.total_mb > self._profile.max_vram_mb:
            return None
        room = {
            u: self._available_now(g)
            for u, g in self._gpus.items()
            if not g.lost and g.total_mb is not None
        }
        return best_fit(need, room, self._locked())

    def _reuse_per_s(self, rec: ModelRecord, wanted: set[str]) -> float:
        # Someone already waits for it: it will be needed again at once.
        if rec.model.id in wanted:
            return 1.0
        return 1.0 / rec.usage.seconds_to_next(self._now)

    def _load_estimate_s(self, rec: ModelRecord) -> float:
        # A reservation backend "loads" in no time as far as we can see: its holder loads the
        # weights after the grant, so only the size says what a reload costs.
        if rec.load_seconds is not None and rec.model.backend is Backend.PROCESS:
            return rec.load_seconds
        mb = rec.reserved_mb or rec.reservation_mb
        return mb / _MIB_PER_GIB * self._tuning.default_load_s_per_gib

    def _future_view(self, hypo: Hypothesis | None = None) -> FutureView:
        hypo = hypo or Hypothesis()
        room: dict[str, int] = {}
        for u, g in self._gpus.items():
            if g.lost or g.total_mb is None:
                continue
            room[u] = g.total_mb - self._profile.headroom_mb - g.foreign_mb
        slots = 0
        budget = 0
        candidates: list[Candidate] = []
        if self._wanted_cache is None:
            self._wanted_cache = {q.model_id for q in self._queue if not q.joined}
        wanted = self._wanted_cache
        for r in self._models.values():
            if r.state not in (ModelState.LOADING, ModelState.LOADED):
                continue
            if r.model.id in hypo.removed:
                continue
            slots += 1
            budget += r.reserved_mb
            for u, mb in r.shares.items():
                if u in room:
                    room[u] -= mb
            candidates.append(
                Candidate(
                    model_id=r.model.id,
                    gpu_shares=dict(r.shares),
                    reserved_mb=r.reserved_mb,
                    cost=reload_cost(self._load_estimate_s(r), self._reuse_per_s(r, wanted)),
                    pinned=r.state is ModelState.LOADING or bool(r.leases),
                )
            )
        if hypo.added_id is not None:
            slots += 1
            budget += hypo.added_total
            shares = dict(hypo.added_shares or {})
            for u, mb in shares.items():
                if u in room:
                    room[u] -= mb
            candidates.append(Candidate(hypo.added_id, shares, hypo.added_total, 0.0, True))
        return FutureView(
            room=room,
            slots_used=slots,
            budget_used=budget,
            candidates=candidates,
            slot_limit=self._profile.max_concurrent_models,
            budget_limit=self._profile.max_vram_mb,
        )

    def _plan(
        self, rec: ModelRecord, *, allow_pinned: bool, hypo: Hypothesis | None = None
    ) -> Plan | None:
        key = (rec.model.id, allow_pinned)
        cache = self._plan_cache if hypo is None else None
        if cache is not None and key in cache:
            return cache[key]
        plan = plan_room(
            self._need(rec),
            self._future_view(hypo),
            allow_pinned=allow_pinned,
            exact_limit=self._tuning.exact_eviction_limit,
        )
        if cache is not None:
            cache[key] = plan
        return plan

    def _changed(self) -> None:
        self._wanted_cache = None
        if self._plan_cache is not None:
            self._plan_cache.clear()

    def _grace_s(self, rec: ModelRecord) -> float:
        g = rec.model.grace_period_seconds
        return self._profile.grace_period_seconds if g is None else g

    def _autostart_s(self, rec: ModelRecord) -> float:
        t = rec.model.autostart_timeout_seconds
        return self._profile.autostart_timeout_seconds if t is None else t

    def _grace_due(self, rec: ModelRecord) -> float | None:
        if (
            rec.state is not ModelState.LOADED
            or rec.leases
            or rec.keep_warm
            or rec.idle_since is None
        ):
            return None
        return rec.idle_since + self._grace_s(rec)

    def _load_due(self, rec: ModelRecord) -> float | None:
        if rec.state is not ModelState.LOADING or rec.load_started_at is None:
            return None
        # A backstop: the shell enforces autostart_timeout_seconds itself and reports the
        # backend's own error (with its log tail); the core steps in only if that never comes.
        return rec.load_started_at + self._autostart_s(rec) + self._tuning.load_timeout_slack_s

    def next_wakeup(self) -> float | None:
        """The earliest time at which `tick` would do something; None when nothing is timed.
        The shell sleeps until then (or until the next event)."""
        times: list[float] = [le.expires_at for le in self._leases.values()]
        wanted = set()
        for q in self._queue:
            if q.deadline is not None:
                times.append(q.deadline)
            if not q.joined:
                wanted.add(q.model_id)
        for r in self._models.values():
            for t in (self._load_due(r), self._grace_due(r)):
                if t is not None:
                    times.append(t)
            if r.backoff_until > self._now and (
                r.model.id in wanted or r.model.id in self._preload_wanted
            ):
                times.append(r.backoff_until)
        settle = self._tuning.memory_settle_s
        for g in self._gpus.values():
            times.extend(p.at + settle for p in g.pending)
        reorder = self._queue.next_reorder_at(self._now)
        if reorder is not None:
            times.append(reorder)
        return min(times) if times else None
