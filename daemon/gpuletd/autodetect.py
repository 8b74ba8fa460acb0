"""Pick a built-in profile from the hardware, with exactly the seed design's rules."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gpuletd.profiles import DEFAULT_HEADROOM_MB

__all__ = ["Detection", "detect_profile", "usable_mb"]


@dataclass(frozen=True)
class Detection:
    profile: str
    reason: str


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
    """`totals_mb` is each GPU's total memory in NVML order (the first is the primary)."""
    if not totals_mb:
        return Detection("development", "no GPU detected")
    if len(totals_mb) == 1:
        return _single(usable_mb(totals_mb), "1 GPU")
    if len(totals_mb) == 2:
        lo, hi = min(totals_mb), max(totals_mb)
        # "Within 20 % of each other": the larger is less than 1.2 × the smaller.
        if lo > 0 and hi / lo < 1.2:
            avg = usable_mb(totals_mb) / 2
            if avg >= 14000:
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
