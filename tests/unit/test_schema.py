"""The published JSON Schemas: generated from the field specs, committed, and in agreement
with the converters the loader validates with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from gpuletd.config_fields import INT32_MAX, MAX_MIB, MODEL_FIELDS, PROFILE_FIELD_SPECS, Invalid
from gpuletd.profiles import BUILTIN_PROFILES, profile_values
from gpuletd.schema import SCHEMAS, main, model_schema, profile_schema, render

DOCS = Path(__file__).resolve().parents[2] / "docs" / "schema"

# JSON values around every rule a spec has: types, signs, bounds, emptiness, nesting.
SAMPLES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2.5,
    0.0001,
    1e300,
    INT32_MAX,
    INT32_MAX + 1,
    MAX_MIB,
    MAX_MIB + 1,
    2**63,
    "",
    " ",
    "x",
    "(",
    "load_unload",
    "quality",
    "edge",
    "vllm",
    "process",
    "GPU-1234",
    [],
    [""],
    ["fp8", "awq"],
    [0, "GPU-1"],
    [-1],
    [1.5],
    [True],
    {},
    {"caption": 90},
    {"caption": -1},
    {"caption": INT32_MAX + 1},
    {"caption": "high"},
    {"dtype": "bf16", "tensor_parallel_size": 2, "flags": ["--a", 1]},
    {"nested": {"a": 1}},
]


def _schema_accepts(fragment: dict[str, Any], value: Any) -> bool:
    schema = {"type": "object", "properties": {"v": fragment}}
    checker = Draft202012Validator.FORMAT_CHECKER
    return bool(Draft202012Validator(schema, format_checker=checker).is_valid({"v": value}))


def _converter_accepts(spec: Any, value: Any) -> bool:
    try:
        spec(value)
    except Invalid:
        return False
    return True


@pytest.mark.parametrize(
    ("key", "spec"),
    [*PROFILE_FIELD_SPECS.items(), *(("model." + k, s) for k, s in MODEL_FIELDS.items())],
)
def test_schema_and_converter_agree_on_every_sample(key: str, spec: Any) -> None:
    fragment = spec.json_schema()
    assert set(fragment) - {"description"}, f"{key}: the spec has no JSON Schema fragment"
    disagree = [v for v in SAMPLES if _schema_accepts(fragment, v) != _converter_accepts(spec, v)]
    assert disagree == [], f"{key}: schema and converter disagree on {disagree}"


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_the_committed_schema_is_the_generated_one(name: str) -> None:
    committed = (DOCS / name).read_text(encoding="utf-8")
    assert committed == render(SCHEMAS[name]()), (
        f"docs/schema/{name} is stale: run `python -m gpuletd.schema docs/schema`"
    )


def test_the_check_mode_fails_on_a_stale_copy(tmp_path: Path) -> None:
    assert main([str(tmp_path)]) == 0
    assert main([str(tmp_path), "--check"]) == 0
    (tmp_path / "profile.schema.json").write_text("{}\n")
    assert main([str(tmp_path), "--check"]) == 1


def test_every_builtin_profile_validates_as_a_profile_file() -> None:
    validator = Draft202012Validator(profile_schema())
    for p in BUILTIN_PROFILES.values():
        data = {k: v for k, v in profile_values(p, plain=True).items() if v is not None}
        assert list(validator.iter_errors({"name": p.name, **data})) == [], p.name


def test_the_schema_refuses_what_the_loader_refuses() -> None:
    validator = Draft202012Validator(profile_schema())
    assert not validator.is_valid({"extends": "development", "colour": "blue"})
    assert not validator.is_valid({"name": "a", "profile": "b"})
    assert not validator.is_valid({"extends": "development", "max_concurrent_models": 2**31})
    assert not Draft202012Validator(model_schema()).is_valid({"name": "no estimate"})


def test_seed_002_cpu_profile_is_valid_with_extends() -> None:
    seed = {
        "profile": "cpu",
        "category": "edge",
        "extends": "development",
        "engine": {"device": "cpu", "tensor_parallel_size": 1, "quantization_bits": 8},
    }
    assert Draft202012Validator(profile_schema()).is_valid(json.loads(json.dumps(seed)))
