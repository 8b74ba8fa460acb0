"""What must hold between any two events, checked from the public views only.

Used after every step of the property tests; cheap enough for the daemon to run in debug
mode after every event. Returns the violations as sentences (empty: all is well).

The limits are strict: reserved memory within the profile's `max_vram_mb` and every GPU's
total - headroom, models holding memory within `max_concurrent_models`. One exception: a
reconfigure (or a restore) to a profile that no longer fits what is loaded leaves more in use
than the new limits allow, and the core drains it without stopping anything leased or loading.
`Scheduler.inherited` then holds ceilings that started at what was in use when the profile
shrank and only go down (to the profile's limits, where the record is dropped); while it
exists the checks hold the core to those ceilings instead. Every load started after the
reconfigure is within the new limits (admission counts what already holds memory), so the
ceilings are never raised.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpuletd.scheduler.accounting import (
    future_view,
    gpu_infos,
    grace_due,
    load_due,
    reuse_population,
    reweighed,
)
from gpuletd.scheduler.decisions import ModelState
from gpuletd.scheduler.eviction import ReuseTally
from gpuletd.scheduler.placement import ceiling_problem, resolve_need
from gpuletd.scheduler.state import instances

if TYPE_CHECKING:
    from gpuletd.scheduler.core import Scheduler

__all__ = ["check_invariants"]

_HOLDING = (ModelState.LOADING, ModelState.LOADED, ModelState.UNLOADING)


def check_invariants(scheduler: Scheduler) -> list[str]:
    s = scheduler
    p = s.profile
    bad: list[str] = []
    models = s.models()
    leases = s.leases()
    queue = s.queue()
    holding = [m for m in models.values() if m.state in _HOLDING]
    inh = s.inherited
    budget = p.max_vram_mb if inh is None else max(p.max_vram_mb, inh.vram_mb)
    count = p.max_concurrent_models if inh is None else max(p.max_concurrent_models, inh.models)

    # Budget and concurrency.
    reserved = sum(m.reserved_mb for m in holding)
    if reserved > budget:
        bad.append(f"reserved {reserved} MiB > profile budget {budget} MiB")
    if len(holding) > count:
        names = ", ".join(m.model_id for m in holding)
        bad.append(f"{len(holding)} models hold memory ({names}) > {count}")
    heavy_cap = p.max_heavy_models
    if heavy_cap is not None and inh is not None and inh.heavy is not None:
        heavy_cap = max(heavy_cap, inh.heavy)
    heavies = [m.model_id for m in holding if m.heavy]
    if heavy_cap is not None and len(heavies) > heavy_cap:
        bad.append(f"{len(heavies)} heavy models hold memory ({', '.join(heavies)}) > {heavy_cap}")
    if inh is not None and (
        inh.vram_mb <= p.max_vram_mb
        and inh.models <= p.max_concurrent_models
        and not inh.gpu_mb
        and inh.heavy is None
    ):
        bad.append("an inherited ceiling is kept although the profile's limits hold")

    # Per GPU.
    for g in s.gpus():
        cap = None if g.total_mb is None else g.total_mb - g.headroom_mb
        if cap is not None and inh is not None:
            cap = max(cap, inh.gpu_mb.get(g.uuid, cap))
        if cap is not None and g.reserved_mb > cap:
            bad.append(f"GPU {g.index}: reserved {g.reserved_mb} MiB > usable {cap} MiB")
        on_gpu = sum(
            mb
            for m in holding
            for u, mb in zip(m.gpu_uuids, m.gpu_reservations_mb, strict=True)
            if u == g.uuid
        )
        if on_gpu != g.reserved_mb:
            bad.append(f"GPU {g.index}: view says {g.reserved_mb} MiB, models {on_gpu} MiB")
        loading = [
            m.model_id for m in holding if m.state is ModelState.LOADING and g.uuid in m.gpu_uuids
        ]
        if len(loading) > 1 and s.concurrent_load_margin_mb is None:
            bad.append(f"GPU {g.index}: {len(loading)} loads at once ({', '.join(loading)})")

    # Models.
    for m in models.values():
        if m.state in _HOLDING:
            if m.gpu_uuids and sum(m.gpu_reservations_mb) != m.reserved_mb:
                bad.append(f"{m.model_id}: shares {m.gpu_reservations_mb} != {m.reserved_mb}")
            if m.reserved_mb <= 0:
                bad.append(f"{m.model_id}: {m.state.value} but reserves nothing")
        elif m.reserved_mb or m.gpu_uuids:
            bad.append(f"{m.model_id}: {m.state.value} but still holds {m.reserved_mb} MiB")
        if m.lease_count and m.state is not ModelState.LOADED:
            bad.append(f"{m.model_id}: {m.lease_count} lease(s) while {m.state.value}")
        if m.waiters and m.state is not ModelState.LOADING:
            bad.append(f"{m.model_id}: {len(m.waiters)} waiter(s) while {m.state.value}")
        if m.memory:
            rid = m.model_id.removeprefix("vram:")
            if len(m.gpu_uuids) > 1 or m.lease_count > 1:
                bad.append(f"{m.model_id}: a memory lease on {len(m.gpu_uuids)} GPUs")
            pending = any(q.request_id == rid for q in queue)
            if not (pending or m.lease_count or m.holds_memory):
                bad.append(f"{m.model_id}: a memory lease's record outlives its request")
            if m.state is ModelState.LOADED and not (pending or m.lease_count):
                bad.append(f"{m.model_id}: a memory reservation kept with no lease")

    # Leases.
    per_model: dict[str, int] = {}
    for le in leases:
        per_model[le.model_id] = per_model.get(le.model_id, 0) + 1
        owner = models.get(le.model_id)
        if owner is None or owner.state is not ModelState.LOADED:
            bad.append(f"lease {le.lease_id} on {le.model_id}, which is not loaded")
        elif le.gpu_uuids != owner.gpu_uuids:
            bad.append(f"lease {le.lease_id} is on {le.gpu_uuids}, its model on {owner.gpu_uuids}")
        if le.expires_at <= s.now:
            bad.append(f"lease {le.lease_id} outlived its expiry {le.expires_at} (now {s.now})")
    for le in leases:
        if le.exclusive and per_model[le.model_id] > 1:
            bad.append(f"exclusive lease {le.lease_id} shares {le.model_id}")
    for mid, m in models.items():
        if m.lease_count != per_model.get(mid, 0):
            bad.append(f"{mid}: lease count {m.lease_count} != {per_model.get(mid, 0)}")

    # Queue.
    if len(queue) > s.queue_limit:
        bad.append(f"{len(queue)} pending requests > queue limit {s.queue_limit}")
    lease_ids = {le.lease_id for le in leases}
    turns = [q for q in queue if q.position is not None]
    if [q.position for q in turns] != list(range(1, len(turns) + 1)):
        bad.append(f"positions are not 1..n: {[q.position for q in turns]}")
    last_seq: dict[int, int] = {}
    for q in turns:
        # FIFO within a priority: aging moves both at the same rate, so arrival order holds.
        if q.seq < last_seq.get(q.priority, -1):
            bad.append(f"request {q.request_id} is ahead of an older one of priority {q.priority}")
        last_seq[q.priority] = q.seq
        if q.bypassed > s.bypass_limit:
            bad.append(f"request {q.request_id} bypassed {q.bypassed} > {s.bypass_limit} times")
    # Patience (ski rental): bounded once and for all when it begins, never past a deadline,
    # and the core wakes up by its end so that a held-off eviction does happen.
    wake = s.next_wakeup()
    for q in queue:
        if q.patient_until is None:
            continue
        if q.patient_from is None or q.patient_until - q.patient_from > s.patience_max_s + 1e-9:
            bad.append(
                f"request {q.request_id} patient from {q.patient_from} to {q.patient_until} "
                f"> {s.patience_max_s} s"
            )
        if q.deadline is not None and q.patient_until > q.deadline:
            bad.append(f"request {q.request_id} patient past its deadline {q.deadline}")
        if (
            q.position is not None
            and q.patient_until > s.now
            and (wake is None or wake > q.patient_until)
        ):
            bad.append(f"request {q.request_id} patient until {q.patient_until}, no wakeup by then")
    waiting_on_load = {rid for m in models.values() for rid in m.waiters}
    for q in queue:
        if q.request_id in lease_ids:
            bad.append(f"request {q.request_id} is both pending and granted")
        if (q.position is None) != (q.request_id in waiting_on_load):
            bad.append(f"request {q.request_id}: joined-a-load flag disagrees with the model")
        if q.model_id not in models:
            bad.append(f"request {q.request_id} for unknown model {q.model_id}")
    if len(waiting_on_load) != sum(len(m.waiters) for m in models.values()):
        bad.append("a request waits on two loads")
    bad += _derived_problems(s)
    return bad


def _derived_problems(s: Scheduler) -> list[str]:
    """What the core keeps alongside its records to stay fast at scale must equal what the
    records say: the State stays the single source of truth."""
    st = s._st
    bad = st.queue.derived_problems()
    if (
        st.plan_cache is not None
        or st.holding_cache is not None
        or st.place_cache is not None
        or st.shape_plans is not None
        or st.stuck is not None
    ):
        bad.append("a scheduling pass's memo outlived its pass")
    view = st.view_cache
    here = st.view_at == (st.now, st.seq)
    if view is not None and here and reweighed(st, view) != future_view(st):
        bad.append("the remembered future view disagrees with the records")
    if st.quiet is not None and st.quiet.version != st.version:
        bad.append(f"a quiet pass's record (version {st.quiet.version}) outlived a change")
    if st.holders_cache is not None:
        now_holding = [r for r in instances(st) if r.holds_memory]
        if [id(r) for r in st.holders_cache] != [id(r) for r in now_holding]:
            bad.append("the instances holding memory are remembered wrong")
    if st.models_due is not None:
        for rec in instances(st):
            for t in (load_due(st, rec), grace_due(st, rec)):
                if t is not None and t < st.models_due:
                    bad.append(f"{rec.model.id}: due at {t}, before {st.models_due} remembered")
    if st.reuse_tally.differs(ReuseTally.of(r.usage for r in st.models.values())):
        bad.append(f"the models' reuse patterns are summed up wrong: {st.reuse_tally}")
    memo = st.population_memo
    if memo is not None and memo[:2] == (st.now, st.seq):
        st.population_memo = None
        if reuse_population(st) != memo[2]:
            bad.append(f"the reuse prior is remembered wrong: {memo[2]}")
    timers = set(st.lease_timers)
    for le in st.leases.values():
        for t in (le.expires_at, le.claim_by):
            if t is not None and (t, le.lease_id) not in timers:
                bad.append(f"lease {le.lease_id}: its time {t} is not watched")
    infos = gpu_infos(st)
    for rec in instances(st):
        mid = rec.model.id
        exclusive = sum(le.exclusive for le in rec.leases.values())
        if rec.exclusive_leases != exclusive:
            bad.append(f"{mid}: {rec.exclusive_leases} exclusive leases counted, {exclusive} held")
        m = rec.need_memo
        if m is None or m[0] is not rec.model or m[2] is not st.profile or m[3] is not infos:
            continue
        if m[1] != rec.reservation_mb or m[4] != rec.memory:
            continue
        nd = resolve_need(rec.model, rec.reservation_mb, st.profile, infos, one_gpu=rec.memory)
        if m[5] != nd or m[6] != ceiling_problem(nd, st.profile, infos):
            bad.append(f"{mid}: remembered need {m[5]} != {nd}")
    if st.gpu_info_cache is not None:
        fresh = st.gpu_info_cache
        st.gpu_info_cache = None
        if gpu_infos(st) != fresh:
            bad.append(f"GPU infos remembered {fresh} != {st.gpu_info_cache}")
        # The remembered list stays: the memos above are keyed on its identity.
        st.gpu_info_cache = fresh
    return bad
