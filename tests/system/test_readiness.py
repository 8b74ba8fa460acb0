"""Readiness signals end to end: the real daemon grants a lease on a backend that is ready by
its log line or its pipe message while its health URL cannot answer."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import gpulet
from tests.helpers import Daemon

pytestmark = pytest.mark.system

BACKEND = Path(__file__).resolve().parents[1] / "readiness_backend.py"


def model(mid: str, *args: str, pattern: str | None = None) -> str:
    cmd = [sys.executable, str(BACKEND), "--port", "{port}", *args]
    lines = [
        f"[models.{mid}]",
        'backend = "process"',
        'quantization = "fp16"',
        "vram_estimate_mb = 2000",
        "role_priority = { caption = 50 }",
        f"command = {json.dumps(cmd)}",
        "autostart_timeout_seconds = 30",
    ]
    if pattern is not None:
        lines.append(f"ready_log_pattern = {json.dumps(pattern)}")
    return "\n".join(lines) + "\n"


def test_leases_are_granted_on_a_log_line_and_on_a_ready_write(tmp_path: Path) -> None:
    gate = tmp_path / "gate"  # never created: both health URLs answer 503 throughout
    health = ("--health", "gated", "--gate", str(gate))
    config = model(
        "by-line",
        *health,
        "--say",
        "INFO:     Application startup complete.",
        pattern="Application startup complete",
    ) + model("by-fd", *health, "--ready-fd")
    cfg = tmp_path / "gpulet.toml"
    cfg.write_text(config)

    with Daemon("--config", str(cfg), "--simulated-gpus", "16384") as d:
        with gpulet.Client(address=d.address) as c:
            # One after the other: the default profile may hold one model at a time.
            by_line = c.acquire("by-line", ttl=30, timeout=40)
            c.release(by_line.lease_id, by_line.token)
            by_fd = c.acquire("by-fd", ttl=30, timeout=40)
            c.release(by_fd.lease_id, by_fd.token)
        output = d.output()

    assert '"by": "log_line"' in output or "by=log_line" in output, output
    assert '"by": "ready_fd"' in output or "by=ready_fd" in output, output
    assert not gate.exists()


def test_a_bad_ready_log_pattern_is_refused_at_start_naming_file_and_line(
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "gpulet.toml"
    cfg.write_text(model("broken", pattern="startup (complete"))

    d = Daemon("--config", str(cfg), "--simulated-gpus", "16384")
    with pytest.raises(RuntimeError) as caught:
        d.start(timeout=20)

    assert f"{cfg}:8:" in str(caught.value)
    assert "ready_log_pattern" in str(caught.value)
