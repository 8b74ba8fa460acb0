"""Which profile is active, and why: flag > env > config > auto-detection > development."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gpuletd.autodetect import detect_profile, usable_mb
from gpuletd.config import apply_overrides
from gpuletd.config_errors import ConfigError
from gpuletd.probe.types import GpuSnapshot
from gpuletd.profiles import Profile

__all__ = ["ActiveProfile", "ProfileSource", "UnknownProfile", "resolve_active_profile"]

FALLBACK_PROFILE = "development"


class ProfileSource(enum.Enum):
    FLAG = "flag"
    ENV = "env"
    CONFIG = "config"
    AUTO = "auto"
    DEFAULT = "default"
    # Switched at run time over the admin socket (admin.py); a reload resolves it afresh.
    ADMIN = "admin"


class UnknownProfile(ConfigError):
    pass


@dataclass(frozen=True)
class ActiveProfile:
    profile: Profile
    source: ProfileSource
    # A sentence on why: "--profile balanced_24gb", "1 GPU: 14336 MiB usable >= 14000", ...
    reason: str
    usable_vram_mb: int
    warnings: tuple[str, ...]
    overrides: tuple[str, ...] = ()


def resolve_active_profile(
    profiles: Mapping[str, Profile],
    gpus: Sequence[GpuSnapshot] | None,
    *,
    flag: str | None = None,
    env: str | None = None,
    config: str | None = None,
    config_where: str = "config",
    overrides: Sequence[str] = (),
    no_probe_reason: str | None = None,
) -> ActiveProfile:
    """`gpus` is None when there is no probe at all (no NVML): auto-detection cannot run."""
    known = ", ".join(sorted(profiles))
    totals = [g.total_mb for g in gpus or () if g.total_mb is not None]
    warnings: list[str] = []
    choice: tuple[str, ProfileSource, str] | None = None
    for name, source, where in (
        (flag, ProfileSource.FLAG, "--profile"),
        (env, ProfileSource.ENV, "GPULET_DEPLOYMENT_PROFILE"),
        (config, ProfileSource.CONFIG, f"profile = in {config_where}"),
    ):
        if name:
            if name not in profiles:
                raise UnknownProfile(where, f"unknown profile {name!r} (known profiles: {known})")
            choice = (name, source, f"{where} {name}")
            break
    if choice is None:
        if gpus is None:
            choice = (FALLBACK_PROFILE, ProfileSource.DEFAULT, no_probe_reason or "no GPU probe")
        else:
            d = detect_profile(totals)
            choice = (d.profile, ProfileSource.AUTO, d.reason)
    name, source, reason = choice
    profile = profiles[name]
    if overrides:
        profile = apply_overrides(profile, overrides)
    usable = usable_mb(totals, profile.headroom_mb)
    if source in (ProfileSource.FLAG, ProfileSource.ENV, ProfileSource.CONFIG):
        if profile.max_vram_mb > usable:
            warnings.append(
                f"profile {name} allows {profile.max_vram_mb} MiB but the detected GPUs have "
                f"{usable} MiB usable: loads may fail with out-of-memory"
            )
        if profile.gpu_count > len(totals):
            warnings.append(
                f"profile {name} expects {profile.gpu_count} GPU(s) but {len(totals)} were detected"
            )
    return ActiveProfile(profile, source, reason, usable, tuple(warnings), tuple(overrides))
