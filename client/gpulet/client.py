"""`gpulet.Client` and `gpulet.AsyncClient`: the daemon's services for Python callers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import grpc

from gpulet.address import default_address, socket_path
from gpulet.errors import DaemonUnavailable, GpuletError, from_rpc_error
from gpulet.lease import Lease, Progress, lease_from_pb, renew_in_task, renew_in_thread
from gpulet.v1 import (
    leases_pb2,
    leases_pb2_grpc,
    profiles_pb2,
    profiles_pb2_grpc,
    selector_pb2,
    selector_pb2_grpc,
)

__all__ = ["AsyncClient", "Client", "check_socket"]

T = TypeVar("T")
DEFAULT_TTL = 30.0
# A grant must be claimed (a first Renew, sent at once) within this long, or the daemon takes
# it for one that never arrived (this caller was cancelled while it was on its way) and ends it.
CLAIM_WITHIN_S = 10.0
ProgressCallback = Callable[[Progress], None]


def acquire_request(
    model_id: str | None,
    role: str | None,
    client_name: str | None,
    ttl: float,
    priority: int,
    exclusive: bool,
) -> leases_pb2.AcquireRequest:
    if (model_id is None) == (role is None):
        raise ValueError("give exactly one of model_id or role")
    req = leases_pb2.AcquireRequest(
        client_name=client_name or f"pid {os.getpid()}",
        ttl_seconds=ttl,
        priority=priority,
        exclusive=exclusive,
        claim_within_seconds=CLAIM_WITHIN_S,
    )
    if model_id is not None:
        req.model_id = model_id
    else:
        req.role = role or ""
    return req


def _step(r: leases_pb2.AcquireResponse, on_progress: ProgressCallback | None) -> Lease | None:
    """One message of an Acquire stream: the lease once granted, else progress reported."""
    which = r.WhichOneof("state")
    if which == "granted":
        return lease_from_pb(r.granted)
    if on_progress is not None:
        if which == "queued":
            on_progress(Progress("queued", r.queued.position, r.queued.queue_length))
        elif which == "loading":
            on_progress(Progress("loading", model_id=r.loading.model_id))
    return None


def check_socket(address: str) -> None:
    """Fail with a readable error before dialing a socket that does not exist, so that
    "daemon not running" reads as that and not as a gRPC connect trace."""
    path = socket_path(address)
    if path is not None and not os.path.exists(path):
        raise DaemonUnavailable(
            f"gpuletd is not running: no socket at {path} "
            "(start it with `make run` or `systemctl start gpuletd`, or set --address / "
            "GPULET_ADDRESS)"
        )


class Client:
    """Blocking client. Methods raise `gpulet.errors.GpuletError` subclasses."""

    def __init__(self, *, address: str | None = None, timeout: float = 10.0) -> None:
        self.address = address or default_address()
        self.timeout = timeout
        check_socket(self.address)
        self._channel = grpc.insecure_channel(self.address)
        self.profiles = profiles_pb2_grpc.ProfileServiceStub(self._channel)
        self.selector = selector_pb2_grpc.SelectorServiceStub(self._channel)
        self.leases = leases_pb2_grpc.LeaseServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: Callable[..., T], request: Any, **kw: Any) -> T:
        try:
            return method(request, timeout=kw.pop("timeout", self.timeout), **kw)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def active_profile(self) -> profiles_pb2.GetActiveProfileResponse:
        return self.call(self.profiles.GetActiveProfile, profiles_pb2.GetActiveProfileRequest())

    def list_profiles(self) -> profiles_pb2.ListProfilesResponse:
        return self.call(self.profiles.ListProfiles, profiles_pb2.ListProfilesRequest())

    def get_profile(self, name: str) -> profiles_pb2.GetProfileResponse:
        return self.call(self.profiles.GetProfile, profiles_pb2.GetProfileRequest(name=name))

    def gpu_status(self, *, include_processes: bool = False) -> profiles_pb2.GetGpuStatusResponse:
        return self.call(
            self.profiles.GetGpuStatus,
            profiles_pb2.GetGpuStatusRequest(include_processes=include_processes),
        )

    def select(self, role: str, *, top_n: int | None = None) -> selector_pb2.SelectByRoleResponse:
        req = selector_pb2.SelectByRoleRequest(role=role)
        if top_n is not None:
            req.top_n = top_n
        return self.call(self.selector.SelectByRole, req)

    def explain(self, role: str, model_id: str) -> selector_pb2.ExplainSelectionResponse:
        return self.call(
            self.selector.ExplainSelection,
            selector_pb2.ExplainSelectionRequest(role=role, model_id=model_id),
        )

    def models(self) -> selector_pb2.ListModelsResponse:
        return self.call(self.selector.ListModels, selector_pb2.ListModelsRequest())

    def roles(self) -> selector_pb2.ListRolesResponse:
        return self.call(self.selector.ListRoles, selector_pb2.ListRolesRequest())

    def acquire(
        self,
        model_id: str | None = None,
        *,
        role: str | None = None,
        client_name: str | None = None,
        ttl: float = DEFAULT_TTL,
        priority: int = 0,
        exclusive: bool = False,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Lease:
        """Wait (queued, then loading) until the lease is granted; `timeout` bounds the wait."""
        req = acquire_request(model_id, role, client_name, ttl, priority, exclusive)
        try:
            lease = None
            # Read to the end of the stream (the daemon ends it right after the grant):
            # closing it early would tell the daemon the grant never arrived.
            for r in self.leases.Acquire(req, timeout=timeout):
                lease = _step(r, on_progress) or lease
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        if lease is None:
            raise DaemonUnavailable("gpuletd closed the Acquire stream without a grant")
        # The claim: the daemon learns the grant arrived (else it ends the lease soon).
        lease.expires_at = self.renew(lease.lease_id, lease.token).expires_at
        return lease

    def renew(self, lease_id: str, token: str, *, ttl: float = 0.0) -> Lease:
        r = self.call(
            self.leases.Renew,
            leases_pb2.RenewRequest(lease_id=lease_id, token=token, ttl_seconds=ttl),
        )
        return lease_from_pb(r.lease)

    def release(self, lease_id: str, token: str) -> None:
        self.call(self.leases.Release, leases_pb2.ReleaseRequest(lease_id=lease_id, token=token))

    def list_leases(self) -> list[Lease]:
        r = self.call(self.leases.ListLeases, leases_pb2.ListLeasesRequest())
        return [lease_from_pb(m) for m in r.leases]

    def watch(self) -> Iterator[leases_pb2.WatchResponse]:
        try:
            yield from self.leases.Watch(leases_pb2.WatchRequest(), timeout=None)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    @contextlib.contextmanager
    def lease(
        self,
        model_id: str | None = None,
        *,
        role: str | None = None,
        client_name: str | None = None,
        ttl: float = DEFAULT_TTL,
        priority: int = 0,
        exclusive: bool = False,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Iterator[Lease]:
        """Hold a lease for the `with` block: renewed in the background, released on exit.

        If a renewal finds the lease gone (it expired, or the backend died), `lease.lost` is
        set; the block is not interrupted."""
        lease = self.acquire(
            model_id,
            role=role,
            client_name=client_name,
            ttl=ttl,
            priority=priority,
            exclusive=exclusive,
            timeout=timeout,
            on_progress=on_progress,
        )
        stop = threading.Event()
        thread = renew_in_thread(
            lease, ttl, lambda: self.renew(lease.lease_id, lease.token, ttl=ttl), stop
        )
        try:
            yield lease
        finally:
            stop.set()
            thread.join()
            if not lease.lost.is_set():
                with contextlib.suppress(GpuletError):
                    self.release(lease.lease_id, lease.token)


class AsyncClient:
    """asyncio client with the same methods as `Client`, as coroutines."""

    def __init__(self, *, address: str | None = None, timeout: float = 10.0) -> None:
        self.address = address or default_address()
        self.timeout = timeout
        check_socket(self.address)
        self._channel = grpc.aio.insecure_channel(self.address)
        self.profiles = profiles_pb2_grpc.ProfileServiceStub(self._channel)
        self.selector = selector_pb2_grpc.SelectorServiceStub(self._channel)
        self.leases = leases_pb2_grpc.LeaseServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call(self, method: Callable[..., Awaitable[T]], request: Any, **kw: Any) -> T:
        try:
            return await method(request, timeout=kw.pop("timeout", self.timeout), **kw)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    async def active_profile(self) -> profiles_pb2.GetActiveProfileResponse:
        return await self.call(
            self.profiles.GetActiveProfile, profiles_pb2.GetActiveProfileRequest()
        )

    async def select(
        self, role: str, *, top_n: int | None = None
    ) -> selector_pb2.SelectByRoleResponse:
        req = selector_pb2.SelectByRoleRequest(role=role)
        if top_n is not None:
            req.top_n = top_n
        return await self.call(self.selector.SelectByRole, req)

    async def explain(self, role: str, model_id: str) -> selector_pb2.ExplainSelectionResponse:
        return await self.call(
            self.selector.ExplainSelection,
            selector_pb2.ExplainSelectionRequest(role=role, model_id=model_id),
        )

    async def list_profiles(self) -> profiles_pb2.ListProfilesResponse:
        return await self.call(self.profiles.ListProfiles, profiles_pb2.ListProfilesRequest())

    async def get_profile(self, name: str) -> profiles_pb2.GetProfileResponse:
        return await self.call(self.profiles.GetProfile, profiles_pb2.GetProfileRequest(name=name))

    async def gpu_status(
        self, *, include_processes: bool = False
    ) -> profiles_pb2.GetGpuStatusResponse:
        return await self.call(
            self.profiles.GetGpuStatus,
            profiles_pb2.GetGpuStatusRequest(include_processes=include_processes),
        )

    async def roles(self) -> selector_pb2.ListRolesResponse:
        return await self.call(self.selector.ListRoles, selector_pb2.ListRolesRequest())

    async def watch(self) -> AsyncIterator[leases_pb2.WatchResponse]:
        try:
            async for r in self.leases.Watch(leases_pb2.WatchRequest(), timeout=None):
                yield r
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    async def models(self) -> selector_pb2.ListModelsResponse:
        return await self.call(self.selector.ListModels, selector_pb2.ListModelsRequest())

    async def acquire(
        self,
        model_id: str | None = None,
        *,
        role: str | None = None,
        client_name: str | None = None,
        ttl: float = DEFAULT_TTL,
        priority: int = 0,
        exclusive: bool = False,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Lease:
        req = acquire_request(model_id, role, client_name, ttl, priority, exclusive)
        try:
            lease = None
            async for r in self.leases.Acquire(req, timeout=timeout):
                lease = _step(r, on_progress) or lease
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        if lease is None:
            raise DaemonUnavailable("gpuletd closed the Acquire stream without a grant")
        lease.expires_at = (await self.renew(lease.lease_id, lease.token)).expires_at
        return lease

    async def renew(self, lease_id: str, token: str, *, ttl: float = 0.0) -> Lease:
        r = await self.call(
            self.leases.Renew,
            leases_pb2.RenewRequest(lease_id=lease_id, token=token, ttl_seconds=ttl),
        )
        return lease_from_pb(r.lease)

    async def release(self, lease_id: str, token: str) -> None:
        await self.call(
            self.leases.Release, leases_pb2.ReleaseRequest(lease_id=lease_id, token=token)
        )

    async def list_leases(self) -> list[Lease]:
        r = await self.call(self.leases.ListLeases, leases_pb2.ListLeasesRequest())
        return [lease_from_pb(m) for m in r.leases]

    @contextlib.asynccontextmanager
    async def lease(
        self,
        model_id: str | None = None,
        *,
        role: str | None = None,
        client_name: str | None = None,
        ttl: float = DEFAULT_TTL,
        priority: int = 0,
        exclusive: bool = False,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> AsyncIterator[Lease]:
        lease = await self.acquire(
            model_id,
            role=role,
            client_name=client_name,
            ttl=ttl,
            priority=priority,
            exclusive=exclusive,
            timeout=timeout,
            on_progress=on_progress,
        )
        renewer = asyncio.create_task(
            renew_in_task(lease, ttl, lambda: self.renew(lease.lease_id, lease.token, ttl=ttl))
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
                    await self.release(lease.lease_id, lease.token)
