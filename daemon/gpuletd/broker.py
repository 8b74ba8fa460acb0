"""The async shell around the pure scheduler core: it feeds the core events (requests,
releases, backend health, probe readings, the clock) and carries out its decisions (start
and stop backends, answer waiting Acquire streams, tell Watch subscribers).

Everything runs on the event loop thread, so calls into the core are serialised without
locks: a grant and an eviction are always decided one after the other by the same core.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import math
import re
import secrets
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from gpuletd.backends import ProcessBackend
from gpuletd.probe.simulated import SimulatedProbe
from gpuletd.probe.types import GpuProcess, GpuSnapshot
from gpuletd.runtime import Runtime
from gpuletd.scheduler import Scheduler
from gpuletd.scheduler.decisions import (
    Decision,
    Granted,
    LeaseEnded,
    LeaseEndReason,
    LeaseRefused,
    Loading,
    ModelState,
    ModelStateChanged,
    PreloadSkipped,
    Queued,
    RejectCode,
    Rejected,
    Renewed,
    StartBackend,
    StopBackend,
)
from gpuletd.scheduler.invariants import check_invariants
from gpuletd.scheduler.views import LeaseView, ModelView
from gpuletd.selector import UnknownRole, select
from gpuletd.supervisor import Supervisor
from gpuletd.watch_hub import WatchClosed, WatchHub, WatchOverflow

__all__ = ["Broker", "LeaseEvent", "LeaseFailed", "LeaseInfo", "WatchEvent"]

log = structlog.get_logger(__name__)

LEASE_ID = re.compile(r"^l-[0-9a-f]{16}$")
# A lease longer than a day is a mistake (or an attempt to pin a model for good).
MAX_TTL_S = 86400.0
# Aging gains one level per interval: an unbounded priority would starve everyone else.
PRIORITY_RANGE = range(-1000, 1001)


class LeaseFailed(Exception):
    """A lease operation refused; `code` names the gRPC status, `reason` the ErrorInfo."""

    def __init__(self, code: RejectCode | str, reason: str, message: str, field: str = "") -> None:
        super().__init__(message)
        self.code = code.value if isinstance(code, RejectCode) else code
        self.reason = reason
        self.message = message
        self.field = field


@dataclass(frozen=True)
class LeaseInfo:
    lease_id: str
    model_id: str
    gpu_uuids: tuple[str, ...]
    endpoint: str
    client: str
    exclusive: bool
    granted_at: float  # wall clock (time.time())
    expires_at: float  # wall clock
    token: str = ""  # only in the answer to the Acquire that made it

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(self.gpu_uuids)


@dataclass(frozen=True)
class LeaseEvent:
    kind: str  # granted, renewed, released, expired, backend_died, cancelled
    lease: LeaseInfo
    reason: str = ""


WatchEvent = ModelStateChanged | LeaseEvent
AcquireUpdate = Queued | Loading | LeaseInfo


def _digest(token: str) -> str:
    # Only a digest is kept: what is stored (and later persisted) cannot be replayed as a token.
    return hashlib.sha256(token.encode()).hexdigest()


def _check_ttl(ttl_s: float) -> None:
    if not (math.isfinite(ttl_s) and 0 <= ttl_s <= MAX_TTL_S):
        raise LeaseFailed(
            "INVALID_ARGUMENT",
            "INVALID_TTL",
            f"ttl_seconds: must be between 0 (the default) and {MAX_TTL_S:g} s, got {ttl_s}",
            "ttl_seconds",
        )


class Broker:
    def __init__(
        self,
        runtime: Runtime,
        *,
        backends: ProcessBackend | None = None,
        log_dir: Path | None = None,
        stop_grace_s: float = 10.0,
        check_invariants: bool = False,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._rt = runtime
        self._clock = clock
        self._wall = wall
        self._supervisor = Supervisor(
            runtime, self, backends=backends, log_dir=log_dir, stop_grace_s=stop_grace_s
        )
        self._check = check_invariants
        self._core = Scheduler(
            runtime.profile, runtime.registry.models, runtime.gpus, preload=runtime.config.preload
        )
        self._waiters: dict[str, asyncio.Queue[Decision | None]] = {}
        self._hub: WatchHub[WatchEvent] = WatchHub()
        self._kick = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None
        self._closing = False
        runtime.poller.subscribe(self._on_probe)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._apply(self._core.start(self._clock()))
        self._timer = asyncio.create_task(self._run_timer(), name="scheduler-timer")

    def drain(self) -> None:
        """Shutting down: refuse new requests, end waiting ones with UNAVAILABLE, start no
        backend. Leases already granted stay until close() stops their backends."""
        self._closing = True
        for q in self._waiters.values():
            q.put_nowait(None)

    async def close(self) -> None:
        """Stop every backend, including those starting or stopping: nothing is left running."""
        self.drain()
        if self._timer is not None:
            self._timer.cancel()
            await asyncio.gather(self._timer, return_exceptions=True)
        await self._supervisor.close()
        self._hub.close()

    # -- the API the servicers call ---------------------------------------------------------

    async def acquire(
        self,
        *,
        model_id: str = "",
        role: str = "",
        client: str = "",
        ttl_s: float = 0.0,
        priority: int = 0,
        exclusive: bool = False,
        timeout_s: float | None = None,
    ) -> AsyncGenerator[AcquireUpdate, None]:
        """Yields Queued / Loading updates, then the granted LeaseInfo (with its token), or
        raises LeaseFailed. Closed before the grant was taken, the request is cancelled; closed
        at the grant itself (the client went away), the lease is ended at once."""
        _check_ttl(ttl_s)
        if priority not in PRIORITY_RANGE:
            raise LeaseFailed(
                "INVALID_ARGUMENT",
                "INVALID_PRIORITY",
                f"priority: must be between {PRIORITY_RANGE.start} and "
                f"{PRIORITY_RANGE.stop - 1}, got {priority}",
                "priority",
            )
        if self._closing:
            raise LeaseFailed("UNAVAILABLE", "SHUTTING_DOWN", "gpuletd is shutting down")
        if role:
            model_id = self._pick_for_role(role)
        elif not model_id:
            raise LeaseFailed(
                "INVALID_ARGUMENT",
                "MISSING_FIELD",
                "model_id or role: one of them is required",
                "model_id",
            )
        rid = f"l-{secrets.token_hex(8)}"
        token = secrets.token_urlsafe(24)
        queue: asyncio.Queue[Decision | None] = asyncio.Queue()
        self._waiters[rid] = queue
        now = self._clock()
        delivered = False
        try:
            self._apply(
                self._core.request(
                    rid,
                    model_id,
                    now=now,
                    client=client,
                    priority=priority,
                    ttl_s=ttl_s or None,
                    exclusive=exclusive,
                    secret=_digest(token),
                    deadline=None if timeout_s is None else now + timeout_s,
                )
            )
            while True:
                d = await queue.get()
                if d is None:
                    raise LeaseFailed("UNAVAILABLE", "SHUTTING_DOWN", "gpuletd is shutting down")
                if isinstance(d, Rejected):
                    raise LeaseFailed(
                        d.code,
                        d.reason.value,
                        d.message,
                        "model_id" if d.reason.value == "UNKNOWN_MODEL" else "",
                    )
                if isinstance(d, Granted):
                    view = self._core.lease(rid)
                    if view is None:  # ended between the grant and now (its backend died)
                        mv = self._core.model(model_id)
                        raise LeaseFailed(
                            "FAILED_PRECONDITION",
                            "BACKEND_FAILED",
                            f"the lease on {model_id} ended as it was granted: "
                            f"{(mv.last_error if mv else '') or 'ended'}",
                        )
                    yield self._lease_info(view, token=token)
                    delivered = True
                    return
                if isinstance(d, Queued | Loading):
                    yield d
        finally:
            self._waiters.pop(rid, None)
            if not delivered:
                # Pending: leaves the queue. Granted but never handed over: the lease ends
                # now rather than pinning its model until the TTL runs out.
                self._apply(self._core.cancel(rid, now=self._clock()))

    def renew(self, lease_id: str, token: str, ttl_s: float = 0.0) -> LeaseInfo:
        self._check_lease_access(lease_id, token)
        _check_ttl(ttl_s)
        out = self._core.renew(lease_id, now=self._clock(), ttl_s=ttl_s or None)
        self._apply(out)
        self._raise_if_refused(out, lease_id)
        view = self._core.lease(lease_id)
        if view is None:  # pragma: no cover - a Renewed lease exists by construction
            raise LeaseFailed("NOT_FOUND", "LEASE_ENDED", f"lease_id: {lease_id} has ended")
        return self._lease_info(view)

    def release(self, lease_id: str, token: str) -> None:
        self._check_lease_access(lease_id, token)
        out = self._core.release(lease_id, now=self._clock())
        self._apply(out)
        self._raise_if_refused(out, lease_id)

    def leases(self) -> list[LeaseInfo]:
        return [self._lease_info(v) for v in self._core.leases()]

    def queue_length(self) -> int:
        """Requests waiting for their turn (not those only waiting on a load under way)."""
        return self._core.waiting_count()

    def models(self) -> dict[str, ModelView]:
        return self._core.models()

    def placed_by_gpu(self) -> dict[str, dict[str, int]]:
        placed: dict[str, dict[str, int]] = {}
        for mid, v in self._core.models().items():
            for uuid, mb in zip(v.gpu_uuids, v.gpu_reservations_mb, strict=False):
                placed.setdefault(uuid, {})[mid] = mb
        return placed

    def managed_pids(self) -> dict[int, str]:
        return self._supervisor.pids()

    def endpoint(self, model_id: str) -> str:
        if running := self._supervisor.endpoint(model_id):
            return running
        m = self._rt.registry.get(model_id)
        return (m.endpoint or "") if m is not None else ""

    async def watch(self) -> AsyncGenerator[WatchEvent, None]:
        try:
            async for ev in self._hub.subscribe():
                yield ev
        except WatchOverflow as e:
            raise LeaseFailed(
                "RESOURCE_EXHAUSTED",
                "WATCH_OVERFLOW",
                f"watch stream {e}; reconnect and re-read the state",
            ) from None
        except WatchClosed as e:
            raise LeaseFailed("UNAVAILABLE", "SHUTTING_DOWN", str(e)) from None

    # -- helpers for the API ------------------------------------------------------------------

    def _pick_for_role(self, role: str) -> str:
        loaded = {
            mid
            for mid, v in self._core.models().items()
            if v.state in (ModelState.LOADED, ModelState.LOADING)
        }
        try:
            best = select(self._rt.registry, self._rt.profile, role, 1, loaded=loaded)
        except UnknownRole as e:
            raise LeaseFailed("INVALID_ARGUMENT", "UNKNOWN_ROLE", f"role: {e}", "role") from None
        if not best:
            raise LeaseFailed(
                "RESOURCE_EXHAUSTED",
                "MODEL_TOO_LARGE",
                f"role: no model for {role!r} fits profile {self._rt.profile.name} "
                f"(max_vram_mb={self._rt.profile.max_vram_mb})",
                "role",
            )
        return best[0].id

    def _check_lease_access(self, lease_id: str, token: str) -> None:
        if not LEASE_ID.match(lease_id):
            raise LeaseFailed(
                "INVALID_ARGUMENT",
                "MALFORMED_LEASE_ID",
                f"lease_id: {lease_id!r} is not a lease id (l- and 16 hex digits)",
                "lease_id",
            )
        expected = self._core.lease_secret(lease_id)
        # Unknown or ended leases fall through to the core, which says which of the two.
        if expected is not None and not hmac.compare_digest(expected, _digest(token)):
            raise LeaseFailed(
                "PERMISSION_DENIED",
                "WRONG_TOKEN",
                f"token: does not match lease {lease_id}: not your lease",
                "token",
            )

    @staticmethod
    def _raise_if_refused(out: list[Decision], lease_id: str) -> None:
        for d in out:
            if isinstance(d, LeaseRefused) and d.lease_id == lease_id:
                raise LeaseFailed(d.code, d.reason.value, f"lease_id: {d.message}", "lease_id")

    def _lease_info(self, v: LeaseView, token: str = "") -> LeaseInfo:
        offset = self._wall() - self._clock()
        return LeaseInfo(
            lease_id=v.lease_id,
            model_id=v.model_id,
            gpu_uuids=v.gpu_uuids,
            endpoint=self.endpoint(v.model_id),
            client=v.client,
            exclusive=v.exclusive,
            granted_at=v.granted_at + offset,
            expires_at=v.expires_at + offset,
            token=token,
        )

    # -- carrying out decisions -----------------------------------------------------------------

    def _apply(self, decisions: Sequence[Decision]) -> None:
        for d in decisions:
            if isinstance(d, Queued | Loading | Rejected):
                if (q := self._waiters.get(d.request_id)) is not None:
                    q.put_nowait(d)
            elif isinstance(d, Granted):
                if (q := self._waiters.get(d.lease_id)) is not None:
                    q.put_nowait(d)
                self._lease_event("granted", d.lease_id)
                log.info("lease granted", lease=d.lease_id, model=d.model_id, gpus=d.gpu_uuids)
            elif isinstance(d, Renewed):
                self._lease_event("renewed", d.lease_id)
            elif isinstance(d, LeaseEnded):
                self._lease_ended(d)
            elif isinstance(d, StartBackend):
                if not self._closing:
                    self._supervisor.start(d)
            elif isinstance(d, StopBackend):
                log.info(
                    "stopping model", model=d.model_id, reason=d.reason.value, detail=d.message
                )
                self._supervisor.stop(d)
            elif isinstance(d, ModelStateChanged):
                log.info(
                    "model state",
                    model=d.model_id,
                    state=d.state.value,
                    gpus=d.gpu_uuids,
                    detail=d.message or None,
                )
                self._hub.publish(d)
            elif isinstance(d, PreloadSkipped):
                log.warning("preload skipped", model=d.model_id, reason=d.message)
        self._sync_simulated_probe()
        if self._check and (problems := check_invariants(self._core)):
            # Debug aid for tests and load runs: the core broke a promise.
            log.error("invariant violated", problems=problems)
        self._kick.set()

    def _lease_event(self, kind: str, lease_id: str, reason: str = "") -> None:
        view = self._core.lease(lease_id)
        if view is not None:
            self._hub.publish(LeaseEvent(kind, self._lease_info(view), reason))

    def _lease_ended(self, d: LeaseEnded) -> None:
        now = self._wall()
        info = LeaseInfo(
            d.lease_id,
            d.model_id,
            d.gpu_uuids,
            self.endpoint(d.model_id),
            d.client,
            False,
            now,
            now,
        )
        self._hub.publish(LeaseEvent(d.reason.value, info, d.message))
        if d.reason is not LeaseEndReason.RELEASED:
            log.info(
                "lease ended",
                lease=d.lease_id,
                model=d.model_id,
                reason=d.reason.value,
                detail=d.message,
            )

    # -- backend outcomes (BackendEvents), fed to the core ------------------------------------

    def loaded(self, model_id: str, measured_mb: int | None) -> None:
        self._apply(self._core.load_succeeded(model_id, measured_mb=measured_mb, now=self._clock()))

    def load_failed(self, model_id: str, reason: str) -> None:
        self._apply(self._core.load_failed(model_id, reason, now=self._clock()))

    def died(self, model_id: str, reason: str) -> None:
        self._apply(self._core.backend_died(model_id, reason, now=self._clock()))

    def unloaded(self, model_id: str) -> None:
        self._apply(self._core.unload_finished(model_id, now=self._clock()))

    # -- the clock and the probe -------------------------------------------------------------

    async def _run_timer(self) -> None:
        while True:
            self._kick.clear()
            try:
                wake = self._core.next_wakeup()
                now = self._clock()
                if wake is not None and wake <= now:
                    self._apply(self._core.tick(now))
                    await asyncio.sleep(0)
                    continue
            except Exception:
                # Expiries and unloads depend on this loop: log and keep it alive.
                log.exception("scheduler tick failed")
                await asyncio.sleep(0.1)
                continue
            delay = None if wake is None else wake - now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), delay)

    def _on_probe(self, gpus: list[GpuSnapshot]) -> None:
        if not self._closing:
            self._apply(self._core.probe(gpus, now=self._clock()))

    def _sync_simulated_probe(self) -> None:
        probe = self._rt.poller.probe
        if not isinstance(probe, SimulatedProbe):
            return
        # Simulated GPUs report what is placed on them as used, and list each backend as a
        # process holding its share, so that admission, the wait for freed memory and the
        # measured footprint all run without a GPU.
        procs: dict[str, list[GpuProcess]] = {}
        for mid, pid in self._supervisor.leaders().items():
            v = self._core.model(mid)
            if v is not None:
                for uuid, mb in zip(v.gpu_uuids, v.gpu_reservations_mb, strict=False):
                    procs.setdefault(uuid, []).append(GpuProcess(pid, mb))
        probe.set_used(self._core.reserved_mb_by_gpu(), {u: tuple(p) for u, p in procs.items()})
