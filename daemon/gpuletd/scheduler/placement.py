"""Where a model may go: its footprint, the absolute ceiling, and best-fit placement.

Pure functions over plain values; the scheduler builds the inputs from its state.

Placement policy (best fit): among the GPUs the model may use (its pinning, minus lost GPUs,
minus GPUs with a load under way) and that have room for it, choose the one left with the
*least* room after placing it; ties go to the lower GPU index. A tensor-parallel model takes
the set of `gpu_count` GPUs that leaves the least room in total. Best fit keeps the large holes
whole for the large models that need them, which on mixed sizes (the example registry spans
2.6 to 13.8 GB) avoids evicting for a model that would have fitted had the small ones been
packed together.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from gpuletd.profiles import Profile, Strategy
from gpuletd.registry import Model, WeightClass

__all__ = [
    "CeilingKind",
    "CeilingProblem",
    "GpuInfo",
    "Need",
    "best_fit",
    "ceiling_problem",
    "is_heavy",
    "resolve_need",
]


@dataclass(frozen=True)
class GpuInfo:
    uuid: str
    index: int
    total_mb: int | None
    headroom_mb: int
    # Memory held by processes gpulet did not start, as last estimated from the probe.
    foreign_mb: int
    lost: bool

    @property
    def usable(self) -> bool:
        return not self.lost and self.total_mb is not None

    @property
    def capacity_mb(self) -> int:
        """What gpulet may ever reserve here: total minus headroom."""
        return (self.total_mb or 0) - self.headroom_mb


@dataclass(frozen=True)
class Need:
    """What placing a model takes. n_gpus == 0 means a machine without GPUs (budget only)."""

    model_id: str
    reservation_mb: int
    n_gpus: int
    share_mb: int
    # The GPUs it may use, in GPU order (pinning applied, lost GPUs removed).
    allowed: tuple[str, ...]
    # Pinning entries that name no GPU of this machine (reported by the ceiling check).
    unknown_pins: tuple[str, ...] = ()
    # Counted against the profile's `max_heavy_models` (see `is_heavy`).
    heavy: bool = False

    @property
    def total_mb(self) -> int:
        """What it counts against the profile budget: the sum of its per-GPU shares."""
        return self.share_mb * self.n_gpus if self.n_gpus else self.reservation_mb


class CeilingKind(enum.Enum):
    # The reservation is over the profile's max_vram_mb.
    PROFILE_BUDGET = "profile_budget"
    # No GPU (or set of GPUs) has that much usable memory.
    GPU_MEMORY = "gpu_memory"
    # It needs more usable GPUs than the machine (or its pinning) has.
    GPU_COUNT = "gpu_count"
    # It is pinned to GPUs the machine does not have.
    PINNING = "pinning"


@dataclass(frozen=True)
class CeilingProblem:
    message: str
    # True when no change on the machine can make it fit (budget, GPU sizes, pinning); False
    # when it is memory held by other processes, which may go away.
    structural: bool
    # Which limit it is over: what `gpulet explain` names (selector.Limit).
    kind: CeilingKind = CeilingKind.GPU_MEMORY


def _pinned(model: Model, gpus: Sequence[GpuInfo]) -> tuple[list[GpuInfo], tuple[str, ...]]:
    if not model.gpus:
        return list(gpus), ()
    chosen: list[GpuInfo] = []
    unknown: list[str] = []
    for pin in model.gpus:
        match = [
            g for g in gpus if (pin.isdigit() and g.index == int(pin)) or g.uuid == pin.strip()
        ]
        if not match:
            unknown.append(pin)
        for g in match:
            if g not in chosen:
                chosen.append(g)
    chosen.sort(key=lambda g: g.index)
    return chosen, tuple(unknown)


def is_heavy(model: Model, reservation_mb: int, profile: Profile) -> bool:
    """Seed 003's class: a model's own `weight_class` wins; otherwise it is heavy when its
    reservation reaches the profile's `heavy_threshold_mb` (no threshold: light)."""
    if model.weight_class is not None:
        return model.weight_class is WeightClass.HEAVY
    t = profile.heavy_threshold_mb
    return t is not None and reservation_mb >= t


def resolve_need(
    model: Model,
    reservation_mb: int,
    profile: Profile,
    gpus: Sequence[GpuInfo],
    *,
    one_gpu: bool = False,
) -> Need:
    """`one_gpu`: never split (a memory lease is raw VRAM on one GPU)."""
    # (The common case, no class and no threshold, without a call: this is on the hot path.)
    heavy = (model.weight_class is not None or profile.heavy_threshold_mb is not None) and (
        is_heavy(model, reservation_mb, profile)
    )
    if not gpus:
        return Need(model.id, reservation_mb, 0, reservation_mb, (), heavy=heavy)
    pinned, unknown = _pinned(model, gpus)
    n = 1
    if (
        not one_gpu
        and profile.strategy is Strategy.TENSOR_PARALLEL_OR_DISTRIBUTED
        and profile.tensor_parallel_threshold_mb is not None
        and reservation_mb > profile.tensor_parallel_threshold_mb
        and profile.gpu_count > 1
    ):
        n = profile.gpu_count
    share = -(-reservation_mb // n)
    allowed = tuple(g.uuid for g in pinned if g.usable)
    return Need(model.id, reservation_mb, n, share, allowed, unknown, heavy=heavy)


def _describe(g: GpuInfo, *, foreign: bool) -> str:
    parts = f"{g.total_mb} MiB total - {g.headroom_mb} MiB headroom"
    if foreign and g.foreign_mb:
        parts += f" - {g.foreign_mb} MiB held by processes gpulet did not start"
    return f"GPU {g.index} ({g.uuid}): {parts}"


def ceiling_problem(need: Need, profile: Profile, gpus: Sequence[GpuInfo]) -> CeilingProblem | None:
    """Could the model fit if everything gpulet placed were unloaded? If not, say why with the
    numbers. Checked before a request may wait, so that it is refused at once rather than
    evicting and reloading in a loop."""
    mid, res = need.model_id, need.reservation_mb
    if need.total_mb > profile.max_vram_mb:
        split = f" ({need.n_gpus} x {need.share_mb} MiB)" if need.n_gpus > 1 else ""
        return CeilingProblem(
            f"model {mid} needs {need.total_mb} MiB{split} but profile {profile.name} allows at "
            f"most {profile.max_vram_mb} MiB in total",
            structural=True,
            kind=CeilingKind.PROFILE_BUDGET,
        )
    if need.n_gpus == 0:
        return None
    by_uuid = {g.uuid: g for g in gpus}
    if need.unknown_pins and not need.allowed:
        present = ", ".join(f"{g.index} ({g.uuid})" for g in gpus)
        return CeilingProblem(
            f"model {mid} is pinned to GPU(s) {', '.join(need.unknown_pins)}, which this "
            f"machine does not have (GPUs: {present})",
            structural=True,
            kind=CeilingKind.PINNING,
        )
    candidates = [by_uuid[u] for u in need.allowed]
    where = "its pinned GPUs" if any(g.uuid not in need.allowed for g in gpus) else "this machine"
    if len(candidates) < need.n_gpus:
        lost = [g for g in gpus if g.lost]
        extra = f" ({len(lost)} lost: restart gpuletd after a GPU reset)" if lost else ""
        return CeilingProblem(
            f"model {mid} needs {need.n_gpus} usable GPU(s) but {where} has "
            f"{len(candidates)}{extra}",
            structural=True,
            kind=CeilingKind.GPU_COUNT,
        )
    for foreign in (False, True):
        room = sorted(
            (g.capacity_mb - (g.foreign_mb if foreign else 0), g.index, g) for g in candidates
        )
        fitting = [g for cap, _, g in room if cap >= need.share_mb]
        if len(fitting) >= need.n_gpus:
            continue
        best_cap, _, best = room[-1]
        if need.n_gpus == 1:
            message = (
                f"model {mid} needs {res} MiB but the largest GPU of {where} has "
                f"{best_cap} MiB usable ({_describe(best, foreign=foreign)}); profile "
                f"{profile.name} allows {profile.max_vram_mb} MiB"
            )
        else:
            message = (
                f"model {mid} needs {res} MiB split over {need.n_gpus} GPUs "
                f"({need.share_mb} MiB each) but only {len(fitting)} GPU(s) of {where} have "
                f"that much usable (largest: {_describe(best, foreign=foreign)})"
            )
        return CeilingProblem(message, structural=not foreign, kind=CeilingKind.GPU_MEMORY)
    return None


def best_fit(
    need: Need, room: Mapping[str, int], exclude: Collection[str] = ()
) -> tuple[str, ...] | None:
    """The GPU(s) to place on, or None. `room` maps every usable GPU to its available MiB;
    `need.allowed` is in GPU order, which breaks ties."""
    if need.n_gpus == 0:
        return ()
    fits = [u for u in need.allowed if u not in exclude and room.get(u, -1) >= need.share_mb]
    if len(fits) < need.n_gpus:
        return None
    if need.n_gpus == 1:
        # min() keeps the first of equals, and `fits` is in GPU order.
        return (min(fits, key=lambda u: room[u] - need.share_mb),)
    best: tuple[str, ...] | None = None
    best_left = 0
    for combo in itertools.combinations(fits, need.n_gpus):
        left = sum(room[u] - need.share_mb for u in combo)
        if best is None or left < best_left:
            best, best_left = combo, left
    return best
