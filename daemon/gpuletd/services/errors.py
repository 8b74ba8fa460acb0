"""Domain failures → gRPC status with a message a person can act on and an ErrorInfo."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from gpuletd.leases import LeaseFailed

__all__ = ["DOMAIN", "abort", "fail"]

DOMAIN = "gpulet.dev"


async def abort(
    context: grpc.aio.ServicerContext[Any, Any],
    code: grpc.StatusCode,
    reason: str,
    message: str,
    **metadata: str,
) -> NoReturn:
    """`reason` is an UPPER_SNAKE identifier clients map to exception types (ErrorInfo.reason);
    `metadata` names the offending field and values, e.g. field="role"."""
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata))
    status = rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=message, details=[detail])
    )
    await context.abort(code, message, trailing_metadata=status.trailing_metadata)
    raise AssertionError("unreachable: context.abort raises")


async def fail(context: grpc.aio.ServicerContext[Any, Any], e: LeaseFailed) -> NoReturn:
    """The lease API's refusals, as the status code and ErrorInfo they name."""
    meta = {"field": e.field} if e.field else {}
    await abort(context, grpc.StatusCode[e.code], e.reason, e.message, **meta)
