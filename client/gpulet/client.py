"""`gpulet.Client` and `gpulet.AsyncClient`: the daemon's services for Python callers."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from gpulet.address import default_address, socket_path
from gpulet.errors import DaemonUnavailable, from_rpc_error
from gpulet.v1 import (
    leases_pb2_grpc,
    profiles_pb2,
    profiles_pb2_grpc,
    selector_pb2,
    selector_pb2_grpc,
)

__all__ = ["AsyncClient", "Client", "check_socket"]

T = TypeVar("T")


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
        return self.call(
            self.profiles.GetActiveProfile, profiles_pb2.GetActiveProfileRequest()
        )

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

    async def models(self) -> selector_pb2.ListModelsResponse:
        return await self.call(self.selector.ListModels, selector_pb2.ListModelsRequest())
