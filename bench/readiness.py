"""Grant after readiness, measured on the real daemon.

    python -m bench.readiness [--mode health|log|fd ...] [--rounds N] [--source DIR]

gpuletd runs as a subprocess (Unix socket, one simulated GPU, a profile that holds one model
at a time with no grace period, so every acquire of the next model loads it). Its models are
process backends running this file with `--worker`: each sleeps its load time, then at one
wall-clock instant, written to a stamp file, becomes ready in the way the mode says:

- `health`: only then starts listening, and /health answers 200 (like vLLM, which does not
  listen while it loads): the daemon sees it by polling;
- `log`: also prints "Application startup complete." (its `ready_log_pattern`);
- `fd`: also writes READY to the pipe named by GPULET_READY_FD.

A client acquires the models in turn, round after round (so from the second round on the
daemon has learnt each model's load time), and notes the wall-clock time its grant arrives.
The figure is grant time minus stamp: the lag between a backend being ready and its client
knowing, per mode, as p50 / p90 / max over every load.

`--source DIR` runs the gpuletd of another checkout (its daemon/ and client/ go first on
PYTHONPATH), e.g. the last commit for a before/after comparison:
`git archive HEAD | tar -x -C /tmp/before && python -m bench.readiness --source /tmp/before
--mode health`.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import gpulet
from bench.live.gpulet_side import daemon_env, serving

__all__ = ["main", "measure"]

READY_LINE = "INFO:     Application startup complete."
PROFILE = "bench_readiness"
# Spread from sub-second to a few seconds: the poll's early phase, its backoff and its band
# around a learnt load time all get exercised.
LOAD_TIMES_S = (0.35, 0.9, 1.7, 3.1)
MODES = ("health", "log", "fd")


# -- the worker (a process backend) ---------------------------------------------------------


def worker(port: int, load_s: float, mode: str, stamp: Path) -> None:
    time.sleep(load_s)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Health)
    # The instant it is ready: its socket listens (a health check that connects now is
    # answered as soon as the serving thread runs, microseconds later). The stamp is written
    # before any signal, so that the client, granted on the signal, always finds it.
    ready = time.time()
    with stamp.open("a") as f:
        f.write(f"{ready!r}\n")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    if mode == "log":
        print(READY_LINE, flush=True)
    elif mode == "fd":
        os.write(int(os.environ["GPULET_READY_FD"]), b"READY\n")
    while True:
        time.sleep(3600)


# -- the daemon side -------------------------------------------------------------------------


def config_toml(mode: str, stamps: Path) -> str:
    lines = [
        f"[profiles.{PROFILE}]",
        'description = "one model at a time, no grace: every acquire of another model loads"',
        "max_vram_mb = 16000",
        "max_concurrent_models = 1",
        'preferred_quantizations = ["fp16"]',
        'strategy = "load_unload"',
        "autostart_timeout_seconds = 60",
        "grace_period_seconds = 0",
        'model_selection_bias = "balanced"',
        "",
    ]
    for i, load_s in enumerate(LOAD_TIMES_S):
        cmd = [sys.executable, "-m", "bench.readiness", "--worker", "--port", "{port}"]
        cmd += ["--load-s", str(load_s), "--mode", mode, "--stamp", str(stamps / f"m{i}")]
        lines += [
            f"[models.m{i}]",
            'backend = "process"',
            'quantization = "fp16"',
            "vram_estimate_mb = 4000",
            "role_priority = { bench = 50 }",
            f"command = {json.dumps(cmd)}",
            'health_url = "http://127.0.0.1:{port}/health"',
        ]
        if mode == "log":
            lines.append("ready_log_pattern = 'Application startup complete'")
        lines.append("")
    return "\n".join(lines)


def _env(source: Path | None) -> dict[str, str]:
    env = daemon_env()
    here = str(Path(__file__).resolve().parents[1])  # the workers run bench.readiness
    paths = [here]
    if source is not None:
        paths = [str(source / "daemon"), str(source / "client"), *paths]
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def measure(mode: str, rounds: int, source: Path | None = None) -> list[float]:
    """Grant-after-ready lags (seconds) of `rounds` x len(LOAD_TIMES_S) loads."""
    workdir = Path(tempfile.mkdtemp(prefix="gpl-ready-", dir="/tmp"))
    stamps = workdir / "stamps"
    stamps.mkdir()
    cfg = workdir / "gpulet.toml"
    cfg.write_text(config_toml(mode, stamps))
    socket = workdir / "gpulet.sock"
    address = f"unix://{socket}"
    launch = "import sys; from gpuletd.launch import main; sys.argv[0] = 'gpuletd'; main()"
    argv = [sys.executable, "-c", launch, "serve", "--address", address, "--config", str(cfg)]
    argv += ["--profile", PROFILE, "--simulated-gpus", "16384"]
    argv += ["--state-dir", str(workdir / "state")]
    log_path = workdir / "gpuletd.log"
    lags: list[float] = []
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, env=_env(source), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while not (socket.exists() and serving(address)):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gpuletd did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.05)
            with gpulet.Client(address=address) as client:
                for _ in range(rounds):
                    for i in range(len(LOAD_TIMES_S)):
                        stamp = stamps / f"m{i}"
                        seen = len(stamp.read_text().split()) if stamp.exists() else 0
                        lease = client.acquire(f"m{i}", client_name="bench", ttl=60)
                        granted = time.time()
                        client.release(lease)
                        ready = [float(x) for x in stamp.read_text().split()]
                        if len(ready) != seen + 1:
                            raise RuntimeError(
                                f"m{i}: {len(ready) - seen} loads for one acquire; gpuletd's "
                                f"log:\n{log_path.read_text()[-4000:]}"
                            )
                        lags.append(granted - ready[-1])
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    shutil.rmtree(workdir, ignore_errors=True)
    return lags


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", action="append", choices=MODES)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--source", type=Path, help="a checkout whose gpuletd to run")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--load-s", type=float, help=argparse.SUPPRESS)
    p.add_argument("--stamp", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.port, args.load_s, (args.mode or ["health"])[0], args.stamp)
        return
    print("| readiness signal | loads | p50 ms | p90 ms | max ms | mean ms |")
    print("|---|---|---|---|---|---|")
    for mode in args.mode or MODES:
        lags = sorted(measure(mode, args.rounds, args.source))
        p90 = lags[min(len(lags) - 1, int(0.9 * len(lags)))]
        print(
            f"| {mode} | {len(lags)} | {_ms(statistics.median(lags))} | {_ms(p90)} "
            f"| {_ms(lags[-1])} | {_ms(statistics.fmean(lags))} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
