"""What the clock makes due: lease expiry, request deadlines, load timeouts, settled memory and
grace-period unloads. Every event first runs `advance`; `next_wakeup` tells the shell when
the next of these falls due, so a grace unload or an expiry happens within a timer's precision
of its due time."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable

from gpuletd.probe.types import GpuState
from gpuletd.profiles import IdleUnload
from gpuletd.scheduler.accounting import (
    autostart_s,
    changed,
    grace_due,
    grace_s,
    idle_until,
    load_due,
    load_estimate_s,
    reuse_per_s,
)
from gpuletd.scheduler.decisions import (
    Decision,
    LeaseEndReason,
    ModelState,
    RejectCode,
    RejectReason,
    StopReason,
)
from gpuletd.scheduler.eviction import reload_cost
from gpuletd.scheduler.records import LeaseRecord, ModelRecord
from gpuletd.scheduler.state import State, holders, instances
from gpuletd.scheduler.transitions import end_lease, fail_waiters, note_failure, refuse, stop

__all__ = ["advance", "foreign_pressure", "next_wakeup"]


def advance(st: State) -> list[Decision]:
    """Do what is due at `st.now`, before the event that brought the clock there."""
    now = st.now
    out: list[Decision] = []
    # Only the due ones, found through `lease_timers`, are sorted (ending one changes no
    # other's times): thousands of leases may be held, and this runs on every event.
    ending: dict[str, LeaseRecord] = {}
    timers = st.lease_timers
    while timers and timers[0][0] <= now:
        _, lid = heapq.heappop(timers)
        le = st.leases.get(lid)
        if le is not None and (
            le.expires_at <= now or (le.claim_by is not None and le.claim_by <= now)
        ):
            ending[lid] = le
    for lease in sorted(ending.values(), key=lambda le: (le.expires_at, le.lease_id)):
        if lease.claim_by is not None and lease.claim_by <= now and lease.expires_at > now:
            message = (
                f"not claimed within {lease.claim_by - lease.granted_at:g} s of its grant: "
                "its caller never received it"
            )
            end_lease(st, lease, LeaseEndReason.CANCELLED, message, out)
        elif lease.expires_at <= now:
            # The core's clock is monotonic: a timestamp would mean nothing to a person.
            message = f"not renewed within its TTL of {lease.ttl_s:g} s"
            end_lease(st, lease, LeaseEndReason.EXPIRED, message, out)
    for req in st.queue.with_deadline():
        if req.deadline is not None and req.deadline <= now:
            where = "waiting on its load" if req.joined else f"at position {req.position}"
            message = (
                f"deadline passed after {now - req.arrived_at:.1f} s {where} for "
                f"model {req.model_id}"
            )
            refuse(st, req, RejectCode.DEADLINE_EXCEEDED, RejectReason.DEADLINE, message, out)
    # The models are walked only once one of their times may have come (`State.models_due`):
    # most events find none due, and every model holding memory would be looked at.
    walk = st.models_due is None or now >= st.models_due
    later = math.inf
    if walk:
        timed_out, later = _due(st, ModelState.LOADING, load_due)
        for rec in timed_out:
            message = (
                f"model {rec.model.id} did not become healthy within {autostart_s(st, rec):g} s"
            )
            fail_waiters(st, rec, message, out)
            note_failure(st, rec, message)
            rec.after_unload = ModelState.FAILED
            stop(st, rec, StopReason.LOAD_TIMEOUT, message, out)
    settle = st.tuning.memory_settle_s
    for g in st.gpus.values():
        if not g.pending:
            continue
        kept = [p for p in g.pending if p.at + settle > now]
        if len(kept) != len(g.pending):
            # Freed memory now counts as back: what the last pass concluded may no longer hold.
            changed(st)
        g.pending = kept
    if walk:
        idle, idle_later = _due(st, ModelState.LOADED, grace_due)
        for rec in idle:
            message = f"idle for {grace_s(st, rec):g} s (grace period)"
            stop(st, rec, StopReason.GRACE_EXPIRED, message, out)
        # (Acting on one model moves no other's times.)
        st.models_due = min(later, idle_later)
    if st.profile.idle_unload is IdleUnload.PRESSURE:
        foreign_pressure(st, out)
    return out


def _due(
    st: State, state: ModelState, due_of: Callable[[State, ModelRecord], float | None]
) -> tuple[list[ModelRecord], float]:
    """The models in `state` whose time (`due_of`) has come, and the earliest still to come."""
    due: list[ModelRecord] = []
    later = math.inf
    for rec in holders(st):
        if rec.state is not state or (t := due_of(st, rec)) is None:
            continue
        if st.now < t:
            later = min(later, t)
        else:
            due.append(rec)
    return due, later


def foreign_pressure(st: State, out: list[Decision]) -> None:
    """Under `idle_unload = "pressure"`: when processes gpulet did not start want memory a GPU
    no longer has (what gpulet keeps there exceeds total - headroom - theirs), unload idle
    models past their grace period there, the cheapest to bring back first, until it fits.
    Memory already on its way back (unloads under way, frees not yet seen) counts as back."""
    want: set[str] | None = None
    for u, g in st.gpus.items():
        if g.lost or g.state is not GpuState.OK or g.total_mb is None:
            continue
        kept = [
            r
            for r in instances(st)
            if r.state in (ModelState.LOADING, ModelState.LOADED) and u in r.shares
        ]
        over = sum(r.shares[u] for r in kept) - (g.total_mb - st.profile.headroom_mb - g.foreign_mb)
        if over <= 0:
            continue
        idle = [r for r in kept if (t := idle_until(st, r)) is not None and t <= st.now]
        if not idle:
            continue
        if want is None:
            want = {q.model_id for q in st.queue if not q.joined}
        idle.sort(
            key=lambda r: (
                reload_cost(load_estimate_s(st, r), reuse_per_s(st, r, want)),
                r.model.id,
            )
        )
        for rec in idle:
            if over <= 0:
                break
            over -= rec.shares[u]
            message = f"idle past its grace period; GPU {g.index} memory wanted by other processes"
            stop(st, rec, StopReason.GRACE_EXPIRED, message, out)


def next_wakeup(st: State) -> float | None:
    """The earliest time at which `tick` would do something; None when nothing is timed.
    The shell sleeps until then (or until the next event). Asked after every event, so it
    walks neither the leases nor the queue, which may hold thousands."""
    times: list[float] = []
    lease_at = _next_lease_time(st)
    if lease_at is not None:
        times.append(lease_at)
    times.extend(q.deadline for q in st.queue.with_deadline() if q.deadline is not None)
    for q in st.queue.patient():
        if not q.joined and q.patient_until is not None and q.patient_until > st.now:
            times.append(q.patient_until)
    for r in holders(st):
        for t in (load_due(st, r), grace_due(st, r)):
            if t is not None:
                times.append(t)
    wanted = st.queue.wanted()
    for r in instances(st):
        if r.backoff_until > st.now and (r.model.id in wanted or r.model.id in st.preload_wanted):
            times.append(r.backoff_until)
    settle = st.tuning.memory_settle_s
    for g in st.gpus.values():
        times.extend(p.at + settle for p in g.pending)
    reorder = st.queue.next_reorder_at(st.now)
    if reorder is not None:
        times.append(reorder)
    return min(times) if times else None


def _next_lease_time(st: State) -> float | None:
    """The earliest expiry or claim deadline of a live lease: the top of `lease_timers` once
    the entries of leases ended or moved since are dropped (every live lease's times are
    there, `state.watch_lease`)."""
    timers = st.lease_timers
    while timers:
        t, lid = timers[0]
        le = st.leases.get(lid)
        if le is not None and (le.expires_at == t or le.claim_by == t):
            return t
        heapq.heappop(timers)
    return None
