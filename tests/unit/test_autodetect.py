from __future__ import annotations

import pytest

from gpuletd.autodetect import detect_profile, usable_mb

# Every row of design.md's auto-detection table, with its boundaries (2048 MiB headroom).
ROWS = [
    ([], "development"),
    ([98304], "generous_96gb"),
    ([85000 + 2048], "generous_96gb"),
    ([85000 + 2047], "balanced_24gb"),
    ([24576], "balanced_24gb"),
    ([20000 + 2048], "balanced_24gb"),
    ([20000 + 2047], "constrained_16gb"),
    ([16384], "constrained_16gb"),
    ([14000 + 2048], "constrained_16gb"),
    ([14000 + 2047], "development"),
    ([12288], "development"),
    ([16384, 16384], "multi_gpu_2x16gb"),
    ([24576, 24576], "multi_gpu_2x16gb"),
    ([12288, 12288], "development"),
    ([16384, 16384 * 1.19], "multi_gpu_2x16gb"),
    ([24576, 16384], "balanced_24gb"),  # mismatched: primary GPU (24 GB) decides
    ([16384, 24576], "constrained_16gb"),  # mismatched: primary is the first, 16 GB
    ([8192, 24576], "development"),
    ([24576, 24576, 24576], "generous_96gb"),  # 67584 usable: >= 60000
    ([16384, 16384, 16384], "balanced_24gb"),  # 43008 usable: >= 40000
    ([16384, 16384, 16384, 16384], "balanced_24gb"),  # 57344 usable
    ([24576] * 4, "generous_96gb"),  # 90112 usable
]


@pytest.mark.parametrize(("totals", "expected"), ROWS)
def test_each_hardware_row_picks_its_profile(totals: list[float], expected: str) -> None:
    assert detect_profile([int(t) for t in totals]).profile == expected


def test_three_gpus_thresholds() -> None:
    assert detect_profile([16384, 16384, 16384]).profile == "balanced_24gb"  # 43008 >= 40000
    assert detect_profile([14336, 14336, 14336]).profile == "constrained_16gb"  # 36864
    assert detect_profile([22048, 22048, 22048]).profile == "generous_96gb"  # 60000


def test_reason_names_the_rule() -> None:
    d = detect_profile([16384])
    assert d.reason == "1 GPU: 14336 MiB usable >= 14000"
    assert "mismatched" in detect_profile([24576, 16384]).reason


def test_usable_is_total_minus_headroom_per_gpu() -> None:
    assert usable_mb([16384]) == 14336
    assert usable_mb([16384, 16384]) == 28672
    assert usable_mb([1024]) == 0
