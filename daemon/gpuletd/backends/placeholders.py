"""Placeholders in a process backend's launch fields, and the checks the config loader runs.

A placeholder is ``{name}`` where ``name`` is an identifier. Every other brace is literal, so a
JSON argument such as ``--hf-overrides '{"max_model_len": 8192}'`` needs no escaping; a literal
``{port}`` is written ``{{port}}``. We deliberately do not use ``str.format`` syntax: it would
make every JSON argument an error and would let ``{port.__class__}`` reach into Python objects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import urlsplit

from gpuletd.backends import engines
from gpuletd.backends.engines import DERIVED_PLACEHOLDERS, PRESETS, SETTING_KEYS, Placement
from gpuletd.registry import Backend, Model

__all__ = [
    "DAEMON_ENV",
    "DEFAULT_ENDPOINT",
    "DEFAULT_HEALTH_URL",
    "LOOPBACK_HOST",
    "PLACEHOLDERS",
    "BackendConfigError",
    "Launch",
    "PlaceholderValues",
    "Placement",
    "expand",
    "expand_launch",
    "validate_placeholders",
    "validate_process_model",
]

LOOPBACK_HOST = "127.0.0.1"

# What every placeholder means, for the error message and the docs.
PLACEHOLDERS: Mapping[str, str] = MappingProxyType(
    {
        "port": "a free loopback TCP port picked by the daemon",
        "model": "the model id",
        "gpu_uuids": "comma-separated UUIDs of the placed GPUs",
        "cuda_visible_devices": "the CUDA_VISIBLE_DEVICES value (same as gpu_uuids)",
        "gpu_count": "how many GPUs the model was placed on",
        "host": f"the address to listen on and to reach it ({LOOPBACK_HOST})",
        **DERIVED_PLACEHOLDERS,
    }
)

# vLLM, llama-server, SGLang and TGI all answer /health and serve the OpenAI API under /v1.
DEFAULT_HEALTH_URL = "http://{host}:{port}/health"
DEFAULT_ENDPOINT = "http://{host}:{port}/v1"

# Variables the daemon sets for every backend. A model's `env` may not set them: placement is
# the daemon's decision (pin GPUs with the model's `gpus` field instead).
DAEMON_ENV = frozenset({"CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"})
_DAEMON_ENV_PREFIX = "GPULET_"

# `{{name}}` (an escaped literal) is tried before `{name}` so the escape wins.
_PLACEHOLDER_RE = re.compile(r"\{\{([A-Za-z_]\w*)\}\}|\{([A-Za-z_]\w*)\}")


class BackendConfigError(ValueError):
    """A model's launch configuration is unusable; raised at config load and before spawning."""


@dataclass(frozen=True)
class PlaceholderValues:
    port: int
    model: str
    gpu_uuids: tuple[str, ...]
    host: str = LOOPBACK_HOST
    # The reservation and GPU sizes behind the memory share, and the profile's engine table.
    placement: Placement = field(default_factory=Placement)

    def as_mapping(self) -> dict[str, str]:
        uuids = ",".join(self.gpu_uuids)
        return {
            "port": str(self.port),
            "model": self.model,
            "gpu_uuids": uuids,
            "cuda_visible_devices": uuids,
            "gpu_count": str(len(self.gpu_uuids)),
            "host": self.host,
        }


@dataclass(frozen=True)
class Launch:
    """A process backend's launch fields with every placeholder filled in."""

    command: tuple[str, ...]
    health_url: str
    endpoint: str
    env: Mapping[str, str]


def _unknown(name: str, model_id: str, where: str) -> BackendConfigError:
    known = ", ".join("{" + k + "}" for k in sorted(PLACEHOLDERS))
    return BackendConfigError(
        f"model {model_id!r}: unknown placeholder {{{name}}} in {where}; "
        f"known placeholders are {known}, and any engine setting such as {{dtype}} "
        f"(write {{{{{name}}}}} for a literal {{{name}}})"
    )


def _no_value(name: str, model_id: str, where: str) -> BackendConfigError:
    if name in SETTING_KEYS or name not in PLACEHOLDERS:
        why = f"neither the model's engine_settings nor the profile's engine table sets {name!r}"
    else:
        why = "the placed GPUs' total memory is not known" if "memory" in name else "no GPU"
    return BackendConfigError(
        f"model {model_id!r}: placeholder {{{name}}} in {where} has no value for this start: {why}"
    )


def _known_names(model: Model) -> set[str]:
    """Names a template may use: the daemon's own, the settings some preset knows, and
    whatever the model's own engine_settings define."""
    return {*PLACEHOLDERS, *SETTING_KEYS, *model.engine_settings}


def expand(
    template: str,
    values: Mapping[str, str],
    *,
    model_id: str,
    where: str,
    known: frozenset[str] | set[str] = frozenset(),
) -> str:
    """Fill the placeholders of one string; an unknown one raises `BackendConfigError`, and
    so does a `known` one that has no value for this start."""

    def substitute(match: re.Match[str]) -> str:
        escaped, name = match.group(1), match.group(2)
        if escaped is not None:
            return "{" + escaped + "}"
        if name not in values:
            if name in known:
                raise _no_value(name, model_id, where)
            raise _unknown(name, model_id, where)
        return values[name]

    return _PLACEHOLDER_RE.sub(substitute, template)


def _templates(model: Model) -> list[tuple[str, str]]:
    """Every templated field of a model as (where, template) pairs, `where` for messages."""
    fields = [(f"command[{i}] {arg!r}", arg) for i, arg in enumerate(model.command)]
    if model.health_url is not None:
        fields.append(("health_url", model.health_url))
    if model.endpoint is not None:
        fields.append(("endpoint", model.endpoint))
    fields.extend((f"env[{key!r}]", value) for key, value in model.env.items())
    return fields


def _args_templates(model: Model) -> list[tuple[str, str]]:
    extra = model.engine_settings.get("args", ())
    if isinstance(extra, str):
        return []
    return [
        (f"engine_settings.args[{i}] {a!r}", a) for i, a in enumerate(extra) if isinstance(a, str)
    ]


def validate_placeholders(model: Model) -> None:
    """Raise `BackendConfigError` (a `ValueError`) naming the first unknown placeholder."""
    known = _known_names(model)
    for where, template in _templates(model) + _args_templates(model):
        for match in _PLACEHOLDER_RE.finditer(template):
            name = match.group(2)
            if name is not None and name not in known:
                raise _unknown(name, model.id, where)


def validate_process_model(model: Model) -> None:
    """Everything about a process backend's launch fields that can be checked without running it.

    The config loader calls this at load time; `ProcessBackend.start` calls it again so that a
    bad entry fails before anything is spawned.
    """
    if model.backend is not Backend.PROCESS:
        raise BackendConfigError(
            f"model {model.id!r} has backend {model.backend.value!r}, not 'process': "
            "it has no process to start"
        )
    if model.engine not in PRESETS and (not model.command or not model.command[0]):
        raise BackendConfigError(
            f"model {model.id!r} has backend 'process' but no command: set "
            'command = ["server", "--port", "{port}", ...] in its registry entry, or an '
            f"engine with a preset ({', '.join(PRESETS)})"
        )
    if model.command and not model.command[0]:
        raise BackendConfigError(f"model {model.id!r}: command[0] (the program) is empty")
    try:
        engines.check_model_settings(model)
    except engines.EngineError as e:
        raise BackendConfigError(f"model {model.id!r}: engine_settings: {e}") from None
    validate_placeholders(model)
    for key in model.env:
        if key in DAEMON_ENV or key.startswith(_DAEMON_ENV_PREFIX):
            raise BackendConfigError(
                f"model {model.id!r}: env may not set {key}; the daemon sets it from the "
                "placement (pin GPUs with the model's `gpus` field)"
            )
    for name, url in (("health_url", model.health_url), ("endpoint", model.endpoint)):
        if url is None:
            continue
        # Check the shape with placeholders filled by stand-ins: `{port}` is not a valid port.
        sample = PlaceholderValues(port=1, model=model.id, gpu_uuids=("GPU-0",)).as_mapping()
        sample = {k: sample.get(k, "1") for k in _known_names(model)}
        parts = urlsplit(expand(url, sample, model_id=model.id, where=name))
        if name == "health_url" and parts.scheme not in ("http", "https"):
            raise BackendConfigError(
                f"model {model.id!r}: health_url {url!r} must be an http:// or https:// URL"
            )
        if not parts.scheme or not parts.hostname:
            raise BackendConfigError(
                f"model {model.id!r}: {name} {url!r} is not a URL with a scheme and a host"
            )


def _mapping(
    model: Model, values: PlaceholderValues, settings: Mapping[str, object]
) -> dict[str, str]:
    """Every placeholder with a value for this start. The daemon's own values win over a
    setting of the same name: a profile's `tensor_parallel_size` does not beat the placement."""
    # The defaults the presets use, so that a custom command means the same by them.
    out = {"weights": model.name, "served_model_name": model.id}
    for key, value in settings.items():
        if key.isidentifier():
            try:
                out[key] = engines.setting_text(key, value)
            except engines.EngineError as e:
                raise BackendConfigError(f"model {model.id!r}: {e}") from None
    try:
        out.update(engines.derived_values(model, values.gpu_uuids, values.placement))
    except engines.EngineError as e:
        raise BackendConfigError(f"model {model.id!r}: {e}") from None
    out.update(values.as_mapping())
    return out


def expand_launch(model: Model, values: PlaceholderValues) -> Launch:
    """Fill a validated process model's command, health URL, endpoint and env; a model with
    an engine preset and no `command` gets the preset's command, health URL and endpoint."""
    settings = engines.merged_settings(values.placement.profile_engine, model)
    mapping = _mapping(model, values, settings)
    known = _known_names(model)

    def fill(template: str, where: str) -> str:
        return expand(template, mapping, model_id=model.id, where=where, known=known)

    preset = PRESETS.get(model.engine)
    try:
        if model.command or preset is None:
            command = tuple(
                fill(arg, f"command[{i}] {arg!r}") for i, arg in enumerate(model.command)
            )
        else:
            built, extra = engines.preset_command(
                model,
                settings,
                host=values.host,
                port=values.port,
                gpu_count=len(values.gpu_uuids),
                derived=mapping,
            )
            command = (
                *built,
                *(fill(a, f"engine_settings.args[{i}] {a!r}") for i, a in enumerate(extra)),
            )
        env = engines.preset_env(
            model, settings, host=values.host, port=values.port, derived=mapping
        )
    except engines.EngineError as e:
        raise BackendConfigError(f"model {model.id!r}: {e}") from None
    health = DEFAULT_HEALTH_URL if preset is None else "http://{host}:{port}" + preset.health_path
    endpoint = DEFAULT_ENDPOINT if preset is None else "http://{host}:{port}" + preset.endpoint_path
    env.update({k: fill(v, f"env[{k!r}]") for k, v in model.env.items()})
    return Launch(
        command=command,
        health_url=fill(model.health_url or health, "health_url"),
        endpoint=fill(model.endpoint or endpoint, "endpoint"),
        env=MappingProxyType(env),
    )
