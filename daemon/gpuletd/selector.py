"""Role selection: the best models for a task that the profile and the machine can hold, and why.

A candidate supports the role and could ever be placed: its reservation fits the profile's
budget *and* the largest placement the GPUs offer (one GPU's total minus headroom, or a
tensor-parallel span when the profile's strategy splits it). "Could ever" is the scheduler's
own ceiling check (`scheduler.placement.ceiling_problem`), run against an empty machine: memory
held by other processes or by loaded models may go away, the size of a GPU will not. So the
selector never offers a model the core would refuse as too large at once.

Order, best first: role priority; on ties a loaded model (no load to pay), the profile's
quantization preference, bf16 on GPUs that run it natively (compute capability 8.0 and up:
Ampere, Ada, Hopper, Blackwell; older GPUs have no bf16 units, so there it yields to any other
equal choice), VRAM per the profile's bias, then the id.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from gpuletd.bounds import Refused, listing, quote
from gpuletd.probe.types import GpuSnapshot, GpuState
from gpuletd.profiles import Bias, Profile
from gpuletd.registry import Model, Registry
from gpuletd.scheduler import Scheduler
from gpuletd.scheduler.placement import GpuInfo, ceiling_problem, resolve_need

__all__ = [
    "BF16_MIN_CAPABILITY",
    "ExplainStatus",
    "Explanation",
    "Hardware",
    "InvalidTopN",
    "Limit",
    "Misfit",
    "UnknownRole",
    "explain",
    "misfits",
    "select",
]

# bf16 tensor cores arrived with Ampere (SM 8.0).
BF16_MIN_CAPABILITY = (8, 0)
_BF16_NAMES = frozenset({"bf16", "bfloat16"})


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


class Limit(enum.Enum):
    """Which limit keeps a model that supports the role out."""

    NONE = "none"
    # Its reservation exceeds the profile's max_vram_mb.
    PROFILE_BUDGET = "profile_budget"
    # No GPU (or tensor-parallel span) of this machine has that much usable memory.
    GPU_MEMORY = "gpu_memory"
    # It needs more GPUs than the machine (or its pinning) has.
    GPU_COUNT = "gpu_count"
    # It is pinned to GPUs this machine does not have.
    PINNING = "pinning"


@dataclass(frozen=True)
class Hardware:
    """The machine as selection sees it: the GPUs (size, lost or not, compute capability) and
    what each model would reserve now (the core's max of estimate and measurement).

    The default, no GPUs and no measurements, judges by the profile budget alone: that is a
    GPU-less machine, where leases are budget-only reservations."""

    gpus: tuple[GpuSnapshot, ...] = ()
    reservations: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def of(
        cls, gpus: Sequence[GpuSnapshot], reservations: Mapping[str, int] | None = None
    ) -> Hardware:
        return cls(tuple(gpus), MappingProxyType(dict(reservations or {})))

    @classmethod
    def now(cls, gpus: Sequence[GpuSnapshot], core: Scheduler) -> Hardware:
        """This machine as last probed, with what the core would reserve for each model."""
        return cls.of(gpus, {mid: v.reservation_mb for mid, v in core.models().items()})

    def reservation_mb(self, m: Model) -> int:
        return max(m.vram_estimate_mb, self.reservations.get(m.id, 0))

    def infos(self, profile: Profile) -> list[GpuInfo]:
        # foreign_mb = 0: memory other processes hold may be freed, so it never rules a model
        # out of selection (the core waits for it, or refuses with the numbers at Acquire).
        return [
            GpuInfo(
                uuid=g.uuid,
                index=g.index,
                total_mb=g.total_mb,
                headroom_mb=profile.headroom_mb,
                foreign_mb=0,
                lost=g.state is GpuState.LOST,
            )
            for g in self.gpus
        ]

    @property
    def bf16_native(self) -> bool | None:
        """True when every usable GPU runs bf16 natively, False when one does not, None when
        unknown (no GPU, or a probe that cannot read the capability)."""
        caps = [g.compute_capability for g in self.gpus if g.state is not GpuState.LOST]
        if not caps or any(c is None for c in caps):
            return None
        return all(c is not None and c >= BF16_MIN_CAPABILITY for c in caps)


NO_HARDWARE = Hardware()


@dataclass(frozen=True)
class Misfit:
    """A model that supports the role but can never be placed under this profile, here."""

    model_id: str
    limit: Limit
    reason: str


@dataclass(frozen=True)
class Explanation:
    status: ExplainStatus
    reason: str
    rank: int | None = None  # 1-based among the eligible models, when eligible
    limit: Limit = Limit.NONE


def _misfit(m: Model, profile: Profile, hw: Hardware) -> Misfit | None:
    infos = hw.infos(profile)
    reservation = hw.reservation_mb(m)
    need = resolve_need(m, reservation, profile, infos)
    # The core's own check and words: what explain says is what an Acquire would be told.
    problem = ceiling_problem(need, profile, infos)
    if problem is None:
        return None
    return Misfit(m.id, Limit(problem.kind.value), problem.message)


def _bf16_rank(m: Model, bf16_native: bool | None) -> int:
    if bf16_native is None:
        return 0
    is_bf16 = m.quantization.lower() in _BF16_NAMES
    return 0 if is_bf16 == bf16_native else 1


def _sort_key(
    m: Model,
    role: str,
    profile: Profile,
    loaded: Collection[str],
    hw: Hardware,
    bf16_native: bool | None,
) -> tuple[int, int, int, int, int, str]:
    bias = profile.model_selection_bias
    mb = hw.reservation_mb(m)
    vram = {Bias.VRAM_EFFICIENT: mb, Bias.QUALITY: -mb}.get(bias, 0)
    # A model already loaded wins ties on priority: using it costs no load (issue 3).
    return (
        -m.role_priority[role],
        0 if m.id in loaded else 1,
        profile.quantization_rank(m.quantization),
        _bf16_rank(m, bf16_native),
        vram,
        m.id,
    )


def _supporting(registry: Registry, role: str) -> list[Model]:
    known = registry.roles()
    if role not in known:
        raise UnknownRole(role, known)
    return [m for m in registry.models.values() if role in m.role_priority]


def _candidates(
    models: Sequence[Model], profile: Profile, role: str, loaded: Collection[str], hw: Hardware
) -> list[Model]:
    fitting = [m for m in models if _misfit(m, profile, hw) is None]
    native = hw.bf16_native
    return sorted(fitting, key=lambda m: _sort_key(m, role, profile, loaded, hw, native))


def select(
    registry: Registry,
    profile: Profile,
    role: str,
    top_n: int | None,
    *,
    loaded: Collection[str] = (),
    hardware: Hardware = NO_HARDWARE,
) -> list[Model]:
    """The models for `role` that fit the profile and the machine, best first (module doc);
    all of them when `top_n` is None. Raises InvalidTopN, UnknownRole."""
    if top_n is not None and top_n < 1:
        raise InvalidTopN(top_n)
    return _candidates(_supporting(registry, role), profile, role, loaded, hardware)[:top_n]


def misfits(
    registry: Registry, profile: Profile, role: str, *, hardware: Hardware = NO_HARDWARE
) -> list[Misfit]:
    """The models for `role` left out of `select`, and which limit kept each out (by id)."""
    found = (_misfit(m, profile, hardware) for m in _supporting(registry, role))
    return sorted((f for f in found if f is not None), key=lambda f: f.model_id)


def explain(
    registry: Registry,
    profile: Profile,
    role: str,
    model_id: str,
    *,
    hardware: Hardware = NO_HARDWARE,
) -> Explanation:
    """Raises UnknownRole, as `select` does: a role no model has is a bad request, not a
    "no support" answer about one model."""
    supporting = _supporting(registry, role)
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
    misfit = _misfit(model, profile, hardware)
    if misfit is not None:
        return Explanation(ExplainStatus.REJECTED, misfit.reason, limit=misfit.limit)
    ranked = _candidates(supporting, profile, role, (), hardware)
    rank = next(i for i, m in enumerate(ranked, start=1) if m.id == model_id)
    q = profile.quantization_rank(model.quantization)
    qtext = (
        f"quantization {model.quantization} is #{q + 1} in the profile's preferences"
        if q < len(profile.preferred_quantizations)
        else f"quantization {model.quantization} is not in the profile's preferences"
    )
    if hardware.bf16_native and model.quantization.lower() in _BF16_NAMES:
        qtext += " (bf16 preferred on these GPUs)"
    mb = hardware.reservation_mb(model)
    return Explanation(
        ExplainStatus.ELIGIBLE,
        f"{model_id} is eligible for {role}: rank {rank} of {len(ranked)}, priority "
        f"{model.role_priority[role]}, {qtext}, {mb} MiB <= "
        f"{profile.max_vram_mb} MiB ({profile.model_selection_bias.value} bias)",
        rank,
    )
