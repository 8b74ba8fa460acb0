"""Domain failures → gRPC status with a message a person can act on and an ErrorInfo."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from gpuletd.bounds import Refused

__all__ = ["DOMAIN", "MAX_MESSAGE_BYTES", "abort", "fail"]

DOMAIN = "gpulet.dev"
# The message travels twice in the trailers (grpc-message, percent-encoded: up to 3 bytes per
# byte; and inside grpc-status-details-bin, base64), and past about 8 KB of headers the caller
# gets RESOURCE_EXHAUSTED instead of our code. Messages quote client strings short already;
# this is the backstop for text we do not control (a backend's last log lines, say).
MAX_MESSAGE_BYTES = 1024
MAX_METADATA_CHARS = 128


def _bounded(text: str, limit: int) -> str:
    raw = text.encode()
    if len(raw) <= limit:
        return text
    # The middle goes: the head says what failed, the tail holds what explains it (a
    # backend's last log lines, the command to run it by hand). Cut on character boundaries:
    # "ignore" drops a split UTF-8 sequence.
    head, tail = limit // 4, limit - limit // 4
    cut = len(raw) - head - tail
    return (
        raw[:head].decode(errors="ignore")
        + f" ... ({cut} bytes cut) ... "
        + raw[-tail:].decode(errors="ignore")
    )


async def abort(
    context: grpc.aio.ServicerContext[Any, Any],
    code: grpc.StatusCode,
    reason: str,
    message: str,
    **metadata: str,
) -> NoReturn:
    """`reason` is an UPPER_SNAKE identifier clients map to exception types (ErrorInfo.reason);
    `metadata` names the offending field and values, e.g. field="role"."""
    message = _bounded(message, MAX_MESSAGE_BYTES)
    metadata = {k: _bounded(v, MAX_METADATA_CHARS) for k, v in metadata.items()}
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata))
    status = rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=message, details=[detail])
    )
    await context.abort(code, message, trailing_metadata=status.trailing_metadata)
    raise AssertionError("unreachable: context.abort raises")


async def fail(context: grpc.aio.ServicerContext[Any, Any], e: Refused) -> NoReturn:
    """A refusal of the lease API or the bounds, as the status code and ErrorInfo it names."""
    meta = {"field": e.field} if e.field else {}
    await abort(context, grpc.StatusCode[e.code], e.reason, e.message, **meta)
