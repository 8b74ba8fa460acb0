"""The published JSON Schemas of a profile file and a model table, generated from the field
specs of config_fields.py so that the schema and the loader cannot drift apart.

The loader validates with the specs themselves (they also convert and name the field in
errors); the schema is for editors and CI linting of profile files. The committed copies in
docs/schema/ are checked against this module by tests/unit/test_schema.py; rewrite them with
`python -m gpuletd.schema docs/schema`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gpuletd.bounds import MAX_NAME
from gpuletd.config import REQUIRED_PROFILE_FIELDS
from gpuletd.config_fields import MODEL_FIELDS, PROFILE_FIELD_SPECS, FieldSpec

__all__ = ["SCHEMAS", "model_schema", "profile_schema", "render"]

_DRAFT = "https://json-schema.org/draft/2020-12/schema"
_NAME = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_NAME,
    "pattern": "^[^,]+$",
}


def _properties(specs: Mapping[str, FieldSpec]) -> dict[str, Any]:
    return {key: spec.json_schema() for key, spec in specs.items()}


def profile_schema() -> dict[str, Any]:
    """One profile file (TOML or JSON): the fields of a `[profiles.NAME]` table at the top
    level, plus its name and `extends`."""
    return {
        "$schema": _DRAFT,
        "$id": "profile.schema.json",
        "title": "gpulet deployment profile",
        "description": (
            "A gpulet profile file, selected with `gpuletd --profile ./FILE.json` (or .toml). "
            "Without `extends` it must set every field that has no default ("
            + ", ".join(REQUIRED_PROFILE_FIELDS)
            + "), unless it is a later item of a combination "
            "(`--profile balanced_24gb,./patch.json`), which patches with the fields it sets."
        ),
        "type": "object",
        "properties": {
            "name": {**_NAME, "description": "the profile's name (default: the file's stem)"},
            "profile": {**_NAME, "description": "the same as `name` (seed 002's spelling)"},
            "extends": {
                "description": (
                    "profiles this one patches: the first gives every field, later ones the "
                    "fields they set themselves"
                ),
                "oneOf": [
                    {"type": "string", "minLength": 1},
                    {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
                ],
            },
            **_properties(PROFILE_FIELD_SPECS),
        },
        "additionalProperties": False,
        "not": {"required": ["name", "profile"]},
    }


def model_schema() -> dict[str, Any]:
    """One `[models.ID]` table of a config file."""
    return {
        "$schema": _DRAFT,
        "$id": "model.schema.json",
        "title": "gpulet model",
        "description": "A `[models.ID]` table of a gpulet config file (the ID is the table key).",
        "type": "object",
        "properties": _properties(MODEL_FIELDS),
        "required": ["vram_estimate_mb"],
        "additionalProperties": False,
    }


SCHEMAS = {"profile.schema.json": profile_schema, "model.schema.json": model_schema}


def render(schema: Mapping[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("out", type=Path, help="directory to write the schemas to (docs/schema)")
    ap.add_argument("--check", action="store_true", help="fail if the files differ instead")
    ns = ap.parse_args(argv)
    stale = []
    for name, build in SCHEMAS.items():
        path = ns.out / name
        text = render(build())
        if ns.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        fix = f"python -m gpuletd.schema {ns.out}"
        print(f"stale: {', '.join(stale)}; run `{fix}`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
