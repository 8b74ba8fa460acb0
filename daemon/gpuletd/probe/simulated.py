"""A probe for machines without GPUs: sizes from a spec, free memory following placements."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gpuletd.probe.types import GpuProcess, GpuSnapshot, MigMode, ProbeUnavailable

__all__ = ["SimulatedGpu", "SimulatedProbe", "parse_simulated_gpus"]

_DEFAULT_NAME = "Simulated GPU"


@dataclass(frozen=True)
class SimulatedGpu:
    name: str
    total_mb: int


def parse_simulated_gpus(spec: str) -> list[SimulatedGpu]:
    """Parse `16384,16384` or `NVIDIA GeForce RTX 4080:16384,24576` (sizes in MiB).

    The size is after the *last* colon so that names may contain colons.
    """
    gpus: list[SimulatedGpu] = []
    for i, raw in enumerate(spec.split(",")):
        item = raw.strip()
        if not item:
            raise ValueError(f"simulated GPU #{i}: empty entry in {spec!r}")
        name, sep, size = item.rpartition(":")
        if not sep:
            name, size = _DEFAULT_NAME, item
        name = name.strip() or _DEFAULT_NAME
        try:
            total = int(size.strip())
        except ValueError:
            raise ValueError(
                f"simulated GPU #{i}: size {size.strip()!r} is not a whole number of MiB"
                " (expected e.g. 16384 or 'NVIDIA GeForce RTX 4080:16384')"
            ) from None
        if total <= 0:
            raise ValueError(f"simulated GPU #{i}: size must be > 0 MiB, got {total}")
        gpus.append(SimulatedGpu(name, total))
    return gpus


def _uuid_for(index: int, gpu: SimulatedGpu) -> str:
    # Stable across restarts so that pinning by UUID in a config keeps working in demos.
    digest = hashlib.sha1(f"{index}:{gpu.name}:{gpu.total_mb}".encode()).hexdigest()
    return f"GPU-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


class SimulatedProbe:
    """Free memory = total − what the daemon says it has placed (see `set_used`)."""

    def __init__(
        self, gpus: list[SimulatedGpu], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._gpus = gpus
        self._clock = clock
        self._uuids = [_uuid_for(i, g) for i, g in enumerate(gpus)]
        self._used: dict[str, int] = {}
        self._procs: dict[str, tuple[GpuProcess, ...]] = {}
        self._lock = threading.Lock()

    @property
    def kind(self) -> str:
        return "simulated"

    @property
    def uuids(self) -> list[str]:
        return list(self._uuids)

    def set_used(
        self,
        used_by_uuid: Mapping[str, int],
        processes: Mapping[str, tuple[GpuProcess, ...]] | None = None,
    ) -> None:
        """Report memory in use per GPU (the daemon passes its placed reservations) and, per
        GPU, the processes holding it (its backends), as NVML would list them."""
        with self._lock:
            self._used = dict(used_by_uuid)
            self._procs = dict(processes or {})

    def open(self) -> list[GpuSnapshot]:
        if not self._gpus:
            raise ProbeUnavailable("no simulated GPUs configured")
        return self.read()

    def read(self) -> list[GpuSnapshot]:
        now = self._clock()
        with self._lock:
            used = dict(self._used)
        out = []
        for i, (gpu, uuid) in enumerate(zip(self._gpus, self._uuids, strict=True)):
            u = min(used.get(uuid, 0), gpu.total_mb)
            out.append(
                GpuSnapshot(
                    index=i,
                    uuid=uuid,
                    name=gpu.name,
                    pci_bus_id=f"00000000:{i + 1:02X}:00.0",
                    total_mb=gpu.total_mb,
                    free_mb=gpu.total_mb - u,
                    used_mb=u,
                    reserved_mb=0,
                    compute_capability=(8, 9),
                    mig_mode=MigMode.DISABLED,
                    read_at=now,
                )
            )
        return out

    def processes(self, uuid: str) -> tuple[GpuProcess, ...]:
        with self._lock:
            return self._procs.get(uuid, ())

    def close(self) -> None:
        pass
