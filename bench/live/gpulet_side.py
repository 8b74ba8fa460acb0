"""gpulet's side of the live replay: gpuletd as a subprocess on a Unix socket in a fresh
directory, one simulated 16384 MiB GPU, the trace's models as process backends
(`bench/live/worker.py`), and clients of the bundled Python client that acquire at each
arrival, hold, and release.

The profile (`bench_live`, written whole so that changes to the built-in profiles do not move
it) gives gpulet the resident capacity vramd has: `max_vram_mb = 16000` and `headroom_mb =
384` on a 16384 MiB GPU, a model slot for every model, `concurrent_full`, and the grace period
of vramd's idle eviction (120 s, longer than any replay).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import gpulet
from bench.live import traces
from bench.live.replayer import Served, replay, trace_json
from bench.workloads import Workload

__all__ = ["PROFILE", "config_toml", "daemon_env", "run_gpulet", "serving"]

WORKER = Path(__file__).resolve().parent / "worker.py"
PROFILE = "bench_live"
_GRACE_S = 120.0


def config_toml(workload: Workload, record: Path) -> str:
    lines = [
        f"[profiles.{PROFILE}]",
        'description = "live replay: the resident capacity vramd has on the same GPU"',
        f"max_vram_mb = {traces.USABLE_MB}",
        f"headroom_mb = {traces.SAFETY_MB}",
        f"max_concurrent_models = {len(workload.models)}",
        'preferred_quantizations = ["q4_k_m"]',
        'strategy = "concurrent_full"',
        "autostart_timeout_seconds = 30",
        f"grace_period_seconds = {_GRACE_S}",
        'model_selection_bias = "balanced"',
        "",
    ]
    for m in workload.models:
        cmd = [
            sys.executable,
            str(WORKER),
            "--port",
            "{port}",
            "--model",
            "{model}",
            "--load-s",
            str(m.load_s),
            "--record",
            str(record),
        ]
        lines += [
            f'[models."{m.id}"]',
            'backend = "process"',
            'quantization = "q4_k_m"',
            f"vram_estimate_mb = {m.mb}",
            "role_priority = { bench = 50 }",
            f"command = {json.dumps(cmd)}",
            'health_url = "http://127.0.0.1:{port}/health"',
            'endpoint = "http://127.0.0.1:{port}/v1"',
            "",
        ]
    return "\n".join(lines)


def serving(address: str) -> bool:
    """gpuletd answers grpc.health.v1 SERVING on `address` (what `gpulet health` asks)."""
    with grpc.insecure_channel(address) as ch:
        stub: Any = health_pb2_grpc.HealthStub(ch)  # the stubs' types lack Check
        try:
            r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
        except grpc.RpcError:
            return False
    return bool(r.status == health_pb2.HealthCheckResponse.SERVING)


def daemon_env() -> dict[str, str]:
    """This environment without gpulet's own variables or systemd's, for a gpuletd of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPULET_")}
    for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC"):
        env.pop(k, None)
    return env


def run_gpulet(workload: Workload) -> dict[str, Any]:
    """Replay `workload` on a fresh gpuletd; returns the request records, the workers' load
    records and the wall time the replay started."""
    workdir = Path(tempfile.mkdtemp(prefix="gpl-live-", dir="/tmp"))
    record = workdir / "workers.jsonl"
    record.touch()
    cfg = workdir / "gpulet.toml"
    cfg.write_text(config_toml(workload, record))
    socket = workdir / "gpulet.sock"
    address = f"unix://{socket}"
    gpuletd = str(Path(sys.executable).parent / "gpuletd")
    log = (workdir / "gpuletd.log").open("wb")
    proc = subprocess.Popen(
        [
            gpuletd,
            "serve",
            "--address",
            address,
            "--config",
            str(cfg),
            "--profile",
            PROFILE,
            "--simulated-gpus",
            str(traces.GPU_MB),
            "--state-dir",
            str(workdir / "state"),
        ],
        env=daemon_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not (socket.exists() and serving(address)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"gpuletd did not start:\n{(workdir / 'gpuletd.log').read_text()[-3000:]}"
                )
            time.sleep(0.05)
        with gpulet.Client(address=address) as client:

            def serve(r: dict[str, Any]) -> Served:
                try:
                    lease = client.acquire(
                        r["model"], client_name=r["rid"], ttl=60, priority=r["priority"]
                    )
                except gpulet.GpuletError as e:
                    return {"granted": None, "released": None, "error": f"{type(e).__name__}: {e}"}
                granted = time.time()
                time.sleep(r["hold_s"])
                released = time.time()
                client.release(lease)
                return {"granted": granted, "released": released, "error": None}

            started = time.time()
            records = replay(trace_json(workload.requests), serve)
        return {"started": started, "requests": records, "workers": _read_jsonl(record)}
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out
