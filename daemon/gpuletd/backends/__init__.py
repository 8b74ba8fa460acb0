"""Backends: what "loaded" means for a model.

A *reservation* backend has no process (the lease holder loads the model; the daemon only
accounts its VRAM), so it needs no code here. A *process* backend is a serving command the daemon
starts on the placed GPUs, health-checks, watches and stops: `ProcessBackend` and
`RunningBackend`, with placeholders expanded by `placeholders` and failures explained by
`errors`.
"""

from __future__ import annotations

from gpuletd.backends.errors import (
    BackendCrashedDuringStart,
    BackendError,
    BackendStartError,
    BackendStartTimeout,
)
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
from gpuletd.backends.procfs import process_start_time
from gpuletd.backends.running import ExitCallback, ExitStatus, RunningBackend

__all__ = [
    "PLACEHOLDERS",
    "BackendConfigError",
    "BackendCrashedDuringStart",
    "BackendError",
    "BackendStartError",
    "BackendStartTimeout",
    "ExitCallback",
    "ExitStatus",
    "Launch",
    "PlaceholderValues",
    "ProcessBackend",
    "RunningBackend",
    "expand_launch",
    "pick_free_port",
    "process_start_time",
    "validate_placeholders",
    "validate_process_model",
]
