"""Role selection: the best models for a task within the active profile, and why."""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from gpuletd.bounds import Refused, listing, quote
from gpuletd.profiles import Bias, Profile
from gpuletd.registry import Model, Registry

__all__ = ["ExplainStatus", "Explanation", "InvalidTopN", "UnknownRole", "explain", "select"]


class UnknownRole(Refused):
    def __init__(self, role: str, known: Sequence[str]) -> None:
        # The role is the caller's: quoted short, so the message fits in gRPC's trailers.
        super().__init__(
            "INVALID_ARGUMENT",
            "UNKNOWN_ROLE",
            f"role: unknown role {quote(role)} (known roles: {listing(known, 20)})",
            "role",
        )
        self.role = role
        self.known = tuple(known)


class InvalidTopN(Refused):
    def __init__(self, top_n: int) -> None:
        super().__init__(
            "INVALID_ARGUMENT", "INVALID_TOP_N", f"top_n: must be >= 1, got {top_n}", "top_n"
        )


class ExplainStatus(enum.Enum):
    ELIGIBLE = "eligible"
    REJECTED = "rejected"
    NO_SUPPORT = "no_support"
    NOT_FOUND = "not_found"


@dataclass(frozen=True)
class Explanation:
    status: ExplainStatus
    reason: str
    rank: int | None = None  # 1-based among the eligible models, when eligible


def _sort_key(
    m: Model, role: str, profile: Profile, loaded: Collection[str]
) -> tuple[int, int, int, int, str]:
    bias = profile.model_selection_bias
    vram = {Bias.VRAM_EFFICIENT: m.vram_estimate_mb, Bias.QUALITY: -m.vram_estimate_mb}.get(bias, 0)
    # A model already loaded wins ties on priority: using it costs no load (issue 3).
    return (
        -m.role_priority[role],
        0 if m.id in loaded else 1,
        profile.quantization_rank(m.quantization),
        vram,
        m.id,
    )


def _candidates(
    registry: Registry, profile: Profile, role: str, loaded: Collection[str]
) -> list[Model]:
    fitting = [
        m
        for m in registry.models.values()
        if role in m.role_priority and m.vram_estimate_mb <= profile.max_vram_mb
    ]
    return sorted(fitting, key=lambda m: _sort_key(m, role, profile, loaded))


def select(
    registry: Registry,
    profile: Profile,
    role: str,
    top_n: int,
    *,
    loaded: Collection[str] = (),
) -> list[Model]:
    """Best first: role priority, then (on ties) a loaded model, quantization preference,
    VRAM per the profile's bias (low first for vram_efficient, high first for quality)."""
    if top_n < 1:
        raise InvalidTopN(top_n)
    known = registry.roles()
    if role not in known:
        raise UnknownRole(role, known)
    return _candidates(registry, profile, role, loaded)[:top_n]


def explain(registry: Registry, profile: Profile, role: str, model_id: str) -> Explanation:
    """Raises UnknownRole, as `select` does: a role no model has is a bad request, not a
    "no support" answer about one model."""
    known = registry.roles()
    if role not in known:
        raise UnknownRole(role, known)
    model = registry.get(model_id)
    if model is None:
        return Explanation(
            ExplainStatus.NOT_FOUND,
            f"no model {quote(model_id)} in the registry ({len(registry.models)} models: "
            f"{listing(registry.models)})",
        )
    if role not in model.role_priority:
        roles = ", ".join(sorted(model.role_priority)) or "none"
        return Explanation(
            ExplainStatus.NO_SUPPORT,
            f"{model_id} has no role_priority for {quote(role)} (its roles: {roles})",
        )
    if model.vram_estimate_mb > profile.max_vram_mb:
        return Explanation(
            ExplainStatus.REJECTED,
            f"{model_id} needs {model.vram_estimate_mb} MiB but profile {profile.name} allows "
            f"max_vram_mb={profile.max_vram_mb}",
        )
    ranked = _candidates(registry, profile, role, ())
    rank = next(i for i, m in enumerate(ranked, start=1) if m.id == model_id)
    q = profile.quantization_rank(model.quantization)
    qtext = (
        f"quantization {model.quantization} is #{q + 1} in the profile's preferences"
        if q < len(profile.preferred_quantizations)
        else f"quantization {model.quantization} is not in the profile's preferences"
    )
    return Explanation(
        ExplainStatus.ELIGIBLE,
        f"{model_id} is eligible for {role}: rank {rank} of {len(ranked)}, priority "
        f"{model.role_priority[role]}, {qtext}, {model.vram_estimate_mb} MiB <= "
        f"{profile.max_vram_mb} MiB ({profile.model_selection_bias.value} bias)",
        rank,
    )
