"""Exceptions of the gpulet client, built from the gRPC status code and `ErrorInfo.reason`.

GpuletError                 anything gpuletd refused, or could not be asked
 ├── DaemonUnavailable      not running, not reachable, or shutting down
 ├── InvalidArgument        a request field is wrong (the message names it)
 │    └── UnknownRole       no model declares that role
 ├── NotFound               no such model, profile or lease
 │    └── LeaseLost         (also a LeaseError) the lease has ended
 ├── ResourceExhausted      refused for want of room
 │    ├── QueueFull         too many requests waiting: retry later
 │    └── ModelTooLarge     larger than the profile or any GPU: will never fit
 ├── DeadlineExceeded       the caller's timeout passed first
 ├── BackendFailed          the model's serving process did not become healthy
 ├── LeaseError             a lease operation was refused
 │    ├── PermissionDenied  wrong token: not your lease
 │    └── LeaseLost
 └── InternalError          a bug in gpuletd: please report it

The status code picks the class; a known `ErrorInfo.reason` picks a finer one.
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
    """Base of every error the client raises for a call to gpuletd.

    Raised as itself for a status no subclass covers (e.g. CANCELLED). `code` is the gRPC
    status (None when the call never left this process), `reason` the `ErrorInfo.reason`
    (e.g. "QUEUE_FULL", "" when the daemon gave none) and `metadata` its details, such as
    `{"field": "ttl_seconds"}`."""

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


class DaemonUnavailable(GpuletError):
    """Raised when gpuletd cannot be asked: its socket does not exist (checked before
    dialing), the connection is refused or dropped, or it answered UNAVAILABLE because it
    is shutting down (`reason == "SHUTTING_DOWN"`). Retrying after a restart can work."""


class InvalidArgument(GpuletError):
    """Raised on INVALID_ARGUMENT: a request field is out of range or malformed (a TTL
    above `max_lease_ttl_seconds`, a priority outside -1000..1000, a malformed lease id).
    `metadata["field"]` names the field when the daemon did. Retrying will not help."""


class UnknownRole(InvalidArgument):
    """Raised by `select()`, `acquire(role=...)` and `lease(role=...)` when no model in the
    registry declares the role; the message lists the known ones."""


class NotFound(GpuletError):
    """Raised on NOT_FOUND: no model, profile or lease by that id."""


class ResourceExhausted(GpuletError):
    """Raised on RESOURCE_EXHAUSTED without a finer reason: gpuletd refused for want of
    room."""


class QueueFull(ResourceExhausted):
    """Raised by `acquire()` when the daemon's queue is at its limit; retry later."""


class ModelTooLarge(ResourceExhausted):
    """Raised by `acquire()` when the model (or every model for the role) is larger than
    the active profile's budget or any GPU: it will never fit here, do not retry."""


class DeadlineExceeded(GpuletError):
    """Raised when a call's timeout passed before gpuletd answered: for `acquire()`, while
    the request was still queued or its model still loading (the message says which and
    for how long)."""


class BackendFailed(GpuletError):
    """Raised on FAILED_PRECONDITION from `acquire()`: the model's serving process exited
    or did not become healthy in time. The message quotes its last log lines."""


class LeaseError(GpuletError):
    """Raised, as one of its subclasses, when `renew()` or `release()` is refused: catch it
    for "this lease cannot be used any more"."""


class PermissionDenied(LeaseError):
    """Raised on PERMISSION_DENIED: the token does not match the lease (not your lease)."""


class LeaseLost(LeaseError, NotFound):
    """Raised by `renew()` and `release()` when the lease has ended: it expired, its
    backend died, or it was released. The background renewal of `Client.lease()` sets
    `lease.lost` instead of raising."""


class InternalError(GpuletError):
    """Raised on UNKNOWN or INTERNAL: a bug in gpuletd. Please report it with the message."""


_BY_REASON: dict[str, type[GpuletError]] = {
    "UNKNOWN_ROLE": UnknownRole,
    "QUEUE_FULL": QueueFull,
    "MODEL_TOO_LARGE": ModelTooLarge,
    "LEASE_ENDED": LeaseLost,
    "BACKEND_FAILED": BackendFailed,
    "WRONG_TOKEN": PermissionDenied,
    "SHUTTING_DOWN": DaemonUnavailable,
}
_BY_CODE: dict[grpc.StatusCode, type[GpuletError]] = {
    grpc.StatusCode.UNAVAILABLE: DaemonUnavailable,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.FAILED_PRECONDITION: BackendFailed,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNKNOWN: InternalError,
    grpc.StatusCode.INTERNAL: InternalError,
}


def _error_info(e: grpc.RpcError) -> tuple[str, dict[str, str]]:
    try:
        status = rpc_status.from_call(e)  # type: ignore[arg-type]
    except (ValueError, AttributeError):  # details that do not match the status, or no call
        return "", {}
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason, dict(info.metadata)
    return "", {}


def _transport_summary(details: str) -> str:
    """gRPC's connect errors end with the OS's words ("...: Connection refused"): keep those."""
    tail = details.rsplit(": ", 1)[-1].strip()
    return tail[:1].lower() + tail[1:] if tail else "no connection"


def from_rpc_error(
    e: grpc.RpcError,
    *,
    address: str = "",
    waited_for: str = "",
    timeout: float | None = None,
) -> GpuletError:
    """The typed exception for a failed call. `waited_for` says what the caller waited for
    ("the Acquire of model m, queued at position 2") and `timeout` for how long, so that a
    timeout reads as that and not as gRPC's "Deadline Exceeded"."""
    code: grpc.StatusCode = e.code()
    details: str = e.details() or code.name
    reason, metadata = _error_info(e)
    cls = _BY_REASON.get(reason) or _BY_CODE.get(code, GpuletError)
    message = details
    if not reason:
        # No ErrorInfo: the status came from the gRPC library, not gpuletd. Its text names
        # transport internals; say what it means instead.
        if code is grpc.StatusCode.DEADLINE_EXCEEDED and timeout is not None:
            message = f"gave up after {timeout:g} s waiting for {waited_for or 'gpuletd'}"
        elif code is grpc.StatusCode.UNAVAILABLE:
            where = f" at {address}" if address else ""
            message = f"gpuletd is not reachable{where}: {_transport_summary(details)}"
        elif code is grpc.StatusCode.CANCELLED:
            message = f"cancelled while waiting for {waited_for or 'gpuletd'}"
        elif code is grpc.StatusCode.UNIMPLEMENTED:
            message = f"gpuletd{' at ' + address if address else ''} is too old: {details}"
    return cls(message, code=code, reason=reason, metadata=metadata)
