"""SelectorService: role selection and explanations under the active profile (or a named one,
"what would I get under profile X", always on this machine's GPUs)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import grpc

from gpulet.v1 import selector_pb2 as pb
from gpulet.v1 import selector_pb2_grpc
from gpulet.v1 import types_pb2 as pb_types
from gpuletd.bounds import Refused, check_name
from gpuletd.executor import Executor
from gpuletd.measurements import Measurements
from gpuletd.profiles import Profile
from gpuletd.registry import Model
from gpuletd.runtime import Runtime
from gpuletd.scheduler import ModelView
from gpuletd.selector import (
    ExplainStatus,
    Hardware,
    Limit,
    Misfit,
    explain,
    misfits,
    select,
)
from gpuletd.services.convert import bias_pb, model_pb
from gpuletd.services.errors import fail
from gpuletd.services.memo import Memo

__all__ = ["SelectorService"]

DEFAULT_TOP_N = 3
# Selections kept (services/memo.py), by role, top_n and profile: a client's top_n can make
# more of them, and the oldest then goes.
_KEPT_SELECTIONS = 64
# The candidates, the models left out, whether the GPUs run bf16 natively.
_Selection = tuple[list[Model], list[Misfit], bool | None]
# An answer, and its candidates that are idle: (index, idle since), to age them per call.
_Answer = tuple[pb.SelectByRoleResponse, list[tuple[int, float]]]
_STATUS = {
    ExplainStatus.ELIGIBLE: pb.EXPLAIN_STATUS_ELIGIBLE,
    ExplainStatus.REJECTED: pb.EXPLAIN_STATUS_REJECTED,
    ExplainStatus.NO_SUPPORT: pb.EXPLAIN_STATUS_NO_SUPPORT,
    ExplainStatus.NOT_FOUND: pb.EXPLAIN_STATUS_NOT_FOUND,
}

_LIMIT = {
    Limit.NONE: pb.SELECTION_LIMIT_UNSPECIFIED,
    Limit.PROFILE_BUDGET: pb.SELECTION_LIMIT_PROFILE_BUDGET,
    Limit.GPU_MEMORY: pb.SELECTION_LIMIT_GPU_MEMORY,
    Limit.GPU_COUNT: pb.SELECTION_LIMIT_GPU_COUNT,
    Limit.PINNING: pb.SELECTION_LIMIT_PINNING,
}

Context = grpc.aio.ServicerContext[Any, Any]


def _endpoint(view: ModelView | None) -> str:
    return view.endpoint if view is not None else ""


class SelectorService(selector_pb2_grpc.SelectorServiceServicer):
    def __init__(
        self, runtime: Runtime, executor: Executor, measurements: Measurements | None = None
    ) -> None:
        self._rt = runtime
        self._ex = executor
        self._core = executor.core
        self._measurements = measurements
        self._selections: Memo[tuple[str, int, str], _Selection] = Memo(_KEPT_SELECTIONS)
        self._answers: Memo[tuple[str, int, str], _Answer] = Memo(_KEPT_SELECTIONS)

    async def SelectByRole(
        self, request: pb.SelectByRoleRequest, context: Context
    ) -> pb.SelectByRoleResponse:
        top_n = request.top_n if request.HasField("top_n") else DEFAULT_TOP_N
        rt = self._rt
        try:
            # Whole answers are kept until an event reaches the core (a view, a reservation
            # or a measurement may have changed) or the configuration, profile or a GPU
            # reading does; only the idle times move on their own.
            resp, idle = self._answers.get(
                (request.role, top_n, request.profile),
                (self._ex.events, rt.config, rt.active, tuple(rt.gpus)),
                lambda: self._select(request, top_n),
            )
        except Refused as e:
            await fail(context, e)
        if not idle:
            return resp
        now = time.monotonic()
        fresh = pb.SelectByRoleResponse()
        fresh.CopyFrom(resp)
        for i, since in idle:
            fresh.candidates[i].model.idle_seconds = max(0.0, now - since)
        return fresh

    def _select(self, request: pb.SelectByRoleRequest, top_n: int) -> _Answer:
        """The answer (raises Refused), and where its idle times are: (candidate, since)."""
        role = request.role
        reg = self._rt.registry
        # The core's views of the models that support the role, and only those: they are all
        # the ranking looks at and all the answer shows, and a view costs microseconds.
        views = {
            mid: v
            for mid, m in reg.models.items()
            if role in m.role_priority and (v := self._core.model(mid)) is not None
        }
        hw = Hardware.of(self._rt.gpus, {mid: v.reservation_mb for mid, v in views.items()})
        now = time.monotonic()
        check_name("role", role)
        profile = self._profile(request.profile)
        # The ranking is the costly part and changes only with its inputs (a probe reading, a
        # reservation, a reload, a profile switch); the states change with any event.
        models, out, native = self._selections.get(
            (role, top_n, profile.name),
            (reg, profile, hw),
            lambda: (
                select(reg, profile, role, top_n, hardware=hw),
                misfits(reg, profile, role, hardware=hw),
                hw.bf16_native,
            ),
        )
        resp = pb.SelectByRoleResponse(
            role=request.role,
            profile=profile.name,
            candidates=[
                pb.Candidate(
                    # With its view: the reservation shown is the one it was ranked by.
                    model=self._model_pb(m, views, now),
                    role_priority=m.role_priority[request.role],
                    engine=m.engine,
                )
                for m in models
            ],
            max_vram_mb=profile.max_vram_mb,
            model_selection_bias=bias_pb(profile.model_selection_bias),
            top_n=top_n,
            excluded=[
                pb.Excluded(model_id=x.model_id, limit=_LIMIT[x.limit], reason=x.reason)
                for x in out
            ],
        )
        if native is not None:
            resp.bf16_preferred = native
        idle = [
            (i, since)
            for i, m in enumerate(models)
            if (v := views.get(m.id)) is not None and (since := v.idle_since) is not None
        ]
        return resp, idle

    async def ExplainSelection(
        self, request: pb.ExplainSelectionRequest, context: Context
    ) -> pb.ExplainSelectionResponse:
        hw = Hardware.now(self._rt.gpus, self._core)
        try:
            check_name("role", request.role)
            check_name("model_id", request.model_id)
            profile = self._profile(request.profile)
            e = explain(self._rt.registry, profile, request.role, request.model_id, hardware=hw)
        except Refused as r:
            await fail(context, r)
        model = self._rt.registry.get(request.model_id)
        return pb.ExplainSelectionResponse(
            status=_STATUS[e.status],
            reason=e.reason,
            rank=e.rank or 0,
            profile=profile.name,
            limit=_LIMIT[e.limit],
            model_selection_bias=bias_pb(profile.model_selection_bias),
            engine=model.engine if model is not None else "",
        )

    def _profile(self, name: str) -> Profile:
        check_name("profile", name, required=False)
        return self._rt.profile_named(name, "profile")

    def _model_pb(self, m: Model, views: Mapping[str, ModelView], now: float) -> pb_types.Model:
        """A model as ListModels and SelectByRole both show it: its state, its reservation now
        (the estimate raised to what was measured), what was measured."""
        view = views.get(m.id)
        ms = self._measurements
        return model_pb(
            m,
            view,
            endpoint=_endpoint(view),
            now=now,
            measured=ms.get(m.id) if ms is not None else None,
        )

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        views = self._core.models()
        now = time.monotonic()
        return pb.ListModelsResponse(
            models=[self._model_pb(m, views, now) for m in self._rt.registry.models.values()]
        )

    async def ListRoles(
        self, request: pb.ListRolesRequest, context: Context
    ) -> pb.ListRolesResponse:
        return pb.ListRolesResponse(roles=self._rt.registry.roles())
