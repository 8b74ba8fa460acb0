"""How records change, one step at a time, each step emitting the decisions that announce it.

Every state change of a model or a lease goes through one of these methods, so that a change
and its decision can never drift apart (the Watch stream and metrics see exactly what the
core did).
"""

from __future__ import annotations

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
from gpuletd.scheduler.views import SchedulerViews

__all__ = ["Transitions"]


class Transitions(SchedulerViews):
    @staticmethod
    def _exclusive_conflict(rec: ModelRecord, req: PendingRequest) -> bool:
        if req.exclusive and rec.leases:
            return True
        return any(le.exclusive for le in rec.leases.values())

    def _start_load(
        self, rec: ModelRecord, need: Need, gpus: tuple[str, ...], out: list[Decision]
    ) -> None:
        self._changed()
        rec.state = ModelState.LOADING
        rec.gpu_uuids = gpus
        rec.shares = {u: need.share_mb for u in gpus}
        rec.reserved_mb = need.total_mb
        rec.load_started_at = self._now
        rec.idle_since = None
        rec.after_unload = ModelState.UNLOADED
        rec.waiters = []
        out.append(ModelStateChanged(rec.model.id, ModelState.LOADING, gpus))
        out.append(
            StartBackend(rec.model.id, gpus, need.total_mb, tuple(need.share_mb for _ in gpus))
        )

    def _join(self, req: PendingRequest, rec: ModelRecord, out: list[Decision]) -> None:
        self._changed()
        req.joined = True
        req.position = None
        rec.waiters.append(req.request_id)
        out.append(Loading(req.request_id, rec.model.id, rec.gpu_uuids))

    def _grant(self, req: PendingRequest, rec: ModelRecord, out: list[Decision]) -> None:
        self._changed()
        self._queue.remove(req.request_id)
        lease = LeaseRecord(
            lease_id=req.request_id,
            model_id=rec.model.id,
            client=req.client,
            priority=req.priority,
            exclusive=req.exclusive,
            gpu_uuids=rec.gpu_uuids,
            granted_at=self._now,
            expires_at=self._now + req.ttl_s,
            ttl_s=req.ttl_s,
            secret=req.secret,
        )
        self._leases[lease.lease_id] = lease
        rec.leases[lease.lease_id] = lease
        rec.idle_since = None
        out.append(
            Granted(lease.lease_id, rec.model.id, rec.gpu_uuids, lease.expires_at, req.exclusive)
        )

    def _refuse(
        self,
        req: PendingRequest,
        code: RejectCode,
        reason: RejectReason,
        message: str,
        out: list[Decision],
    ) -> None:
        self._changed()
        self._queue.remove(req.request_id)
        if req.joined:
            waiters = self._models[req.model_id].waiters
            if req.request_id in waiters:
                waiters.remove(req.request_id)
        out.append(Rejected(req.request_id, code, reason, message))

    def _fail_waiters(self, rec: ModelRecord, message: str, out: list[Decision]) -> None:
        self._changed()
        waiters, rec.waiters = rec.waiters, []
        for rid in waiters:
            req = self._queue.remove(rid)
            if req is not None:
                out.append(
                    Rejected(
                        rid, RejectCode.FAILED_PRECONDITION, RejectReason.BACKEND_FAILED, message
                    )
                )

    def _end_lease(
        self, lease: LeaseRecord, reason: LeaseEndReason, message: str, out: list[Decision]
    ) -> None:
        self._changed()
        del self._leases[lease.lease_id]
        rec = self._models[lease.model_id]
        rec.leases.pop(lease.lease_id, None)
        self._ended[lease.lease_id] = f"{reason.value}: {message}"
        while len(self._ended) > self._tuning.ended_lease_memory:
            self._ended.popitem(last=False)
        out.append(
            LeaseEnded(
                lease.lease_id, lease.model_id, reason, message, lease.client, lease.gpu_uuids
            )
        )
        if rec.state is ModelState.LOADED and not rec.leases:
            rec.idle_since = self._now

    def _unknown_lease(self, lease_id: str) -> LeaseRefused:
        ended = self._ended.get(lease_id)
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

    def _stop(
        self, rec: ModelRecord, reason: StopReason, message: str, out: list[Decision]
    ) -> None:
        self._changed()
        if rec.leases or rec.state not in (ModelState.LOADED, ModelState.LOADING):
            raise AssertionError(f"stopping {rec.model.id} ({rec.state.value}, leased or not)")
        rec.state = ModelState.UNLOADING
        rec.idle_since = None
        rec.load_started_at = None
        out.append(ModelStateChanged(rec.model.id, ModelState.UNLOADING, rec.gpu_uuids, message))
        out.append(StopBackend(rec.model.id, rec.gpu_uuids, reason, message))

    def _load_failed(self, rec: ModelRecord, message: str, out: list[Decision]) -> None:
        self._fail_waiters(rec, message, out)
        self._note_failure(rec, message)
        self._release_memory(rec)
        rec.state = ModelState.FAILED
        out.append(ModelStateChanged(rec.model.id, ModelState.FAILED, (), message))

    def _note_failure(self, rec: ModelRecord, message: str) -> None:
        rec.last_error = message
        rec.consecutive_failures += 1
        delay = self._tuning.backoff_initial_s * 2 ** (rec.consecutive_failures - 1)
        rec.backoff_until = self._now + min(self._tuning.backoff_max_s, delay)

    def _release_memory(self, rec: ModelRecord) -> None:
        self._changed()
        for uuid, mb in rec.shares.items():
            g = self._gpus.get(uuid)
            if g is not None and mb > 0:
                g.pending.append(PendingFree(mb, self._now))
                g.last_release_at = self._now
        rec.shares = {}
        rec.reserved_mb = 0
        rec.gpu_uuids = ()
        rec.load_started_at = None
        rec.idle_since = None

    def _apply_measurement(self, rec: ModelRecord) -> str | None:
        """Raise the reservation to the measured footprint; a message if it no longer fits
        where it was placed (then the load fails, and the next placement uses the measured
        size, so the ceiling check can refuse it at once if it can never fit)."""
        n = len(rec.gpu_uuids)
        share = -(-rec.reservation_mb // n) if n else 0
        total = share * n if n else rec.reservation_mb
        if total <= rec.reserved_mb:
            return None
        others = sum(r.reserved_mb for r in self._models.values() if r.holds_memory) - (
            rec.reserved_mb
        )
        if others + total > self._profile.max_vram_mb:
            return (
                f"model {rec.model.id} measured {rec.measured_mb} MiB once healthy (estimate "
                f"{rec.model.vram_estimate_mb} MiB): with the {others} MiB already reserved it "
                f"exceeds profile {self._profile.name}'s {self._profile.max_vram_mb} MiB"
            )
        for u in rec.gpu_uuids:
            g = self._gpus[u]
            cap = (g.total_mb or 0) - self._profile.headroom_mb
            held = self._held_on(u) - rec.shares.get(u, 0)
            if held + share > cap:
                return (
                    f"model {rec.model.id} measured {rec.measured_mb} MiB once healthy "
                    f"(estimate {rec.model.vram_estimate_mb} MiB): {share} MiB on GPU "
                    f"{g.index} with {held} MiB already reserved exceeds its {cap} MiB usable"
                )
        rec.shares = {u: share for u in rec.gpu_uuids}
        rec.reserved_mb = total
        return None
