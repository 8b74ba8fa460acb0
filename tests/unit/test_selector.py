from __future__ import annotations

import dataclasses
from types import MappingProxyType

import pytest

from gpuletd.config import load_config
from gpuletd.probe.types import GpuSnapshot, GpuState, MigMode
from gpuletd.profiles import BUILTIN_PROFILES, Bias
from gpuletd.registry import Backend, Model, Registry
from gpuletd.scheduler.placement import CeilingKind, ceiling_problem, resolve_need
from gpuletd.selector import (
    ExplainStatus,
    Hardware,
    InvalidTopN,
    Limit,
    UnknownRole,
    explain,
    misfits,
    select,
)

REG = load_config([]).registry
P = BUILTIN_PROFILES


def ids(models: list[Model]) -> list[str]:
    return [m.id for m in models]


def test_keywords_on_constrained_puts_florence_first() -> None:
    assert ids(select(REG, P["constrained_16gb"], "keywords", 3)) == [
        "florence-2-large",
        "qwen3-vl",
        "qwen25vl",
    ]


def test_models_over_the_budget_are_left_out() -> None:
    # development allows 10000 MiB: qwen3-vl (10600) and gpt-oss-20b (13800) drop out.
    assert ids(select(REG, P["development"], "narration", 5)) == ["qwen25vl"]
    assert "gpt-oss-20b" in ids(select(REG, P["constrained_16gb"], "narration", 5))


def test_top_n_limits_and_must_be_positive() -> None:
    assert len(select(REG, P["generous_96gb"], "caption", 1)) == 1
    with pytest.raises(InvalidTopN):
        select(REG, P["generous_96gb"], "caption", 0)


def test_unknown_role_names_known_roles() -> None:
    with pytest.raises(UnknownRole) as e:
        select(REG, P["development"], "poetry", 3)
    assert "poetry" in str(e.value) and "caption" in str(e.value)


def _reg(*models: tuple[str, str, int, int]) -> Registry:
    return Registry(
        MappingProxyType(
            {
                mid: Model(mid, mid, Backend.RESERVATION, q, vram, MappingProxyType({"r": prio}))
                for mid, q, vram, prio in models
            }
        )
    )


def test_ties_on_priority_go_to_preferred_quantization_then_bias() -> None:
    reg = _reg(("a", "fp16", 3000, 50), ("b", "q4_k_m", 5000, 50), ("c", "q4_k_m", 4000, 50))
    # constrained prefers q4_k_m; among q4_k_m, vram_efficient puts the smaller first.
    assert ids(select(reg, P["constrained_16gb"], "r", 3)) == ["c", "b", "a"]
    # generous lists fp16 but not q4_k_m (unknown ranks last); quality bias: larger first.
    assert ids(select(reg, P["generous_96gb"], "r", 3)) == ["a", "b", "c"]
    assert P["generous_96gb"].model_selection_bias is Bias.QUALITY


def test_loaded_model_wins_a_priority_tie_only() -> None:
    reg = _reg(("a", "q4_k_m", 3000, 50), ("b", "q4_k_m", 5000, 50), ("c", "fp16", 1000, 60))
    assert ids(select(reg, P["constrained_16gb"], "r", 3, loaded={"b"})) == ["c", "b", "a"]


@pytest.mark.parametrize(
    ("profile", "role", "model", "status", "needle"),
    [
        ("constrained_16gb", "caption", "qwen3-vl", ExplainStatus.ELIGIBLE, "rank 1 of 3"),
        (
            "development",
            "caption",
            "qwen3-vl",
            ExplainStatus.REJECTED,
            "needs 10600 MiB but profile development allows at most 10000 MiB",
        ),
        (
            "development",
            "caption",
            "gpt-oss-20b",
            ExplainStatus.NO_SUPPORT,
            "no role_priority for 'caption'",
        ),
        ("development", "caption", "llama-9000", ExplainStatus.NOT_FOUND, "no model 'llama-9000'"),
    ],
)
def test_explain_says_which_rule_decided(
    profile: str, role: str, model: str, status: ExplainStatus, needle: str
) -> None:
    e = explain(REG, P[profile], role, model)
    assert e.status is status
    assert needle in e.reason


def test_explain_rank_matches_select_order() -> None:
    ranked = ids(select(REG, P["balanced_24gb"], "description", 5))
    for i, mid in enumerate(ranked, start=1):
        assert explain(REG, P["balanced_24gb"], "description", mid).rank == i


# -- the machine: candidates must fit the GPUs, not only the budget (issue 9, item 2) ---------


def _gpu(i: int, total_mb: int, cc: tuple[int, int] | None = (8, 9)) -> GpuSnapshot:
    return GpuSnapshot(
        index=i,
        uuid=f"GPU-{i}",
        name="sim",
        pci_bus_id=f"0:{i}",
        total_mb=total_mb,
        free_mb=total_mb,
        used_mb=0,
        reserved_mb=0,
        compute_capability=cc,
        mig_mode=MigMode.DISABLED,
    )


def test_a_model_too_large_for_the_gpu_is_left_out_and_explained() -> None:
    reg = _reg(("big", "q4_k_m", 9000, 90), ("small", "q4_k_m", 4000, 70))
    hw = Hardware.of([_gpu(0, 8192)])  # 6144 MiB usable after the 2048 MiB headroom
    dev = P["development"]
    assert ids(select(reg, dev, "r", 3)) == ["big", "small"]  # by the budget alone
    assert ids(select(reg, dev, "r", 3, hardware=hw)) == ["small"]
    (out,) = misfits(reg, dev, "r", hardware=hw)
    assert (out.model_id, out.limit) == ("big", Limit.GPU_MEMORY)
    e = explain(reg, dev, "r", "big", hardware=hw)
    assert (e.status, e.limit) == (ExplainStatus.REJECTED, Limit.GPU_MEMORY)
    assert "largest GPU" in e.reason and "6144 MiB usable" in e.reason
    assert explain(reg, dev, "r", "small", hardware=hw).rank == 1


def test_the_budget_is_named_when_it_is_the_limit() -> None:
    reg = _reg(("big", "q4_k_m", 12000, 90))
    e = explain(reg, P["development"], "r", "big", hardware=Hardware.of([_gpu(0, 81920)]))
    assert (e.status, e.limit) == (ExplainStatus.REJECTED, Limit.PROFILE_BUDGET)


def test_a_measured_footprint_counts_instead_of_the_estimate() -> None:
    reg = _reg(("a", "q4_k_m", 5000, 90), ("b", "q4_k_m", 3000, 50))
    hw = Hardware.of([_gpu(0, 8192)], {"a": 7000})
    assert ids(select(reg, P["development"], "r", 3, hardware=hw)) == ["b"]


def test_tensor_parallel_spans_let_a_model_larger_than_one_gpu_in() -> None:
    reg = _reg(("big", "fp8", 20000, 90), ("small", "fp8", 4000, 50))
    two = Hardware.of([_gpu(0, 16384), _gpu(1, 16384)])
    tp = P["multi_gpu_2x16gb"]  # splits models over 12000 MiB across its 2 GPUs
    assert ids(select(reg, tp, "r", 3, hardware=two)) == ["big", "small"]
    # One GPU of the pair: the same model needs 2 GPUs and there is 1.
    one = Hardware.of([_gpu(0, 16384)])
    assert ids(select(reg, tp, "r", 3, hardware=one)) == ["small"]
    assert misfits(reg, tp, "r", hardware=one)[0].limit is Limit.GPU_COUNT


def test_a_lost_gpu_offers_nothing() -> None:
    reg = _reg(("a", "q4_k_m", 3000, 90))
    lost = dataclasses.replace(_gpu(0, 24576), state=GpuState.LOST)
    assert select(reg, P["balanced_24gb"], "r", 3, hardware=Hardware.of([lost])) == []


def test_bf16_wins_ties_on_ampere_and_loses_them_before() -> None:
    # balanced_24gb lists neither bf16 nor fp16: only the GPU generation can break the tie.
    reg = _reg(("f", "fp16", 8000, 50), ("b", "bf16", 8000, 50))
    p = P["balanced_24gb"]
    ada = Hardware.of([_gpu(0, 24576, (8, 9))])
    turing = Hardware.of([_gpu(0, 24576, (7, 5))])
    unknown = Hardware.of([_gpu(0, 24576, None)])
    assert ada.bf16_native is True and turing.bf16_native is False
    assert unknown.bf16_native is None
    assert ids(select(reg, p, "r", 2, hardware=ada)) == ["b", "f"]
    assert ids(select(reg, p, "r", 2, hardware=turing)) == ["f", "b"]
    assert ids(select(reg, p, "r", 2, hardware=unknown)) == ["b", "f"]  # by id
    # A stated preference comes first: generous_96gb lists bf16 before fp16 anyway, and the
    # tie-break never outranks role priority.
    reg2 = _reg(("f", "fp16", 8000, 60), ("b", "bf16", 8000, 50))
    assert ids(select(reg2, p, "r", 2, hardware=ada)) == ["f", "b"]


@pytest.mark.parametrize(
    ("vram_mb", "pins", "profile", "limit", "words"),
    [
        (12000, (), "development", Limit.PROFILE_BUDGET, "allows at most 10000 MiB in total"),
        (9000, (), "development", Limit.GPU_MEMORY, "the largest GPU of this machine"),
        (20000, (), "multi_gpu_2x16gb", Limit.GPU_COUNT, "needs 2 usable GPU(s)"),
        (3000, ("GPU-9",), "development", Limit.PINNING, "pinned to GPU(s) GPU-9"),
    ],
)
def test_explain_names_the_limit_and_words_of_the_cores_check(
    vram_mb: int, pins: tuple[str, ...], profile: str, limit: Limit, words: str
) -> None:
    # One check decides: the scheduler's ceiling (its kind and message) is what explain says,
    # so `gpulet explain` and a refused Acquire give the same reason. One GPU, 8 or 16 GB.
    base = _reg(("m", "fp8", vram_mb, 90)).models["m"]
    reg = Registry(MappingProxyType({"m": dataclasses.replace(base, gpus=pins)}))
    hw = Hardware.of([_gpu(0, 8192 if profile == "development" else 16384)])
    e = explain(reg, P[profile], "r", "m", hardware=hw)
    assert (e.status, e.limit) == (ExplainStatus.REJECTED, limit)
    assert e.reason.startswith("model m ") and words in e.reason
    infos = hw.infos(P[profile])
    problem = ceiling_problem(
        resolve_need(reg.models["m"], vram_mb, P[profile], infos), P[profile], infos
    )
    assert problem is not None and problem.kind is CeilingKind(limit.value)
