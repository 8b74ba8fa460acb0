"""Launch presets for the serving engines whose flags are public.

A model that names its `engine` gets, from its placement, what a user would otherwise compute by
hand: the command line (port, host, tensor-parallel size from the placed GPUs and, above all, the
engine's memory share from the reservation), the health URL and the endpoint. vLLM and SGLang
take 90 % of a GPU unless told their share, so two of them on one GPU cannot work without it.

Engine settings come from the profile's `engine` table patched key by key by the model's own
`engine_settings` (explicit model settings win). Keys a preset does not know are kept and
ignored (seed 002). Two values come from the placement, not from the profile: the
tensor-parallel size and the memory share — the profile describes a typical machine, the
placement this start; a model's explicit setting still wins over both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from gpuletd.registry import Model

__all__ = [
    "DERIVED_PLACEHOLDERS",
    "PRESETS",
    "SETTING_KEYS",
    "EngineError",
    "Placement",
    "Preset",
    "check_model_settings",
    "check_settings",
    "derived_values",
    "memory_fraction",
    "merged_settings",
    "preset_command",
    "preset_env",
    "setting_text",
]


class EngineError(ValueError):
    """An engine setting that cannot become a command line; the message names the key."""


@dataclass(frozen=True)
class Placement:
    """What one start was given beyond its GPUs: the MiB reserved on each placed GPU, each
    GPU's total memory (None when unknown) and the active profile's `engine` table."""

    gpu_reservations_mb: tuple[int, ...] = ()
    gpu_totals_mb: tuple[int | None, ...] = ()
    profile_engine: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


# Placeholders computed from the placement, for the docs and for the unknown-placeholder error.
DERIVED_PLACEHOLDERS: Mapping[str, str] = MappingProxyType(
    {
        "tensor_parallel_size": "the number of placed GPUs (or the model's own setting)",
        "reservation_mb": "MiB reserved for the model, over all its GPUs",
        "gpu_reservation_mb": "MiB reserved on each placed GPU (the smallest share)",
        "gpu_total_mb": "total MiB of the placed GPU (the smallest one)",
        "gpu_memory_utilization": "reservation / GPU total, 4 decimals, rounded down",
        "memory_fraction": "same as gpu_memory_utilization",
        "tensor_split": "comma-separated MiB reserved per placed GPU (llama.cpp --tensor-split)",
    }
)

# Settings the daemon decides: a model may not set them (the health check would look elsewhere).
DAEMON_SETTINGS = frozenset({"port", "host", "cuda_visible_devices", "gpu_uuids"})


def merged_settings(profile_engine: Mapping[str, Any], model: Model) -> dict[str, Any]:
    """The profile's table patched by the model's: the model's value wins key by key."""
    return {**profile_engine, **model.engine_settings}


def memory_fraction(placement: Placement) -> float | None:
    """The share of each placed GPU the engine may take: the tightest GPU's reservation ÷ its
    total, rounded down to 4 decimals so the engine never takes more than it was given. None
    when there is no GPU or a total is unknown."""
    pairs = list(zip(placement.gpu_reservations_mb, placement.gpu_totals_mb, strict=False))
    if not pairs or any(total is None or total <= 0 for _, total in pairs):
        return None
    share = min(mb / total for mb, total in pairs if total)
    return max(0.0001, min(1.0, math.floor(share * 10_000) / 10_000))


def setting_text(key: str, value: Any) -> str:
    """An engine setting as one command-line word."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return ",".join(setting_text(key, v) for v in value)
    if isinstance(value, int | float | str):
        return str(value)
    raise EngineError(f"engine setting {key!r}: cannot pass {value!r} on a command line")


def _tensor_parallel(model: Model, gpu_count: int) -> int:
    explicit = model.engine_settings.get("tensor_parallel_size")
    if explicit is None:
        return max(1, gpu_count)
    if isinstance(explicit, bool) or not isinstance(explicit, int) or explicit < 1:
        raise EngineError(
            f"engine setting 'tensor_parallel_size': expected an integer >= 1, got {explicit!r}"
        )
    return explicit


def derived_values(model: Model, gpu_uuids: Sequence[str], placement: Placement) -> dict[str, str]:
    """The placement-derived placeholders that have a value for this start (a fraction has
    none when a GPU's total is unknown)."""
    shares = placement.gpu_reservations_mb
    totals = [t for t in placement.gpu_totals_mb if t is not None]
    out = {
        "tensor_parallel_size": str(_tensor_parallel(model, len(gpu_uuids))),
        "reservation_mb": str(sum(shares)),
    }
    if shares:
        out["gpu_reservation_mb"] = str(min(shares))
        out["tensor_split"] = ",".join(str(mb) for mb in shares)
    if totals:
        out["gpu_total_mb"] = str(min(totals))
    fraction = memory_fraction(placement)
    explicit = model.engine_settings.get(
        "gpu_memory_utilization", model.engine_settings.get("memory_fraction")
    )
    if explicit is not None:
        out["gpu_memory_utilization"] = out["memory_fraction"] = setting_text("memory", explicit)
    elif fraction is not None:
        out["gpu_memory_utilization"] = out["memory_fraction"] = f"{fraction:.4f}"
    return out


@dataclass(frozen=True)
class _Context:
    model: Model
    settings: Mapping[str, Any]
    host: str
    port: int
    gpu_count: int
    derived: Mapping[str, str]
    free_port: Callable[[], int]

    def weights(self) -> str:
        # The weights to serve: a Hugging Face repo id or a local path (a GGUF file for
        # llama.cpp). The model's name is the natural default: `name = "Qwen/Qwen2.5-7B"`.
        value = self.settings.get("weights", self.model.name)
        if not isinstance(value, str) or not value:
            raise EngineError(f"engine setting 'weights': expected a string, got {value!r}")
        return value

    def served_name(self) -> str:
        # Clients ask the endpoint for the gpulet model id, not for a repo path.
        return setting_text(
            "served_model_name", self.settings.get("served_model_name", self.model.id)
        )

    def share(self, native_key: str) -> str | None:
        """The memory share: the model's own setting under the engine's name (or
        `memory_fraction`), else the placement's. The profile's value is not used: a fixed
        share in a profile is what makes two engines on one GPU collide."""
        for key in (native_key, "memory_fraction"):
            if key in self.model.engine_settings:
                return setting_text(key, self.model.engine_settings[key])
        return self.derived.get("memory_fraction")


def _dtype(settings: Mapping[str, Any]) -> Any:
    value = settings.get("dtype")
    if value is None and settings.get("enable_mixed_precision", True) is not False:
        # Seed 002's profiles name it this way.
        value = settings.get("mixed_precision_dtype")
    return _DTYPE_ALIASES.get(value, value) if isinstance(value, str) else value


_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32"}


def _flags(ctx: _Context, table: Mapping[str, str], booleans: frozenset[str]) -> list[str]:
    """The settings this engine knows, as flags, in the table's order (stable command lines)."""
    settings = dict(ctx.settings)
    dtype = _dtype(settings)
    if dtype is not None:
        settings["dtype"] = dtype
    out: list[str] = []
    for key, flag in table.items():
        if key not in settings:
            continue
        value = settings[key]
        if key in booleans:
            if not isinstance(value, bool):
                raise EngineError(f"engine setting {key!r}: expected true or false, got {value!r}")
            if value:
                out.append(flag)
        else:
            out += [flag, setting_text(key, value)]
    return out


def _extra_args(ctx: _Context) -> list[str]:
    return _extra_args_of(ctx.settings)


def _extra_args_of(settings: Mapping[str, Any]) -> list[str]:
    # Anything else the engine takes, verbatim (placeholders are filled by the caller).
    extra = settings.get("args", ())
    if not isinstance(extra, list | tuple) or not all(isinstance(a, str) for a in extra):
        raise EngineError(f"engine setting 'args': expected an array of strings, got {extra!r}")
    return list(extra)


def _vllm(ctx: _Context) -> list[str]:
    args = [
        "serve", ctx.weights(),
        "--host", ctx.host,
        "--port", str(ctx.port),
        "--served-model-name", ctx.served_name(),
        "--tensor-parallel-size", ctx.derived["tensor_parallel_size"],
    ]  # fmt: skip
    if (share := ctx.share("gpu_memory_utilization")) is not None:
        args += ["--gpu-memory-utilization", share]
    return args + _flags(ctx, _VLLM_FLAGS, _VLLM_BOOLEANS)


_VLLM_FLAGS = {
    "dtype": "--dtype",
    "quantization": "--quantization",
    "max_model_len": "--max-model-len",
    "kv_cache_dtype": "--kv-cache-dtype",
    "max_num_seqs": "--max-num-seqs",
    "max_num_batched_tokens": "--max-num-batched-tokens",
    "revision": "--revision",
    "trust_remote_code": "--trust-remote-code",
    "enforce_eager": "--enforce-eager",
    "enable_prefix_caching": "--enable-prefix-caching",
}
_VLLM_BOOLEANS = frozenset({"trust_remote_code", "enforce_eager", "enable_prefix_caching"})


def _sglang(ctx: _Context) -> list[str]:
    args = [
        "--model-path", ctx.weights(),
        "--host", ctx.host,
        "--port", str(ctx.port),
        "--served-model-name", ctx.served_name(),
        "--tp-size", ctx.derived["tensor_parallel_size"],
    ]  # fmt: skip
    # Its static share covers weights and KV cache; activations come on top, so a model that
    # overruns its reservation needs a smaller explicit `mem_fraction_static`.
    if (share := ctx.share("mem_fraction_static")) is not None:
        args += ["--mem-fraction-static", share]
    return args + _flags(ctx, _SGLANG_FLAGS, _SGLANG_BOOLEANS)


_SGLANG_FLAGS = {
    "dtype": "--dtype",
    "quantization": "--quantization",
    "max_model_len": "--context-length",
    "kv_cache_dtype": "--kv-cache-dtype",
    "max_running_requests": "--max-running-requests",
    "chunked_prefill_size": "--chunked-prefill-size",
    "revision": "--revision",
    "trust_remote_code": "--trust-remote-code",
}
_SGLANG_BOOLEANS = frozenset({"trust_remote_code"})


def _llama_cpp(ctx: _Context) -> list[str]:
    # llama.cpp has no memory fraction: it takes what the layers it offloads need. The
    # reservation is the whole model's footprint, so every layer goes to the GPU ("999" is
    # understood by old and new builds alike), split over the GPUs in proportion to the shares.
    layers = ctx.settings.get("n_gpu_layers", 999 if ctx.gpu_count else 0)
    args = [
        "--model", ctx.weights(),
        "--host", ctx.host,
        "--port", str(ctx.port),
        "--alias", ctx.served_name(),
        "--n-gpu-layers", setting_text("n_gpu_layers", layers),
    ]  # fmt: skip
    if ctx.gpu_count > 1 and "tensor_split" in ctx.derived:
        args += [
            "--tensor-split",
            setting_text(
                "tensor_split", ctx.settings.get("tensor_split", ctx.derived["tensor_split"])
            ),
        ]
    return args + _flags(ctx, _LLAMA_FLAGS, frozenset())


_LLAMA_FLAGS = {
    "max_model_len": "--ctx-size",
    "parallel": "--parallel",
    "threads": "--threads",
    "batch_size": "--batch-size",
    "cache_type_k": "--cache-type-k",
    "cache_type_v": "--cache-type-v",
}


def _tgi(ctx: _Context) -> list[str]:
    args = [
        "--model-id", ctx.weights(),
        "--hostname", ctx.host,
        "--port", str(ctx.port),
        "--num-shard", ctx.derived["tensor_parallel_size"],
        # Two launchers on one machine collide on the shard socket and the torch.distributed
        # master port unless each has its own.
        "--shard-uds-path", f"/tmp/gpulet-tgi-{ctx.model.id}-{ctx.port}",
        "--master-port", str(ctx.free_port()),
    ]  # fmt: skip
    if (share := ctx.share("cuda_memory_fraction")) is not None:
        args += ["--cuda-memory-fraction", share]
    return args + _flags(ctx, _TGI_FLAGS, _TGI_BOOLEANS)


_TGI_FLAGS = {
    "dtype": "--dtype",
    "quantization": "--quantize",
    "max_model_len": "--max-total-tokens",
    "max_input_tokens": "--max-input-tokens",
    "max_batch_prefill_tokens": "--max-batch-prefill-tokens",
    "revision": "--revision",
    "trust_remote_code": "--trust-remote-code",
}
_TGI_BOOLEANS = frozenset({"trust_remote_code"})


def _ollama(ctx: _Context) -> list[str]:
    # Ollama is configured through its environment (`preset_env`); it has no memory share: it
    # sizes a model from the free memory it sees when the first request loads it.
    return ["serve"]


def _ollama_env(ctx: _Context) -> dict[str, str]:
    env = {
        "OLLAMA_HOST": f"{ctx.host}:{ctx.port}",
        # One gpulet model is one Ollama model: more would hold memory nobody reserved.
        "OLLAMA_MAX_LOADED_MODELS": "1",
        # gpulet decides when the model unloads (by stopping the server), not a 5-minute timer.
        "OLLAMA_KEEP_ALIVE": "-1",
    }
    if "max_model_len" in ctx.settings:
        env["OLLAMA_CONTEXT_LENGTH"] = setting_text("max_model_len", ctx.settings["max_model_len"])
    return env


def _comfyui(ctx: _Context) -> list[str]:
    # ComfyUI manages its memory by itself (--lowvram, --reserve-vram ...: pass them in `args`).
    return ["--listen", ctx.host, "--port", str(ctx.port), "--disable-auto-launch"]


@dataclass(frozen=True)
class Preset:
    engine: str
    # The program, replaceable by the `executable` setting (a string or an array).
    executable: tuple[str, ...] | None
    health_path: str
    endpoint_path: str
    args: Callable[[_Context], list[str]]
    env: Callable[[_Context], dict[str, str]] = lambda ctx: {}


PRESETS: Mapping[str, Preset] = MappingProxyType(
    {
        p.engine: p
        for p in (
            Preset("vllm", ("vllm",), "/health", "/v1", _vllm),
            Preset("sglang", ("python3", "-m", "sglang.launch_server"), "/health", "/v1", _sglang),
            Preset("llama.cpp", ("llama-server",), "/health", "/v1", _llama_cpp),
            Preset("tgi", ("text-generation-launcher",), "/health", "/v1", _tgi),
            # GET /api/version answers as soon as the server listens; the model itself loads
            # on the first request.
            Preset("ollama", ("ollama",), "/api/version", "/v1", _ollama, _ollama_env),
            # No default program: ComfyUI is a checkout (`python main.py`), not a command.
            Preset("comfyui", None, "/system_stats", "", _comfyui),
        )
    }
)

# Every setting some preset turns into a flag, plus gpulet's own: the settings a custom
# command may name as placeholders without setting them on the model itself.
SETTING_KEYS: frozenset[str] = frozenset(
    {
        *_VLLM_FLAGS, *_SGLANG_FLAGS, *_LLAMA_FLAGS, *_TGI_FLAGS,
        "weights", "served_model_name", "n_gpu_layers", "mem_fraction_static",
        "cuda_memory_fraction",
    }
)  # fmt: skip


def _executable(preset: Preset, settings: Mapping[str, Any]) -> tuple[str, ...]:
    value = settings.get("executable")
    if value is None:
        if preset.executable is None:
            raise EngineError(
                f"engine {preset.engine!r} has no default program: set engine_settings."
                'executable (e.g. ["python3", "/opt/ComfyUI/main.py"]) or a command'
            )
        return preset.executable
    return _executable_words(value)


def _executable_words(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) and value:
        return (value,)
    if isinstance(value, tuple | list) and value and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise EngineError(
        f"engine setting 'executable': expected a program or an array of words, got {value!r}"
    )


def _context(
    model: Model,
    settings: Mapping[str, Any],
    host: str,
    port: int,
    gpu_count: int,
    derived: Mapping[str, str],
) -> _Context:
    def free_port() -> int:
        # Imported here: ports imports the placeholders module, which imports this one.
        from gpuletd.backends.ports import pick_free_port

        return pick_free_port(host)

    return _Context(model, settings, host, port, gpu_count, derived, free_port)


def preset_command(
    model: Model,
    settings: Mapping[str, Any],
    *,
    host: str,
    port: int,
    gpu_count: int,
    derived: Mapping[str, str],
) -> tuple[list[str], list[str]]:
    """The preset's command for `model`, as (built words, `args` templates): the built words
    are final; the `args` setting's words still hold placeholders for the caller to fill."""
    preset = PRESETS[model.engine]
    ctx = _context(model, settings, host, port, gpu_count, derived)
    built = [*_executable(preset, settings), *preset.args(ctx)]
    return built, _extra_args(ctx)


def preset_env(
    model: Model, settings: Mapping[str, Any], *, host: str, port: int, derived: Mapping[str, str]
) -> dict[str, str]:
    preset = PRESETS.get(model.engine)
    if preset is None:
        return {}
    return preset.env(_context(model, settings, host, port, 0, derived))


_SHARE_KEYS = frozenset(
    {"gpu_memory_utilization", "mem_fraction_static", "cuda_memory_fraction", "memory_fraction"}
)


_BOOLEANS = _VLLM_BOOLEANS | _SGLANG_BOOLEANS | _TGI_BOOLEANS


def check_settings(settings: Mapping[str, Any]) -> None:
    """What any engine table (a profile's `engine`, a model's `engine_settings`) must hold
    whichever model it reaches: checked at load so that a bad value names its file and line
    instead of failing the first model start."""
    for key in settings:
        if key in DAEMON_SETTINGS:
            raise EngineError(f"may not set {key!r}; the daemon sets it from the placement")
    tp = settings.get("tensor_parallel_size")
    if tp is not None and (isinstance(tp, bool) or not isinstance(tp, int) or tp < 1):
        raise EngineError(
            f"engine setting 'tensor_parallel_size': expected an integer >= 1, got {tp!r}"
        )
    for key in sorted(_SHARE_KEYS & set(settings)):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            raise EngineError(
                f"engine setting {key!r}: expected a fraction of the GPU in (0, 1], got {value!r}"
            )
    for key in sorted(_BOOLEANS & set(settings)):
        if not isinstance(settings[key], bool):
            raise EngineError(
                f"engine setting {key!r}: expected true or false, got {settings[key]!r}"
            )
    if "executable" in settings:
        _executable_words(settings["executable"])
    _extra_args_of(settings)


def check_model_settings(model: Model) -> None:
    """What can be checked at load time: the model's own settings and a program to run."""
    try:
        check_settings(model.engine_settings)
    except EngineError as e:
        if str(e).startswith("may not set"):
            raise EngineError(f"engine_settings {e}") from None
        raise
    preset = PRESETS.get(model.engine)
    if preset is not None and not model.command:
        _executable(preset, model.engine_settings)
