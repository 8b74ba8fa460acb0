"""gpulet: client library and CLI for the gpuletd GPU model broker.

with gpulet.Client() as client:
    best = client.select("caption").candidates[0].model.id
"""

from __future__ import annotations

from gpulet.client import AsyncClient, Client
from gpulet.errors import (
    BackendFailed,
    DaemonUnavailable,
    DeadlineExceeded,
    GpuletError,
    InternalError,
    InvalidArgument,
    LeaseError,
    LeaseLost,
    ModelTooLarge,
    NotFound,
    PermissionDenied,
    QueueFull,
    ResourceExhausted,
    UnknownRole,
)

__all__ = [
    "AsyncClient",
    "BackendFailed",
    "Client",
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
]
