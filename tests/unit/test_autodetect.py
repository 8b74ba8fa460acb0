from __future__ import annotations

import re
from pathlib import Path

import pytest

from gpuletd.autodetect import WELL_ABOVE, auto_profile, detect_profile, usable_mb
from gpuletd.config import check_profile, load_config
from gpuletd.profiles import BUILTIN_PROFILES, Strategy
from gpuletd.registry import Backend, Model
from gpuletd.scheduler import Scheduler, StartBackend
from tests.fakes.snapshots import snapshot

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


# --- dynamic profiles: docs/profiles.md's table, row for row ----------------------------------

GB = 1024
TP = "tensor_parallel_or_distributed"
# machine, GPU totals in MiB, then what auto-detection gives it: profile, budget (MiB), model
# cap, strategy, bias, GPUs a large model spans, tensor-parallel threshold (MiB).
MACHINES = [
    ("1x8", [8 * GB], "dynamic_1x8gb", 6144, 1, "load_unload", "vram_efficient", 1, None),
    ("1x12", [12 * GB], "development", 10000, 1, "load_unload", "vram_efficient", 1, None),
    ("1x16", [16 * GB], "constrained_16gb", 14000, 1, "load_unload", "vram_efficient", 1, None),
    ("1x24", [24 * GB], "balanced_24gb", 22000, 2, "concurrent_limited", "balanced", 1, None),
    ("1x48", [48 * GB], "dynamic_1x48gb", 47104, 3, "concurrent_full", "quality", 1, None),
    ("1x80", [80 * GB], "dynamic_1x80gb", 79872, 4, "concurrent_full", "quality", 1, None),
    ("1x96", [96 * GB], "generous_96gb", 90000, 5, "concurrent_full", "quality", 1, None),
    ("1x141", [141 * GB], "dynamic_1x141gb", 142336, 8, "concurrent_full", "quality", 1, None),
    ("2x16", [16 * GB] * 2, "multi_gpu_2x16gb", 28000, 3, TP, "quality", 2, 12000),
    ("2x24", [24 * GB] * 2, "dynamic_2x24gb", 45056, 5, TP, "quality", 2, 19000),
    ("2x80", [80 * GB] * 2, "dynamic_2x80gb", 159744, 17, TP, "quality", 2, 67000),
    ("4x24", [24 * GB] * 4, "dynamic_4x24gb", 90112, 10, TP, "quality", 4, 19000),
    ("8x80", [80 * GB] * 8, "dynamic_8x80gb", 638976, 68, TP, "quality", 8, 67000),
]


@pytest.mark.parametrize(
    ("machine", "totals", "name", "budget", "cap", "strategy", "bias", "span", "threshold"),
    MACHINES,
    ids=[m[0] for m in MACHINES],
)
def test_each_machine_gets_its_profile_budget_and_cap(
    machine: str,
    totals: list[int],
    name: str,
    budget: int,
    cap: int,
    strategy: str,
    bias: str,
    span: int,
    threshold: int | None,
) -> None:
    p = auto_profile(BUILTIN_PROFILES, totals).profile
    assert (p.name, p.max_vram_mb, p.max_concurrent_models) == (name, budget, cap)
    assert (p.strategy.value, p.model_selection_bias.value) == (strategy, bias)
    assert (p.gpu_count, p.tensor_parallel_threshold_mb) == (span, threshold)
    # A valid profile, as a config file's would be.
    check_profile(p, "auto")


@pytest.mark.parametrize("totals", [m[1] for m in MACHINES], ids=[m[0] for m in MACHINES])
def test_no_machine_gets_more_than_it_has_or_much_less(totals: list[int]) -> None:
    p = auto_profile(BUILTIN_PROFILES, totals).profile
    usable = usable_mb(totals)
    assert p.max_vram_mb <= usable
    assert usable <= WELL_ABOVE * p.max_vram_mb


def test_an_80gb_gpu_gets_at_least_70000_mib_and_an_8gb_card_no_more_than_it_has() -> None:
    assert auto_profile(BUILTIN_PROFILES, [81920]).profile.max_vram_mb >= 70000
    # An H100's real total (NVML reports a little under 80 GiB).
    assert auto_profile(BUILTIN_PROFILES, [81559]).profile.max_vram_mb >= 70000
    assert auto_profile(BUILTIN_PROFILES, [8192]).profile.max_vram_mb <= 8192


def test_the_reason_says_why_and_what_it_was_derived_from() -> None:
    c = auto_profile(BUILTIN_PROFILES, [81920])
    assert c.derived_from == "generous_96gb"
    assert "matches balanced_24gb" in c.reason and "22000 MiB budget" in c.reason
    assert "derived dynamic_1x80gb from generous_96gb" in c.reason
    small = auto_profile(BUILTIN_PROFILES, [8192])
    assert small.derived_from == "development"
    assert "10000 MiB budget is more than the 6144 MiB usable" in small.reason
    assert "4 x 24 GB" in auto_profile(BUILTIN_PROFILES, [24 * GB] * 4).profile.description


def test_a_predefined_profile_that_fits_is_kept_as_is() -> None:
    for totals, name in (([16 * GB], "constrained_16gb"), ([16 * GB] * 2, "multi_gpu_2x16gb")):
        c = auto_profile(BUILTIN_PROFILES, totals)
        assert c.profile is BUILTIN_PROFILES[name] and c.derived_from is None


def test_mismatched_and_three_gpus_use_all_memory_without_spanning() -> None:
    mixed = auto_profile(BUILTIN_PROFILES, [24 * GB, 16 * GB]).profile
    assert mixed.name == "dynamic_1x24gb_1x16gb" and mixed.max_vram_mb == 22528 + 14336
    assert mixed.gpu_count == 1 and mixed.strategy is not Strategy.TENSOR_PARALLEL_OR_DISTRIBUTED
    three = auto_profile(BUILTIN_PROFILES, [24 * GB] * 3).profile
    assert three.name == "dynamic_3x24gb" and three.max_vram_mb == 3 * 22528
    assert three.gpu_count == 1
    # Six of one kind: large models span four (a power of two, as tensor parallelism needs).
    assert auto_profile(BUILTIN_PROFILES, [24 * GB] * 6).profile.gpu_count == 4


def test_no_gpu_is_development() -> None:
    c = auto_profile(BUILTIN_PROFILES, [])
    assert c.profile is BUILTIN_PROFILES["development"] and c.derived_from is None


def test_a_replaced_predefined_profile_is_what_is_matched_and_derived_from() -> None:
    c = load_config(
        [],
        texts=[
            (
                "c.toml",
                '[profiles.generous_96gb]\nextends = "generous_96gb"\n'
                'preferred_quantizations = ["bf16"]\ngrace_period_seconds = 60\n',
            )
        ],
    )
    p = auto_profile(c.profiles, [80 * GB]).profile
    assert p.name == "dynamic_1x80gb"
    assert (p.preferred_quantizations, p.grace_period_seconds) == (("bf16",), 60)


def _model(mid: str, mb: int) -> Model:
    return Model(mid, mid, Backend.RESERVATION, "fp16", mb, {"chat": 1})


def test_on_four_gpus_of_one_kind_a_large_model_spans_all_four() -> None:
    gpus = [snapshot(i, 24 * GB) for i in range(4)]
    profile = auto_profile(BUILTIN_PROFILES, [24 * GB] * 4).profile
    models = {m.id: m for m in (_model("big", 60000), _model("small", 8000))}
    core = Scheduler(profile, models, gpus)
    big = [d for d in core.request("r1", "big", now=0.0) if isinstance(d, StartBackend)]
    assert [len(d.gpu_uuids) for d in big] == [4]
    assert big[0].gpu_reservations_mb == (15000,) * 4
    # (A fresh core: the big one's load keeps all four GPUs busy.)
    core = Scheduler(profile, models, gpus)
    small = [d for d in core.request("r2", "small", now=0.0) if isinstance(d, StartBackend)]
    assert [len(d.gpu_uuids) for d in small] == [1]


def test_the_table_in_docs_profiles_md_is_what_the_code_does() -> None:
    doc = Path(__file__).parents[2] / "docs" / "profiles.md"
    rows = [
        [c.strip().strip("`") for c in line.strip("|").split("|")]
        for line in doc.read_text().splitlines()
        if re.match(r"\| \d+ × \d+ GB \|", line)
    ]
    assert len(rows) == len(MACHINES)
    for row, (_, totals, name, budget, cap, strategy, bias, span, threshold) in zip(
        rows, MACHINES, strict=True
    ):
        count, size = (int(x) for x in re.findall(r"\d+", row[0]))
        assert [size * GB] * count == totals
        c = auto_profile(BUILTIN_PROFILES, totals)
        assert row[1:] == [
            str(usable_mb(totals)),
            name,
            str(budget),
            str(cap),
            strategy,
            bias,
            str(span),
            str(threshold) if threshold is not None else "—",
            c.derived_from or "—",
        ]
