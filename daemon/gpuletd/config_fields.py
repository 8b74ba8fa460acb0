"""Field converters shared by every place a configuration value enters: files and `--set`."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

from gpuletd.profiles import Bias, Strategy
from gpuletd.registry import Backend

__all__ = ["MODEL_FIELDS", "PROFILE_FIELD_SPECS", "FieldSpec", "Invalid"]


class Invalid(Exception):
    """A value of the wrong shape; the message says what was expected."""


@dataclass(frozen=True)
class FieldSpec:
    expected: str
    convert: Callable[[Any], Any]

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


def _int(minimum: int) -> FieldSpec:
    def conv(v: Any) -> int:
        # bool is an int in Python but `max_concurrent_models = true` is a mistake.
        if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
            raise Invalid("")
        return v

    return FieldSpec(f"an integer >= {minimum}", conv)


def _seconds(*, positive: bool) -> FieldSpec:
    def conv(v: Any) -> float:
        if (
            not isinstance(v, int | float)
            or isinstance(v, bool)
            or not math.isfinite(v)  # nan/inf: a grace of nan would never expire
            or v < 0
            or (positive and v == 0)
        ):
            raise Invalid("")
        return float(v)

    return FieldSpec("a finite number of seconds " + ("> 0" if positive else ">= 0"), conv)


def _str(*, nonempty: bool = False) -> FieldSpec:
    def conv(v: Any) -> str:
        if not isinstance(v, str) or (nonempty and not v.strip()):
            raise Invalid("")
        return v

    return FieldSpec("a non-empty string" if nonempty else "a string", conv)


def _str_list(*, nonempty: bool = False) -> FieldSpec:
    def conv(v: Any) -> tuple[str, ...]:
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise Invalid("")
        if nonempty and not v:
            raise Invalid("")
        return tuple(v)

    return FieldSpec("a non-empty array of strings" if nonempty else "an array of strings", conv)


E = TypeVar("E", bound=enum.Enum)


def _enum(kind: type[E]) -> FieldSpec:
    names = ", ".join(repr(m.value) for m in kind)

    def conv(v: Any) -> E:
        for m in kind:
            if v == m.value:
                return m
        raise Invalid("")

    return FieldSpec(f"one of {names}", conv)


def _int_map() -> FieldSpec:
    def conv(v: Any) -> Mapping[str, int]:
        if not isinstance(v, dict):
            raise Invalid("")
        for k, x in v.items():
            if not isinstance(x, int) or isinstance(x, bool) or x < 0:
                raise Invalid(f" (role {k!r}: {_show(x)})")
        return MappingProxyType(dict(v))

    return FieldSpec("a table of role = integer priority >= 0", conv)


def _str_map() -> FieldSpec:
    def conv(v: Any) -> Mapping[str, str]:
        if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
            raise Invalid("")
        return MappingProxyType(dict(v))

    return FieldSpec("a table of NAME = string", conv)


def _gpu_list() -> FieldSpec:
    def conv(v: Any) -> tuple[str, ...]:
        if not isinstance(v, list):
            raise Invalid("")
        out = []
        for x in v:
            if isinstance(x, int) and not isinstance(x, bool) and x >= 0:
                out.append(str(x))
            elif isinstance(x, str) and x.strip():
                out.append(x.strip())
            else:
                raise Invalid("")
        return tuple(out)

    return FieldSpec("an array of GPU indexes (integers) or GPU UUIDs (strings)", conv)


PROFILE_FIELD_SPECS: Mapping[str, FieldSpec] = MappingProxyType(
    {
        "description": _str(),
        "max_vram_mb": _int(0),
        "max_concurrent_models": _int(1),
        "preferred_quantizations": _str_list(),
        "strategy": _enum(Strategy),
        "autostart_timeout_seconds": _seconds(positive=True),
        "grace_period_seconds": _seconds(positive=False),
        "model_selection_bias": _enum(Bias),
        "gpu_count": _int(1),
        "tensor_parallel_threshold_mb": _int(0),
        "headroom_mb": _int(0),
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
        "gpus": _gpu_list(),
        "autostart_timeout_seconds": _seconds(positive=True),
        "grace_period_seconds": _seconds(positive=False),
    }
)
