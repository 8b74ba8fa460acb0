"""The scheduler core: a pure, deterministic object that turns events and a clock into
decisions (queue, load, grant, evict, refuse). See `core` and docs/scheduling.md."""

from __future__ import annotations

from gpuletd.scheduler.codec import SnapshotError
from gpuletd.scheduler.core import Scheduler
from gpuletd.scheduler.decisions import (
    Decision,
    Granted,
    LeaseEnded,
    LeaseEndReason,
    LeaseRefused,
    Loading,
    ModelState,
    ModelStateChanged,
    PreloadSkipped,
    Queued,
    RejectCode,
    Rejected,
    RejectReason,
    Renewed,
    StartBackend,
    StopBackend,
    StopReason,
)
from gpuletd.scheduler.events import PolicyEvents, SchedulerEvents
from gpuletd.scheduler.invariants import check_invariants
from gpuletd.scheduler.state import Inherited, Tuning
from gpuletd.scheduler.views import GpuView, LeaseView, ModelView, QueueEntry

__all__ = [
    "Decision",
    "GpuView",
    "Granted",
    "Inherited",
    "LeaseEndReason",
    "LeaseEnded",
    "LeaseRefused",
    "LeaseView",
    "Loading",
    "ModelState",
    "ModelStateChanged",
    "ModelView",
    "PolicyEvents",
    "PreloadSkipped",
    "QueueEntry",
    "Queued",
    "RejectCode",
    "RejectReason",
    "Rejected",
    "Renewed",
    "Scheduler",
    "SchedulerEvents",
    "SnapshotError",
    "StartBackend",
    "StopBackend",
    "StopReason",
    "Tuning",
    "check_invariants",
]
