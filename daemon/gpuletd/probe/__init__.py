"""GPU probes: what the daemon knows about the machine's GPUs.

`types` holds the values every probe returns; `nvml` reads real GPUs through NVIDIA's
binding; `simulated` stands in for GPUs on machines without one; `poller` keeps a live
reading off the event loop.
"""

from __future__ import annotations

from gpuletd.probe.types import GpuProbe, GpuProcess, GpuSnapshot, GpuState, MigMode

__all__ = ["GpuProbe", "GpuProcess", "GpuSnapshot", "GpuState", "MigMode"]
