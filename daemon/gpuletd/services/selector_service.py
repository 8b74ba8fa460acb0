"""SelectorService: role selection and explanations under the active profile."""

from __future__ import annotations

import time
from typing import Any

import grpc

from gpulet.v1 import selector_pb2 as pb
from gpulet.v1 import selector_pb2_grpc
from gpuletd.bounds import Refused, check_name
from gpuletd.runtime import Runtime
from gpuletd.scheduler import ModelView, Scheduler
from gpuletd.selector import ExplainStatus, explain, select
from gpuletd.services.convert import bias_pb, model_pb
from gpuletd.services.errors import fail

__all__ = ["SelectorService"]

DEFAULT_TOP_N = 3
_STATUS = {
    ExplainStatus.ELIGIBLE: pb.EXPLAIN_STATUS_ELIGIBLE,
    ExplainStatus.REJECTED: pb.EXPLAIN_STATUS_REJECTED,
    ExplainStatus.NO_SUPPORT: pb.EXPLAIN_STATUS_NO_SUPPORT,
    ExplainStatus.NOT_FOUND: pb.EXPLAIN_STATUS_NOT_FOUND,
}

Context = grpc.aio.ServicerContext[Any, Any]


def _endpoint(view: ModelView | None) -> str:
    return view.endpoint if view is not None else ""


class SelectorService(selector_pb2_grpc.SelectorServiceServicer):
    def __init__(self, runtime: Runtime, core: Scheduler) -> None:
        self._rt = runtime
        self._core = core

    async def SelectByRole(
        self, request: pb.SelectByRoleRequest, context: Context
    ) -> pb.SelectByRoleResponse:
        top_n = request.top_n if request.HasField("top_n") else DEFAULT_TOP_N
        profile = self._rt.profile
        try:
            check_name("role", request.role)
            models = select(self._rt.registry, profile, request.role, top_n)
        except Refused as e:
            await fail(context, e)
        return pb.SelectByRoleResponse(
            role=request.role,
            profile=profile.name,
            candidates=[
                pb.Candidate(model=model_pb(m), role_priority=m.role_priority[request.role])
                for m in models
            ],
            max_vram_mb=profile.max_vram_mb,
            model_selection_bias=bias_pb(profile.model_selection_bias),
        )

    async def ExplainSelection(
        self, request: pb.ExplainSelectionRequest, context: Context
    ) -> pb.ExplainSelectionResponse:
        try:
            check_name("role", request.role)
            check_name("model_id", request.model_id)
            e = explain(self._rt.registry, self._rt.profile, request.role, request.model_id)
        except Refused as r:
            await fail(context, r)
        return pb.ExplainSelectionResponse(
            status=_STATUS[e.status],
            reason=e.reason,
            rank=e.rank or 0,
            profile=self._rt.profile.name,
        )

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        views = self._core.models()
        now = time.monotonic()
        return pb.ListModelsResponse(
            models=[
                model_pb(m, views.get(m.id), endpoint=_endpoint(views.get(m.id)), now=now)
                for m in self._rt.registry.models.values()
            ]
        )

    async def ListRoles(
        self, request: pb.ListRolesRequest, context: Context
    ) -> pb.ListRolesResponse:
        return pb.ListRolesResponse(roles=self._rt.registry.roles())
