"""What `Client` and `AsyncClient` share: everything but I/O.

Requests are built, answers converted and errors mapped here, once; the twins only send and
receive, method by method in the same order, so that a reader compares them line by line.
"""

from __future__ import annotations

import dataclasses
import math
import os

import grpc

from gpulet import convert
from gpulet.address import default_address, normalize_address, socket_path
from gpulet.errors import DaemonUnavailable, GpuletError, from_rpc_error
from gpulet.types import Lease, Progress
from gpulet.v1 import leases_pb2, profiles_pb2, selector_pb2

__all__ = ["CLAIM_WITHIN_S", "DEFAULT_TIMEOUT", "BaseClient", "check_socket"]

DEFAULT_TIMEOUT = 10.0
# A grant must be claimed (a first Renew, sent at once) within this long, or the daemon takes
# it for one that never arrived (this caller was cancelled while it was on its way) and ends it.
CLAIM_WITHIN_S = 10.0


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


def check_timeout(value: float | None, name: str = "timeout") -> float | None:
    """None (no limit) or a finite number of seconds > 0: gRPC takes 0, a negative number or
    NaN as a deadline already passed and fails at once with its own words."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: must be a number of seconds > 0, or None; got {value!r}")
    return value


def _short(text: str) -> str:
    # Our messages quote what the caller sent; a huge or hostile string must not fill them.
    return repr(text if len(text) <= 64 else text[:64] + "...")


class BaseClient:
    """State and conversions common to the twins. Not meant to be used by itself."""

    def __init__(self, *, address: str | None, timeout: float) -> None:
        check_timeout(timeout)
        self.address = normalize_address(address or default_address())
        self.timeout = timeout

    # -- errors -------------------------------------------------------------------------------

    def _error(self, e: grpc.RpcError, *, waited_for: str, timeout: float | None) -> GpuletError:
        """`timeout`: the deadline this call was given (None: none, as for a Watch)."""
        return from_rpc_error(e, address=self.address, waited_for=waited_for, timeout=timeout)

    def _unary_error(self, e: grpc.RpcError, request: object) -> GpuletError:
        name = type(request).__name__.removesuffix("Request")  # the RPC's name
        return self._error(e, waited_for=f"gpuletd to answer {name}", timeout=self.timeout)

    @staticmethod
    def _acquire_waited_for(
        model_id: str | None, role: str | None, last: Progress | None, vram_mb: int | None = None
    ) -> str:
        if vram_mb is not None:
            target = f"{vram_mb} MiB of VRAM"
        elif model_id is not None:
            target = f"model {_short(model_id)}"
        else:
            target = f"role {_short(role or '')}"
        if last is None:
            where = "not yet queued"
        elif last.state == "queued":
            where = f"still queued, position {last.position} of {last.queue_length}"
        else:
            where = f"{last.model_id} still loading"
        return f"a lease on {target} ({where})"

    # -- requests -----------------------------------------------------------------------------

    @staticmethod
    def _select_request(
        role: str, top_n: int | None, profile: str | None = None
    ) -> selector_pb2.SelectByRoleRequest:
        req = selector_pb2.SelectByRoleRequest(role=role)
        if top_n is not None:
            req.top_n = top_n
        if profile:
            req.profile = profile
        return req

    @staticmethod
    def _explain_request(
        role: str, model_id: str, profile: str | None = None
    ) -> selector_pb2.ExplainSelectionRequest:
        req = selector_pb2.ExplainSelectionRequest(role=role, model_id=model_id)
        if profile:
            req.profile = profile
        return req

    @staticmethod
    def _acquire_request(
        model_id: str | None,
        role: str | None,
        client_name: str | None,
        ttl: float | None,
        priority: int,
        exclusive: bool,
        timeout: float | None,
        vram_mb: int | None = None,
    ) -> leases_pb2.AcquireRequest:
        if [model_id, role, vram_mb].count(None) != 2:
            raise ValueError("give exactly one of model_id, role or vram_mb")
        if vram_mb is not None and (isinstance(vram_mb, bool) or vram_mb <= 0):
            raise ValueError(f"vram_mb must be a positive number of MiB, got {vram_mb!r}")
        check_timeout(timeout)
        req = leases_pb2.AcquireRequest(
            client_name=client_name or f"pid {os.getpid()}",
            # 0: the daemon's default TTL, so that there is one default and the daemon owns it.
            ttl_seconds=ttl or 0.0,
            priority=priority,
            exclusive=exclusive,
            claim_within_seconds=CLAIM_WITHIN_S,
        )
        if vram_mb is not None:
            req.vram_mb = vram_mb
        elif model_id is not None:
            req.model_id = model_id
        else:
            req.role = role or ""
        return req

    @staticmethod
    def _credentials(lease: Lease | str, token: str | None) -> tuple[str, str]:
        if isinstance(lease, Lease):
            return lease.lease_id, lease.token if token is None else token
        if token is None:
            raise TypeError("a lease id needs its token: give the Lease, or (lease_id, token)")
        return lease, token

    def _renew_request(
        self, lease: Lease | str, token: str | None, ttl: float | None
    ) -> leases_pb2.RenewRequest:
        lease_id, token = self._credentials(lease, token)
        return leases_pb2.RenewRequest(lease_id=lease_id, token=token, ttl_seconds=ttl or 0.0)

    @staticmethod
    def _plan_request(
        model_id: str | None,
        role: str | None,
        priority: int,
        exclusive: bool,
        vram_mb: int | None = None,
    ) -> leases_pb2.PlanRequest:
        if [model_id, role, vram_mb].count(None) != 2:
            raise ValueError("give exactly one of model_id, role or vram_mb")
        req = leases_pb2.PlanRequest(priority=priority, exclusive=exclusive)
        if model_id is not None:
            req.model_id = model_id
        elif vram_mb is not None:
            req.vram_mb = vram_mb
        else:
            req.role = role or ""
        return req

    def _release_request(self, lease: Lease | str, token: str | None) -> leases_pb2.ReleaseRequest:
        lease_id, token = self._credentials(lease, token)
        return leases_pb2.ReleaseRequest(lease_id=lease_id, token=token)

    # -- answers ------------------------------------------------------------------------------

    @staticmethod
    def _renewed(lease: Lease | str, token: str | None, r: leases_pb2.RenewResponse) -> Lease:
        """A renewed `Lease` is the same lease with its new expiry: it keeps its token and its
        `lost` flag. A renewal by id gives a new value carrying the token it was given."""
        if isinstance(lease, Lease):
            return dataclasses.replace(lease, expires_at=convert.lease(r.lease).expires_at)
        return convert.lease(r.lease, token=token or "")

    @staticmethod
    def _no_grant() -> DaemonUnavailable:
        return DaemonUnavailable("gpuletd closed the Acquire stream without a grant")

    # The request messages that take no field, built once.
    _ACTIVE_PROFILE = profiles_pb2.GetActiveProfileRequest()
    _LIST_PROFILES = profiles_pb2.ListProfilesRequest()
    _LIST_MODELS = selector_pb2.ListModelsRequest()
    _LIST_ROLES = selector_pb2.ListRolesRequest()
    _LIST_LEASES = leases_pb2.ListLeasesRequest()
    _LIST_QUEUE = leases_pb2.ListQueueRequest()
    _WATCH = leases_pb2.WatchRequest()
