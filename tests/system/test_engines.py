"""Engine presets end to end: the real daemon on a simulated 24 GB GPU starts two vLLM-preset
models side by side (tests/fakes/fake_engine.py parses vLLM's real flags and answers /health),
each told its share of the GPU."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import gpulet
from tests.helpers import Daemon

pytestmark = pytest.mark.system

FAKE = Path(__file__).resolve().parents[1] / "fakes" / "fake_engine.py"
GPU_MB = 24576
MODEL_MB = 11000


def vllm_model(mid: str) -> str:
    executable = json.dumps([sys.executable, str(FAKE), "vllm"])
    return (
        f"[models.{mid}]\n"
        'backend = "process"\n'
        'engine = "vllm"\n'
        'quantization = "fp8"\n'
        f"vram_estimate_mb = {MODEL_MB}\n"
        "role_priority = { chat = 50 }\n"
        f'engine_settings = {{ executable = {executable}, weights = "Qwen/{mid}" }}\n'
    )


def launched(port: int) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/fake/launch", timeout=5) as r:
        return json.loads(r.read())


def test_two_vllm_backends_share_one_24gb_gpu(tmp_path: Path) -> None:
    cfg = tmp_path / "gpulet.toml"
    # The profile's engine table reaches the engine; its fixed share does not (the placement's
    # does), or two engines on one GPU would each take 90 %.
    cfg.write_text(
        '[profiles.two_vllm]\nextends = "balanced_24gb"\n'
        'engine = { dtype = "bf16", gpu_memory_utilization = 0.9 }\n\n'
        + vllm_model("chat-a")
        + vllm_model("chat-b")
    )
    d = Daemon(
        "--config", str(cfg), "--profile", "two_vllm",
        env={"GPULET_SIMULATED_GPUS": str(GPU_MB), "GPULET_CHECK_INVARIANTS": "1"},
    ).start()  # fmt: skip
    try:
        with gpulet.Client(address=d.address) as c:
            a = c.acquire("chat-a", ttl=60)
            b = c.acquire("chat-b", ttl=60)
            assert a.gpu_uuids == b.gpu_uuids and len(a.gpu_uuids) == 1
            shares = []
            for lease in (a, b):
                port = int(lease.endpoint.rsplit(":", 1)[1].split("/", 1)[0])
                got = launched(port)
                flags = got["flags"]
                assert got["env"]["CUDA_VISIBLE_DEVICES"] == a.gpu_uuids[0]
                assert flags["tensor_parallel_size"] == 1 and flags["dtype"] == "bfloat16"
                assert flags["served_model_name"] == [lease.model_id]
                share = flags["gpu_memory_utilization"]
                assert abs(share - MODEL_MB / GPU_MB) <= 0.01 * MODEL_MB / GPU_MB
                shares.append(share)
                # Both answer at once: side by side, not one after the other.
                with urllib.request.urlopen(f"{lease.endpoint}/models", timeout=5) as r:
                    assert json.loads(r.read())["data"][0]["id"] == lease.model_id
            assert sum(shares) <= 1.0
            shown = d.cli_json("profile", "show")
            assert shown["engine"] == {"dtype": "bf16", "gpu_memory_utilization": 0.9}
            listed = {m["id"]: m for m in d.cli_json("models")["models"]}
            assert listed["chat-a"]["engine"] == listed["chat-b"]["engine"] == "vllm"
            c.release(a)
            c.release(b)
    finally:
        d.stop()
