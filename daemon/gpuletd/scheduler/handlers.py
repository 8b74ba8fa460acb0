"""The event methods, as functions over the State: each advances the clock, does what is due
(`timers.advance`), handles its event, then runs one scheduling pass (`admission.settle`).
`core.Scheduler` is the public face of these; `reconfigure.py` holds the configuration event.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gpuletd.probe.types import GpuSnapshot, GpuState
from gpuletd.profiles import Strategy
from gpuletd.scheduler.accounting import ceiling, changed, held_on, in_flux
from gpuletd.scheduler.admission import settle
from gpuletd.scheduler.decisions import (
    Decision,
    LeaseEndReason,
    LeaseRefused,
    ModelState,
    ModelStateChanged,
    PreloadSkipped,
    RejectCode,
    Rejected,
    RejectReason,
    Renewed,
    StopReason,
)
from gpuletd.scheduler.queue import PendingRequest
from gpuletd.scheduler.state import (
    State,
    advance_clock,
    instance,
    memory_model_id,
    memory_record,
    watch_lease,
)
from gpuletd.scheduler.timers import advance
from gpuletd.scheduler.transitions import (
    apply_measurement,
    end_lease,
    exclusive_conflict,
    fail_waiters,
    grant,
    load_failed,
    note_failure,
    refuse,
    release_memory,
    stop,
    unknown_lease,
)

__all__ = [
    "on_backend_died",
    "on_cancel",
    "on_load_failed",
    "on_load_succeeded",
    "on_pin",
    "on_probe",
    "on_release",
    "on_renew",
    "on_request",
    "on_revoke",
    "on_start",
    "on_tick",
    "on_unload",
    "on_unload_finished",
    "want_preloads",
]


def want_preloads(st: State, preload: Sequence[str], out: list[Decision]) -> None:
    """Turn a preload list into wishes (concurrent_full only); the pass starts them when they
    fit without evicting. A model already loading or loaded is not loaded again."""
    p = st.profile
    for mid in preload:
        rec = st.models.get(mid)
        if rec is None:
            out.append(PreloadSkipped(mid, f"preload names unknown model {mid}"))
        elif p.strategy is not Strategy.CONCURRENT_FULL:
            out.append(
                PreloadSkipped(
                    mid,
                    f"profile {p.name} uses strategy {p.strategy.value}; "
                    "only concurrent_full preloads",
                )
            )
        elif mid not in st.preload_wanted:
            rec.keep_warm = True
            st.preload_wanted.append(mid)


def on_start(st: State, now: float) -> list[Decision]:
    advance_clock(st, now)
    out = advance(st)
    want_preloads(st, st.preload_requested, out)
    st.preload_requested = ()
    settle(st, out)
    return out


def on_tick(st: State, now: float) -> list[Decision]:
    advance_clock(st, now)
    out = advance(st)
    settle(st, out, quiet_ok=True)
    return out


def _problem(
    st: State,
    model_id: str,
    now: float,
    ttl: float,
    ttl_s: float | None,
    deadline: float | None,
    *,
    memory: bool = False,
) -> tuple[RejectCode, RejectReason, str] | None:
    rec = st.models.get(model_id)
    if rec is None or (rec.memory and not memory):
        # A memory lease's record is not a model anyone may name.
        known = sorted(mid for mid, r in st.models.items() if not r.memory)
        shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
        return (
            RejectCode.NOT_FOUND,
            RejectReason.UNKNOWN_MODEL,
            f"unknown model {model_id!r}; known models: {shown or 'none'}",
        )
    if not (math.isfinite(ttl) and ttl > 0):
        return (
            RejectCode.INVALID_ARGUMENT,
            RejectReason.INVALID_ARGUMENT,
            f"ttl must be a positive number of seconds, got {ttl_s}",
        )
    if deadline is not None and deadline <= now:
        return (
            RejectCode.DEADLINE_EXCEEDED,
            RejectReason.DEADLINE,
            f"deadline passed before the request arrived ({now - deadline:.3f} s ago)",
        )
    # A model already there needs no room; only a load must pass the ceiling.
    there = rec.state in (ModelState.LOADING, ModelState.LOADED)
    limit = None if there else ceiling(st, rec)
    if limit is not None and (limit.structural or not in_flux(st)):
        return (RejectCode.RESOURCE_EXHAUSTED, RejectReason.MODEL_TOO_LARGE, limit.message)
    if len(st.queue) >= st.queue_limit:
        return (
            RejectCode.RESOURCE_EXHAUSTED,
            RejectReason.QUEUE_FULL,
            f"queue full ({len(st.queue)} waiting); retry later",
        )
    return None


def on_request(
    st: State,
    request_id: str,
    model_id: str,
    *,
    now: float,
    client: str,
    priority: int,
    ttl_s: float | None,
    exclusive: bool,
    deadline: float | None,
    secret: str,
    claim_within_s: float | None = None,
    vram_mb: int | None = None,
) -> list[Decision]:
    now = advance_clock(st, now)
    if request_id in st.queue or request_id in st.leases:
        raise ValueError(f"request id {request_id!r} is already in use")
    out = advance(st)
    ttl = st.tuning.default_ttl_s if ttl_s is None else ttl_s
    memory = vram_mb is not None
    if vram_mb is not None:
        if vram_mb <= 0:
            out.append(
                Rejected(
                    request_id,
                    RejectCode.INVALID_ARGUMENT,
                    RejectReason.INVALID_ARGUMENT,
                    f"vram_mb must be a positive number of MiB, got {vram_mb}",
                )
            )
            settle(st, out)
            return out
        model_id = memory_model_id(request_id)
        changed(st)
        st.models[model_id] = memory_record(model_id, vram_mb, st.tuning)
    problem = _problem(st, model_id, now, ttl, ttl_s, deadline, memory=memory)
    if problem is not None:
        if memory:
            changed(st)
            del st.models[model_id]
        out.append(Rejected(request_id, *problem))
        settle(st, out)
        return out
    rec = st.models[model_id]
    _keep_pace(st, now)
    st.seq += 1
    st.reuse_tally.count(rec.usage, -1)
    rec.usage.observe(now, st.seq)
    st.reuse_tally.count(rec.usage, 1)
    st.queue.add(
        PendingRequest(
            request_id=request_id,
            model_id=model_id,
            client=client,
            priority=priority,
            ttl_s=ttl,
            exclusive=exclusive,
            deadline=deadline,
            arrived_at=now,
            seq=st.seq,
            secret=secret,
            claim_within_s=claim_within_s,
        )
    )
    settle(st, out, quiet_ok=True)
    return out


def on_cancel(st: State, request_id: str, *, now: float) -> list[Decision]:
    advance_clock(st, now)
    out = advance(st)
    req = st.queue.get(request_id)
    if req is not None:
        refuse(st, req, RejectCode.CANCELLED, RejectReason.CANCELLED, "cancelled", out)
    elif (lease := st.leases.get(request_id)) is not None:
        end_lease(st, lease, LeaseEndReason.CANCELLED, "cancelled by its client", out)
    settle(st, out)
    return out


def on_renew(st: State, lease_id: str, *, now: float, ttl_s: float | None) -> list[Decision]:
    now = advance_clock(st, now)
    out = advance(st)
    lease = st.leases.get(lease_id)
    if lease is None:
        out.append(unknown_lease(st, lease_id))
    elif ttl_s is not None and not (math.isfinite(ttl_s) and ttl_s > 0):
        out.append(
            LeaseRefused(
                lease_id,
                RejectCode.INVALID_ARGUMENT,
                RejectReason.INVALID_ARGUMENT,
                f"ttl must be a positive number of seconds, got {ttl_s}",
            )
        )
    else:
        if ttl_s is not None:
            lease.ttl_s = ttl_s
        lease.claim_by = None
        lease.expires_at = now + lease.ttl_s
        watch_lease(st, lease)
        out.append(Renewed(lease_id, lease.model_id, lease.expires_at, ttl_s=lease.ttl_s))
    settle(st, out, quiet_ok=True)
    return out


def on_release(st: State, lease_id: str, *, now: float) -> list[Decision]:
    advance_clock(st, now)
    out = advance(st)
    lease = st.leases.get(lease_id)
    if lease is None:
        out.append(unknown_lease(st, lease_id))
    else:
        end_lease(st, lease, LeaseEndReason.RELEASED, "released by its holder", out)
    settle(st, out, quiet_ok=True)
    return out


def on_revoke(st: State, lease_id: str, message: str, *, now: float) -> list[Decision]:
    advance_clock(st, now)
    out = advance(st)
    lease = st.leases.get(lease_id)
    if lease is None:
        out.append(unknown_lease(st, lease_id))
    else:
        end_lease(st, lease, LeaseEndReason.REVOKED, message, out)
    settle(st, out, quiet_ok=True)
    return out


def _forget_warmth(st: State, model_id: str) -> None:
    changed(st)
    for rec in (st.models.get(model_id), st.retired.get(model_id)):
        if rec is not None:
            rec.keep_warm = False
            rec.pinned = False
    if model_id in st.preload_wanted:
        st.preload_wanted.remove(model_id)


def on_unload(st: State, model_id: str, *, now: float, message: str) -> list[Decision]:
    advance_clock(st, now)
    out = advance(st)
    rec = instance(st, model_id)
    if rec is not None and rec.state is ModelState.LOADED and rec.leases:
        for le in rec.leases.values():
            holder = le.client or "unnamed client"
            out.append(
                LeaseRefused(
                    le.lease_id,
                    RejectCode.FAILED_PRECONDITION,
                    RejectReason.MODEL_LEASED,
                    f"model {model_id} is leased by {le.lease_id} ({holder})",
                    model_id=model_id,
                    client=le.client,
                )
            )
    elif rec is not None and rec.state is ModelState.LOADING:
        out.append(
            LeaseRefused(
                "",
                RejectCode.FAILED_PRECONDITION,
                RejectReason.MODEL_LOADING,
                f"model {model_id} is loading (stopping it would fail "
                f"{len(rec.waiters)} request(s) waiting on it); unload it once it is loaded",
                model_id=model_id,
            )
        )
    elif rec is not None:
        # Not to come back by itself: neither kept warm nor preloaded.
        _forget_warmth(st, model_id)
        if rec.state is ModelState.LOADED:
            stop(st, rec, StopReason.ADMIN, message, out)
    settle(st, out)
    return out


def on_pin(st: State, model_id: str, keep_warm: bool, *, now: float) -> list[Decision]:
    now = advance_clock(st, now)
    out = advance(st)
    rec = st.models.get(model_id)
    if rec is None or rec.memory:
        out.append(PreloadSkipped(model_id, f"pin names unknown model {model_id}"))
    elif keep_warm:
        changed(st)
        rec.keep_warm = rec.pinned = True
        old = st.retired.get(model_id)
        # Loaded like a preload: only when it fits without evicting (the pass decides).
        resting = rec.state in (ModelState.UNLOADED, ModelState.FAILED)
        if old is None and resting and model_id not in st.preload_wanted:
            st.preload_wanted.append(model_id)
    else:
        was_warm = rec.keep_warm
        _forget_warmth(st, model_id)
        # Its grace period starts now, not when it last became idle.
        if was_warm and rec.state is ModelState.LOADED and not rec.leases:
            rec.idle_since = now
    settle(st, out)
    return out


def on_load_succeeded(
    st: State, model_id: str, *, now: float, measured_mb: int | None, endpoint: str
) -> list[Decision]:
    now = advance_clock(st, now)
    out = advance(st)
    rec = instance(st, model_id)
    if rec is None or rec.state is not ModelState.LOADING:
        settle(st, out)
        return out
    if measured_mb is not None and measured_mb > 0:
        rec.measured_mb = measured_mb
    too_large = apply_measurement(st, rec)
    if too_large is not None:
        fail_waiters(st, rec, too_large, out)
        note_failure(st, rec, too_large)
        rec.after_unload = ModelState.FAILED
        stop(st, rec, StopReason.TOO_LARGE, too_large, out)
        settle(st, out)
        return out
    started = rec.load_started_at if rec.load_started_at is not None else now
    elapsed = max(0.0, now - started)
    alpha = st.tuning.load_time_alpha
    prev = rec.load_seconds
    rec.load_seconds = elapsed if prev is None else alpha * elapsed + (1 - alpha) * prev
    # (Its grace period may now run: `State.models_due` is recomputed.)
    changed(st)
    rec.streak_at_success = rec.consecutive_failures
    rec.consecutive_failures = 0
    rec.backoff_until = float("-inf")
    rec.healthy_since = now
    rec.state = ModelState.LOADED
    rec.load_started_at = None
    rec.last_error = ""
    rec.endpoint = endpoint or rec.model.endpoint or ""
    out.append(ModelStateChanged(model_id, ModelState.LOADED, rec.gpu_uuids))
    # Whoever waited on this load is served now, in the order they joined: the load was
    # theirs. Only a clash of exclusivity among them sends one back to the queue.
    waiters, rec.waiters = rec.waiters, []
    for rid in waiters:
        req = st.queue.get(rid)
        if req is None:
            continue
        if exclusive_conflict(rec, req):
            st.queue.set_joined(req, False)
        else:
            grant(st, req, rec, out)
    if not rec.leases:
        rec.idle_since = now
    settle(st, out)
    return out


def on_load_failed(st: State, model_id: str, reason: str, *, now: float) -> list[Decision]:
    advance_clock(st, now)
    out = advance(st)
    rec = instance(st, model_id)
    if rec is not None and rec.state is ModelState.LOADING:
        load_failed(st, rec, f"model {model_id} failed to load: {reason}", out)
    settle(st, out)
    return out


def on_backend_died(st: State, model_id: str, reason: str, *, now: float) -> list[Decision]:
    now = advance_clock(st, now)
    out = advance(st)
    rec = instance(st, model_id)
    if rec is not None and rec.state is ModelState.LOADING:
        load_failed(st, rec, f"backend of {model_id} died while loading: {reason}", out)
    elif rec is not None and rec.state is ModelState.LOADED:
        message = f"backend of {model_id} died: {reason}"
        for lid in list(rec.leases):
            end_lease(st, st.leases[lid], LeaseEndReason.BACKEND_DIED, message, out)
        # A crash soon after becoming healthy continues the failure streak, so a model that
        # loads and dies at once backs off instead of reloading every second.
        if now - rec.healthy_since < st.tuning.backoff_max_s:
            rec.consecutive_failures = rec.streak_at_success
        note_failure(st, rec, message)
        release_memory(st, rec)
        rec.state = ModelState.FAILED
        out.append(ModelStateChanged(model_id, ModelState.FAILED, (), message))
    settle(st, out)
    return out


def on_unload_finished(st: State, model_id: str, *, now: float) -> list[Decision]:
    advance_clock(st, now)
    out = advance(st)
    rec = instance(st, model_id)
    if rec is not None and rec.state is ModelState.UNLOADING:
        release_memory(st, rec)
        rec.state = rec.after_unload
        message = rec.last_error if rec.state is ModelState.FAILED else ""
        out.append(ModelStateChanged(model_id, rec.state, (), message))
    settle(st, out)
    return out


def on_probe(st: State, readings: Sequence[GpuSnapshot], *, now: float) -> list[Decision]:
    advance_clock(st, now)
    out = advance(st)
    slack = st.tuning.settle_slack_mb
    for r in readings:
        g = st.gpus.get(r.uuid)
        if g is None:
            continue
        g.state = r.state
        if r.state is GpuState.LOST:
            # NVML: nothing may be placed there until the daemon restarts.
            g.lost = True
        if r.total_mb is not None:
            g.total_mb = r.total_mb
        if r.state is not GpuState.OK or r.free_mb is None or g.total_mb is None:
            continue
        g.free_mb, g.read_at = r.free_mb, r.read_at
        used = g.total_mb - r.free_mb
        held = held_on(st, g.uuid)
        later = sum(p.mb for p in g.pending if p.at > r.read_at)
        if used <= held + g.foreign_mb + later + slack:
            # The memory given back before this reading shows as free: stop holding it.
            g.pending = [p for p in g.pending if p.at > r.read_at]
        g.foreign_mb = max(0, used - held - sum(p.mb for p in g.pending))
    st.gpu_info_cache = None
    settle(st, out)
    return out


def _keep_pace(st: State, now: float) -> None:
    """Smooth the seconds between requests (to anyone): what turns a reuse pattern counted in
    requests into seconds."""
    if st.last_request_at is not None:
        gap = max(0.0, now - st.last_request_at)
        a = st.tuning.reuse_alpha
        st.pace_s = gap if st.pace_s is None else a * gap + (1 - a) * st.pace_s
    st.last_request_at = now if st.last_request_at is None else max(st.last_request_at, now)
