"""Which profile is active, and why: flag > env > config > auto-detection > development.

A bad name (or profile file) on the command line stops the daemon: someone typed it just now.
One from the environment or the config is skipped with a warning and the next source decides
(the config's `profile =`, then auto-detection), so a typo in a unit's environment file cannot
leave the service dead; `gpuletd check-config` fails on it so that CI catches it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from gpuletd.autodetect import AutoChoice, auto_profile, usable_mb
from gpuletd.config import apply_overrides
from gpuletd.config_errors import ConfigError, UnknownProfileName
from gpuletd.probe.types import GpuSnapshot
from gpuletd.profile_files import resolve_profile_spec
from gpuletd.profiles import Profile

__all__ = [
    "ActiveProfile",
    "ProfileSource",
    "UnknownProfile",
    "available_profiles",
    "known_profiles",
    "resolve_active_profile",
    "startup_fields",
]

FALLBACK_PROFILE = "development"


class ProfileSource(enum.Enum):
    FLAG = "flag"
    ENV = "env"
    CONFIG = "config"
    AUTO = "auto"
    DEFAULT = "default"
    # Switched at run time over the admin socket (admin.py); a reload resolves it afresh.
    ADMIN = "admin"


# The name this module exported before profile specs had their own module.
UnknownProfile = UnknownProfileName


@dataclass(frozen=True)
class ActiveProfile:
    profile: Profile
    source: ProfileSource
    # A sentence on why: "--profile balanced_24gb", "1 GPU: 14336 MiB usable >= 14000", ...
    reason: str
    usable_vram_mb: int
    warnings: tuple[str, ...]
    overrides: tuple[str, ...] = ()
    # A dynamic profile's predefined base (autodetect.py); None for any other profile.
    derived_from: str | None = None
    # Environment or config values that named no usable profile and were skipped (also in
    # `warnings`): `gpuletd check-config` fails on them.
    rejected: tuple[str, ...] = ()


def _totals(gpus: Sequence[GpuSnapshot] | None) -> list[int]:
    return [g.total_mb for g in gpus or () if g.total_mb is not None]


def _auto(profiles: Mapping[str, Profile], gpus: Sequence[GpuSnapshot] | None) -> AutoChoice | None:
    return None if gpus is None else auto_profile(profiles, _totals(gpus))


def available_profiles(
    profiles: Mapping[str, Profile], gpus: Sequence[GpuSnapshot] | None
) -> Mapping[str, Profile]:
    """The known profiles plus the dynamic one auto-detection derives for these GPUs, if any:
    what ListProfiles shows and an administrator may switch to."""
    return _with_auto(profiles, _auto(profiles, gpus))


def known_profiles(
    active: ActiveProfile, profiles: Mapping[str, Profile], gpus: Sequence[GpuSnapshot] | None
) -> Mapping[str, Profile]:
    """Every profile a name may pick now: `available_profiles` and the active one (which may
    come from a profile file or a combination), as it runs (with its `--set` overrides). What
    ListProfiles/GetProfile show, what `select --profile` asks about and what an administrator
    may switch to: one list, so none of them refuses a name another offers."""
    known = available_profiles(profiles, gpus)
    p = active.profile
    return MappingProxyType({**known, p.name: p})


def _with_auto(profiles: Mapping[str, Profile], auto: AutoChoice | None) -> Mapping[str, Profile]:
    if auto is None or auto.derived_from is None or auto.profile.name in profiles:
        return profiles
    return MappingProxyType({**profiles, auto.profile.name: auto.profile})


def _hardware_warnings(profile: Profile, totals: Sequence[int], usable: int) -> list[str]:
    name = profile.name
    if not totals:
        return [
            f"no GPU detected: leases are CPU-only reservations, each model's "
            f"vram_estimate_mb counted against profile {name}'s {profile.max_vram_mb} MiB "
            "budget; nothing is placed on or checked against a GPU"
        ]
    out = []
    if profile.max_vram_mb > usable:
        out.append(
            f"profile {name} allows {profile.max_vram_mb} MiB but the detected GPUs have "
            f"{usable} MiB usable: loads may fail with out-of-memory"
        )
    if profile.gpu_count > len(totals):
        out.append(
            f"profile {name} expects {profile.gpu_count} GPU(s) but {len(totals)} were detected"
        )
    return out


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
    totals = _totals(gpus)
    auto = _auto(profiles, gpus)
    # The dynamic profile can be named too (an administrator switching back to it).
    known = _with_auto(profiles, auto)
    rejected: list[str] = []
    choice: tuple[Profile, ProfileSource, str] | None = None
    for spec, source, where in (
        (flag, ProfileSource.FLAG, "--profile"),
        (env, ProfileSource.ENV, "GPULET_DEPLOYMENT_PROFILE"),
        (config, ProfileSource.CONFIG, f"profile = in {config_where}"),
    ):
        if not spec:
            continue
        try:
            # A name, a profile file, or several combined (profile_files.py).
            profile = resolve_profile_spec(spec, known, where=where)
        except ConfigError as e:
            if source is ProfileSource.FLAG:
                raise
            rejected.append(str(e))
            continue
        choice = (profile, source, f"{where} {spec}")
        break
    derived_from: str | None = None
    if choice is None:
        if auto is None:
            why = no_probe_reason or "no GPU probe"
            choice = (profiles[FALLBACK_PROFILE], ProfileSource.DEFAULT, why)
        else:
            choice = (auto.profile, ProfileSource.AUTO, auto.reason)
    profile, source, reason = choice
    if auto is not None and profile is auto.profile:
        derived_from = auto.derived_from
    if overrides:
        profile = apply_overrides(profile, overrides)
    usable = usable_mb(totals, profile.headroom_mb)
    fallback = f"{profile.name} ({source.value})"
    warnings = [f"{r}: ignored, running on {fallback}" for r in rejected]
    warnings += _hardware_warnings(profile, totals, usable)
    return ActiveProfile(
        profile,
        source,
        reason,
        usable,
        tuple(warnings),
        tuple(overrides),
        derived_from,
        tuple(warnings[: len(rejected)]),
    )


def startup_fields(active: ActiveProfile, gpus: Sequence[GpuSnapshot] | None) -> dict[str, object]:
    """What was detected and chosen, for the log line at start and reload (as the seed's
    startup lines: each GPU with its name and memory, the profile, its strategy and cap)."""
    p = active.profile
    return {
        "gpus": [
            f"{g.index}: {g.name} ({g.total_mb if g.total_mb is not None else '?'} MiB)"
            for g in gpus or ()
        ],
        "usable_vram_mb": active.usable_vram_mb,
        "profile": p.name,
        "source": active.source.value,
        "reason": active.reason,
        "derived_from": active.derived_from,
        "max_vram_mb": p.max_vram_mb,
        "strategy": p.strategy.value,
        "max_concurrent_models": p.max_concurrent_models,
        "model_selection_bias": p.model_selection_bias.value,
    }
