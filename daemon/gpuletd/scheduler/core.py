"""The scheduler core: events and a clock in, decisions out.

A plain object, single-threaded and deterministic: no I/O, no asyncio, no clock, no
randomness, no logging. The daemon's shell calls one event method at a time with the current
monotonic time, executes the returned decisions in order, and feeds results back as events.
Every event method first runs what the clock has made due (lease expiry, deadlines, load
timeouts, grace unloads), then the event, then one scheduling pass over the queue.

Contract with the shell:
- answer every StartBackend with exactly one of load_succeeded / load_failed / backend_died;
- answer every StopBackend with exactly one unload_finished, once the process is gone (a
  StopBackend may also come for a model still loading: its load timed out);
- feed probe readings regularly (~1 Hz) with `read_at` on the same clock as `now`;
- call `tick` at `next_wakeup()` (or sooner); late or duplicate events are harmless.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gpuletd.probe.types import GpuSnapshot, GpuState
from gpuletd.profiles import Strategy
from gpuletd.scheduler.admission import Admission
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
from gpuletd.scheduler.state import Tuning

__all__ = ["Scheduler", "Tuning"]


class Scheduler(Admission):
    """See the module docstring and docs/scheduling.md."""

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, now: float) -> list[Decision]:
        """Load the profile's `preload` list (concurrent_full only). Call once, first."""
        now = self._clock(now)
        out = self._advance()
        for mid in self._preload_requested:
            rec = self._models.get(mid)
            if rec is None:
                out.append(PreloadSkipped(mid, f"preload names unknown model {mid}"))
            elif self._profile.strategy is not Strategy.CONCURRENT_FULL:
                out.append(
                    PreloadSkipped(
                        mid,
                        f"profile {self._profile.name} uses strategy "
                        f"{self._profile.strategy.value}; only concurrent_full preloads",
                    )
                )
            elif mid not in self._preload_wanted:
                rec.keep_warm = True
                self._preload_wanted.append(mid)
        self._preload_requested = ()
        self._settle(out)
        return out

    def tick(self, now: float) -> list[Decision]:
        self._clock(now)
        out = self._advance()
        self._settle(out)
        return out

    # -- requests and leases -------------------------------------------------------------------

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
    ) -> list[Decision]:
        """Ask for a lease on `model_id`. Its fate comes back, now or from a later event, as
        Granted or Rejected, possibly after Queued(position) and Loading updates.

        `priority`: higher first. `ttl_s`: lease length (default `Tuning.default_ttl_s`).
        `deadline`: absolute time on the same clock as `now` after which it stops waiting.
        Raises ValueError only for a request id already pending or leased (a shell bug)."""
        now = self._clock(now)
        if request_id in self._queue or request_id in self._leases:
            raise ValueError(f"request id {request_id!r} is already in use")
        out = self._advance()
        rec = self._models.get(model_id)
        ttl = self._tuning.default_ttl_s if ttl_s is None else ttl_s
        problem: tuple[RejectCode, RejectReason, str] | None = None
        if rec is None:
            known = sorted(self._models)
            shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
            problem = (
                RejectCode.NOT_FOUND,
                RejectReason.UNKNOWN_MODEL,
                f"unknown model {model_id!r}; known models: {shown or 'none'}",
            )
        elif not (math.isfinite(ttl) and ttl > 0):
            problem = (
                RejectCode.INVALID_ARGUMENT,
                RejectReason.INVALID_ARGUMENT,
                f"ttl must be a positive number of seconds, got {ttl_s}",
            )
        elif deadline is not None and deadline <= now:
            problem = (
                RejectCode.DEADLINE_EXCEEDED,
                RejectReason.DEADLINE,
                f"deadline passed before the request arrived ({now - deadline:.3f} s ago)",
            )
        else:
            # A model already there needs no room; only a load must pass the ceiling.
            there = rec.state in (ModelState.LOADING, ModelState.LOADED)
            ceiling = None if there else self._ceiling(rec)
            if ceiling is not None and (ceiling.structural or not self._in_flux()):
                problem = (
                    RejectCode.RESOURCE_EXHAUSTED,
                    RejectReason.MODEL_TOO_LARGE,
                    ceiling.message,
                )
            elif len(self._queue) >= self._queue_limit:
                problem = (
                    RejectCode.RESOURCE_EXHAUSTED,
                    RejectReason.QUEUE_FULL,
                    f"queue full ({len(self._queue)} waiting); retry later",
                )
        if problem is not None:
            out.append(Rejected(request_id, *problem))
            self._settle(out)
            return out
        assert rec is not None
        rec.usage.observe(now)
        self._seq += 1
        self._queue.add(
            PendingRequest(
                request_id=request_id,
                model_id=model_id,
                client=client,
                priority=priority,
                ttl_s=ttl,
                exclusive=exclusive,
                deadline=deadline,
                arrived_at=now,
                seq=self._seq,
                secret=secret,
            )
        )
        self._settle(out)
        return out

    def cancel(self, request_id: str, *, now: float) -> list[Decision]:
        """The client went away or gave up. Pending: Rejected(CANCELLED). Already granted (a
        race): the lease ends with reason cancelled. Unknown: nothing."""
        self._clock(now)
        out = self._advance()
        req = self._queue.get(request_id)
        if req is not None:
            self._refuse(req, RejectCode.CANCELLED, RejectReason.CANCELLED, "cancelled", out)
        elif (lease := self._leases.get(request_id)) is not None:
            self._end_lease(lease, LeaseEndReason.CANCELLED, "cancelled by its client", out)
        self._settle(out)
        return out

    def renew(self, lease_id: str, *, now: float, ttl_s: float | None = None) -> list[Decision]:
        """Extend a lease to now + ttl (default: its own ttl). Answers Renewed, or LeaseRefused
        (NOT_FOUND with reason LEASE_ENDED / UNKNOWN_LEASE, or INVALID_ARGUMENT)."""
        now = self._clock(now)
        out = self._advance()
        lease = self._leases.get(lease_id)
        if lease is None:
            out.append(self._unknown_lease(lease_id))
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
            lease.expires_at = now + lease.ttl_s
            out.append(Renewed(lease_id, lease.model_id, lease.expires_at))
        self._settle(out)
        return out

    def release(self, lease_id: str, *, now: float) -> list[Decision]:
        """End a lease (LeaseEnded reason released), or LeaseRefused NOT_FOUND if gone."""
        self._clock(now)
        out = self._advance()
        lease = self._leases.get(lease_id)
        if lease is None:
            out.append(self._unknown_lease(lease_id))
        else:
            self._end_lease(lease, LeaseEndReason.RELEASED, "released by its holder", out)
        self._settle(out)
        return out

    # -- backend results -----------------------------------------------------------------------

    def load_succeeded(
        self, model_id: str, *, now: float, measured_mb: int | None = None
    ) -> list[Decision]:
        """The backend is healthy. `measured_mb`: its memory across all its GPUs, if known."""
        now = self._clock(now)
        out = self._advance()
        rec = self._models.get(model_id)
        if rec is None or rec.state is not ModelState.LOADING:
            self._settle(out)
            return out
        if measured_mb is not None and measured_mb > 0:
            rec.measured_mb = measured_mb
        too_large = self._apply_measurement(rec)
        if too_large is not None:
            self._fail_waiters(rec, too_large, out)
            self._note_failure(rec, too_large)
            rec.after_unload = ModelState.FAILED
            self._stop(rec, StopReason.TOO_LARGE, too_large, out)
            self._settle(out)
            return out
        started = rec.load_started_at if rec.load_started_at is not None else now
        elapsed = max(0.0, now - started)
        alpha = self._tuning.load_time_alpha
        prev = rec.load_seconds
        rec.load_seconds = elapsed if prev is None else alpha * elapsed + (1 - alpha) * prev
        rec.streak_at_success = rec.consecutive_failures
        rec.consecutive_failures = 0
        rec.backoff_until = float("-inf")
        rec.healthy_since = now
        rec.state = ModelState.LOADED
        rec.load_started_at = None
        rec.last_error = ""
        out.append(ModelStateChanged(model_id, ModelState.LOADED, rec.gpu_uuids))
        # Whoever waited on this load is served now, in the order they joined: the load was
        # theirs. Only a clash of exclusivity among them sends one back to the queue.
        waiters, rec.waiters = rec.waiters, []
        for rid in waiters:
            req = self._queue.get(rid)
            if req is None:
                continue
            if self._exclusive_conflict(rec, req):
                req.joined = False
            else:
                self._grant(req, rec, out)
        if not rec.leases:
            rec.idle_since = now
        self._settle(out)
        return out

    def load_failed(self, model_id: str, reason: str, *, now: float) -> list[Decision]:
        """The backend did not become healthy (and the shell made sure it is gone)."""
        self._clock(now)
        out = self._advance()
        rec = self._models.get(model_id)
        if rec is not None and rec.state is ModelState.LOADING:
            self._load_failed(rec, f"model {model_id} failed to load: {reason}", out)
        self._settle(out)
        return out

    def backend_died(self, model_id: str, reason: str, *, now: float) -> list[Decision]:
        now = self._clock(now)
        out = self._advance()
        rec = self._models.get(model_id)
        if rec is not None and rec.state is ModelState.LOADING:
            self._load_failed(rec, f"backend of {model_id} died while loading: {reason}", out)
        elif rec is not None and rec.state is ModelState.LOADED:
            message = f"backend of {model_id} died: {reason}"
            for lid in list(rec.leases):
                self._end_lease(self._leases[lid], LeaseEndReason.BACKEND_DIED, message, out)
            # A crash soon after becoming healthy continues the failure streak, so a model
            # that loads and dies at once backs off instead of reloading every second.
            if now - rec.healthy_since < self._tuning.backoff_max_s:
                rec.consecutive_failures = rec.streak_at_success
            self._note_failure(rec, message)
            self._release_memory(rec)
            rec.state = ModelState.FAILED
            out.append(ModelStateChanged(model_id, ModelState.FAILED, (), message))
        self._settle(out)
        return out

    def unload_finished(self, model_id: str, *, now: float) -> list[Decision]:
        self._clock(now)
        out = self._advance()
        rec = self._models.get(model_id)
        if rec is not None and rec.state is ModelState.UNLOADING:
            self._release_memory(rec)
            rec.state = rec.after_unload
            message = rec.last_error if rec.state is ModelState.FAILED else ""
            out.append(ModelStateChanged(model_id, rec.state, (), message))
        self._settle(out)
        return out

    def probe(self, readings: Sequence[GpuSnapshot], *, now: float) -> list[Decision]:
        """Fresh GPU readings. Unknown GPUs are ignored (the GPU set is fixed at start)."""
        self._clock(now)
        out = self._advance()
        slack = self._tuning.settle_slack_mb
        for r in readings:
            g = self._gpus.get(r.uuid)
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
            held = self._held_on(g.uuid)
            later = sum(p.mb for p in g.pending if p.at > r.read_at)
            if used <= held + g.foreign_mb + later + slack:
                # The memory given back before this reading shows as free: stop holding it.
                g.pending = [p for p in g.pending if p.at > r.read_at]
            g.foreign_mb = max(0, used - held - sum(p.mb for p in g.pending))
        self._gpu_info_cache = None
        self._settle(out)
        return out

    # -- timers --------------------------------------------------------------------------------

    def _advance(self) -> list[Decision]:
        now = self._now
        out: list[Decision] = []
        for lease in sorted(self._leases.values(), key=lambda le: (le.expires_at, le.lease_id)):
            if lease.expires_at <= now:
                # The core's clock is monotonic: a timestamp would mean nothing to a person.
                message = f"not renewed within its TTL of {lease.ttl_s:g} s"
                self._end_lease(lease, LeaseEndReason.EXPIRED, message, out)
        for req in self._queue:
            if req.deadline is not None and req.deadline <= now:
                where = "waiting on its load" if req.joined else f"at position {req.position}"
                message = (
                    f"deadline passed after {now - req.arrived_at:.1f} s {where} for "
                    f"model {req.model_id}"
                )
                self._refuse(req, RejectCode.DEADLINE_EXCEEDED, RejectReason.DEADLINE, message, out)
        for rec in self._models.values():
            due = self._load_due(rec)
            if due is not None and now >= due:
                message = (
                    f"model {rec.model.id} did not become healthy within "
                    f"{self._autostart_s(rec):g} s"
                )
                self._fail_waiters(rec, message, out)
                self._note_failure(rec, message)
                rec.after_unload = ModelState.FAILED
                self._stop(rec, StopReason.LOAD_TIMEOUT, message, out)
        settle = self._tuning.memory_settle_s
        for g in self._gpus.values():
            g.pending = [p for p in g.pending if p.at + settle > now]
        for rec in self._models.values():
            due = self._grace_due(rec)
            if due is not None and now >= due:
                message = f"idle for {self._grace_s(rec):g} s (grace period)"
                self._stop(rec, StopReason.GRACE_EXPIRED, message, out)
        return out
