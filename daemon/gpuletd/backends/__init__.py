"""Backends: what "loaded" means for a model.

A *reservation* backend has no process (the lease holder loads the model; the daemon only
accounts its VRAM), so it needs no code here. A *process* backend is a serving command the daemon
starts on the placed GPUs, health-checks, watches and stops: `ProcessBackend` and
`RunningBackend`, with placeholders expanded by `placeholders` and failures explained by
`errors`. A backend outlives its daemon: `BackendRecord` is what a restarted daemon needs to
`adopt` it again (or `reap_leftovers` of it), and `reaper` makes the daemon the subreaper of
its backends' orphaned workers.
"""

from __future__ import annotations

from gpuletd.backends.adopt import adopt, reap_leftovers
from gpuletd.backends.errors import (
    BackendCrashedDuringStart,
    BackendError,
    BackendStartError,
    BackendStartTimeout,
)
from gpuletd.backends.health import check_health
from gpuletd.backends.placeholders import (
    PLACEHOLDERS,
    BackendConfigError,
    Launch,
    PlaceholderValues,
    expand_launch,
    validate_placeholders,
    validate_process_model,
)
from gpuletd.backends.ports import pick_free_port
from gpuletd.backends.process import ProcessBackend
from gpuletd.backends.procfs import boot_id, process_start_time
from gpuletd.backends.reaper import become_subreaper, reap_orphans
from gpuletd.backends.record import BackendRecord
from gpuletd.backends.running import ExitCallback, ExitStatus, RecordCallback, RunningBackend

__all__ = [
    "PLACEHOLDERS",
    "BackendConfigError",
    "BackendCrashedDuringStart",
    "BackendError",
    "BackendRecord",
    "BackendStartError",
    "BackendStartTimeout",
    "ExitCallback",
    "ExitStatus",
    "Launch",
    "PlaceholderValues",
    "ProcessBackend",
    "RecordCallback",
    "RunningBackend",
    "adopt",
    "become_subreaper",
    "boot_id",
    "check_health",
    "expand_launch",
    "pick_free_port",
    "process_start_time",
    "reap_leftovers",
    "reap_orphans",
    "validate_placeholders",
    "validate_process_model",
]
