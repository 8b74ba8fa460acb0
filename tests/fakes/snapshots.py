"""GPU readings for scheduler tests: one builder so every test means the same GPU."""

from __future__ import annotations

from gpuletd.probe.types import GpuSnapshot, GpuState, MigMode


def snapshot(
    index: int,
    total: int,
    free: int | None = None,
    *,
    at: float = 0.0,
    state: GpuState = GpuState.OK,
) -> GpuSnapshot:
    free = total if free is None else free
    return GpuSnapshot(
        index=index,
        uuid=f"GPU-{index}",
        name="Test GPU",
        pci_bus_id=f"0000:0{index}:00.0",
        total_mb=total,
        free_mb=free,
        used_mb=total - free,
        reserved_mb=0,
        compute_capability=(8, 9),
        mig_mode=MigMode.DISABLED,
        state=state,
        read_at=at,
    )
