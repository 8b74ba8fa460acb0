"""Pick a profile from the hardware: the seed design's rules first, then — when the profile they
match does not fit the machine well — a dynamic profile derived from the GPUs (docs/profiles.md).

The seed's rules were written for 12 to 96 GB cards. Taken alone they give an 80 GB GPU the
22,000 MiB of `balanced_24gb` and an 8 GB card the 10,000 MiB of `development`, more than it has.
So the matched profile is kept only when it fits: its budget no larger than the usable memory,
the usable memory no more than `WELL_ABOVE` times its budget, and its `gpu_count` the number of
GPUs a large model should span on this machine. Otherwise a profile is derived: budget = usable
memory, the model cap scaled from the nearest predefined profile, whose strategy and bias it
keeps, and the GPU span and tensor-parallel threshold from the GPU set.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import log

from gpuletd.profiles import BUILTIN_PROFILES, DEFAULT_HEADROOM_MB, Profile, Strategy

__all__ = [
    "WELL_ABOVE",
    "AutoChoice",
    "Detection",
    "auto_profile",
    "detect_profile",
    "gpu_span",
    "usable_mb",
]

# Usable memory more than this times the matched budget leaves too much of the machine unused.
# The predefined profiles sit at 1.02-1.07 on the cards they were written for.
WELL_ABOVE = 1.25
# Tensor-parallel threshold: a model larger than this share of the smallest GPU's usable memory
# spans GPUs. 0.85 of a 16 GB card's 14336 MiB, rounded down to 1000, is the seed's 12000.
_TP_SHARE = 0.85
# Two GPUs count as one kind when the larger has less than 1.2 x the smaller's memory (seed).
_SIMILAR = 1.2
# The seed's multi-GPU rule: two similar GPUs span only when each has this much usable.
_MULTI_MIN_AVG_MB = 14000


@dataclass(frozen=True)
class Detection:
    profile: str
    reason: str


@dataclass(frozen=True)
class AutoChoice:
    """What auto-detection chose. `derived_from` is None when a predefined profile fits as is;
    otherwise `profile` is a dynamic one and `derived_from` names the profile it took its
    strategy and bias from."""

    profile: Profile
    reason: str
    derived_from: str | None = None


def usable_mb(totals_mb: Sequence[int], headroom_mb: int = DEFAULT_HEADROOM_MB) -> int:
    return sum(max(0, t - headroom_mb) for t in totals_mb)


def _single(usable: int, what: str) -> Detection:
    if usable >= 85000:
        return Detection("generous_96gb", f"{what}: {usable} MiB usable >= 85000")
    if usable >= 20000:
        return Detection("balanced_24gb", f"{what}: {usable} MiB usable >= 20000")
    if usable >= 14000:
        return Detection("constrained_16gb", f"{what}: {usable} MiB usable >= 14000")
    return Detection("development", f"{what}: {usable} MiB usable < 14000")


def detect_profile(totals_mb: Sequence[int]) -> Detection:
    """The seed design's rules, exactly. `totals_mb` is each GPU's total memory in NVML order
    (the first is the primary)."""
    if not totals_mb:
        return Detection("development", "no GPU detected")
    if len(totals_mb) == 1:
        return _single(usable_mb(totals_mb), "1 GPU")
    if len(totals_mb) == 2:
        lo, hi = min(totals_mb), max(totals_mb)
        # "Within 20 % of each other": the larger is less than 1.2 × the smaller.
        if lo > 0 and hi / lo < _SIMILAR:
            avg = usable_mb(totals_mb) / 2
            if avg >= _MULTI_MIN_AVG_MB:
                return Detection("multi_gpu_2x16gb", f"2 similar GPUs: {avg:.0f} MiB usable avg")
            return Detection("development", f"2 similar GPUs: {avg:.0f} MiB usable avg < 14000")
        return _single(usable_mb(totals_mb[:1]), "2 mismatched GPUs, primary GPU")
    usable = usable_mb(totals_mb)
    what = f"{len(totals_mb)} GPUs"
    if usable >= 60000:
        return Detection("generous_96gb", f"{what}: {usable} MiB usable >= 60000")
    if usable >= 40000:
        return Detection("balanced_24gb", f"{what}: {usable} MiB usable >= 40000")
    return Detection("constrained_16gb", f"{what}: {usable} MiB usable < 40000")


def gpu_span(totals_mb: Sequence[int], headroom_mb: int = DEFAULT_HEADROOM_MB) -> int:
    """How many GPUs a large model should span here (1: none spans). Two similar GPUs span as
    the seed's multi-GPU profile does; four or more of one kind span (seed 002), as many as the
    largest power of two that fits, since tensor-parallel engines split attention heads evenly.
    Three GPUs, or GPUs of different sizes, do not."""
    n = len(totals_mb)
    if n < 2:
        return 1
    lo, hi = min(totals_mb), max(totals_mb)
    if lo <= 0 or hi / lo >= _SIMILAR:
        return 1
    if n == 2:
        return 2 if usable_mb(totals_mb, headroom_mb) / 2 >= _MULTI_MIN_AVG_MB else 1
    if n >= 4:
        return 1 << (n.bit_length() - 1)
    return 1


def _gb(total_mb: int) -> int:
    return max(1, round(total_mb / 1024))


def dynamic_name(totals_mb: Sequence[int]) -> str:
    """`dynamic_1x80gb`, `dynamic_8x80gb`, `dynamic_1x24gb_1x16gb` (largest first)."""
    counts = Counter(_gb(t) for t in totals_mb)
    return "dynamic_" + "_".join(f"{counts[gb]}x{gb}gb" for gb in sorted(counts, reverse=True))


def _fits(p: Profile, usable: int, span: int) -> str | None:
    """Why `p` does not fit the machine well, or None when it does."""
    if p.max_vram_mb > usable:
        return f"its {p.max_vram_mb} MiB budget is more than the {usable} MiB usable"
    if usable > WELL_ABOVE * p.max_vram_mb:
        return (
            f"its {p.max_vram_mb} MiB budget is well below the {usable} MiB usable "
            f"(under {100 / WELL_ABOVE:.0f} % of it)"
        )
    if p.gpu_count != span:
        if span > 1:
            return f"it spans {p.gpu_count} GPU(s) where large models should span {span}"
        return f"it expects {p.gpu_count} GPU(s) to span, this machine spans none"
    return None


def _nearest(profiles: Mapping[str, Profile], usable: int, span: int, matched: str) -> Profile:
    """The predefined profile whose budget is closest to `usable` by ratio (memory scales by
    factors, not by steps), among those of the machine's shape: spanning ones for a machine
    where large models span, single-GPU ones otherwise. Ties go to the seed's match."""
    predefined = [profiles[n] for n in BUILTIN_PROFILES if n in profiles]
    shaped = [p for p in predefined if (p.gpu_count > 1) == (span > 1) and p.max_vram_mb > 0]
    pool = shaped or [p for p in predefined if p.max_vram_mb > 0] or [profiles[matched]]
    return min(
        pool,
        key=lambda p: (abs(log(max(usable, 1) / max(p.max_vram_mb, 1))), p.name != matched),
    )


def _scaled_cap(base: Profile, budget: int) -> int:
    if base.max_vram_mb <= 0:
        return base.max_concurrent_models
    # Rounded half up, in integers: the base profile's memory per model, applied to the budget.
    num = 2 * base.max_concurrent_models * budget + base.max_vram_mb
    return max(1, num // (2 * base.max_vram_mb))


def _derive(base: Profile, totals_mb: Sequence[int], span: int) -> Profile:
    name = dynamic_name(totals_mb)
    budget = usable_mb(totals_mb, base.headroom_mb)
    cap = _scaled_cap(base, budget)
    threshold: int | None = None
    strategy = base.strategy
    if span > 1:
        smallest = min(totals_mb) - base.headroom_mb
        threshold = int(smallest * _TP_SHARE) // 1000 * 1000
        strategy = Strategy.TENSOR_PARALLEL_OR_DISTRIBUTED
    elif strategy is Strategy.TENSOR_PARALLEL_OR_DISTRIBUTED:
        strategy = Strategy.CONCURRENT_LIMITED
    counts = Counter(_gb(t) for t in totals_mb)
    gpus = " + ".join(f"{counts[gb]} x {gb} GB" for gb in sorted(counts, reverse=True))
    span_text = f", large models (> {threshold} MiB) span {span} GPUs" if span > 1 else ""
    # Everything else (timers, quantization preferences, engine settings, headroom) is the
    # base profile's.
    return dataclasses.replace(
        base,
        name=name,
        description=(
            f"Derived for {gpus}: {budget} MiB budget (the usable memory), "
            f"{'one model' if cap == 1 else f'up to {cap} models'} at a time{span_text}; "
            f"strategy and bias of {base.name}"
        ),
        max_vram_mb=budget,
        max_concurrent_models=cap,
        strategy=strategy,
        gpu_count=span,
        tensor_parallel_threshold_mb=threshold,
        tags=("dynamic", f"{len(totals_mb)}-gpu", *(("tensor-parallel",) if span > 1 else ())),
        recommended_for=(),
        use_case=f"Auto-detected {gpus}",
        layer_names=(*(base.layer_names or (base.name,)), name),
        own_fields=None,
    )


def auto_profile(profiles: Mapping[str, Profile], totals_mb: Sequence[int]) -> AutoChoice:
    """The profile auto-detection gives this machine: the seed's match when it fits well, else a
    dynamic profile derived from the GPUs. `profiles` are the known ones (a config may replace a
    predefined profile; its replacement is then what is matched and derived from)."""
    d = detect_profile(totals_mb)
    matched = profiles[d.profile]
    if not totals_mb:
        return AutoChoice(matched, d.reason)
    usable = usable_mb(totals_mb, matched.headroom_mb)
    span = gpu_span(totals_mb, matched.headroom_mb)
    misfit = _fits(matched, usable, span)
    if misfit is None:
        return AutoChoice(matched, d.reason)
    base = _nearest(profiles, usable, span, d.profile)
    derived = _derive(base, totals_mb, span)
    reason = (
        f"{d.reason} matches {d.profile}, but {misfit}: derived {derived.name} from "
        f"{base.name} (the predefined profile nearest {usable} MiB)"
    )
    return AutoChoice(derived, reason, base.name)
