"""`gpulet.admin.AdminClient`: gpuletd's operator actions, over the admin socket only.

    with AdminClient() as admin:
        admin.unload("qwen3-vl", force=True, reason="driver update in 5 minutes")

The admin socket (`gpuletd --admin-socket`, default `admin.sock` beside the user socket) is
mode 0600: only the daemon's own user (or root) can connect. The user socket does not serve
these calls at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import grpc

from gpulet.address import default_address, normalize_address, socket_path
from gpulet.base import DEFAULT_TIMEOUT, check_socket, check_timeout
from gpulet.errors import GpuletError, from_rpc_error
from gpulet.v1 import admin_pb2, admin_pb2_grpc

__all__ = [
    "ENV_ADMIN_ADDRESS",
    "AdminClient",
    "Drained",
    "EndedLease",
    "ModelLeased",
    "Pinned",
    "ProfileSwitched",
    "Unloaded",
    "Unpinned",
    "default_admin_address",
]

ENV_ADMIN_ADDRESS = "GPULET_ADMIN_ADDRESS"
ADMIN_SOCKET = "admin.sock"

Resp = TypeVar("Resp")


def default_admin_address() -> str:
    """`GPULET_ADMIN_ADDRESS`, else `admin.sock` beside the default user socket (where gpuletd
    puts it unless told otherwise)."""
    env = os.environ.get(ENV_ADMIN_ADDRESS)
    if env:
        return normalize_address(env)
    user = socket_path(default_address())
    if user is None:  # GPULET_ADDRESS names a TCP port: there is no directory to look beside
        raise GpuletError(
            f"no admin socket known: set {ENV_ADMIN_ADDRESS} or pass --admin-socket "
            "(the admin service is served on a Unix socket only)"
        )
    return "unix://" + os.path.join(os.path.dirname(user), ADMIN_SOCKET)


class ModelLeased(GpuletError):
    """An unload refused because the model is leased; the message names the holders. Retry
    with `force=True` (and a reason) to end their leases."""


@dataclass(frozen=True)
class EndedLease:
    lease_id: str
    model_id: str
    client_name: str


@dataclass(frozen=True)
class Unloaded:
    model_id: str
    ended_lease_ids: tuple[str, ...]
    # The model's state after the call: "unloaded", "loaded", "unloading", ...
    state: str
    # When it unloads for idleness, if it stays loaded for now (gpuletd has no immediate unload).
    unloads_at: datetime | None
    message: str


@dataclass(frozen=True)
class Pinned:
    model_id: str
    # The model's state after the call: "loading", "loaded", "unloaded", ...
    state: str
    # "pinned and loading", "pinned, already loaded", "pinned but not loaded now: <why>", ...
    message: str


@dataclass(frozen=True)
class Unpinned:
    model_id: str
    # False when it was not kept warm (neither pinned nor preloaded).
    was_pinned: bool
    state: str
    # When it unloads for idleness if it stays unleased; None when not loaded, or leased.
    unloads_at: datetime | None
    message: str


@dataclass(frozen=True)
class ProfileSwitched:
    previous_profile: str
    profile: str


@dataclass(frozen=True)
class Drained:
    leases_held: int
    waiting: int


# Reasons whose meaning on the admin socket is narrower than their status code's: the user
# client maps FAILED_PRECONDITION to BackendFailed, which is not what a leased model is.
_BY_REASON: dict[str, type[GpuletError]] = {"MODEL_LEASED": ModelLeased}


class AdminClient:
    """Blocking client for AdminService. Every method raises a `gpulet.GpuletError` subclass
    on failure. `address`: the admin socket, `unix:///path` or a path (default:
    `default_admin_address()`)."""

    def __init__(self, *, address: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        check_timeout(timeout)
        self.address = normalize_address(address) if address else default_admin_address()
        if socket_path(self.address) is None:
            raise GpuletError(
                f"the admin service is served on a Unix socket only, not {self.address}"
            )
        self.timeout = timeout
        check_socket(self.address)
        self._channel = grpc.insecure_channel(self.address)
        self._stub = admin_pb2_grpc.AdminServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Callable[..., Resp], request: object) -> Resp:
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as e:
            name = type(request).__name__.removesuffix("Request")
            err = from_rpc_error(
                e,
                address=self.address,
                waited_for=f"gpuletd to answer {name}",
                timeout=self.timeout,
            )
            cls = _BY_REASON.get(err.reason)
            if cls is not None:
                raise cls(
                    err.message, code=err.code, reason=err.reason, metadata=err.metadata
                ) from None
            raise err from None

    def end_lease(self, lease_id: str, reason: str) -> EndedLease:
        r = self._call(
            self._stub.EndLease, admin_pb2.EndLeaseRequest(lease_id=lease_id, reason=reason)
        )
        return EndedLease(r.lease_id, r.model_id, r.client_name)

    def unload(self, model_id: str, *, force: bool = False, reason: str = "") -> Unloaded:
        r = self._call(
            self._stub.UnloadModel,
            admin_pb2.UnloadModelRequest(model_id=model_id, force=force, reason=reason),
        )
        at = (
            datetime.fromtimestamp(r.unloads_at.ToNanoseconds() / 1e9, UTC)
            if r.HasField("unloads_at")
            else None
        )
        return Unloaded(r.model_id, tuple(r.ended_lease_ids), r.state, at, r.message)

    def pin(self, model_id: str, reason: str = "") -> Pinned:
        """Keep a model warm: never unloaded for idleness, still evicted when a request needs
        its room. An unloaded model is loaded if it fits without evicting anything."""
        r = self._call(
            self._stub.PinModel, admin_pb2.PinModelRequest(model_id=model_id, reason=reason)
        )
        return Pinned(r.model_id, r.state, r.message)

    def unpin(self, model_id: str) -> Unpinned:
        """Stop keeping a model warm: an idle one unloads at the end of its grace period."""
        r = self._call(self._stub.UnpinModel, admin_pb2.UnpinModelRequest(model_id=model_id))
        at = (
            datetime.fromtimestamp(r.unloads_at.ToNanoseconds() / 1e9, UTC)
            if r.HasField("unloads_at")
            else None
        )
        return Unpinned(r.model_id, r.was_pinned, r.state, at, r.message)

    def switch_profile(self, profile: str, reason: str = "") -> ProfileSwitched:
        r = self._call(
            self._stub.SwitchProfile,
            admin_pb2.SwitchProfileRequest(profile=profile, reason=reason),
        )
        return ProfileSwitched(r.previous_profile, r.profile)

    def drain(self) -> Drained:
        r = self._call(self._stub.Drain, admin_pb2.DrainRequest())
        return Drained(r.leases_held, r.waiting)

    def undrain(self) -> bool:
        """True if it was draining."""
        r = self._call(self._stub.Undrain, admin_pb2.UndrainRequest())
        return r.was_draining
