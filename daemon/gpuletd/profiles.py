"""Deployment profiles: the budget and policy the daemon runs under, and the five built in."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

__all__ = [
    "BUILTIN_PROFILES",
    "DEFAULT_HEADROOM_MB",
    "PROFILE_FIELDS",
    "Bias",
    "Profile",
    "Strategy",
    "profile_values",
]

# Per GPU, kept free for the driver, CUDA context and fragmentation (seed design).
DEFAULT_HEADROOM_MB = 2048


class Strategy(enum.Enum):
    LOAD_UNLOAD = "load_unload"
    CONCURRENT_LIMITED = "concurrent_limited"
    CONCURRENT_FULL = "concurrent_full"
    TENSOR_PARALLEL_OR_DISTRIBUTED = "tensor_parallel_or_distributed"


class Bias(enum.Enum):
    VRAM_EFFICIENT = "vram_efficient"
    BALANCED = "balanced"
    QUALITY = "quality"


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    max_vram_mb: int
    max_concurrent_models: int
    preferred_quantizations: tuple[str, ...]
    strategy: Strategy
    autostart_timeout_seconds: float
    grace_period_seconds: float
    model_selection_bias: Bias
    gpu_count: int = 1
    # Only meaningful for tensor_parallel_or_distributed: models larger than this span GPUs.
    tensor_parallel_threshold_mb: int | None = None
    headroom_mb: int = DEFAULT_HEADROOM_MB

    def quantization_rank(self, quantization: str) -> int:
        """Position in the preference list (case-insensitive); unknown ranks after all known."""
        q = quantization.lower()
        for i, preferred in enumerate(self.preferred_quantizations):
            if preferred.lower() == q:
                return i
        return len(self.preferred_quantizations)


# Every field a profile file may set, in declaration order (`name` comes from the table key).
PROFILE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Profile) if f.name != "name")


def profile_values(p: Profile, *, plain: bool = False) -> dict[str, Any]:
    """The fields a profile file could set, by name. `plain`: as they are written in a file
    (enum values as strings, lists as lists), for JSON."""
    values = {f: getattr(p, f) for f in PROFILE_FIELDS}
    if plain:
        values = {
            k: v.value if isinstance(v, enum.Enum) else list(v) if isinstance(v, tuple) else v
            for k, v in values.items()
        }
    return values


def _builtin(*profiles: Profile) -> Mapping[str, Profile]:
    return MappingProxyType({p.name: p for p in profiles})


BUILTIN_PROFILES: Mapping[str, Profile] = _builtin(
    Profile(
        name="constrained_16gb",
        description="Single 16 GB GPU (RTX 4080, 4060 Ti 16GB): one model at a time, load/unload",
        max_vram_mb=14000,
        max_concurrent_models=1,
        preferred_quantizations=("q4_k_m", "fp8", "awq", "q5_k_m", "q8_0"),
        strategy=Strategy.LOAD_UNLOAD,
        autostart_timeout_seconds=120,
        grace_period_seconds=300,
        model_selection_bias=Bias.VRAM_EFFICIENT,
    ),
    Profile(
        name="balanced_24gb",
        description="Single 24 GB GPU (RTX 4090, A5000): two models served concurrently",
        max_vram_mb=22000,
        max_concurrent_models=2,
        preferred_quantizations=("fp8", "awq", "q4_k_m", "q5_k_m"),
        strategy=Strategy.CONCURRENT_LIMITED,
        autostart_timeout_seconds=90,
        grace_period_seconds=600,
        model_selection_bias=Bias.BALANCED,
    ),
    Profile(
        name="multi_gpu_2x16gb",
        description="Two 16 GB GPUs: tensor-parallel for large models, one GPU each for small",
        max_vram_mb=28000,
        max_concurrent_models=3,
        preferred_quantizations=("fp8", "awq", "bf16", "q5_k_m"),
        strategy=Strategy.TENSOR_PARALLEL_OR_DISTRIBUTED,
        autostart_timeout_seconds=150,
        grace_period_seconds=600,
        model_selection_bias=Bias.QUALITY,
        gpu_count=2,
        tensor_parallel_threshold_mb=12000,
    ),
    Profile(
        name="generous_96gb",
        description="Single 96 GB GPU (RTX 6000 Pro): many models kept hot, preloaded at start",
        max_vram_mb=90000,
        max_concurrent_models=5,
        preferred_quantizations=("fp8", "awq", "bf16", "fp16"),
        strategy=Strategy.CONCURRENT_FULL,
        autostart_timeout_seconds=60,
        grace_period_seconds=3600,
        model_selection_bias=Bias.QUALITY,
    ),
    Profile(
        name="development",
        description="Development, CPU-only or small GPUs: minimal footprint, Q4 first",
        max_vram_mb=10000,
        max_concurrent_models=1,
        preferred_quantizations=("q4_k_m", "q5_k_m", "q8_0"),
        strategy=Strategy.LOAD_UNLOAD,
        autostart_timeout_seconds=180,
        grace_period_seconds=120,
        model_selection_bias=Bias.VRAM_EFFICIENT,
    ),
)
