"""Values a GPU probe returns, and the interface every probe implements."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

__all__ = ["GpuProbe", "GpuProcess", "GpuSnapshot", "GpuState", "MigMode", "ProbeUnavailable"]


class GpuState(enum.Enum):
    OK = "ok"
    # The last reading failed repeatedly (NVML Unknown / Timeout); numbers are the last good ones.
    STALE = "stale"
    # GpuIsLost / ResetRequired: nothing may be placed here until the daemon restarts.
    LOST = "lost"


class MigMode(enum.Enum):
    UNKNOWN = "unknown"
    DISABLED = "disabled"
    ENABLED = "enabled"


@dataclass(frozen=True)
class GpuProcess:
    """A process holding memory on a GPU; `used_mb` is None when the driver cannot say."""

    pid: int
    used_mb: int | None


@dataclass(frozen=True)
class GpuSnapshot:
    """One GPU as last read. Memory fields are None when unknown: never report 0 for unknown."""

    index: int
    uuid: str
    name: str
    pci_bus_id: str
    total_mb: int | None
    free_mb: int | None
    used_mb: int | None
    reserved_mb: int | None
    compute_capability: tuple[int, int] | None
    mig_mode: MigMode
    state: GpuState = GpuState.OK
    # time.monotonic() of the reading the memory fields come from.
    read_at: float = 0.0


class ProbeUnavailable(Exception):
    """The probe cannot run on this machine (no library, no driver): the daemon runs GPU-less."""


class GpuProbe(Protocol):
    """What the daemon needs from a source of GPU readings.

    `open` and `read` block (NVML calls); the daemon calls them from a worker thread.
    """

    @property
    def kind(self) -> str:
        """`nvml`, `simulated` or `none`."""
        ...

    def open(self) -> list[GpuSnapshot]:
        """Discover devices; raises ProbeUnavailable when there is nothing to probe."""
        ...

    def read(self) -> list[GpuSnapshot]:
        """One poll of live memory for every device found by `open`. Never raises for one
        device's failure: that device's snapshot carries the state instead."""
        ...

    def processes(self, uuid: str) -> tuple[GpuProcess, ...]:
        """Compute processes on one GPU. Slow (driver lock): call rarely."""
        ...

    def close(self) -> None: ...
