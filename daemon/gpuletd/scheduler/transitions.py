"""How records change, one step at a time, each step emitting the decisions that announce it.

Every state change of a model or a lease goes through one of these functions, so that a change
and its decision can never drift apart (the Watch stream and metrics see exactly what the
core did).
"""

from __future__ import annotations

from gpuletd.scheduler.accounting import changed, held_on, touched
from gpuletd.scheduler.decisions import (
    Decision,
    Granted,
    LeaseEnded,
    LeaseEndReason,
    LeaseRefused,
    Loading,
    ModelState,
    ModelStateChanged,
    RejectCode,
    Rejected,
    RejectReason,
    StartBackend,
    StopBackend,
    StopReason,
)
from gpuletd.scheduler.placement import Need
from gpuletd.scheduler.queue import PendingRequest
from gpuletd.scheduler.records import LeaseRecord, ModelRecord, PendingFree
from gpuletd.scheduler.state import State, instance, instances, watch_lease

__all__ = [
    "apply_measurement",
    "end_lease",
    "exclusive_conflict",
    "fail_waiters",
    "grant",
    "join",
    "load_failed",
    "note_failure",
    "refuse",
    "release_memory",
    "start_load",
    "stop",
    "unknown_lease",
]


def exclusive_conflict(rec: ModelRecord, req: PendingRequest) -> bool:
    if req.exclusive and rec.leases:
        return True
    return rec.exclusive_leases > 0


def start_load(
    st: State, rec: ModelRecord, need: Need, gpus: tuple[str, ...], out: list[Decision]
) -> None:
    changed(st)
    st.holders_cache = None
    rec.state = ModelState.LOADING
    rec.gpu_uuids = gpus
    rec.shares = {u: need.share_mb for u in gpus}
    rec.reserved_mb = need.total_mb
    rec.heavy = need.heavy
    rec.load_started_at = st.now
    rec.idle_since = None
    rec.after_unload = ModelState.UNLOADED
    rec.waiters = []
    out.append(ModelStateChanged(rec.model.id, ModelState.LOADING, gpus))
    out.append(StartBackend(rec.model.id, gpus, need.total_mb, tuple(need.share_mb for _ in gpus)))


def join(st: State, req: PendingRequest, rec: ModelRecord, out: list[Decision]) -> None:
    st.queue.set_joined(req, True)
    req.position = None
    rec.waiters.append(req.request_id)
    touched(st, rec)
    out.append(Loading(req.request_id, rec.model.id, rec.gpu_uuids))


def grant(st: State, req: PendingRequest, rec: ModelRecord, out: list[Decision]) -> None:
    st.queue.remove(req.request_id)
    lease = LeaseRecord(
        lease_id=req.request_id,
        model_id=rec.model.id,
        client=req.client,
        priority=req.priority,
        exclusive=req.exclusive,
        gpu_uuids=rec.gpu_uuids,
        granted_at=st.now,
        expires_at=st.now + req.ttl_s,
        ttl_s=req.ttl_s,
        secret=req.secret,
        claim_by=None if req.claim_within_s is None else st.now + req.claim_within_s,
    )
    st.leases[lease.lease_id] = lease
    watch_lease(st, lease)
    rec.leases[lease.lease_id] = lease
    rec.exclusive_leases += lease.exclusive
    rec.idle_since = None
    touched(st, rec)
    out.append(
        Granted(
            lease.lease_id,
            rec.model.id,
            rec.gpu_uuids,
            lease.expires_at,
            req.exclusive,
            client=lease.client,
            granted_at=lease.granted_at,
            ttl_s=lease.ttl_s,
            endpoint=rec.endpoint,
        )
    )


def refuse(
    st: State,
    req: PendingRequest,
    code: RejectCode,
    reason: RejectReason,
    message: str,
    out: list[Decision],
) -> None:
    changed(st)
    st.queue.remove(req.request_id)
    if req.joined:
        for rec in (st.models.get(req.model_id), st.retired.get(req.model_id)):
            if rec is not None and req.request_id in rec.waiters:
                rec.waiters.remove(req.request_id)
    out.append(Rejected(req.request_id, code, reason, message))


def fail_waiters(st: State, rec: ModelRecord, message: str, out: list[Decision]) -> None:
    changed(st)
    waiters, rec.waiters = rec.waiters, []
    for rid in waiters:
        req = st.queue.remove(rid)
        if req is not None:
            out.append(
                Rejected(rid, RejectCode.FAILED_PRECONDITION, RejectReason.BACKEND_FAILED, message)
            )


def end_lease(
    st: State, lease: LeaseRecord, reason: LeaseEndReason, message: str, out: list[Decision]
) -> None:
    del st.leases[lease.lease_id]
    rec = instance(st, lease.model_id)
    assert rec is not None, f"lease {lease.lease_id} on {lease.model_id}, which has no record"
    held = rec.leases.pop(lease.lease_id, None)
    if held is not None:
        rec.exclusive_leases -= held.exclusive
    if rec.leases and not lease.exclusive:
        # Still pinned by the others, and no exclusivity gone: nothing waiting can move on.
        touched(st, rec)
    else:
        changed(st)
    st.ended[lease.lease_id] = f"{reason.value}: {message}"
    while len(st.ended) > st.tuning.ended_lease_memory:
        st.ended.popitem(last=False)
    out.append(
        LeaseEnded(lease.lease_id, lease.model_id, reason, message, lease.client, lease.gpu_uuids)
    )
    if rec.state is ModelState.LOADED and not rec.leases:
        rec.idle_since = st.now


def unknown_lease(st: State, lease_id: str) -> LeaseRefused:
    ended = st.ended.get(lease_id)
    if ended is not None:
        return LeaseRefused(
            lease_id,
            RejectCode.NOT_FOUND,
            RejectReason.LEASE_ENDED,
            f"lease {lease_id} has ended ({ended})",
        )
    return LeaseRefused(
        lease_id, RejectCode.NOT_FOUND, RejectReason.UNKNOWN_LEASE, f"no lease {lease_id}"
    )


def stop(
    st: State, rec: ModelRecord, reason: StopReason, message: str, out: list[Decision]
) -> None:
    changed(st)
    if rec.leases or rec.state not in (ModelState.LOADED, ModelState.LOADING):
        raise AssertionError(f"stopping {rec.model.id} ({rec.state.value}, leased or not)")
    rec.state = ModelState.UNLOADING
    rec.idle_since = None
    rec.load_started_at = None
    out.append(ModelStateChanged(rec.model.id, ModelState.UNLOADING, rec.gpu_uuids, message))
    out.append(StopBackend(rec.model.id, rec.gpu_uuids, reason, message))


def load_failed(st: State, rec: ModelRecord, message: str, out: list[Decision]) -> None:
    fail_waiters(st, rec, message, out)
    note_failure(st, rec, message)
    release_memory(st, rec)
    rec.state = ModelState.FAILED
    out.append(ModelStateChanged(rec.model.id, ModelState.FAILED, (), message))


def note_failure(st: State, rec: ModelRecord, message: str) -> None:
    rec.last_error = message
    rec.consecutive_failures += 1
    delay = st.tuning.backoff_initial_s * 2 ** (rec.consecutive_failures - 1)
    rec.backoff_until = st.now + min(st.tuning.backoff_max_s, delay)


def release_memory(st: State, rec: ModelRecord) -> None:
    changed(st)
    # (Its caller moves it out of the holding states next.)
    st.holders_cache = None
    for uuid, mb in rec.shares.items():
        g = st.gpus.get(uuid)
        if g is not None and mb > 0:
            g.pending.append(PendingFree(mb, st.now))
            g.last_release_at = st.now
    rec.shares = {}
    rec.reserved_mb = 0
    rec.gpu_uuids = ()
    rec.load_started_at = None
    rec.idle_since = None
    # The endpoint belonged to the process that held this memory.
    rec.endpoint = ""


def apply_measurement(st: State, rec: ModelRecord) -> str | None:
    """Raise the reservation to the measured footprint; a message if it no longer fits where it
    was placed (then the load fails, and the next placement uses the measured size, so the
    ceiling check can refuse it at once if it can never fit)."""
    p = st.profile
    n = len(rec.gpu_uuids)
    share = -(-rec.reservation_mb // n) if n else 0
    total = share * n if n else rec.reservation_mb
    if total <= rec.reserved_mb:
        return None
    others = sum(r.reserved_mb for r in instances(st) if r.holds_memory) - rec.reserved_mb
    if others + total > p.max_vram_mb:
        return (
            f"model {rec.model.id} measured {rec.measured_mb} MiB once healthy (estimate "
            f"{rec.model.vram_estimate_mb} MiB): with the {others} MiB already reserved it "
            f"exceeds profile {p.name}'s {p.max_vram_mb} MiB"
        )
    for u in rec.gpu_uuids:
        g = st.gpus.get(u)
        if g is None:
            # Restored onto a GPU this machine no longer has: nothing to check it against.
            continue
        cap = (g.total_mb or 0) - p.headroom_mb
        held = held_on(st, u) - rec.shares.get(u, 0)
        if held + share > cap:
            return (
                f"model {rec.model.id} measured {rec.measured_mb} MiB once healthy "
                f"(estimate {rec.model.vram_estimate_mb} MiB): {share} MiB on GPU "
                f"{g.index} with {held} MiB already reserved exceeds its {cap} MiB usable"
            )
    rec.shares = {u: share for u in rec.gpu_uuids}
    rec.reserved_mb = total
    return None
