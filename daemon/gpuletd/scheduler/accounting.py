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

import dataclasses
from collections.abc import Container, Mapping
from dataclasses import dataclass

from gpuletd.probe.types import GpuState
from gpuletd.profiles import IdleUnload
from gpuletd.registry import Backend
from gpuletd.scheduler.decisions import ModelState
from gpuletd.scheduler.eviction import (
    Candidate,
    FutureView,
    Plan,
    Population,
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
from gpuletd.scheduler.records import GpuRecord, ModelRecord
from gpuletd.scheduler.state import Holding, State, holders

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
    "holding",
    "idle_until",
    "in_flux",
    "load_due",
    "load_estimate_s",
    "need",
    "need_and_ceiling",
    "newcomer_id_free",
    "place_now",
    "plan",
    "requests_to_next",
    "reuse_per_s",
    "reweighed",
    "stuck_key",
    "touched",
]

_MIB_PER_GIB = 1024
_LOADING, _LOADED = ModelState.LOADING, ModelState.LOADED


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


def need_and_ceiling(st: State, rec: ModelRecord) -> tuple[Need, CeilingProblem | None]:
    """`need` and `ceiling` at once."""
    # Both depend only on the model, its reservation, the profile and the GPU infos (a new
    # list whenever a reading or a profile changes them), and are asked for every request
    # of every pass: remembered on the record until one of those is replaced.
    infos = gpu_infos(st)
    res = rec.reservation_mb
    m = rec.need_memo
    if (
        m is not None
        and m[0] is rec.model
        and m[1] == res
        and m[2] is st.profile
        and m[3] is infos
        and m[4] == rec.memory
    ):
        return m[5], m[6]  # type: ignore[return-value]
    nd = resolve_need(rec.model, res, st.profile, infos, one_gpu=rec.memory)
    problem = ceiling_problem(nd, st.profile, infos)
    rec.need_memo = (rec.model, res, st.profile, infos, rec.memory, nd, problem, _shape(nd))
    return nd, problem


def _shape_of(rec: ModelRecord, nd: Need) -> tuple[object, ...]:
    m = rec.need_memo
    if m is not None and m[5] is nd:
        return m[7]  # type: ignore[return-value]
    return _shape(nd)


def need(st: State, rec: ModelRecord) -> Need:
    return need_and_ceiling(st, rec)[0]


def ceiling(st: State, rec: ModelRecord) -> CeilingProblem | None:
    return need_and_ceiling(st, rec)[1]


def _scan(st: State) -> Holding:
    held: dict[str, int] = {}
    count = reserved = heavy = 0
    loading: list[ModelRecord] = []
    moving = False
    for r in holders(st):
        state = r.state
        if state is ModelState.LOADING:
            loading.append(r)
            moving = True
        elif state is ModelState.UNLOADING:
            moving = True
        count += 1
        reserved += r.reserved_mb
        heavy += r.heavy
        for u, mb in r.shares.items():
            held[u] = held.get(u, 0) + mb
    return Holding(held, count, reserved, heavy, loading, moving)


def holding(st: State) -> Holding:
    """What holds memory, added up. Memoised during a pass (a transition clears it, as it
    clears the plans); outside one, the handlers change records without telling, so it is
    counted afresh."""
    if st.plan_cache is None:
        return _scan(st)
    if st.holding_cache is None:
        st.holding_cache = _scan(st)
    return st.holding_cache


def in_flux(st: State) -> bool:
    """Memory is moving (a load or unload under way, or freed memory not yet seen back):
    a foreign-memory estimate taken now may be transiently wrong."""
    if any(g.pending for g in st.gpus.values()):
        return True
    return holding(st).moving


def held_on(st: State, uuid: str) -> int:
    """MiB reserved on a GPU by models loading, loaded or unloading there."""
    return holding(st).held.get(uuid, 0)


def _live_term(st: State, g: GpuRecord) -> int | None:
    if g.state is not GpuState.OK or g.free_mb is None:
        return None
    settled = g.last_release_at + st.tuning.memory_settle_s
    if g.read_at < g.last_release_at and st.now >= settled:
        # Taken before the last unload, and the settle bound has passed with no newer
        # reading: it still shows the unloaded model's memory as used. Trust accounting.
        return None
    return g.free_mb - st.profile.headroom_mb


def available_now(st: State, g: GpuRecord, held: Holding | None = None) -> int:
    assert g.total_mb is not None
    # Memory others hold counts here too, not only through the reading: a reading taken
    # before our last load shows that load's memory as free, and with little headroom a
    # second load placed on that reading alone would overcommit the GPU.
    accounted = (
        g.total_mb
        - st.profile.headroom_mb
        - g.foreign_mb
        - (held or holding(st)).held.get(g.uuid, 0)
        - sum(p.mb for p in g.pending)
    )
    live = _live_term(st, g)
    return accounted if live is None else min(accounted, live)


def _locked(
    st: State, rec: ModelRecord, share_mb: int, room: Mapping[str, int], held: Holding
) -> set[str]:
    """GPUs with a load under way where another may not start. Nothing else is placed there
    until it ends, unless memory there is certain: every model loading there, and this one,
    has a footprint measured on an earlier load (a first load may take more than its estimate
    while warming up, and two such would each see the other's memory appear); the GPU reads
    OK with no freed memory still to show; and with this load too, `concurrent_load_margin_mb`
    stays free there beyond the headroom."""
    loading = held.loading
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
    cache = st.place_cache
    if cache is None:
        return _place_now(st, rec, nd)
    # `_locked` asks only whether the footprint was measured.
    key = stuck_key(rec, nd)
    if key not in cache:
        cache[key] = _place_now(st, rec, nd)
    return cache[key]


def stuck_key(rec: ModelRecord, nd: Need) -> tuple[object, ...]:
    """What `place_now` and the feasibility of `plan` read of a request's model: two models
    with the same key get the same answers from both within a pass."""
    return (_shape_of(rec, nd), rec.measured_mb is None)


def _shape(nd: Need) -> tuple[object, ...]:
    """All that placement and the victim search's feasibility read of a need (its model id
    only breaks ties between victims, and the reload time only weighs them)."""
    return (nd.n_gpus, nd.share_mb, nd.total_mb, nd.heavy, nd.allowed)


def _place_now(st: State, rec: ModelRecord, nd: Need) -> tuple[str, ...] | None:
    held = holding(st)
    if held.count + 1 > st.profile.max_concurrent_models:
        return None
    if held.reserved_mb + nd.total_mb > st.profile.max_vram_mb:
        return None
    cap = st.profile.max_heavy_models
    if nd.heavy and cap is not None and held.heavy + 1 > cap:
        return None
    room = held.room
    if room is None:
        room = {
            u: available_now(st, g, held)
            for u, g in st.gpus.items()
            if not g.lost and g.total_mb is not None
        }
        if held is st.holding_cache:
            # Only the GPU readings, the clock and the records move it: fixed within a pass
            # until a transition clears the memo.
            held.room = room
    return best_fit(nd, room, _locked(st, rec, nd.share_mb, room, held))


def reuse_per_s(st: State, rec: ModelRecord, wanted: Container[str]) -> float:
    # Someone already waits for it: it will be needed again at once.
    if rec.model.id in wanted:
        return 1.0
    return 1.0 / (requests_to_next(st, rec) * reuse_population(st).pace_s)


def requests_to_next(st: State, rec: ModelRecord) -> float:
    """Requests to the daemon expected before `rec`'s next one (`eviction.ReuseEstimator`)."""
    return rec.usage.requests_to_next(st.seq, reuse_population(st))


def reuse_population(st: State) -> Population:
    """The reuse prior for models with little history, aged by the time since the last
    request (the same until the clock or the request number moves)."""
    memo = st.population_memo
    if memo is not None and memo[0] == st.now and memo[1] == st.seq:
        return memo[2]
    # A burst of requests at one instant has no pace: count it as a millisecond apart.
    pace = max(st.pace_s, 1e-3) if st.pace_s is not None else 1.0
    quiet = 0.0
    if st.last_request_at is not None:
        quiet = max(0.0, st.now - st.last_request_at) / pace
    pop = st.reuse_tally.population(pace, quiet)
    st.population_memo = (st.now, st.seq, pop)
    return pop


def load_estimate_s(st: State, rec: ModelRecord) -> float:
    # A reservation backend "loads" in no time as far as we can see: its holder loads the
    # weights after the grant, so only the size says what a reload costs.
    if rec.load_seconds is not None and rec.model.backend is Backend.PROCESS:
        return rec.load_seconds
    mb = rec.reserved_mb or rec.reservation_mb
    return mb / _MIB_PER_GIB * st.tuning.default_load_s_per_gib


def future_view(st: State, hypo: Hypothesis | None = None) -> FutureView:
    """The machine once every unload under way has finished and its memory is back. Without
    a hypothesis it is memoised by a pass (see `State.view_cache`); with one it is derived
    from that."""
    base = None if st.plan_cache is None else _remembered_view(st)
    if base is None:
        base = _future_view(st)
        if st.plan_cache is not None:
            st.view_cache, st.view_at = base, (st.now, st.seq)
            st.view_stale.clear()
    if hypo is None or (hypo.added_id is None and not hypo.removed):
        return base
    return _suppose(base, hypo)


def _suppose(base: FutureView, hypo: Hypothesis) -> FutureView:
    """`base` with the hypothesis applied, without walking the models again."""
    room = dict(base.room)
    slots, budget, heavies = base.slots_used, base.budget_used, base.heavy_used
    candidates: list[Candidate] = []
    for c in base.candidates:
        if c.model_id not in hypo.removed:
            candidates.append(c)
            continue
        slots -= 1
        budget -= c.reserved_mb
        heavies -= c.heavy
        for u, mb in c.gpu_shares.items():
            if u in room:
                room[u] += mb
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
    return dataclasses.replace(
        base,
        room=room,
        slots_used=slots,
        budget_used=budget,
        candidates=candidates,
        heavy_used=heavies,
    )


def _future_view(st: State) -> FutureView:
    room: dict[str, int] = {}
    for u, g in st.gpus.items():
        if g.lost or g.total_mb is None:
            continue
        room[u] = g.total_mb - st.profile.headroom_mb - g.foreign_mb
    slots = 0
    budget = 0
    heavies = 0
    candidates: list[Candidate] = []
    want = st.queue.wanted()
    # (Filtered first: most of a large registry is not loaded, and this runs every pass.)
    there = [r for r in holders(st) if r.state is _LOADING or r.state is _LOADED]
    for r in there:
        slots += 1
        budget += r.reserved_mb
        heavies += r.heavy
        for u, mb in r.shares.items():
            if u in room:
                room[u] -= mb
        candidates.append(_candidate(st, r, want))
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


def _candidate(st: State, r: ModelRecord, want: Container[str]) -> Candidate:
    load_s, rate = load_estimate_s(st, r), reuse_per_s(st, r, want)
    return Candidate(
        model_id=r.model.id,
        gpu_shares=dict(r.shares),
        reserved_mb=r.reserved_mb,
        cost=reload_cost(load_s, rate),
        pinned=r.state is ModelState.LOADING or bool(r.leases),
        heavy=r.heavy,
        load_s=load_s,
        rate=rate,
    )


def plan(
    st: State,
    rec: ModelRecord,
    *,
    allow_pinned: bool,
    hypo: Hypothesis | None = None,
    nd: Need | None = None,
) -> Plan | None:
    """`nd`: `need(st, rec)`, when the caller has it."""
    key = (rec.model.id, allow_pinned)
    if st.view_stale:
        # (What the plans weighed may have changed since: see `touched`.)
        _remembered_view(st)
    cache = st.plan_cache if hypo is None else None
    if cache is not None and key in cache:
        return cache[key]
    nd = nd or need(st, rec)
    # Two answers of the search depend on the shape of the need alone, not on the costs or
    # the ids that choose between victims: "room without evicting" (checked first, the same
    # for any model of that shape), and "no room at all" (room only grows with each victim
    # added, so no set fits exactly when all of them together do not).
    shaped = st.shape_plans if cache is not None and not allow_pinned else None
    shape = _shape_of(rec, nd)
    if shaped is not None and shape in shaped:
        found = shaped[shape]
    else:
        # The look-ahead is for the victims actually chosen, not for "what would it wait for".
        ahead = st.tuning.eviction_lookahead and not allow_pinned and hypo is None
        found = plan_room(
            nd,
            future_view(st, hypo),
            allow_pinned=allow_pinned,
            exact_limit=st.tuning.exact_eviction_limit,
            lookahead=ahead,
            added_load_s=load_estimate_s(st, rec) if ahead else 0.0,
        )
        if shaped is not None and (found is None or not found.victims):
            shaped[shape] = found
    if cache is not None:
        cache[key] = found
    return found


def newcomer_id_free(st: State, removed: frozenset[str]) -> bool:
    """Whether `plan(..., allow_pinned=True, hypo=...)` for a hypothesis that adds a model
    and evicts `removed` answers the same for every added model of the same shape (shares,
    total, heavy), whatever its id, but for naming it among the victims.

    The added model is a pinned candidate of cost 0, and a candidate's id only breaks ties
    (`eviction.choose_victims`): in the greedy search, between pinned candidates of equal
    cost (per MiB), so none but the added one may cost 0; the exact search, over at most
    `exact_eviction_limit` candidates, ranks whole sets by their ids last, so it is not
    covered. A change to those tie-breaks must revisit this."""
    kept = [c for c in future_view(st).candidates if c.model_id not in removed]
    if len(kept) + 1 <= st.tuning.exact_eviction_limit:
        return False
    return all(not c.pinned or c.cost / max(c.reserved_mb, 1) > 0 for c in kept)


def changed(st: State) -> None:
    """A record changed: what the pass memoised about the queue and plans is stale."""
    st.version += 1
    st.models_due = None
    st.holding_cache = None
    st.view_cache = None
    st.view_stale.clear()
    if st.plan_cache is not None:
        st.plan_cache.clear()
    if st.place_cache is not None:
        st.place_cache.clear()
    if st.shape_plans is not None:
        st.shape_plans.clear()
    if st.stuck is not None:
        st.stuck.clear()


def touched(st: State, rec: ModelRecord) -> None:
    """A benign transition (`State.benign`) has just been made on `rec`: a grant, a join, or
    the end of a lease that leaves it leased. It took no memory and freed none, so what the
    pass knows of memory and placement (`holding`, `place_now`, `stuck`, the shape plans,
    `State.models_due`) holds; only `rec`'s candidate in the future view (now leased, or no
    longer waited for) may differ, and with it the plans that weighed it: the candidate is
    made again before the view is next read (`reweighed`), and the plans forgotten if it
    differs."""
    st.version += 1
    st.benign += 1
    if st.view_cache is not None and (rec.state is _LOADING or rec.state is _LOADED):
        st.view_stale[rec.model.id] = rec


def reweighed(st: State, view: FutureView) -> FutureView:
    """`view` with the candidates of `State.view_stale` made again (the same object when none
    of them differs)."""
    want = st.queue.wanted()
    candidates: list[Candidate] | None = None
    for i, c in enumerate(view.candidates):
        rec = st.view_stale.get(c.model_id)
        if rec is None:
            continue
        fresh = _candidate(st, rec, want)
        if fresh != c:
            if candidates is None:
                candidates = list(view.candidates)
            candidates[i] = fresh
    return view if candidates is None else dataclasses.replace(view, candidates=candidates)


def _remembered_view(st: State) -> FutureView | None:
    """`State.view_cache` brought up to date, or None when there is none for this clock and
    request count."""
    view = st.view_cache
    if view is None or st.view_at != (st.now, st.seq):
        return None
    if st.view_stale:
        fresh = reweighed(st, view)
        st.view_stale.clear()
        if fresh is not view:
            st.view_cache = view = fresh
            if st.plan_cache is not None:
                st.plan_cache.clear()
    return view


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
