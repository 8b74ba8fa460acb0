from __future__ import annotations

from types import MappingProxyType

import pytest

from gpuletd.config import load_config
from gpuletd.profiles import BUILTIN_PROFILES, Bias
from gpuletd.registry import Backend, Model, Registry
from gpuletd.selector import ExplainStatus, InvalidTopN, UnknownRole, explain, select

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
            "needs 10600 MiB but profile development allows max_vram_mb=10000",
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
