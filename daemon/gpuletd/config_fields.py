"""Field converters shared by every place a configuration value enters: files and `--set`."""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from gpuletd.profiles import Bias, Category, IdleUnload, Strategy
from gpuletd.registry import ENGINES, Backend, WeightClass

__all__ = [
    "INT32_MAX",
    "MAX_MIB",
    "MAX_SECONDS",
    "MODEL_FIELDS",
    "PROFILE_FIELD_SPECS",
    "FieldSpec",
    "Invalid",
]

# The API's integer fields (protos/gpulet/v1/types.proto): a value the proto cannot carry
# passes a check it is never tested against and fails every later RPC that returns it with
# UNKNOWN "Value out of range", so it is refused where it is read.
INT32_MAX = 2**31 - 1
# Memory sizes travel as int64, but the daemon adds them (budgets, reservations per GPU):
# 2**40 MiB (one exbibyte) is beyond any machine and a million of them still fit an int64.
MAX_MIB = 2**40
# A timer longer than a year is a typo; asyncio also refuses to schedule one near float max.
MAX_SECONDS = 365 * 86400.0


class Invalid(Exception):
    """A value of the wrong shape; the message says what was expected."""


@dataclass(frozen=True)
class FieldSpec:
    expected: str
    convert: Callable[[Any], Any]
    # The same rule as a JSON Schema fragment, for the published schema (docs/schema/, built
    # by schema.py). The converter alone validates what gpulet reads; tests/unit/test_schema.py
    # checks that the two accept the same values.
    schema: Mapping[str, Any] = field(default_factory=dict)

    def json_schema(self) -> dict[str, Any]:
        return {**self.schema, "description": self.expected}

    def __call__(self, value: Any) -> Any:
        try:
            return self.convert(value)
        except Invalid as e:
            raise Invalid(f"expected {self.expected}, got {_show(value)}{e}") from None


def _show(value: Any) -> str:
    kind = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "table",
    }.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{kind} {text if len(text) <= 40 else text[:37] + '...'}"


def _int(minimum: int, maximum: int = MAX_MIB) -> FieldSpec:
    def conv(v: Any) -> int:
        # bool is an int in Python but `max_concurrent_models = true` is a mistake.
        if not isinstance(v, int) or isinstance(v, bool) or not minimum <= v <= maximum:
            raise Invalid("")
        return v

    return FieldSpec(
        f"an integer >= {minimum} and <= {maximum}",
        conv,
        {"type": "integer", "minimum": minimum, "maximum": maximum},
    )


def _seconds(*, positive: bool) -> FieldSpec:
    def conv(v: Any) -> float:
        if (
            not isinstance(v, int | float)
            or isinstance(v, bool)
            or not math.isfinite(v)  # nan/inf: a grace of nan would never expire
            or v < 0
            or (positive and v == 0)
            or v > MAX_SECONDS
        ):
            raise Invalid("")
        return float(v)

    bound: dict[str, Any] = {"exclusiveMinimum": 0} if positive else {"minimum": 0}
    return FieldSpec(
        f"a finite number of seconds {'> 0' if positive else '>= 0'} and <= {MAX_SECONDS:g}",
        conv,
        {"type": "number", **bound, "maximum": MAX_SECONDS},
    )


def _str(*, nonempty: bool = False) -> FieldSpec:
    def conv(v: Any) -> str:
        if not isinstance(v, str) or (nonempty and not v.strip()):
            raise Invalid("")
        return v

    return FieldSpec(
        "a non-empty string" if nonempty else "a string",
        conv,
        {"type": "string", "pattern": r"\S"} if nonempty else {"type": "string"},
    )


def _str_list(*, nonempty: bool = False) -> FieldSpec:
    def conv(v: Any) -> tuple[str, ...]:
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise Invalid("")
        if nonempty and not v:
            raise Invalid("")
        return tuple(v)

    return FieldSpec(
        "a non-empty array of strings" if nonempty else "an array of strings",
        conv,
        {"type": "array", "items": {"type": "string"}, **({"minItems": 1} if nonempty else {})},
    )


E = TypeVar("E", bound=enum.Enum)


def _enum(kind: type[E]) -> FieldSpec:
    names = ", ".join(repr(m.value) for m in kind)

    def conv(v: Any) -> E:
        for m in kind:
            if v == m.value:
                return m
        raise Invalid("")

    return FieldSpec(f"one of {names}", conv, {"enum": [m.value for m in kind]})


def _int_map() -> FieldSpec:
    def conv(v: Any) -> Mapping[str, int]:
        if not isinstance(v, dict):
            raise Invalid("")
        for k, x in v.items():
            # Priorities travel as int32 (Model.role_priority).
            if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x <= INT32_MAX:
                raise Invalid(f" (role {k!r}: {_show(x)})")
        return MappingProxyType(dict(v))

    return FieldSpec(
        f"a table of role = integer priority >= 0 and <= {INT32_MAX}",
        conv,
        {
            "type": "object",
            "additionalProperties": {"type": "integer", "minimum": 0, "maximum": INT32_MAX},
        },
    )


def _str_map() -> FieldSpec:
    def conv(v: Any) -> Mapping[str, str]:
        if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
            raise Invalid("")
        return MappingProxyType(dict(v))

    return FieldSpec(
        "a table of NAME = string",
        conv,
        {"type": "object", "additionalProperties": {"type": "string"}},
    )


def _engine() -> FieldSpec:
    names = ", ".join(repr(n) for n in ENGINES)

    def conv(v: Any) -> str:
        # An unknown name is refused, not run as "custom": `vlm` would otherwise silently
        # lose its preset and the memory share that comes with it.
        if v not in ENGINES:
            raise Invalid("")
        return str(v)

    return FieldSpec(f"one of {names}", conv, {"enum": list(ENGINES)})


def _engine_value(v: Any) -> bool:
    if isinstance(v, float):
        return math.isfinite(v)
    return isinstance(v, str | int | bool)


def _engine_table() -> FieldSpec:
    def conv(v: Any) -> Mapping[str, Any]:
        if not isinstance(v, dict):
            raise Invalid("")
        out: dict[str, Any] = {}
        for k, x in v.items():
            # Keys are free-form (seed 002: unknown ones are kept); values must be something a
            # command line can carry.
            if isinstance(x, list | tuple) and all(_engine_value(y) for y in x):
                out[k] = tuple(x)
            elif _engine_value(x):
                out[k] = x
            else:
                raise Invalid(f" (key {k!r}: {_show(x)})")
        return MappingProxyType(out)

    scalar = {"type": ["string", "number", "boolean"]}
    return FieldSpec(
        "a table of KEY = string, number, boolean or array of those (engine settings)",
        conv,
        {
            "type": "object",
            "additionalProperties": {"anyOf": [scalar, {"type": "array", "items": scalar}]},
        },
    )


def _regex() -> FieldSpec:
    def conv(v: Any) -> str:
        # Compiled here so that a typo is a config error at load, not a start that never
        # notices its backend is ready.
        if not isinstance(v, str) or not v:
            raise Invalid("")
        try:
            re.compile(v)
        except re.error as e:
            raise Invalid(f" ({e})") from None
        return v

    return FieldSpec(
        "a non-empty regular expression (Python re syntax)",
        conv,
        {"type": "string", "minLength": 1, "format": "regex"},
    )


def _gpu_list() -> FieldSpec:
    def conv(v: Any) -> tuple[str, ...]:
        if not isinstance(v, list):
            raise Invalid("")
        out = []
        for x in v:
            if isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= INT32_MAX:
                out.append(str(x))
            elif isinstance(x, str) and x.strip():
                out.append(x.strip())
            else:
                raise Invalid("")
        return tuple(out)

    return FieldSpec(
        "an array of GPU indexes (integers) or GPU UUIDs (strings)",
        conv,
        {
            "type": "array",
            "items": {
                "oneOf": [
                    {"type": "integer", "minimum": 0, "maximum": INT32_MAX},
                    {"type": "string", "pattern": r"\S"},
                ]
            },
        },
    )


PROFILE_FIELD_SPECS: Mapping[str, FieldSpec] = MappingProxyType(
    {
        "description": _str(),
        "max_vram_mb": _int(0),
        "max_concurrent_models": _int(1, INT32_MAX),
        "preferred_quantizations": _str_list(),
        "strategy": _enum(Strategy),
        "autostart_timeout_seconds": _seconds(positive=True),
        "grace_period_seconds": _seconds(positive=False),
        "model_selection_bias": _enum(Bias),
        "gpu_count": _int(1, INT32_MAX),
        "tensor_parallel_threshold_mb": _int(0),
        "headroom_mb": _int(0),
        "max_heavy_models": _int(1, INT32_MAX),
        "heavy_threshold_mb": _int(1),
        "idle_unload": _enum(IdleUnload),
        "engine": _engine_table(),
        "category": _enum(Category),
        "use_case": _str(),
        "tags": _str_list(),
        "recommended_for": _str_list(),
    }
)

MODEL_FIELDS: Mapping[str, FieldSpec] = MappingProxyType(
    {
        "name": _str(nonempty=True),
        "backend": _enum(Backend),
        "quantization": _str(nonempty=True),
        "vram_estimate_mb": _int(1),
        "role_priority": _int_map(),
        "group": _str(nonempty=True),
        "command": _str_list(nonempty=True),
        "health_url": _str(nonempty=True),
        "endpoint": _str(nonempty=True),
        "env": _str_map(),
        "ready_log_pattern": _regex(),
        "gpus": _gpu_list(),
        "autostart_timeout_seconds": _seconds(positive=True),
        "grace_period_seconds": _seconds(positive=False),
        "weight_class": _enum(WeightClass),
        "engine": _engine(),
        "engine_settings": _engine_table(),
    }
)
