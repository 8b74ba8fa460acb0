"""LeaseService: Acquire / Renew / Release / ListLeases / Watch, converted to and from the
lease API (`gpuletd.leases`) and the watch sink; no logic of its own beyond the wire."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from gpulet.v1 import leases_pb2 as pb
from gpulet.v1 import leases_pb2_grpc
from gpuletd.bounds import Refused
from gpuletd.leases import LeaseInfo, LeaseManager, QueueInfo
from gpuletd.plan import Outcome, PlanResult
from gpuletd.scheduler import Loading, ModelStateChanged, Queued
from gpuletd.services.convert import model_state_pb
from gpuletd.services.errors import fail
from gpuletd.services.memo import Memo
from gpuletd.watch import LeaseEvent, WatchSink

__all__ = ["LeaseService", "lease_pb", "plan_pb", "queued_pb"]

Context = grpc.aio.ServicerContext[Any, Any]

_LEASE_KIND = {
    "granted": pb.LEASE_EVENT_KIND_GRANTED,
    "renewed": pb.LEASE_EVENT_KIND_RENEWED,
    "released": pb.LEASE_EVENT_KIND_RELEASED,
    "expired": pb.LEASE_EVENT_KIND_EXPIRED,
    "backend_died": pb.LEASE_EVENT_KIND_BACKEND_DIED,
    "cancelled": pb.LEASE_EVENT_KIND_CANCELLED,
}


def _ts(wall: float) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromNanoseconds(int(wall * 1e9))
    return t


def lease_pb(x: LeaseInfo) -> pb.Lease:
    return pb.Lease(
        lease_id=x.lease_id,
        token=x.token,
        model_id=x.model_id,
        gpu_uuids=list(x.gpu_uuids),
        cuda_visible_devices=x.cuda_visible_devices,
        endpoint=x.endpoint,
        expires_at=_ts(x.expires_at),
        granted_at=_ts(x.granted_at),
        client_name=x.client,
        exclusive=x.exclusive,
    )


def queued_pb(q: QueueInfo) -> pb.QueuedRequest:
    m = pb.QueuedRequest(
        model_id=q.model_id,
        client_name=q.client,
        priority=q.priority,
        effective_priority=q.effective_priority,
        exclusive=q.exclusive,
        waited_seconds=q.waited_s,
        waiting_for=q.waiting_for,
        arrived_at=_ts(q.arrived_at),
    )
    if q.position is not None:
        m.position = q.position
    if q.deadline is not None:
        m.deadline.CopyFrom(_ts(q.deadline))
    return m


_OUTCOME = {
    Outcome.GRANTED: pb.PLAN_OUTCOME_GRANTED,
    Outcome.LOAD: pb.PLAN_OUTCOME_LOAD,
    Outcome.WAIT: pb.PLAN_OUTCOME_WAIT,
    Outcome.REFUSED: pb.PLAN_OUTCOME_REFUSED,
}


def plan_pb(p: PlanResult) -> pb.PlanResponse:
    m = pb.PlanResponse(
        outcome=_OUTCOME[p.outcome],
        model_id=p.model_id,
        gpu_uuids=list(p.gpu_uuids),
        victims=[
            pb.PlanVictim(
                model_id=v.model_id,
                gpu_uuids=list(v.gpu_uuids),
                reserved_mb=v.reserved_mb,
                reload_seconds=v.reload_s,
                reload_measured=v.reload_measured,
            )
            for v in p.victims
        ],
        waiting_for=p.waiting_for,
        message=p.message,
        code=p.code,
        reason=p.reason,
    )
    if p.position is not None:
        m.position = p.position
    return m


class LeaseService(leases_pb2_grpc.LeaseServiceServicer):
    def __init__(self, leases: LeaseManager, watch: WatchSink) -> None:
        self._leases = leases
        self._watch = watch
        # Kept until the next event reaches the core (services/memo.py).
        self._listed: Memo[None, pb.ListLeasesResponse] = Memo(1)

    async def Acquire(
        self, request: pb.AcquireRequest, context: Context
    ) -> AsyncIterator[pb.AcquireResponse]:
        remaining = context.time_remaining()
        updates = self._leases.acquire(
            model_id=request.model_id,
            role=request.role,
            vram_mb=request.vram_mb,
            client=request.client_name,
            ttl_s=request.ttl_seconds,
            priority=request.priority,
            exclusive=request.exclusive,
            claim_within_s=request.claim_within_seconds,
            # The call's own deadline bounds the wait in the queue.
            timeout_s=remaining if remaining is not None and remaining < 1e9 else None,
        )
        try:
            async for u in updates:
                if isinstance(u, Queued):
                    yield pb.AcquireResponse(
                        queued=pb.Queued(
                            position=u.position, queue_length=self._leases.queue_length()
                        )
                    )
                elif isinstance(u, Loading):
                    yield pb.AcquireResponse(
                        loading=pb.Loading(model_id=u.model_id, gpu_uuids=list(u.gpu_uuids))
                    )
                else:
                    # Only a call that ends OK delivered its grant: one cancelled, or past its
                    # deadline, after the grant was written leaves a lease nobody holds.
                    # (The stubs type the callback as a class no function can match.)
                    done = self._abandon_if_cancelled(u.lease_id)
                    context.add_done_callback(done)  # type: ignore[arg-type]
                    yield pb.AcquireResponse(granted=lease_pb(u))
        except Refused as e:
            await fail(context, e)
        finally:
            await updates.aclose()

    def _abandon_if_cancelled(self, lease_id: str) -> Callable[[Context], None]:
        def done(context: Context) -> None:
            if context.cancelled():
                self._leases.abandon(lease_id)

        return done

    async def Renew(self, request: pb.RenewRequest, context: Context) -> pb.RenewResponse:
        try:
            info = await self._leases.renew(request.lease_id, request.token, request.ttl_seconds)
        except Refused as e:
            await fail(context, e)
        return pb.RenewResponse(lease=lease_pb(info))

    async def Release(self, request: pb.ReleaseRequest, context: Context) -> pb.ReleaseResponse:
        try:
            await self._leases.release(request.lease_id, request.token)
        except Refused as e:
            await fail(context, e)
        return pb.ReleaseResponse()

    async def ListLeases(
        self, request: pb.ListLeasesRequest, context: Context
    ) -> pb.ListLeasesResponse:
        return self._listed.get(
            None,
            (self._leases.changes,),
            lambda: pb.ListLeasesResponse(leases=[lease_pb(x) for x in self._leases.leases()]),
        )

    async def ListQueue(
        self, request: pb.ListQueueRequest, context: Context
    ) -> pb.ListQueueResponse:
        return pb.ListQueueResponse(requests=[queued_pb(q) for q in self._leases.queue()])

    async def Plan(self, request: pb.PlanRequest, context: Context) -> pb.PlanResponse:
        try:
            result = self._leases.plan(
                model_id=request.model_id,
                role=request.role,
                priority=request.priority,
                exclusive=request.exclusive,
                vram_mb=request.vram_mb,
            )
        except Refused as e:
            await fail(context, e)
        return plan_pb(result)

    async def Watch(
        self, request: pb.WatchRequest, context: Context
    ) -> AsyncIterator[pb.WatchResponse]:
        events = self._watch.subscribe()
        try:
            async for ev in events:
                now = timestamp_pb2.Timestamp()
                now.GetCurrentTime()
                if isinstance(ev, ModelStateChanged):
                    yield pb.WatchResponse(
                        time=now,
                        model=pb.ModelEvent(
                            model_id=ev.model_id,
                            state=model_state_pb(ev.state),
                            gpu_uuids=list(ev.gpu_uuids),
                            reason=ev.message,
                        ),
                    )
                elif isinstance(ev, LeaseEvent):
                    yield pb.WatchResponse(
                        time=now,
                        lease=pb.LeaseEvent(
                            kind=_LEASE_KIND.get(ev.kind, pb.LEASE_EVENT_KIND_UNSPECIFIED),
                            lease=lease_pb(ev.lease),
                            reason=ev.reason,
                        ),
                    )
        except Refused as e:
            await fail(context, e)
        finally:
            await events.aclose()
