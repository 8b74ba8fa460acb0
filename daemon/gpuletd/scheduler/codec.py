"""JSON values in and out, strictly: the building blocks of `snapshot.py`.

A snapshot holds only str, int, float, bool, None, list and dict, so `json.dumps(...,
allow_nan=False)` accepts it. Infinite times (a backoff that never started is -inf) are written
as the strings "inf" and "-inf"; NaN is never written. Every reader here checks the type it
expects and raises `SnapshotError` with the path of the bad value, so a damaged file is
refused with a message rather than half restored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields
from types import MappingProxyType
from typing import Any

from gpuletd.registry import Backend, Model, WeightClass

__all__ = [
    "Json",
    "SnapshotError",
    "as_int",
    "as_time",
    "get_bool",
    "get_dict",
    "get_int",
    "get_list",
    "get_opt_int",
    "get_opt_time",
    "get_str",
    "get_time",
    "model_from_dict",
    "model_to_dict",
    "time_to_json",
]

# A JSON object as read back: anything may be in it until checked.
Json = dict[str, Any]


class SnapshotError(ValueError):
    """The snapshot cannot be restored: malformed, inconsistent, or of an unknown version."""


def _fail(path: str, what: str, value: object) -> SnapshotError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return SnapshotError(f"snapshot: {path} must be {what}, got {shown}")


def time_to_json(t: float | None) -> float | str | None:
    if t is None or math.isfinite(t):
        return t
    if math.isnan(t):
        raise ValueError("a NaN time cannot be saved")
    return "inf" if t > 0 else "-inf"


def get_dict(obj: Json, key: str, path: str) -> Json:
    v = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        raise _fail(f"{path}.{key}", "an object", v)
    return v


def get_list(obj: Json, key: str, path: str) -> list[Any]:
    v = obj.get(key)
    if not isinstance(v, list):
        raise _fail(f"{path}.{key}", "a list", v)
    return v


def get_str(obj: Json, key: str, path: str) -> str:
    v = obj.get(key)
    if not isinstance(v, str):
        raise _fail(f"{path}.{key}", "a string", v)
    return v


def get_bool(obj: Json, key: str, path: str) -> bool:
    v = obj.get(key)
    if not isinstance(v, bool):
        raise _fail(f"{path}.{key}", "true or false", v)
    return v


def as_int(v: object, path: str) -> int:
    # bool is an int to Python, never to a snapshot.
    if isinstance(v, bool) or not isinstance(v, int):
        raise _fail(path, "an integer", v)
    return v


def get_int(obj: Json, key: str, path: str) -> int:
    return as_int(obj.get(key), f"{path}.{key}")


def get_opt_int(obj: Json, key: str, path: str) -> int | None:
    return None if obj.get(key) is None else get_int(obj, key, path)


def as_time(v: object, path: str) -> float:
    if v == "inf":
        return math.inf
    if v == "-inf":
        return -math.inf
    if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
        raise _fail(path, 'a number, "inf" or "-inf"', v)
    return float(v)


def get_time(obj: Json, key: str, path: str) -> float:
    return as_time(obj.get(key), f"{path}.{key}")


def get_opt_time(obj: Json, key: str, path: str) -> float | None:
    return None if obj.get(key) is None else get_time(obj, key, path)


# -- the registry's Model ------------------------------------------------------------------------
# Written field by field from the dataclass, so a field added to Model is saved without a
# change here; only fields that are not plain JSON scalars need a rule in each direction.


def _to_json(v: object) -> object:
    if isinstance(v, Backend | WeightClass):
        return v.value
    if isinstance(v, Mapping):
        return {str(k): list(x) if isinstance(x, tuple) else x for k, x in v.items()}
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, float):
        return time_to_json(v)
    return v


def model_to_dict(m: Model) -> Json:
    return {f.name: _to_json(getattr(m, f.name)) for f in fields(Model)}


def _str_tuple(v: object, path: str) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise _fail(path, "a list of strings", v)
    return tuple(v)


def _role_priority(v: object, path: str) -> Mapping[str, int]:
    if not isinstance(v, dict):
        raise _fail(path, "an object", v)
    return {str(k): as_int(x, f"{path}.{k}") for k, x in v.items()}


def _env(v: object, path: str) -> Mapping[str, str]:
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        raise _fail(path, "an object of strings", v)
    return MappingProxyType(dict(v))


def _backend(v: object, path: str) -> Backend:
    try:
        return Backend(v)
    except ValueError:
        raise _fail(path, "a backend kind", v) from None


def _weight_class(v: object, path: str) -> WeightClass | None:
    if v is None:
        return None
    try:
        return WeightClass(v)
    except ValueError:
        raise _fail(path, "'heavy', 'light' or null", v) from None


def _settings(v: object, path: str) -> Mapping[str, object]:
    # Engine settings: scalars, or arrays of scalars (kept as tuples, as the config has them).
    if not isinstance(v, dict):
        raise _fail(path, "an object", v)
    return MappingProxyType(
        {
            str(k): tuple(_scalar(y, f"{path}.{k}") for y in x)
            if isinstance(x, list)
            else _scalar(x, f"{path}.{k}")
            for k, x in v.items()
        }
    )


def _scalar(v: object, path: str) -> object:
    if v is None or isinstance(v, str | int | float | bool):
        return v
    if v in ("inf", "-inf"):
        return as_time(v, path)
    raise _fail(path, "a JSON scalar", v)


_FROM_JSON = {
    "backend": _backend,
    "role_priority": _role_priority,
    "env": _env,
    "command": _str_tuple,
    "gpus": _str_tuple,
    "vram_estimate_mb": as_int,
    "weight_class": _weight_class,
    "engine_settings": _settings,
}


def model_from_dict(d: object, path: str) -> Model:
    if not isinstance(d, dict):
        raise _fail(path, "an object", d)
    kwargs: dict[str, Any] = {}
    for f in fields(Model):
        if f.name not in d:
            # A field Model gained after the snapshot was taken keeps its default.
            continue
        decode = _FROM_JSON.get(f.name, _scalar)
        kwargs[f.name] = decode(d[f.name], f"{path}.{f.name}")
    for key in ("id", "name", "quantization"):
        if not isinstance(kwargs.get(key), str):
            raise _fail(f"{path}.{key}", "a string", kwargs.get(key))
    try:
        return Model(**kwargs)
    except TypeError as e:
        raise SnapshotError(f"snapshot: {path} is not a model definition: {e}") from None
