"""Memory accounting and placement questions, asked of the State; nothing here changes a record
(only the per-pass caches).

Memory is counted twice and the smaller wins (design.md, "Lessons"):

    available(gpu) = min(live free - headroom,
                         total - headroom - foreign - sum(reservations placed there)
                         - pending frees)

The live term comes from the last reading when it is OK (a STALE GPU is judged by accounting
alone, a LOST one is never used), except when that reading predates the last unload on the GPU
and the settle bound has passed: it is then known to be out of date. A "pending free" is memory
an unload gave back that no reading has shown free yet: it stays unavailable until a reading
shows it back, or `memory_settle_s` passes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gpuletd.probe.types import GpuState
from gpuletd.profiles import IdleUnload
from gpuletd.registry import Backend
from gpuletd.scheduler.decisions import ModelState
from gpuletd.scheduler.eviction import Candidate, FutureView, Plan, plan_room, reload_cost
from gpuletd.scheduler.placement import (
    CeilingProblem,
    GpuInfo,
    Need,
    best_fit,
    ceiling_problem,
    resolve_need,
)
from gpuletd.scheduler.records import GpuRecord, ModelRecord
from gpuletd.scheduler.state import State, instances

__all__ = [
    "Hypothesis",
    "autostart_s",
    "available_now",
    "ceiling",
    "changed",
    "future_view",
    "gpu_infos",
    "grace_due",
    "grace_s",
    "held_on",
    "idle_until",
    "in_flux",
    "load_due",
    "load_estimate_s",
    "need",
    "place_now",
    "plan",
    "reuse_per_s",
    "wanted",
]

_MIB_PER_GIB = 1024


@dataclass(frozen=True)
class Hypothesis:
    """A what-if on the future view: `added` placed (pinned) and `removed` gone."""

    added_id: str | None = None
    added_shares: Mapping[str, int] | None = None
    added_total: int = 0
    removed: frozenset[str] = frozenset()
    added_heavy: bool = False


def gpu_infos(st: State) -> list[GpuInfo]:
    # Changes only with a probe reading or a new profile, which clear this.
    if st.gpu_info_cache is None:
        st.gpu_info_cache = [
            GpuInfo(
                uuid=g.uuid,
                index=g.index,
                total_mb=g.total_mb,
                headroom_mb=st.profile.headroom_mb,
                foreign_mb=g.foreign_mb,
                lost=g.lost,
            )
            for g in st.gpus.values()
        ]
    return st.gpu_info_cache


def need(st: State, rec: ModelRecord) -> Need:
    return resolve_need(
        rec.model, rec.reservation_mb, st.profile, gpu_infos(st), one_gpu=rec.memory
    )


def ceiling(st: State, rec: ModelRecord) -> CeilingProblem | None:
    return ceiling_problem(need(st, rec), st.profile, gpu_infos(st))


def in_flux(st: State) -> bool:
    """Memory is moving (a load or unload under way, or freed memory not yet seen back):
    a foreign-memory estimate taken now may be transiently wrong."""
    if any(g.pending for g in st.gpus.values()):
        return True
    return any(r.state in (ModelState.LOADING, ModelState.UNLOADING) for r in instances(st))


def held_on(st: State, uuid: str) -> int:
    """MiB reserved on a GPU by models loading, loaded or unloading there."""
    return sum(r.shares.get(uuid, 0) for r in instances(st) if r.holds_memory)


def _live_term(st: State, g: GpuRecord) -> int | None:
    if g.state is not GpuState.OK or g.free_mb is None:
        return None
    settled = g.last_release_at + st.tuning.memory_settle_s
    if g.read_at < g.last_release_at and st.now >= settled:
        # Taken before the last unload, and the settle bound has passed with no newer
        # reading: it still shows the unloaded model's memory as used. Trust accounting.
        return None
    return g.free_mb - st.profile.headroom_mb


def available_now(st: State, g: GpuRecord) -> int:
    assert g.total_mb is not None
    # Memory others hold counts here too, not only through the reading: a reading taken
    # before our last load shows that load's memory as free, and with little headroom a
    # second load placed on that reading alone would overcommit the GPU.
    accounted = (
        g.total_mb
        - st.profile.headroom_mb
        - g.foreign_mb
        - held_on(st, g.uuid)
        - sum(p.mb for p in g.pending)
    )
    live = _live_term(st, g)
    return accounted if live is None else min(accounted, live)


def _locked(st: State, rec: ModelRecord, share_mb: int, room: Mapping[str, int]) -> set[str]:
    """GPUs with a load under way where another may not start. Nothing else is placed there
    until it ends, unless memory there is certain: every model loading there, and this one,
    has a footprint measured on an earlier load (a first load may take more than its estimate
    while warming up, and two such would each see the other's memory appear); the GPU reads
    OK with no freed memory still to show; and with this load too, `concurrent_load_margin_mb`
    stays free there beyond the headroom."""
    loading = [r for r in instances(st) if r.state is ModelState.LOADING]
    busy = {u for r in loading for u in r.gpu_uuids}
    margin = st.tuning.concurrent_load_margin_mb
    if margin is None or not busy:
        return busy
    if rec.measured_mb is None:
        return busy
    unsure = {u for r in loading if r.measured_mb is None for u in r.gpu_uuids}
    return {
        u
        for u in busy
        if u in unsure
        or st.gpus[u].state is not GpuState.OK
        or st.gpus[u].pending
        or room.get(u, 0) - share_mb < margin
    }


def place_now(st: State, rec: ModelRecord, nd: Need | None = None) -> tuple[str, ...] | None:
    """Where the model could start loading right now without evicting anything. Counts every
    model holding memory, unloads under way included, against the profile's limits: so no
    load starts while a reconfigure has left more loaded than the new profile allows."""
    nd = nd or need(st, rec)
    active = [r for r in instances(st) if r.holds_memory]
    if len(active) + 1 > st.profile.max_concurrent_models:
        return None
    if sum(r.reserved_mb for r in active) + nd.total_mb > st.profile.max_vram_mb:
        return None
    cap = st.profile.max_heavy_models
    if nd.heavy and cap is not None and sum(r.heavy for r in active) + 1 > cap:
        return None
    room = {
        u: available_now(st, g) for u, g in st.gpus.items() if not g.lost and g.total_mb is not None
    }
    return best_fit(nd, room, _locked(st, rec, nd.share_mb, room))


def reuse_per_s(st: State, rec: ModelRecord, wanted: set[str]) -> float:
    # Someone already waits for it: it will be needed again at once.
    if rec.model.id in wanted:
        return 1.0
    return 1.0 / rec.usage.seconds_to_next(st.now)


def load_estimate_s(st: State, rec: ModelRecord) -> float:
    # A reservation backend "loads" in no time as far as we can see: its holder loads the
    # weights after the grant, so only the size says what a reload costs.
    if rec.load_seconds is not None and rec.model.backend is Backend.PROCESS:
        return rec.load_seconds
    mb = rec.reserved_mb or rec.reservation_mb
    return mb / _MIB_PER_GIB * st.tuning.default_load_s_per_gib


def wanted(st: State) -> set[str]:
    """Models some request waits for a turn for (memoised within a pass)."""
    if st.wanted_cache is None:
        st.wanted_cache = {q.model_id for q in st.queue if not q.joined}
    return st.wanted_cache


def future_view(st: State, hypo: Hypothesis | None = None) -> FutureView:
    """The machine once every unload under way has finished and its memory is back."""
    hypo = hypo or Hypothesis()
    room: dict[str, int] = {}
    for u, g in st.gpus.items():
        if g.lost or g.total_mb is None:
            continue
        room[u] = g.total_mb - st.profile.headroom_mb - g.foreign_mb
    slots = 0
    budget = 0
    heavies = 0
    candidates: list[Candidate] = []
    want = wanted(st)
    for r in instances(st):
        if r.state not in (ModelState.LOADING, ModelState.LOADED):
            continue
        if r.model.id in hypo.removed:
            continue
        slots += 1
        budget += r.reserved_mb
        heavies += r.heavy
        for u, mb in r.shares.items():
            if u in room:
                room[u] -= mb
        load_s, rate = load_estimate_s(st, r), reuse_per_s(st, r, want)
        candidates.append(
            Candidate(
                model_id=r.model.id,
                gpu_shares=dict(r.shares),
                reserved_mb=r.reserved_mb,
                cost=reload_cost(load_s, rate),
                pinned=r.state is ModelState.LOADING or bool(r.leases),
                heavy=r.heavy,
                load_s=load_s,
                rate=rate,
            )
        )
    if hypo.added_id is not None:
        slots += 1
        budget += hypo.added_total
        heavies += hypo.added_heavy
        shares = dict(hypo.added_shares or {})
        for u, mb in shares.items():
            if u in room:
                room[u] -= mb
        candidates.append(
            Candidate(hypo.added_id, shares, hypo.added_total, 0.0, True, hypo.added_heavy)
        )
    return FutureView(
        room=room,
        slots_used=slots,
        budget_used=budget,
        candidates=candidates,
        slot_limit=st.profile.max_concurrent_models,
        budget_limit=st.profile.max_vram_mb,
        heavy_used=heavies,
        heavy_limit=st.profile.max_heavy_models,
    )


def plan(
    st: State, rec: ModelRecord, *, allow_pinned: bool, hypo: Hypothesis | None = None
) -> Plan | None:
    key = (rec.model.id, allow_pinned)
    cache = st.plan_cache if hypo is None else None
    if cache is not None and key in cache:
        return cache[key]
    # The look-ahead is for the victims actually chosen, not for "what would it wait for".
    ahead = st.tuning.eviction_lookahead and not allow_pinned and hypo is None
    found = plan_room(
        need(st, rec),
        future_view(st, hypo),
        allow_pinned=allow_pinned,
        exact_limit=st.tuning.exact_eviction_limit,
        lookahead=ahead,
        added_load_s=load_estimate_s(st, rec) if ahead else 0.0,
    )
    if cache is not None:
        cache[key] = found
    return found


def changed(st: State) -> None:
    """A record changed: what the pass memoised about the queue and plans is stale."""
    st.wanted_cache = None
    if st.plan_cache is not None:
        st.plan_cache.clear()


def grace_s(st: State, rec: ModelRecord) -> float:
    g = rec.model.grace_period_seconds
    return st.profile.grace_period_seconds if g is None else g


def autostart_s(st: State, rec: ModelRecord) -> float:
    t = rec.model.autostart_timeout_seconds
    return st.profile.autostart_timeout_seconds if t is None else t


def idle_until(st: State, rec: ModelRecord) -> float | None:
    """When an idle model's grace period ends; None when it is not idle or kept warm."""
    if rec.state is not ModelState.LOADED or rec.leases or rec.keep_warm or rec.idle_since is None:
        return None
    return rec.idle_since + grace_s(st, rec)


def grace_due(st: State, rec: ModelRecord) -> float | None:
    """When the clock alone unloads an idle model. Under `idle_unload = "pressure"` never:
    past its grace it stays until its room is wanted (`timers.foreign_pressure`, eviction)."""
    if rec.state is not ModelState.LOADED or rec.idle_since is None or rec.leases:
        return None
    if st.profile.idle_unload is IdleUnload.PRESSURE:
        return None
    return idle_until(st, rec)


def load_due(st: State, rec: ModelRecord) -> float | None:
    if rec.state is not ModelState.LOADING or rec.load_started_at is None:
        return None
    # A backstop: the shell enforces autostart_timeout_seconds itself and reports the
    # backend's own error (with its log tail); the core steps in only if that never comes.
    return rec.load_started_at + autostart_s(st, rec) + st.tuning.load_timeout_slack_s
