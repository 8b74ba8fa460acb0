"""The scheduler core's event interface, named once.

`SchedulerEvents` is every event the daemon's shell feeds the core, with its exact signature;
`core.Scheduler` implements it. `PolicyEvents` is the part the bench's simulator drives
(bench/sim.py): the real core and the emulations of its peers (bench/policies) all implement
it, so the replay compares policies behind one interface without restating it.

Every event takes the current time (`now`, the shell's monotonic clock) and returns the
decisions to execute, in order; `next_wakeup` says when `tick` would next do something.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from gpuletd.probe.types import GpuSnapshot
from gpuletd.profiles import Profile
from gpuletd.registry import Model
from gpuletd.scheduler.decisions import Decision

__all__ = ["PolicyEvents", "SchedulerEvents"]


class PolicyEvents(Protocol):
    """What the bench drives: requests and releases, backend results, probe readings, time."""

    def request(
        self,
        request_id: str,
        model_id: str,
        *,
        now: float,
        priority: int = 0,
        ttl_s: float | None = None,
    ) -> list[Decision]: ...

    def release(self, lease_id: str, *, now: float) -> list[Decision]: ...

    def load_succeeded(
        self, model_id: str, *, now: float, measured_mb: int | None = None
    ) -> list[Decision]: ...

    def load_failed(self, model_id: str, reason: str, *, now: float) -> list[Decision]: ...

    def unload_finished(self, model_id: str, *, now: float) -> list[Decision]: ...

    def probe(self, readings: Sequence[GpuSnapshot], *, now: float) -> list[Decision]: ...

    def tick(self, now: float) -> list[Decision]: ...

    def next_wakeup(self) -> float | None: ...


class SchedulerEvents(PolicyEvents, Protocol):
    """Every event of the core (see core.py for what each does and the shell's contract)."""

    def start(self, now: float) -> list[Decision]: ...

    def request(
        self,
        request_id: str,
        model_id: str,
        *,
        now: float,
        client: str = "",
        priority: int = 0,
        ttl_s: float | None = None,
        exclusive: bool = False,
        deadline: float | None = None,
        secret: str = "",
        claim_within_s: float | None = None,
        vram_mb: int | None = None,
    ) -> list[Decision]: ...

    def cancel(self, request_id: str, *, now: float) -> list[Decision]: ...

    def renew(self, lease_id: str, *, now: float, ttl_s: float | None = None) -> list[Decision]: ...

    def load_succeeded(
        self,
        model_id: str,
        *,
        now: float,
        measured_mb: int | None = None,
        endpoint: str = "",
    ) -> list[Decision]: ...

    def backend_died(self, model_id: str, reason: str, *, now: float) -> list[Decision]: ...

    def revoke(self, lease_id: str, message: str, *, now: float) -> list[Decision]: ...

    def unload(self, model_id: str, *, now: float, message: str) -> list[Decision]: ...

    def pin(self, model_id: str, keep_warm: bool, *, now: float) -> list[Decision]: ...

    def reconfigure(
        self,
        profile: Profile,
        models: Mapping[str, Model],
        *,
        now: float,
        preload: Sequence[str] = (),
    ) -> list[Decision]: ...
