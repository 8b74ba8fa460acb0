"""The model registry: what models exist, what they cost and how to start them."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["ENGINES", "Backend", "Model", "Registry", "WeightClass"]

# Engine names a model may give; anything else is a typo, not a new engine: an engine the
# daemon has no preset for is "custom".
ENGINES = ("vllm", "llama.cpp", "sglang", "tgi", "ollama", "comfyui", "custom")


class Backend(enum.Enum):
    # No process: the lease holder loads the model itself; the daemon only accounts the VRAM.
    RESERVATION = "reservation"
    # A serving process the daemon starts, health-checks and stops.
    PROCESS = "process"


class WeightClass(enum.Enum):
    # Counted against the profile's `max_heavy_models`.
    HEAVY = "heavy"
    # Never counted, whatever its size.
    LIGHT = "light"


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
    # A regex (checked at config load) searched in each line of the backend's output: the
    # first match marks it ready, without waiting for the next health check.
    ready_log_pattern: str | None = None
    # GPU pinning: indexes or UUIDs the model may be placed on (empty: anywhere).
    gpus: tuple[str, ...] = ()
    # Per-model overrides of the profile's timers.
    autostart_timeout_seconds: float | None = None
    grace_period_seconds: float | None = None
    # Heavy or light for the profile's `max_heavy_models`; None: by the profile's
    # `heavy_threshold_mb`.
    weight_class: WeightClass | None = None
    # The serving engine: a known one gets a launch preset (backends/engines.py) built from
    # its placement; "custom" runs `command` as written.
    engine: str = "custom"
    # This model's engine settings (dtype, max_model_len, ...); they patch the profile's
    # `engine` table key by key.
    engine_settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Registry:
    models: Mapping[str, Model]

    def get(self, model_id: str) -> Model | None:
        return self.models.get(model_id)

    def roles(self) -> list[str]:
        return sorted({role for m in self.models.values() for role in m.role_priority})
