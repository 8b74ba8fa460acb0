"""gpulet: client library and CLI for the gpuletd GPU model broker.

    with gpulet.Client() as client:
        best = client.select("caption").candidates[0].model.id
        with client.lease(best) as lease:
            ...  # lease.endpoint, lease.env(); renewed in the background, released at the end

Every result is a frozen value from `gpulet.types`; every failure a `gpulet.GpuletError`.
"""

from __future__ import annotations

import importlib.metadata as _metadata

from gpulet.async_client import AsyncClient
from gpulet.client import Client
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
from gpulet.types import (
    ActiveProfile,
    BackendKind,
    Candidate,
    ExplainStatus,
    Explanation,
    Gpu,
    GpuProcess,
    GpuState,
    GpuStatus,
    Lease,
    LeaseEvent,
    LeaseEventKind,
    MigMode,
    Model,
    ModelEvent,
    ModelState,
    PlacedModel,
    Plan,
    PlanOutcome,
    PlanVictim,
    Profile,
    ProfileList,
    ProfileSource,
    Progress,
    QueueItem,
    Selection,
    SelectionBias,
    Strategy,
    WatchEvent,
)

try:
    # The installed distribution's, so that pyproject.toml is the one place it is written.
    __version__ = _metadata.version("gpulet")
except _metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "ActiveProfile",
    "AsyncClient",
    "BackendFailed",
    "BackendKind",
    "Candidate",
    "Client",
    "DaemonUnavailable",
    "DeadlineExceeded",
    "ExplainStatus",
    "Explanation",
    "Gpu",
    "GpuProcess",
    "GpuState",
    "GpuStatus",
    "GpuletError",
    "InternalError",
    "InvalidArgument",
    "Lease",
    "LeaseError",
    "LeaseEvent",
    "LeaseEventKind",
    "LeaseLost",
    "MigMode",
    "Model",
    "ModelEvent",
    "ModelState",
    "ModelTooLarge",
    "NotFound",
    "PermissionDenied",
    "PlacedModel",
    "Plan",
    "PlanOutcome",
    "PlanVictim",
    "Profile",
    "ProfileList",
    "ProfileSource",
    "Progress",
    "QueueFull",
    "QueueItem",
    "ResourceExhausted",
    "Selection",
    "SelectionBias",
    "Strategy",
    "UnknownRole",
    "WatchEvent",
    "__version__",
]
