"""A policy that does nothing: the trivial baseline for the core's raw speed (it measures what
replaying the same events costs without any scheduling)."""

from __future__ import annotations

from collections.abc import Sequence

from gpuletd.probe.types import GpuSnapshot
from gpuletd.scheduler.decisions import Decision

__all__ = ["NoOp"]


class NoOp:
    def request(
        self,
        request_id: str,
        model_id: str,
        *,
        now: float,
        priority: int = 0,
        ttl_s: float | None = None,
    ) -> list[Decision]:
        return []

    def release(self, lease_id: str, *, now: float) -> list[Decision]:
        return []

    def load_succeeded(
        self, model_id: str, *, now: float, measured_mb: int | None = None
    ) -> list[Decision]:
        return []

    def load_failed(self, model_id: str, reason: str, *, now: float) -> list[Decision]:
        return []

    def unload_finished(self, model_id: str, *, now: float) -> list[Decision]:
        return []

    def probe(self, readings: Sequence[GpuSnapshot], *, now: float) -> list[Decision]:
        return []

    def tick(self, now: float) -> list[Decision]:
        return []

    def next_wakeup(self) -> float | None:
        return None
