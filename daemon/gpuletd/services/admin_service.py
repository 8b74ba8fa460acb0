"""AdminService: the wire to `admin.Admin` and its refusals to statuses. Registered only on the
admin socket's server (server.build_admin_server), never beside the user services."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from gpulet.v1 import admin_pb2 as pb
from gpulet.v1 import admin_pb2_grpc
from gpuletd.admin import Admin
from gpuletd.bounds import Refused
from gpuletd.services.errors import fail

__all__ = ["AdminService"]

Context = grpc.aio.ServicerContext[Any, Any]


def _ts(wall: float) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromNanoseconds(int(wall * 1e9))
    return t


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, admin: Admin) -> None:
        self._admin = admin

    async def EndLease(self, request: pb.EndLeaseRequest, context: Context) -> pb.EndLeaseResponse:
        try:
            e = self._admin.end_lease(request.lease_id, request.reason)
        except Refused as r:
            await fail(context, r)
        return pb.EndLeaseResponse(lease_id=e.lease_id, model_id=e.model_id, client_name=e.client)

    async def UnloadModel(
        self, request: pb.UnloadModelRequest, context: Context
    ) -> pb.UnloadModelResponse:
        try:
            u = self._admin.unload(request.model_id, force=request.force, reason=request.reason)
        except Refused as r:
            await fail(context, r)
        return pb.UnloadModelResponse(
            model_id=u.model_id,
            ended_lease_ids=[e.lease_id for e in u.ended],
            state=u.state.value,
            unloads_at=_ts(u.unloads_at) if u.unloads_at is not None else None,
            message=u.message,
        )

    async def SwitchProfile(
        self, request: pb.SwitchProfileRequest, context: Context
    ) -> pb.SwitchProfileResponse:
        try:
            s = self._admin.switch_profile(request.profile, request.reason)
        except Refused as r:
            await fail(context, r)
        return pb.SwitchProfileResponse(previous_profile=s.previous, profile=s.profile)

    async def Drain(self, request: pb.DrainRequest, context: Context) -> pb.DrainResponse:
        d = self._admin.drain()
        return pb.DrainResponse(leases_held=d.leases_held, waiting=d.waiting)

    async def Undrain(self, request: pb.UndrainRequest, context: Context) -> pb.UndrainResponse:
        return pb.UndrainResponse(was_draining=self._admin.undrain())

    async def PinModel(self, request: pb.PinModelRequest, context: Context) -> pb.PinModelResponse:
        try:
            p = self._admin.pin(request.model_id, request.reason)
        except Refused as r:
            await fail(context, r)
        return pb.PinModelResponse(model_id=p.model_id, state=p.state.value, message=p.message)

    async def UnpinModel(
        self, request: pb.UnpinModelRequest, context: Context
    ) -> pb.UnpinModelResponse:
        try:
            u = self._admin.unpin(request.model_id)
        except Refused as r:
            await fail(context, r)
        return pb.UnpinModelResponse(
            model_id=u.model_id,
            was_pinned=u.was_pinned,
            state=u.state.value,
            unloads_at=_ts(u.unloads_at) if u.unloads_at is not None else None,
            message=u.message,
        )
