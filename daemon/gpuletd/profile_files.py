"""A profile spec as `--profile`, GPULET_DEPLOYMENT_PROFILE or `profile =` give it: a profile
name, a path to a profile file (TOML or JSON), or several of those separated by commas,
combined in order with later ones patching earlier (`balanced_24gb,low_latency`).

A profile file holds one profile at its top level: the fields of a `[profiles.NAME]` table,
plus an optional `name` (seed 002 calls it `profile`; the file's stem otherwise) and
`extends`. It is checked field by field with the converters of config_fields.py, the same
ones the published JSON Schema (docs/schema/profile.schema.json) is generated from.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from gpuletd.backends.engines import EngineError, check_settings
from gpuletd.bounds import MAX_NAME, QUOTE_CHARS
from gpuletd.config import (
    REQUIRED_PROFILE_FIELDS,
    check_profile,
    is_profile_path,
    patch_profile_fields,
    profile_name_problem,
)
from gpuletd.config_errors import (
    ConfigError,
    Location,
    ProfileFileError,
    SourceMap,
    UnknownProfileName,
    read_config_text,
)
from gpuletd.config_fields import PROFILE_FIELD_SPECS, Invalid
from gpuletd.profiles import BUILTIN_PROFILES, PROFILE_FIELDS, Profile, profile_values

__all__ = ["is_profile_path", "read_profile_file", "resolve_profile_spec"]

# Keys a profile file may hold besides the profile's fields.
_NAME_KEYS = ("name", "profile")
_EXTENDS = "extends"
# More parts than anyone layers by hand; a combination's name must also stay within MAX_NAME,
# which GetProfile enforces (`gpulet profile get` finds a combination by that name).
_MAX_ITEMS = 16


def resolve_profile_spec(
    spec: str, profiles: Mapping[str, Profile], *, where: str = "--profile"
) -> Profile:
    """The profile a spec names. `profiles` are the known ones (built-in and config);
    `where` names the spec's origin in errors ("--profile", "GPULET_DEPLOYMENT_PROFILE",
    "gpulet.toml:3").

    Raises UnknownProfileName for a name that is not known, ProfileFileError for a file that
    cannot be read or is not a valid profile (both are ProfileSpecError, a ConfigError).
    """
    items = [s.strip() for s in spec.split(",")]
    if not spec.strip() or any(not s for s in items):
        raise UnknownProfileName(
            where, f"empty profile name in {spec!r} (names and paths are separated by commas)"
        )
    if len(items) > _MAX_ITEMS:
        raise UnknownProfileName(where, f"at most {_MAX_ITEMS} profiles combined, got {len(items)}")
    if len(items) == 1:
        return _one(items[0], profiles, where, first=True)
    out = _one(items[0], profiles, where, first=True)
    layers = list(out.layer_names or (out.name,))
    names = [out.name]
    for item in items[1:]:
        patch = _one(item, profiles, where, first=False)
        out = _patched(out, patch)
        layers.append(patch.name)
        names.append(patch.name)
    name = ",".join(names)
    if len(name) > MAX_NAME:
        raise UnknownProfileName(
            where,
            f"the combined name {name[:QUOTE_CHARS]!r}... is {len(name)} characters, at most "
            f"{MAX_NAME}: combine fewer or shorter-named profiles, or name the combination in "
            "a profile file (`extends = [...]`)",
        )
    out = replace(out, name=name, layer_names=tuple(layers), own_fields=None)
    check_profile(out, where)
    return out


def _one(item: str, profiles: Mapping[str, Profile], where: str, *, first: bool) -> Profile:
    if is_profile_path(item):
        try:
            return read_profile_file(Path(item), profiles, whole=first)
        except ProfileFileError as e:
            # Which override named the file: an env or config value is skipped with this as
            # its warning, and "p.json: cannot read file" alone does not say who asked.
            raise ProfileFileError(where, str(e)) from None
    p = profiles.get(item)
    if p is None:
        known = ", ".join(sorted(profiles))
        raise UnknownProfileName(
            where,
            f"unknown profile {item[:MAX_NAME]!r} (known profiles: {known}; a profile file is "
            "given by a path containing '/' or ending in .toml or .json)",
        )
    return p


def _patched(base: Profile, patch: Profile) -> Profile:
    """`patch`'s own fields (all of them for a whole profile) over `base`, merged as a later
    `extends` entry is (the `engine` table key by key)."""
    fields = PROFILE_FIELDS if patch.own_fields is None else patch.own_fields
    values = profile_values(patch)
    merged = dict(profile_values(base))
    patch_profile_fields(merged, {f: values[f] for f in fields if f in values})
    return replace(base, **merged)


def read_profile_file(
    path: Path, profiles: Mapping[str, Profile], *, whole: bool = True
) -> Profile:
    """One profile file. `whole`: it must give every required field, itself or through
    `extends`; otherwise (a later item of a combination) it may be a patch."""
    text = read_config_text(path, ProfileFileError)
    file = str(path)
    is_json = path.suffix.lower() == ".json" or (
        path.suffix.lower() != ".toml" and text.lstrip().startswith("{")
    )
    data = _parse_json(file, text) if is_json else _parse_toml(file, text)
    src = SourceMap(file, text) if not is_json else None

    def at(key: str) -> Location:
        return src.at(key) if src is not None else Location(file, _json_line(text, key))

    given = [k for k in _NAME_KEYS if k in data]
    if len(given) > 1:
        raise ProfileFileError(at(given[1]), "give the profile's name once: 'name' or 'profile'")
    if given:
        v = data[given[0]]
        if not isinstance(v, str):
            raise ProfileFileError(
                at(given[0]), f"field {given[0]!r}: expected a profile name, got {v!r}"
            )
        name = v.strip()
        if (problem := profile_name_problem(name)) is not None:
            raise ProfileFileError(at(given[0]), f"field {given[0]!r}: {name!r}: {problem}")
    else:
        name = path.stem
        if (problem := profile_name_problem(name)) is not None:
            raise ProfileFileError(
                Location(file, 1),
                f"the file's name {name!r} is the profile's name, and {problem}: rename the "
                "file or set 'name'",
            )
    extends: tuple[str, ...] = ()
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in _NAME_KEYS:
            continue
        if key == _EXTENDS:
            extends = _extends(value, at(key))
            continue
        spec = PROFILE_FIELD_SPECS.get(key)
        if spec is None and key in ("profiles", "models"):
            raise ProfileFileError(
                at(key),
                f"[{key}...] tables make this a config file, not a profile file: load it "
                "with --config (or put it in conf.d) and select its profile by name",
            )
        if spec is None:
            known = ", ".join([*_NAME_KEYS, _EXTENDS, *PROFILE_FIELD_SPECS])
            raise ProfileFileError(at(key), f"unknown field {key!r} (known fields: {known})")
        try:
            values[key] = spec(value)
            if key == "engine":
                check_settings(values[key])
        except (Invalid, EngineError) as e:
            raise ProfileFileError(at(key), f"field {key!r}: {e}") from None

    merged: dict[str, Any] = {}
    layers: list[str] = []
    for i, parent_name in enumerate(extends):
        parent = profiles.get(parent_name)
        if parent is None:
            raise ProfileFileError(
                at(_EXTENDS),
                f"extends unknown profile {parent_name!r} (known profiles: "
                f"{', '.join(sorted(profiles))})",
            )
        pv = profile_values(parent)
        own = PROFILE_FIELDS if i == 0 or parent.own_fields is None else parent.own_fields
        patch_profile_fields(merged, {f: pv[f] for f in own if f in pv})
        layers.extend(parent.layer_names or (parent_name,) if i == 0 else (parent_name,))
    patch_profile_fields(merged, values)
    layers.append(name)
    missing = [f for f in REQUIRED_PROFILE_FIELDS if f not in merged]
    if missing and whole:
        raise ProfileFileError(
            Location(file, 1),
            f"missing field(s) {', '.join(missing)} (set them, or `extends` a profile that "
            "has them)",
        )
    # A patch (a later item of a combination) takes the fields it does not set from any whole
    # profile: only its own fields are applied.
    base = _placeholder() if missing else {}
    profile = Profile(
        name=name,
        layer_names=tuple(layers),
        own_fields=frozenset(values) if extends or not whole else None,
        **{**base, "description": f"profile file {file}", **merged},
    )
    if whole:  # a patch is checked once combined (resolve_profile_spec)
        try:
            check_profile(profile, file)
        except ConfigError as e:
            raise ProfileFileError(e.location, e.message) from None
    return profile


def _placeholder() -> dict[str, Any]:
    # Any whole profile does: a patch's profile exists only to carry its own fields.
    return profile_values(BUILTIN_PROFILES["development"])


def _extends(value: Any, where: Location) -> tuple[str, ...]:
    if isinstance(value, str) and value:
        return (value,)
    if isinstance(value, list) and value and all(isinstance(x, str) and x for x in value):
        return tuple(value)
    raise ProfileFileError(
        where, "field 'extends': expected a profile name or a non-empty array of profile names"
    )


def _parse_toml(file: str, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r" \(at line (\d+), column \d+\)$", msg)
        line = int(m.group(1)) if m else None
        raise ProfileFileError(
            Location(file, line), f"invalid TOML: {msg[: m.start()] if m else msg}"
        ) from None


def _parse_json(file: str, text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProfileFileError(Location(file, e.lineno), f"invalid JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise ProfileFileError(Location(file, 1), "expected a JSON object (one profile)")
    return data


_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]]')


def _json_line(text: str, key: str) -> int | None:
    """The line of a top-level key of a JSON object (json reports positions only for syntax
    errors): the first string at depth 1 followed by `:` that decodes to `key`."""
    depth = 0
    for m in _JSON_TOKEN.finditer(text):
        tok = m.group()
        if tok in "{[":
            depth += 1
        elif tok in "}]":
            depth -= 1
        elif depth == 1 and text[m.end() :].lstrip().startswith(":") and json.loads(tok) == key:
            return text.count("\n", 0, m.start()) + 1
    return None
