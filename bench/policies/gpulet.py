"""gpulet itself: the real scheduler core, unchanged, under the built-in profile that matches
the machine (or one of the example profiles shipped in deploy/profiles/). Models are process
backends so that the core measures their load times as the daemon would (StartBackend to
healthy)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

from bench.workloads import Machine, Workload
from gpuletd.config import load_config
from gpuletd.probe.types import GpuSnapshot
from gpuletd.profiles import BUILTIN_PROFILES, Profile
from gpuletd.registry import Backend, Model
from gpuletd.scheduler import Scheduler, Tuning, check_invariants
from gpuletd.scheduler.events import PolicyEvents

__all__ = ["example_profile", "gpulet_build", "gpulet_models"]

_EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "profiles"


@cache
def example_profile(name: str) -> Profile:
    """A profile shipped in deploy/profiles/NAME.toml, read as the daemon reads it."""
    config = load_config([_EXAMPLES / f"{name}.toml"])
    return config.profiles[name]


def gpulet_models(workload: Workload) -> dict[str, Model]:
    return {
        m.id: Model(
            id=m.id,
            name=m.id,
            backend=Backend.PROCESS,
            quantization="fp8",
            vram_estimate_mb=m.mb,
            role_priority={"bench": 1},
        )
        for m in workload.models
    }


def gpulet_build(
    workload: Workload,
    machine: Machine,
    *,
    profile: Profile | None = None,
    tuning: Tuning | None = None,
    check: bool = True,
) -> Callable[[list[GpuSnapshot]], tuple[PolicyEvents, Callable[[], list[str]] | None]]:
    chosen = profile or BUILTIN_PROFILES[machine.profile]
    models = gpulet_models(workload)

    def build(gpus: list[GpuSnapshot]) -> tuple[PolicyEvents, Callable[[], list[str]] | None]:
        core = Scheduler(chosen, models, gpus, tuning=tuning)
        # No preload is configured: start() only records that.
        core.start(0.0)
        return core, (lambda: check_invariants(core)) if check else None

    return build
