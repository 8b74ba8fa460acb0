"""Engine presets: the exact command lines, health URLs and endpoints they build from a
placement, how profile and model engine settings merge, and the placeholders custom commands
get. Then each preset's command really runs against tests/fakes/fake_engine.py, which parses
the engine's real flags and answers its real health path."""

from __future__ import annotations

import json
import sys
import textwrap
import urllib.request
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from gpuletd.backends import (
    BackendConfigError,
    BackendCrashedDuringStart,
    Launch,
    PlaceholderValues,
    ProcessBackend,
    expand_launch,
)
from gpuletd.backends.engines import PRESETS, Placement, memory_fraction
from gpuletd.backends.placeholders import validate_process_model
from gpuletd.config import apply_overrides, load_config
from gpuletd.config_errors import ConfigError
from gpuletd.profiles import BUILTIN_PROFILES
from gpuletd.registry import Backend, Model

FAKE = Path(__file__).resolve().parents[1] / "fakes" / "fake_engine.py"
GPU_A = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
GPU_B = "GPU-bbbbbbbb-0000-0000-0000-000000000000"
HALF_OF_24GB = Placement(gpu_reservations_mb=(11264,), gpu_totals_mb=(24576,))


def model(engine: str, settings: dict[str, Any] | None = None, **fields: Any) -> Model:
    base: dict[str, Any] = {
        "id": "qwen",
        "name": "Qwen/Qwen2.5-7B-Instruct",
        "backend": Backend.PROCESS,
        "quantization": "fp8",
        "vram_estimate_mb": 11264,
        "role_priority": {"chat": 50},
        "engine": engine,
        "engine_settings": MappingProxyType(settings or {}),
    }
    base.update(fields)
    return Model(**base)


def launch(
    m: Model, placement: Placement = HALF_OF_24GB, gpus: tuple[str, ...] = (GPU_A,)
) -> Launch:
    validate_process_model(m)
    return expand_launch(m, PlaceholderValues(8001, m.id, gpus, placement=placement))


# -- the exact command lines ---------------------------------------------------------------


def test_vllm_on_half_a_24gb_gpu_is_told_its_share() -> None:
    got = launch(model("vllm", {"dtype": "bf16", "max_model_len": 8192}))
    assert got.command == (
        "vllm", "serve", "Qwen/Qwen2.5-7B-Instruct",
        "--host", "127.0.0.1", "--port", "8001",
        "--served-model-name", "qwen",
        "--tensor-parallel-size", "1",
        "--gpu-memory-utilization", "0.4583",
        "--dtype", "bfloat16", "--max-model-len", "8192",
    )  # fmt: skip
    assert got.health_url == "http://127.0.0.1:8001/health"
    assert got.endpoint == "http://127.0.0.1:8001/v1"
    share = float(got.command[got.command.index("--gpu-memory-utilization") + 1])
    assert abs(share - 11264 / 24576) / (11264 / 24576) < 0.01
    assert share <= 11264 / 24576  # never more than it was given


def test_vllm_on_two_gpus_is_tensor_parallel_with_the_tightest_share() -> None:
    placement = Placement((8000, 6000), (16384, 12288))
    got = launch(model("vllm"), placement, (GPU_A, GPU_B))
    assert got.command[got.command.index("--tensor-parallel-size") + 1] == "2"
    # 8000/16384 = 0.4882, 6000/12288 = 0.4882..., the smaller one, rounded down.
    assert got.command[got.command.index("--gpu-memory-utilization") + 1] == "0.4882"


def test_sglang_preset() -> None:
    got = launch(model("sglang", {"max_model_len": 4096, "quantization": "fp8"}))
    assert got.command == (
        "python3", "-m", "sglang.launch_server",
        "--model-path", "Qwen/Qwen2.5-7B-Instruct",
        "--host", "127.0.0.1", "--port", "8001",
        "--served-model-name", "qwen",
        "--tp-size", "1",
        "--mem-fraction-static", "0.4583",
        "--quantization", "fp8", "--context-length", "4096",
    )  # fmt: skip
    assert got.health_url == "http://127.0.0.1:8001/health"


def test_llama_cpp_offloads_every_layer_and_splits_by_the_shares() -> None:
    m = model("llama.cpp", {"weights": "/models/qwen-q4_k_m.gguf", "max_model_len": 8192})
    got = launch(m, Placement((6000, 3000), (16384, 16384)), (GPU_A, GPU_B))
    assert got.command == (
        "llama-server", "--model", "/models/qwen-q4_k_m.gguf",
        "--host", "127.0.0.1", "--port", "8001",
        "--alias", "qwen",
        "--n-gpu-layers", "999",
        "--tensor-split", "6000,3000",
        "--ctx-size", "8192",
    )  # fmt: skip
    assert got.health_url == "http://127.0.0.1:8001/health"


def test_llama_cpp_on_no_gpu_offloads_nothing() -> None:
    got = launch(model("llama.cpp", {"weights": "/m.gguf"}), Placement(), ())
    assert got.command[got.command.index("--n-gpu-layers") + 1] == "0"


def test_tgi_preset_gets_its_own_shard_socket_and_master_port() -> None:
    got = launch(model("tgi", {"dtype": "fp16", "quantization": "awq"}))
    master = got.command[got.command.index("--master-port") + 1]
    assert master.isdigit() and master != "8001"
    assert got.command == (
        "text-generation-launcher", "--model-id", "Qwen/Qwen2.5-7B-Instruct",
        "--hostname", "127.0.0.1", "--port", "8001",
        "--num-shard", "1",
        "--shard-uds-path", "/tmp/gpulet-tgi-qwen-8001",
        "--master-port", master,
        "--cuda-memory-fraction", "0.4583",
        "--dtype", "float16", "--quantize", "awq",
    )  # fmt: skip


def test_ollama_is_configured_by_environment_and_has_no_share() -> None:
    got = launch(model("ollama", {"max_model_len": 4096}))
    assert got.command == ("ollama", "serve")
    assert dict(got.env) == {
        "OLLAMA_HOST": "127.0.0.1:8001",
        "OLLAMA_MAX_LOADED_MODELS": "1",
        "OLLAMA_KEEP_ALIVE": "-1",
        "OLLAMA_CONTEXT_LENGTH": "4096",
    }
    assert got.health_url == "http://127.0.0.1:8001/api/version"


def test_comfyui_needs_its_program_and_answers_system_stats() -> None:
    with pytest.raises(BackendConfigError, match="executable"):
        validate_process_model(model("comfyui"))
    got = launch(model("comfyui", {"executable": ["python3", "/opt/ComfyUI/main.py"]}))
    assert got.command == (
        "python3", "/opt/ComfyUI/main.py",
        "--listen", "127.0.0.1", "--port", "8001", "--disable-auto-launch",
    )  # fmt: skip
    assert got.health_url == "http://127.0.0.1:8001/system_stats"
    assert got.endpoint == "http://127.0.0.1:8001"


def test_unknown_total_memory_leaves_the_share_out_rather_than_guess() -> None:
    got = launch(model("vllm"), Placement((11264,), (None,)))
    assert "--gpu-memory-utilization" not in got.command


# -- merge order -----------------------------------------------------------------------------


def test_model_settings_win_over_the_profile_and_unknown_keys_are_ignored() -> None:
    profile = {
        "dtype": "fp16",
        "max_model_len": 4096,
        # Seed 002 keys no preset knows: kept, never passed on.
        "quantization_bits": 8,
        "enable_flash_attention": True,
    }
    m = model("vllm", {"max_model_len": 16384})
    got = launch(m, Placement((11264,), (24576,), MappingProxyType(profile)))
    assert got.command[-4:] == ("--dtype", "float16", "--max-model-len", "16384")
    assert not any("quantization-bits" in a or "flash" in a for a in got.command)


def test_the_placement_beats_the_profile_for_parallelism_and_share() -> None:
    profile = MappingProxyType({"tensor_parallel_size": 4, "gpu_memory_utilization": 0.9})
    got = launch(model("vllm"), Placement((11264,), (24576,), profile))
    assert got.command[got.command.index("--tensor-parallel-size") + 1] == "1"
    assert got.command[got.command.index("--gpu-memory-utilization") + 1] == "0.4583"


def test_the_models_own_share_and_parallelism_win_over_the_placement() -> None:
    m = model("vllm", {"gpu_memory_utilization": 0.3, "tensor_parallel_size": 1})
    got = launch(m, Placement((6000, 6000), (24576, 24576)), (GPU_A, GPU_B))
    assert got.command[got.command.index("--tensor-parallel-size") + 1] == "1"
    assert got.command[got.command.index("--gpu-memory-utilization") + 1] == "0.3"


def test_seed_002_mixed_precision_dtype_becomes_dtype() -> None:
    profile = MappingProxyType({"enable_mixed_precision": True, "mixed_precision_dtype": "bf16"})
    got = launch(model("sglang"), Placement((11264,), (24576,), profile))
    assert got.command[-2:] == ("--dtype", "bfloat16")


def test_extra_args_are_appended_with_placeholders_filled() -> None:
    m = model("vllm", {"args": ["--swap-space", "4", "--seed={port}"]})
    assert launch(m).command[-3:] == ("--swap-space", "4", "--seed=8001")


def test_a_model_command_wins_and_gets_the_engine_placeholders() -> None:
    cmd = (
        "/opt/vllm/bin/vllm", "serve", "{weights}", "--port", "{port}",
        "--gpu-memory-utilization", "{gpu_memory_utilization}",
        "-tp", "{tensor_parallel_size}", "--dtype", "{dtype}",
        "--devices={cuda_visible_devices}", "--mb={reservation_mb}/{gpu_total_mb}",
    )  # fmt: skip
    m = model("vllm", {"weights": "/w/qwen"}, command=cmd)
    profile = MappingProxyType({"dtype": "bfloat16"})
    got = launch(m, Placement((11264,), (24576,), profile))
    assert got.command == (
        "/opt/vllm/bin/vllm", "serve", "/w/qwen", "--port", "8001",
        "--gpu-memory-utilization", "0.4583", "-tp", "1", "--dtype", "bfloat16",
        f"--devices={GPU_A}", "--mb=11264/24576",
    )  # fmt: skip
    # The preset still supplies the health URL.
    assert got.health_url == "http://127.0.0.1:8001/health"


def test_a_setting_placeholder_without_a_value_says_which_setting() -> None:
    m = model("custom", command=("server", "--dtype", "{dtype}"))
    with pytest.raises(BackendConfigError, match=r"\{dtype\}.*no value.*'dtype'"):
        launch(m)


def test_a_misspelt_placeholder_is_refused_at_load() -> None:
    with pytest.raises(BackendConfigError, match=r"unknown placeholder \{gpu_memory_utilisation\}"):
        validate_process_model(model("custom", command=("s", "{gpu_memory_utilisation}")))


def test_memory_fraction_rounds_down() -> None:
    assert memory_fraction(Placement((12288,), (24576,))) == 0.5
    assert memory_fraction(Placement((1,), (3,))) == 0.3333
    assert memory_fraction(Placement()) is None


# -- config ---------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "gpulet.toml"
    p.write_text(textwrap.dedent(text))
    return p


def test_config_reads_engine_and_settings_and_needs_no_command(tmp_path: Path) -> None:
    cfg = load_config(
        [
            write(
                tmp_path,
                """
                [profiles.mine]
                extends = "balanced_24gb"
                engine = { dtype = "bf16", max_model_len = 4096 }

                [profiles.child]
                extends = "mine"
                engine = { max_model_len = 8192 }

                [models.qwen]
                backend = "process"
                engine = "vllm"
                vram_estimate_mb = 11000
                engine_settings = { weights = "Qwen/Qwen2.5-7B-Instruct", enforce_eager = true }
                """,
            )
        ]
    )
    m = cfg.registry.models["qwen"]
    assert m.engine == "vllm" and m.engine_settings["enforce_eager"] is True
    # `extends` patches the engine table key by key.
    assert dict(cfg.profiles["child"].engine) == {"dtype": "bf16", "max_model_len": 8192}


def test_a_preset_engine_makes_a_process_backend_unless_told_otherwise(tmp_path: Path) -> None:
    cfg = load_config(
        [
            write(
                tmp_path,
                """
                [models.served]
                engine = "vllm"
                vram_estimate_mb = 11000

                [models.self_loaded]
                backend = "reservation"
                engine = "vllm"
                vram_estimate_mb = 11000

                [models.plain]
                vram_estimate_mb = 1000
                """,
            )
        ]
    )
    kinds = {mid: m.backend for mid, m in cfg.registry.models.items()}
    assert kinds == {
        "served": Backend.PROCESS,
        "self_loaded": Backend.RESERVATION,
        "plain": Backend.RESERVATION,
    }


def test_a_misspelt_engine_names_the_file_line_and_the_known_engines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [models.qwen]
        backend = "process"
        engine = "vlm"
        vram_estimate_mb = 11000
        """,
    )
    with pytest.raises(ConfigError) as e:
        load_config([path])
    assert f"{path}:4" in str(e.value) and "'engine'" in str(e.value)
    assert all(name in str(e.value) for name in PRESETS)


def test_engine_settings_may_not_move_the_port(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [models.qwen]
        backend = "process"
        engine = "vllm"
        vram_estimate_mb = 11000
        engine_settings = { port = 8000 }
        """,
    )
    with pytest.raises(ConfigError, match=r"gpulet.toml:6.*may not set 'port'"):
        load_config([path])


# -- each preset's command against the fake engine (real processes) ---------------------------


def fake(engine: str, settings: dict[str, Any] | None = None) -> Model:
    # The preset's command with the fake standing in for the engine's program.
    return model(engine, {"executable": [sys.executable, str(FAKE), engine], **(settings or {})})


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@pytest.mark.parametrize("engine", sorted(PRESETS))
async def test_each_presets_command_is_accepted_by_the_engines_flags(
    engine: str, tmp_path: Path
) -> None:
    by_engine: dict[str, dict[str, Any]] = {
        "vllm": {"dtype": "bf16", "max_model_len": 8192, "enforce_eager": True},
        "sglang": {"dtype": "fp16", "max_model_len": 4096, "trust_remote_code": True},
        "llama.cpp": {"weights": "/models/q.gguf", "max_model_len": 4096},
        "tgi": {"dtype": "bf16", "quantization": "awq", "max_model_len": 4096},
        "ollama": {"max_model_len": 4096},
        "comfyui": {"args": ["--lowvram"]},
    }
    m = fake(engine, by_engine[engine])
    rb = await ProcessBackend().start(
        m, (GPU_A,), timeout_s=30.0, log_dir=tmp_path, placement=HALF_OF_24GB
    )
    try:
        # It answered its real health path (start returns only then); ask what it parsed.
        got = get_json(f"http://127.0.0.1:{rb.record.port}/fake/launch")
        assert got["engine"] == engine
        assert got["env"]["CUDA_VISIBLE_DEVICES"] == GPU_A
        flags = got["flags"]
        share = {"vllm": "gpu_memory_utilization", "sglang": "mem_fraction_static"}
        share["tgi"] = "cuda_memory_fraction"
        if engine in share:
            assert flags[share[engine]] == pytest.approx(11264 / 24576, rel=0.01)
        if engine in ("vllm", "sglang", "llama.cpp"):
            assert get_json(rb.endpoint + "/models")["data"][0]["id"] == "qwen"
    finally:
        await rb.stop(5.0)


async def test_a_flag_the_engine_does_not_have_fails_the_start(tmp_path: Path) -> None:
    # The fake is as strict as the real programs, so the test above could fail.
    m = fake("vllm", {"args": ["--gpu-memory-utilisation", "0.5"]})
    with pytest.raises(BackendCrashedDuringStart, match="unrecognized arguments"):
        await ProcessBackend().start(
            m, (GPU_A,), timeout_s=30.0, log_dir=tmp_path, placement=HALF_OF_24GB
        )


def test_set_engine_key_patches_one_setting() -> None:
    base = replace(
        BUILTIN_PROFILES["balanced_24gb"],
        engine=MappingProxyType({"dtype": "fp16", "args": ("--seed", "1")}),
    )
    out = apply_overrides(base, ["engine.max_model_len=8192", "engine.dtype=bf16"])
    assert dict(out.engine) == {"dtype": "bf16", "args": ("--seed", "1"), "max_model_len": 8192}
    with pytest.raises(ConfigError, match=r"--set engine.x=\{.*engine"):
        apply_overrides(base, ["engine.x={a = 1}"])


def test_a_share_above_the_whole_gpu_is_refused_at_load() -> None:
    with pytest.raises(BackendConfigError, match=r"'gpu_memory_utilization'.*\(0, 1\], got 90"):
        validate_process_model(model("vllm", {"gpu_memory_utilization": 90}))


def test_weights_placeholder_defaults_to_the_model_name_like_the_presets() -> None:
    got = launch(model("custom", command=("server", "{weights}", "--name", "{served_model_name}")))
    assert got.command == ("server", "Qwen/Qwen2.5-7B-Instruct", "--name", "qwen")


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"args": 3}, "'args': expected an array of strings, got 3"),
        ({"enforce_eager": "yes"}, "'enforce_eager': expected true or false"),
        ({"executable": ""}, "'executable': expected a program"),
    ],
)
def test_bad_model_settings_are_refused_at_load_whatever_the_command(
    settings: dict[str, Any], needle: str
) -> None:
    # The checks a profile's `engine` table gets: the same for every engine, preset or not
    # (a non-array `args` used to escape as a TypeError).
    with pytest.raises(BackendConfigError, match=needle):
        validate_process_model(model("vllm", settings))
    with pytest.raises(BackendConfigError, match=needle):
        validate_process_model(model("custom", settings, command=("srv", "{port}")))
