"""What gpuletd measured of a model (issue 9, item 7; seed 003): load time, unload time and peak
memory from the probe are shown by `gpulet models`, with a confidence, and kept across a
restart. Real daemon, real backend process, simulated GPU (which lists the backend as a process
holding its reservation, as NVML would)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import gpulet
from tests.helpers import Daemon
from tests.system.test_leases import process_model

pytestmark = pytest.mark.system


def _model(d: Daemon, mid: str) -> dict[str, Any]:
    found = [m for m in d.cli_json("models")["models"] if m["id"] == mid]
    assert found, mid
    return found[0]


def _wait_unloaded(d: Daemon, mid: str, within_s: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        m = _model(d, mid)
        if m["state"] == "unloaded" and m["unload_seconds"] is not None:
            return m
        time.sleep(0.1)
    raise AssertionError(f"{mid} did not unload: {m}")


def test_models_shows_what_was_measured_and_keeps_it(tmp_path: Path, piddir: Path) -> None:
    cfg = tmp_path / "gpulet.toml"
    cfg.write_text(
        process_model("proc", 3000, piddir, "--stop-delay", "0.2", grace=0.2)
        + '\n[models.never]\nquantization = "q4_k_m"\nvram_estimate_mb = 1000\n'
        "role_priority = { caption = 10 }\n"
    )
    args = ("--config", str(cfg), "--profile", "development")
    d = Daemon(*args, env={"GPULET_SIMULATED_GPUS": "16384"})
    with d:
        before = _model(d, "proc")
        assert before["confidence"] == "low"
        assert (before["load_seconds"], before["unload_seconds"]) == (None, None)
        with gpulet.Client(address=d.address) as c:
            lease = c.acquire("proc")
            c.release(lease.lease_id, lease.token)
        # The grace period ends, the backend is stopped and its stop is timed.
        after = _wait_unloaded(d, "proc")
        assert after["load_seconds"] is not None and after["unload_seconds"] >= 0
        # The simulated GPU lists the backend holding its share: that is what was measured.
        assert after["measured_mb"] == 3000 and after["peak_mb"] == 3000
        assert after["confidence"] == "medium"
        table = d.cli("models")
        assert table.returncode == 0, table.stderr
        header, *rows = table.stdout.splitlines()
        assert "PEAK_MB" in header and "UNLOAD_S" in header and "CONF" in header
        (row,) = [r for r in rows if r.startswith("proc ")]
        assert f"{after['unload_seconds']:.1f}" in row
        d.stop(keep=True)
        # What was measured outlives the daemon.
        d.start()
        kept = _model(d, "proc")
        assert kept["unload_seconds"] == after["unload_seconds"]
        assert kept["load_seconds"] == pytest.approx(after["load_seconds"])
