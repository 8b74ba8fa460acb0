"""Deployment profiles: the budget and policy the daemon runs under, and the five built in."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

__all__ = [
    "BUILTIN_PROFILES",
    "DEFAULT_HEADROOM_MB",
    "DERIVED_FIELDS",
    "PROFILE_FIELDS",
    "Bias",
    "Category",
    "IdleUnload",
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


class IdleUnload(enum.Enum):
    # An idle model is unloaded once its grace period has passed (the seeds' meaning).
    GRACE = "grace"
    # An idle model past its grace period stays until its memory or slot is wanted: by a
    # request, or by a process gpulet did not start.
    PRESSURE = "pressure"


class Category(enum.Enum):
    """Where a profile is meant to run (seed 002): metadata, no policy follows from it."""

    EDGE = "edge"
    ONPREM = "onprem"
    CLOUD = "cloud"


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
    # Seed 003's rule "one heavy model at a time, light ones beside it": at most this many
    # heavy models hold memory at once (None: no such cap). A model is heavy by its
    # `weight_class`, else when its reservation is at least `heavy_threshold_mb`.
    max_heavy_models: int | None = None
    heavy_threshold_mb: int | None = None
    idle_unload: IdleUnload = IdleUnload.GRACE
    # Settings handed to the serving engine (tensor_parallel_size, dtype, max_model_len, ...;
    # seed 002). Free-form: keys an engine does not know are kept and ignored.
    engine: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # Metadata for people choosing a profile (seeds 002 and 004); no policy follows from it.
    category: Category | None = None
    use_case: str = ""
    tags: tuple[str, ...] = ()
    recommended_for: tuple[str, ...] = ()
    # Derived, never set by a file: the layers this profile was built from, base first (the
    # `extends` chain, the profiles of a combined `--profile a,b`, then itself) ...
    layer_names: tuple[str, ...] = ()
    # ... and the fields its own top layer set (None: all of them, a whole profile). A later
    # profile in a combination patches with these fields only.
    own_fields: frozenset[str] | None = None

    def quantization_rank(self, quantization: str) -> int:
        """Position in the preference list (case-insensitive); unknown ranks after all known."""
        q = quantization.lower()
        for i, preferred in enumerate(self.preferred_quantizations):
            if preferred.lower() == q:
                return i
        return len(self.preferred_quantizations)


# Fields the loader derives; a file cannot set them.
DERIVED_FIELDS = frozenset({"name", "layer_names", "own_fields"})
# Every field a profile file may set, in declaration order (`name` comes from the table key).
PROFILE_FIELDS: tuple[str, ...] = tuple(
    f.name for f in fields(Profile) if f.name not in DERIVED_FIELDS
)


def profile_values(p: Profile, *, plain: bool = False) -> dict[str, Any]:
    """The fields a profile file could set, by name. `plain`: as they are written in a file
    (enum values as strings, lists as lists), for JSON."""
    values = {f: getattr(p, f) for f in PROFILE_FIELDS}
    if plain:
        values = {
            k: v.value
            if isinstance(v, enum.Enum)
            else list(v)
            if isinstance(v, tuple)
            else {a: list(b) if isinstance(b, tuple) else b for a, b in v.items()}
            if isinstance(v, Mapping)
            else v
            for k, v in values.items()
        }
    return values


def _builtin(*profiles: Profile) -> Mapping[str, Profile]:
    return MappingProxyType({p.name: replace(p, layer_names=(p.name,)) for p in profiles})


BUILTIN_PROFILES: Mapping[str, Profile] = _builtin(
    Profile(
        name="constrained_16gb",
        description="Single 16 GB GPU (RTX 4080, 4060 Ti 16GB): one model at a time, load/unload",
        category=Category.ONPREM,
        use_case="One 16 GB GPU shared by several apps, one model resident at a time",
        tags=("single-gpu", "16gb", "load-unload", "vram-efficient"),
        recommended_for=("rtx-4080", "rtx-4060-ti-16gb", "single-gpu", "cost-sensitive"),
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
        category=Category.ONPREM,
        use_case="One 24 GB GPU serving two models side by side for interactive apps",
        tags=("single-gpu", "24gb", "concurrent", "balanced"),
        recommended_for=("rtx-4090", "rtx-3090", "a5000", "general", "interactive"),
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
        category=Category.ONPREM,
        use_case="Two mid-size GPUs: large models split across both, small ones one per GPU",
        tags=("multi-gpu", "2-gpu", "tensor-parallel", "quality"),
        recommended_for=("2x-rtx-4080", "2x-16gb", "multi-gpu", "large-models"),
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
        category=Category.CLOUD,
        use_case="A large-memory GPU keeping many models hot for high traffic",
        tags=("single-gpu", "96gb", "concurrent", "quality", "preload"),
        recommended_for=("rtx-6000-pro", "h100", "a100-80gb", "high-throughput"),
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
        category=Category.EDGE,
        use_case="Laptops, CPU-only hosts and small GPUs: development, CI and smoke tests",
        tags=("development", "cpu", "small-gpu", "q4"),
        recommended_for=("development", "ci", "edge", "laptops"),
        max_vram_mb=10000,
        max_concurrent_models=1,
        preferred_quantizations=("q4_k_m", "q5_k_m", "q8_0"),
        strategy=Strategy.LOAD_UNLOAD,
        autostart_timeout_seconds=180,
        grace_period_seconds=120,
        model_selection_bias=Bias.VRAM_EFFICIENT,
    ),
)
