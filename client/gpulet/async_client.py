"""`gpulet.AsyncClient`: `gpulet.Client`'s twin for asyncio, the same methods in the same order.

async def main() -> None:
    async with gpulet.AsyncClient() as client:
        async with client.lease("florence-2-large") as lease:
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TypeVar

import grpc
import grpc.aio

from gpulet import convert
from gpulet.base import DEFAULT_TIMEOUT, BaseClient, check_socket
from gpulet.errors import GpuletError
from gpulet.lease import renew_in_task, renew_interval
from gpulet.types import (
    ActiveProfile,
    Explanation,
    GpuStatus,
    Lease,
    Model,
    Plan,
    Profile,
    ProfileList,
    Progress,
    ProgressCallback,
    QueueItem,
    Selection,
    WatchEvent,
)
from gpulet.v1 import (
    leases_pb2_grpc,
    profiles_pb2,
    profiles_pb2_grpc,
    selector_pb2_grpc,
)

__all__ = ["AsyncClient"]

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class AsyncClient(BaseClient):
    """asyncio client: `gpulet.Client`'s methods as coroutines (`watch()` an async iterator,
    `lease()` an async context manager). `channel`: a `grpc.aio.Channel` to use instead of
    dialing `address`; it is left open by `close()`."""

    def __init__(
        self,
        *,
        address: str | None = None,
        channel: grpc.aio.Channel | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(address=address, timeout=timeout)
        self._owns_channel = channel is None
        if channel is None:
            check_socket(self.address)
            channel = grpc.aio.insecure_channel(self.address)
        self._channel = channel
        self._profiles = profiles_pb2_grpc.ProfileServiceStub(channel)
        self._selector = selector_pb2_grpc.SelectorServiceStub(channel)
        self._leases = leases_pb2_grpc.LeaseServiceStub(channel)

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(
        self, method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp], request: Req
    ) -> Resp:
        try:
            return await method(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise self._unary_error(e, request) from None

    # -- profiles and GPUs --------------------------------------------------------------------

    async def active_profile(self) -> ActiveProfile:
        r = await self._call(self._profiles.GetActiveProfile, self._ACTIVE_PROFILE)
        return convert.active_profile(r)

    async def list_profiles(self) -> ProfileList:
        r = await self._call(self._profiles.ListProfiles, self._LIST_PROFILES)
        return convert.profile_list(r)

    async def get_profile(self, name: str) -> Profile:
        r = await self._call(self._profiles.GetProfile, profiles_pb2.GetProfileRequest(name=name))
        return convert.profile(r.profile)

    async def gpu_status(self, *, include_processes: bool = False) -> GpuStatus:
        req = profiles_pb2.GetGpuStatusRequest(include_processes=include_processes)
        return convert.gpu_status(await self._call(self._profiles.GetGpuStatus, req))

    # -- models and selection -----------------------------------------------------------------

    async def models(self) -> list[Model]:
        r = await self._call(self._selector.ListModels, self._LIST_MODELS)
        return [convert.model(m) for m in r.models]

    async def roles(self) -> list[str]:
        return list((await self._call(self._selector.ListRoles, self._LIST_ROLES)).roles)

    async def select(
        self, role: str, *, top_n: int | None = None, profile: str | None = None
    ) -> Selection:
        """`profile`: what this machine would offer under that profile (default: the active)."""
        req = self._select_request(role, top_n, profile)
        return convert.selection(await self._call(self._selector.SelectByRole, req))

    async def explain(self, role: str, model_id: str, *, profile: str | None = None) -> Explanation:
        req = self._explain_request(role, model_id, profile)
        r = await self._call(self._selector.ExplainSelection, req)
        return convert.explanation(r, role, model_id)

    # -- leases -------------------------------------------------------------------------------

    async def acquire(
        self,
        model_id: str | None = None,
        *,
        role: str | None = None,
        vram_mb: int | None = None,
        client_name: str | None = None,
        ttl: float | None = None,
        priority: int = 0,
        exclusive: bool = False,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Lease:
        """See `Client.acquire`."""
        req = self._acquire_request(
            model_id, role, client_name, ttl, priority, exclusive, timeout, vram_mb
        )
        lease: Lease | None = None
        last: Progress | None = None
        try:
            async for r in self._leases.Acquire(req, timeout=timeout):
                if r.HasField("granted"):
                    lease = convert.lease(r.granted)
                elif (step := convert.progress(r)) is not None:
                    last = step
                    if on_progress is not None:
                        on_progress(step)
        except grpc.RpcError as e:
            waited = self._acquire_waited_for(model_id, role, last, vram_mb)
            raise self._error(e, waited_for=waited, timeout=timeout) from None
        if lease is None:
            raise self._no_grant()
        return await self.renew(lease)

    async def renew(
        self, lease: Lease | str, token: str | None = None, *, ttl: float | None = None
    ) -> Lease:
        """See `Client.renew`."""
        r = await self._call(self._leases.Renew, self._renew_request(lease, token, ttl))
        return self._renewed(lease, token, r)

    async def release(self, lease: Lease | str, token: str | None = None) -> None:
        """See `Client.release`."""
        await self._call(self._leases.Release, self._release_request(lease, token))

    async def list_leases(self) -> list[Lease]:
        r = await self._call(self._leases.ListLeases, self._LIST_LEASES)
        return [convert.lease(m) for m in r.leases]

    async def queue(self) -> list[QueueItem]:
        """See `Client.queue`."""
        r = await self._call(self._leases.ListQueue, self._LIST_QUEUE)
        return [convert.queue_item(m) for m in r.requests]

    async def plan(
        self,
        model_id: str | None = None,
        *,
        role: str | None = None,
        priority: int = 0,
        exclusive: bool = False,
        vram_mb: int | None = None,
    ) -> Plan:
        """See `Client.plan`."""
        req = self._plan_request(model_id, role, priority, exclusive, vram_mb)
        r = await self._call(self._leases.Plan, req)
        return convert.plan(r)

    async def watch(self) -> AsyncIterator[WatchEvent]:
        try:
            async for r in self._leases.Watch(self._WATCH, timeout=None):
                if (event := convert.watch_event(r)) is not None:
                    yield event
        except grpc.RpcError as e:
            raise self._error(e, waited_for="events", timeout=None) from None

    @contextlib.asynccontextmanager
    async def lease(
        self,
        model_id: str | None = None,
        *,
        role: str | None = None,
        vram_mb: int | None = None,
        client_name: str | None = None,
        ttl: float | None = None,
        priority: int = 0,
        exclusive: bool = False,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> AsyncIterator[Lease]:
        """See `Client.lease`."""
        lease = await self.acquire(
            model_id,
            role=role,
            vram_mb=vram_mb,
            client_name=client_name,
            ttl=ttl,
            priority=priority,
            exclusive=exclusive,
            timeout=timeout,
            on_progress=on_progress,
        )
        renewer = asyncio.create_task(
            renew_in_task(lease, renew_interval(lease, ttl), lambda: self.renew(lease, ttl=ttl))
        )
        try:
            yield lease
        finally:
            renewer.cancel()
            # wait() (unlike awaiting the task) does not raise the renewer's cancellation,
            # so a cancellation of this task itself still propagates.
            await asyncio.wait([renewer])
            if not lease.lost.is_set():
                with contextlib.suppress(GpuletError):
                    await self.release(lease)
