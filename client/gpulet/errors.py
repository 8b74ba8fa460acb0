"""Exceptions of the gpulet client, built from the gRPC status and ErrorInfo.reason.

GpuletError
 ├── DaemonUnavailable      the daemon is not running or not reachable
 ├── InvalidArgument        a request field is wrong (the message names it)
 │    └── UnknownRole
 ├── NotFound               unknown model, profile or lease
 ├── ResourceExhausted
 │    ├── QueueFull
 │    └── ModelTooLarge     larger than the profile or any GPU: will never fit
 ├── DeadlineExceeded
 ├── BackendFailed          the model's serving process did not become healthy
 ├── LeaseError
 │    ├── PermissionDenied  wrong token: not your lease
 │    └── LeaseLost         the lease ended (expired, or its backend died); also NotFound
 └── InternalError          a bug in gpuletd: please report it
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

__all__ = [
    "BackendFailed",
    "DaemonUnavailable",
    "DeadlineExceeded",
    "GpuletError",
    "InternalError",
    "InvalidArgument",
    "LeaseError",
    "LeaseLost",
    "ModelTooLarge",
    "NotFound",
    "PermissionDenied",
    "QueueFull",
    "ResourceExhausted",
    "UnknownRole",
    "from_rpc_error",
]


class GpuletError(Exception):
    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.metadata = metadata or {}


class DaemonUnavailable(GpuletError): ...


class InvalidArgument(GpuletError): ...


class UnknownRole(InvalidArgument): ...


class NotFound(GpuletError): ...


class ResourceExhausted(GpuletError): ...


class QueueFull(ResourceExhausted): ...


class ModelTooLarge(ResourceExhausted): ...


class DeadlineExceeded(GpuletError): ...


class BackendFailed(GpuletError): ...


class LeaseError(GpuletError): ...


class PermissionDenied(LeaseError): ...


class LeaseLost(LeaseError, NotFound): ...


class InternalError(GpuletError): ...


_BY_REASON: dict[str, type[GpuletError]] = {
    "UNKNOWN_ROLE": UnknownRole,
    "QUEUE_FULL": QueueFull,
    "MODEL_TOO_LARGE": ModelTooLarge,
    "LEASE_ENDED": LeaseLost,
}
_BY_CODE: dict[grpc.StatusCode, type[GpuletError]] = {
    grpc.StatusCode.UNAVAILABLE: DaemonUnavailable,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.FAILED_PRECONDITION: BackendFailed,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}
_BUG_CODES = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL})


def from_rpc_error(e: grpc.RpcError) -> GpuletError:
    code: grpc.StatusCode = e.code()
    message: str = e.details() or code.name
    reason, metadata = "", {}
    try:
        status = rpc_status.from_call(e)  # type: ignore[arg-type]
    except ValueError:
        status = None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
    # UNKNOWN / INTERNAL are bugs in gpuletd; other codes (CANCELLED, ABORTED, ...) are not.
    fallback = InternalError if code in _BUG_CODES else GpuletError
    cls = _BY_REASON.get(reason) or _BY_CODE.get(code, fallback)
    if code is grpc.StatusCode.UNAVAILABLE and not reason:
        message = f"gpuletd is not reachable: {message}"
    return cls(message, code=code, reason=reason, metadata=metadata)
