"""The model registry: what models exist, what they cost and how to start them."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["Backend", "Model", "Registry"]


class Backend(enum.Enum):
    # No process: the lease holder loads the model itself; the daemon only accounts the VRAM.
    RESERVATION = "reservation"
    # A serving process the daemon starts, health-checks and stops.
    PROCESS = "process"


@dataclass(frozen=True)
class Model:
    id: str
    name: str
    backend: Backend
    quantization: str
    vram_estimate_mb: int
    role_priority: Mapping[str, int]
    group: str | None = None
    # Launch fields of a process backend; placeholders such as {port} are filled at start.
    command: tuple[str, ...] = ()
    health_url: str | None = None
    endpoint: str | None = None
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # GPU pinning: indexes or UUIDs the model may be placed on (empty: anywhere).
    gpus: tuple[str, ...] = ()
    # Per-model overrides of the profile's timers.
    autostart_timeout_seconds: float | None = None
    grace_period_seconds: float | None = None


@dataclass(frozen=True)
class Registry:
    models: Mapping[str, Model]

    def get(self, model_id: str) -> Model | None:
        return self.models.get(model_id)

    def roles(self) -> list[str]:
        return sorted({role for m in self.models.values() for role in m.role_priority})
