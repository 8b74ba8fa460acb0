"""ProfileService: the active profile, the known profiles, the GPUs."""

from __future__ import annotations

from typing import Any

import grpc

from gpulet.v1 import profiles_pb2 as pb
from gpulet.v1 import profiles_pb2_grpc
from gpuletd.active_profile import ProfileSource
from gpuletd.bounds import Refused, check_name
from gpuletd.runtime import Runtime
from gpuletd.scheduler import Scheduler
from gpuletd.services.convert import gpu_pb, profile_pb
from gpuletd.services.errors import fail
from gpuletd.services.memo import Memo
from gpuletd.supervisor import Supervisor

__all__ = ["ProfileService"]

_SOURCE = {
    ProfileSource.FLAG: pb.PROFILE_SOURCE_FLAG,
    ProfileSource.ENV: pb.PROFILE_SOURCE_ENV,
    ProfileSource.CONFIG: pb.PROFILE_SOURCE_CONFIG,
    ProfileSource.AUTO: pb.PROFILE_SOURCE_AUTO,
    ProfileSource.DEFAULT: pb.PROFILE_SOURCE_DEFAULT,
    ProfileSource.ADMIN: pb.PROFILE_SOURCE_ADMIN,
}

Context = grpc.aio.ServicerContext[Any, Any]


class ProfileService(profiles_pb2_grpc.ProfileServiceServicer):
    def __init__(self, runtime: Runtime, core: Scheduler, supervisor: Supervisor) -> None:
        self._rt = runtime
        self._core = core
        self._supervisor = supervisor
        self._active: Memo[None, pb.GetActiveProfileResponse] = Memo(1)

    async def GetActiveProfile(
        self, request: pb.GetActiveProfileRequest, context: Context
    ) -> pb.GetActiveProfileResponse:
        rt = self._rt
        gpus = tuple(rt.gpus)
        # All but the GPUs is kept while what it is made of holds (services/memo.py); the
        # GPUs are converted per call, since a reading's age is of the moment of asking.
        kept = self._active.get(
            None,
            (rt.active, rt.config, gpus, rt.reload_error, rt.poller.kind),
            self._active_profile,
        )
        answer = pb.GetActiveProfileResponse()
        answer.CopyFrom(kept)
        answer.gpus.extend(gpu_pb(g) for g in gpus)
        return answer

    def _active_profile(self) -> pb.GetActiveProfileResponse:
        a = self._rt.active
        return pb.GetActiveProfileResponse(
            profile=profile_pb(a.profile),
            source=_SOURCE[a.source],
            reason=a.reason,
            usable_vram_mb=a.usable_vram_mb,
            available_profiles=sorted(self._rt.known_profiles()),
            warnings=list(self._rt.warnings),
            probe=self._rt.poller.kind,
            overrides=list(a.overrides),
            derived_from=a.derived_from or "",
        )

    async def ListProfiles(
        self, request: pb.ListProfilesRequest, context: Context
    ) -> pb.ListProfilesResponse:
        profiles = self._rt.known_profiles()
        return pb.ListProfilesResponse(
            profiles=[profile_pb(profiles[name]) for name in sorted(profiles)],
            active=self._rt.profile.name,
        )

    async def GetProfile(
        self, request: pb.GetProfileRequest, context: Context
    ) -> pb.GetProfileResponse:
        try:
            check_name("name", request.name)
            # The active one is returned with its --set overrides, as the daemon runs it.
            p = self._rt.profile_named(request.name, "name")
        except Refused as e:
            await fail(context, e)
        return pb.GetProfileResponse(profile=profile_pb(p))

    async def GetGpuStatus(
        self, request: pb.GetGpuStatusRequest, context: Context
    ) -> pb.GetGpuStatusResponse:
        placed: dict[str, dict[str, int]] = {}
        for mid, v in self._core.models().items():
            for uuid, mb in zip(v.gpu_uuids, v.gpu_reservations_mb, strict=False):
                placed.setdefault(uuid, {})[mid] = mb
        managed = self._supervisor.pids()
        gpus = []
        for g in self._rt.gpus:
            procs = await self._rt.poller.processes(g.uuid) if request.include_processes else ()
            gpus.append(gpu_pb(g, placed.get(g.uuid), procs, managed))
        return pb.GetGpuStatusResponse(gpus=gpus, probe=self._rt.poller.kind)
