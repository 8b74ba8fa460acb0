"""Simulated GPUs follow what the daemon placed (only with --simulated-gpus).

They report each placed reservation as used memory and list each backend as a process
holding its share, so that admission, the wait for freed memory and the measured footprint
all run on a machine without a GPU. Reads the core's and the supervisor's state after each
batch; writes only into the simulated probe.
"""

from __future__ import annotations

from collections.abc import Sequence

from gpuletd.executor import Executor
from gpuletd.probe.simulated import SimulatedProbe
from gpuletd.probe.types import GpuProcess
from gpuletd.scheduler import Decision
from gpuletd.supervisor import Supervisor

__all__ = ["SimulatedGpuSink"]


class SimulatedGpuSink:
    def __init__(self, probe: SimulatedProbe, executor: Executor, supervisor: Supervisor) -> None:
        self._probe = probe
        self._ex = executor
        self._supervisor = supervisor
        # A backend starts between batches: it must be listed before the supervisor measures
        # it, or no footprint is ever measured on simulated GPUs.
        supervisor.on_watch(self.follow)

    def apply(self, decisions: Sequence[Decision]) -> None:
        self.follow()

    def follow(self) -> None:
        core = self._ex.core
        procs: dict[str, list[GpuProcess]] = {}
        for mid, pid in self._supervisor.leaders().items():
            v = core.model(mid)
            if v is not None:
                for uuid, mb in zip(v.gpu_uuids, v.gpu_reservations_mb, strict=False):
                    procs.setdefault(uuid, []).append(GpuProcess(pid, mb))
        self._probe.set_used(core.reserved_mb_by_gpu(), {u: tuple(p) for u, p in procs.items()})
