"""Configuration files: user profiles (with layering), the model registry, `profile =`.

Files are TOML. The loader checks everything before the daemon starts and reports the first
problem as `file:line: field: what was expected`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, replace
from dataclasses import fields as dataclass_fields
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gpuletd.backends.engines import PRESETS, EngineError, check_settings
from gpuletd.backends.placeholders import BackendConfigError, validate_process_model
from gpuletd.bounds import MAX_NAME
from gpuletd.config_errors import ConfigError, Location, SourceMap, read_config_text
from gpuletd.config_fields import MODEL_FIELDS, PROFILE_FIELD_SPECS, Invalid
from gpuletd.profiles import (
    BUILTIN_PROFILES,
    PROFILE_FIELDS,
    Profile,
    Strategy,
    profile_values,
)
from gpuletd.registry import Backend, Model, Registry

__all__ = [
    "DEFAULT_CONFIG",
    "REQUIRED_PROFILE_FIELDS",
    "Config",
    "apply_overrides",
    "check_profile",
    "config_paths",
    "is_profile_path",
    "load_config",
    "patch_profile_fields",
    "profile_name_problem",
]

DEFAULT_CONFIG = Path("/etc/gpulet/gpulet.toml")
EXAMPLE_REGISTRY = "example_models.toml"
_TOP_LEVEL = (
    "profile",
    "preload",
    "example_models",
    "max_lease_ttl_seconds",
    "profiles",
    "models",
)
# The longest lease a client may ask for (renewing extends it): one hour unless configured.
DEFAULT_MAX_LEASE_TTL_S = 3600.0
# A configured maximum beyond this would let one client pin a model for more than a week.
_MAX_LEASE_TTL_LIMIT_S = 7 * 86400.0


@dataclass(frozen=True)
class _ProfileDef:
    name: str
    fields: Mapping[str, Any]  # converted values of the fields this table sets itself
    extends: tuple[str, ...]
    where: Location
    extends_where: Location


@dataclass(frozen=True)
class Config:
    """The effective configuration: every profile (built-in and user), the registry, and
    the `profile =` choice with where it was written."""

    profiles: Mapping[str, Profile]
    registry: Registry
    profile: str | None = None
    profile_where: Location | None = None
    preload: tuple[str, ...] = ()
    max_lease_ttl_s: float = DEFAULT_MAX_LEASE_TTL_S
    files: tuple[str, ...] = ()
    user_profiles: frozenset[str] = field(default_factory=frozenset)


def is_profile_path(item: str) -> bool:
    """In a profile spec, a path rather than a name: it has a `/` or ends in .toml/.json
    (`edge.json` in the working directory)."""
    return "/" in item or item.lower().endswith((".toml", ".json"))


def profile_name_problem(name: str) -> str | None:
    """Why `name` cannot name a profile, or None. One rule for `[profiles.NAME]`, a profile
    file's `name` and a profile file's stem: a spec splits on commas and reads paths, and a
    name is typed on command lines and in environment files, so such a name could never be
    selected (or only with quoting nobody gets right in a unit file)."""
    if not name:
        return "may not be empty"
    if len(name) > MAX_NAME:
        return f"at most {MAX_NAME} characters, got {len(name)}"
    if "," in name or is_profile_path(name):
        return "may not contain ',' or '/' nor end in .toml or .json (those select profile files)"
    if any(ch.isspace() or not ch.isprintable() for ch in name):
        return "may not contain spaces or control characters"
    return None


def config_paths(explicit: str | None) -> list[Path]:
    """An explicit `--config` file must exist; the default one and its conf.d are optional."""
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise ConfigError(Location(str(p)), "config file not found")
        return [p]
    paths = [DEFAULT_CONFIG] if DEFAULT_CONFIG.is_file() else []
    confd = DEFAULT_CONFIG.parent / "conf.d"
    if confd.is_dir():
        paths += sorted(confd.glob("*.toml"))
    return paths


def _parse(path: str, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # tomllib's message ends with "(at line N, column M)"; lift the line to the front.
        msg = str(e)
        line = None
        if "(at line " in msg:
            tail = msg.rsplit("(at line ", 1)[1]
            line = int(tail.split(",", 1)[0])
            msg = msg.rsplit(" (at line ", 1)[0]
        elif msg.endswith("(at end of document)"):
            line = max(1, len(text.splitlines()))
            msg = msg.removesuffix(" (at end of document)")
        raise ConfigError(Location(path, line), f"invalid TOML: {msg}") from None


def _convert(specs: Mapping[str, Any], key: str, value: Any, where: Location, what: str) -> Any:
    spec = specs.get(key)
    if spec is None:
        known = ", ".join(specs)
        raise ConfigError(where, f"{what}: unknown field {key!r} (known fields: {known})")
    try:
        return spec(value)
    except Invalid as e:
        raise ConfigError(where, f"{what}: field {key!r}: {e}") from None


def _read_profile(name: str, table: Any, src: SourceMap) -> _ProfileDef:
    where = src.at("profiles", name)
    if not isinstance(table, dict):
        raise ConfigError(where, f"profile {name!r}: expected a table")
    extends: tuple[str, ...] = ()
    converted: dict[str, Any] = {}
    for key, value in table.items():
        at = src.at("profiles", name, key)
        if key == "extends":
            if isinstance(value, str):
                extends = (value,)
            elif isinstance(value, list) and value and all(isinstance(x, str) for x in value):
                extends = tuple(value)
            else:
                raise ConfigError(
                    at,
                    f"profile {name!r}: field 'extends': expected a profile name or a "
                    "non-empty array of profile names",
                )
        else:
            converted[key] = _convert(PROFILE_FIELD_SPECS, key, value, at, f"profile {name!r}")
            if key == "engine":
                _check_engine(converted[key], at, name)
    return _ProfileDef(
        name, MappingProxyType(converted), extends, where, src.at("profiles", name, "extends")
    )


def _check_engine(settings: Mapping[str, Any], where: Location | str, name: str) -> None:
    try:
        check_settings(settings)
    except EngineError as e:
        raise ConfigError(where, f"profile {name!r}: field 'engine': {e}") from None


def _read_model(model_id: str, table: Any, src: SourceMap) -> Model:
    where = src.at("models", model_id)
    what = f"model {model_id!r}"
    if not isinstance(table, dict):
        raise ConfigError(where, f"{what}: expected a table")
    values = {
        k: _convert(MODEL_FIELDS, k, v, src.at("models", model_id, k), what)
        for k, v in table.items()
    }
    if "vram_estimate_mb" not in values:
        raise ConfigError(where, f"{what}: missing field 'vram_estimate_mb' (an integer >= 1)")
    preset = values.get("engine") in PRESETS
    # An engine with a preset is a server for the daemon to start: without this default a
    # model naming `engine = "vllm"` would silently be a bare reservation.
    backend = values.get("backend", Backend.PROCESS if preset else Backend.RESERVATION)
    if backend is Backend.PROCESS and "command" not in values and not preset:
        raise ConfigError(
            where,
            f"{what}: backend 'process' needs field 'command' or an engine with a preset "
            f"({', '.join(PRESETS)})",
        )
    values.setdefault("name", model_id)
    values.setdefault("quantization", "unknown")
    values.setdefault("role_priority", MappingProxyType({}))
    model = Model(
        id=model_id, backend=backend, **{k: v for k, v in values.items() if k != "backend"}
    )
    if backend is Backend.PROCESS:
        try:
            validate_process_model(model)
        except BackendConfigError as e:
            # Point at the field the problem is in when the message names one.
            field = next(
                (
                    f
                    for f in ("command", "health_url", "endpoint", "env", "engine_settings")
                    if f in values and f in str(e)
                ),
                None,
            )
            at = src.at("models", model_id, field) if field else where
            raise ConfigError(at, str(e)) from None
    return model


class _Files:
    """Everything read from the config files, before profiles are resolved."""

    def __init__(self) -> None:
        self.profile: str | None = None
        self.profile_where: Location | None = None
        self.preload: tuple[str, ...] = ()
        self.preload_where: Location | None = None
        self.example_models: bool | None = None
        self.max_lease_ttl_s = DEFAULT_MAX_LEASE_TTL_S
        self.profiles: dict[str, _ProfileDef] = {}
        self.models: dict[str, tuple[Model, Location]] = {}

    def read(self, path: str, text: str) -> None:
        data = _parse(path, text)
        src = SourceMap(path, text)
        for key in data:
            if key not in _TOP_LEVEL:
                raise ConfigError(
                    src.at(key), f"unknown top-level key {key!r} (known: {', '.join(_TOP_LEVEL)})"
                )
        if "profile" in data:
            if not isinstance(data["profile"], str) or not data["profile"]:
                raise ConfigError(src.at("profile"), "field 'profile': expected a profile name")
            self.profile = _relative_to(data["profile"], Path(path).parent)
            self.profile_where = src.at("profile")
        if "preload" in data:
            v = data["preload"]
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ConfigError(
                    src.at("preload"), "field 'preload': expected an array of model ids"
                )
            self.preload = tuple(v)
            self.preload_where = src.at("preload")
        if "max_lease_ttl_seconds" in data:
            v = data["max_lease_ttl_seconds"]
            if (
                isinstance(v, bool)
                or not isinstance(v, int | float)
                or not 1 <= v <= _MAX_LEASE_TTL_LIMIT_S
            ):
                raise ConfigError(
                    src.at("max_lease_ttl_seconds"),
                    "field 'max_lease_ttl_seconds': expected a number of seconds from 1 to "
                    f"{_MAX_LEASE_TTL_LIMIT_S:g}",
                )
            self.max_lease_ttl_s = float(v)
        if "example_models" in data:
            if not isinstance(data["example_models"], bool):
                raise ConfigError(
                    src.at("example_models"), "field 'example_models': expected true or false"
                )
            self.example_models = data["example_models"]
        for section, store in (("profiles", self.profiles), ("models", self.models)):
            tables = data.get(section, {})
            if isinstance(tables, list):
                one = "profile" if section == "profiles" else "model"
                raise ConfigError(
                    src.at(section),
                    f"[[{section}]] is an array of tables; write each {one} as its own table "
                    f"named by its {'name' if one == 'profile' else 'id'}: [{section}.NAME]",
                )
            if not isinstance(tables, dict):
                raise ConfigError(src.at(section), f"{section!r}: expected a table of tables")
            for name, table in tables.items():
                if len(name) > MAX_NAME:
                    # The API refuses longer ids: such a model could be listed, never leased.
                    raise ConfigError(
                        src.at(section, name),
                        f"{section[:-1]} name {name[:40]!r}...: at most {MAX_NAME} characters, "
                        f"got {len(name)}",
                    )
                if name in store:
                    first = store[name]
                    first_where = first.where if isinstance(first, _ProfileDef) else first[1]
                    raise ConfigError(
                        src.at(section, name),
                        f"{section[:-1]} {name!r} is defined twice (first at {first_where})",
                    )
                if section == "profiles":
                    problem = profile_name_problem(name)
                    if problem is not None:
                        raise ConfigError(
                            src.at(section, name), f"profile name {name!r}: {problem}"
                        )
                    self.profiles[name] = _read_profile(name, table, src)
                else:
                    self.models[name] = (_read_model(name, table, src), src.at("models", name))


def _relative_to(spec: str, folder: Path) -> str:
    """A `profile =` spec with its relative paths made relative to the config file's folder:
    the daemon's working directory (`/` under systemd) is no place to look for them."""
    items = [s.strip() for s in spec.split(",")]
    return ",".join(
        str(folder / s) if s and is_profile_path(s) and not Path(s).is_absolute() else s
        for s in items
    )


def patch_profile_fields(merged: dict[str, Any], fields: Mapping[str, Any]) -> None:
    """A later layer's fields win; its `engine` table patches the earlier one key by key, so
    `extends` can add `dtype` without restating the parent's other engine settings. The one
    merge for every layering: `extends` in a config or a profile file, and combinations."""
    for key, value in fields.items():
        if key == "engine" and isinstance(merged.get(key), Mapping):
            value = MappingProxyType({**merged[key], **value})
        merged[key] = value


def _resolve_profiles(defs: Mapping[str, _ProfileDef]) -> dict[str, Profile]:
    """Layering: a profile's first `extends` entry gives its base; every later entry adds the
    fields that profile sets itself (all of them, for a built-in); then its own fields.
    Without `extends` the table is a whole profile and must set every field."""
    resolved: dict[str, dict[str, Any]] = {}
    chains: dict[str, tuple[str, ...]] = {}
    in_progress: list[str] = []

    def full(name: str, asked_by: _ProfileDef) -> dict[str, Any]:
        if name in resolved:
            return resolved[name]
        d = defs.get(name)
        if d is None or (name in in_progress and name in BUILTIN_PROFILES):
            if name in BUILTIN_PROFILES:
                return _builtin_fields(name)
            known = ", ".join(sorted({*BUILTIN_PROFILES, *defs}))
            raise ConfigError(
                asked_by.extends_where,
                f"profile {asked_by.name!r} extends unknown profile {name!r} "
                f"(known profiles: {known})",
            )
        if name in in_progress:
            chain = " -> ".join([*in_progress[in_progress.index(name) :], name])
            raise ConfigError(d.extends_where, f"profile {name!r}: extends forms a cycle ({chain})")
        in_progress.append(name)
        merged: dict[str, Any] = {}
        layers: list[str] = []
        for i, parent in enumerate(d.extends):
            patch_profile_fields(merged, full(parent, d) if i == 0 else own(parent, d))
            if i > 0:
                layers.append(parent)
            elif parent in chains:
                layers.extend(chains[parent])
            else:
                # A built-in; named apart when the user profile replacing it extends it.
                layers.append(parent if parent != name else f"{parent} (built-in)")
        layers.append(name)
        chains[name] = tuple(layers)
        patch_profile_fields(merged, d.fields)
        merged.setdefault("description", f"user profile from {d.where.file}")
        in_progress.pop()
        missing = [f for f in REQUIRED_PROFILE_FIELDS if f not in merged]
        if missing:
            raise ConfigError(
                d.where,
                f"profile {name!r}: missing field(s) {', '.join(missing)} (set them, or "
                "`extends` a profile that has them)",
            )
        resolved[name] = merged
        return merged

    def own(name: str, asked_by: _ProfileDef) -> Mapping[str, Any]:
        d = defs.get(name)
        if d is not None and d.name not in in_progress:
            full(name, asked_by)  # validates it exists and is whole
            return d.fields
        return full(name, asked_by)

    out = dict(BUILTIN_PROFILES)
    for name, d in defs.items():
        values = full(name, d)
        profile = Profile(
            name=name,
            layer_names=chains[name],
            own_fields=frozenset(d.fields) if d.extends else None,
            **{k: v for k, v in values.items() if k in PROFILE_FIELDS},
        )
        check_profile(profile, d.where)
        out[name] = profile
    return out


# Fields a whole profile may leave out: those with a default on `Profile`.
REQUIRED_PROFILE_FIELDS: tuple[str, ...] = tuple(
    f.name
    for f in dataclass_fields(Profile)
    if f.name in PROFILE_FIELDS
    and f.default is MISSING
    and f.default_factory is MISSING
    and f.name != "description"
)


def _builtin_fields(name: str) -> dict[str, Any]:
    return profile_values(BUILTIN_PROFILES[name])


def check_profile(p: Profile, where: Location | str) -> None:
    if (
        p.strategy is Strategy.TENSOR_PARALLEL_OR_DISTRIBUTED
        and p.tensor_parallel_threshold_mb is None
    ):
        raise ConfigError(
            where,
            f"profile {p.name!r}: strategy 'tensor_parallel_or_distributed' needs field "
            "'tensor_parallel_threshold_mb' (an integer >= 0)",
        )
    _check_engine(p.engine, where, p.name)


def _example_registry() -> list[tuple[Model, Location]]:
    res = resources.files("gpuletd") / "data" / EXAMPLE_REGISTRY
    text = res.read_text(encoding="utf-8")
    files = _Files()
    files.read(f"<built-in {EXAMPLE_REGISTRY}>", text)
    return list(files.models.values())


def load_config(paths: Iterable[Path], *, texts: Sequence[tuple[str, str]] = ()) -> Config:
    """Read config files (and, for tests, in-memory `(name, text)` pairs) into a Config."""
    files = _Files()
    read: list[str] = []
    for p in paths:
        files.read(str(p), read_config_text(p))
        read.append(str(p))
    for name, text in texts:
        files.read(name, text)
        read.append(name)
    profiles = _resolve_profiles(files.profiles)
    use_examples = files.example_models if files.example_models is not None else not files.models
    models = dict(files.models)
    if use_examples:
        for model, where in _example_registry():
            models.setdefault(model.id, (model, where))
    registry = Registry(MappingProxyType({k: m for k, (m, _) in sorted(models.items())}))
    for model_id in files.preload:
        if registry.get(model_id) is None:
            raise ConfigError(
                files.preload_where or Location("config"),
                f"preload: unknown model {model_id!r} (known: {', '.join(registry.models)})",
            )
    return Config(
        profiles=MappingProxyType(profiles),
        registry=registry,
        profile=files.profile,
        profile_where=files.profile_where,
        preload=files.preload,
        max_lease_ttl_s=files.max_lease_ttl_s,
        files=tuple(read),
        user_profiles=frozenset(files.profiles),
    )


def apply_overrides(profile: Profile, sets: Sequence[str]) -> Profile:
    """`--set FIELD=VALUE`: VALUE is a TOML value (`3`, `["fp8"]`), or a bare word as a string."""
    changes: dict[str, Any] = {}
    for item in sets:
        where = f"--set {item}"
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(where, "expected FIELD=VALUE, e.g. --set max_concurrent_models=2")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        if key.startswith("engine."):
            # `--set engine.dtype=bf16` patches one engine setting, keeping the others.
            key, value = "engine", {**changes.get("engine", profile.engine), key[7:]: value}
        changes[key] = _convert(PROFILE_FIELD_SPECS, key, value, Location(where), "override")
    out = replace(profile, **changes)
    check_profile(out, "--set")
    return out
