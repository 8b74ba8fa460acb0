"""vramd's side of the live replay: vramd 0.3.9 from PyPI, unmodified, in a venv of the
benchmark's own (`.bench/vramd-venv` at the repository root, created with pip on first use),
started with its own CLI (`vramd start`) and driven with its own client
(`vramd.client.send_request`, in `bench.live.replayer`).

What is set and faked, and why:
- `PYTHONPATH` starts with `bench/live/fakenvml`: a fake `pynvml` reporting one 16384 MiB GPU
  whose used memory is the sum of what vramd's live workers hold (see that module). Without it
  vramd sees no GPU and admits every load.
- Each model's descriptor declares its size as measured weights (`vram: {weights_gib,
  activation_gib: 0}`, as `vramd calibrate` would write for a model that holds exactly its
  size), and its worker holds exactly that while loaded: vramd admits a cold load when free >=
  size + 384 MiB (its default safety), so both systems fill at most 16000 MiB.
- `HOME` is a fresh directory (vramd's socket, job log and worker logs live under it);
  `VRAMD_REAP_ON_START=0` (its start would otherwise kill vramd-looking processes it did not
  start); `VRAMD_MAX_QUEUE_DEPTH=256` (default 32) so no trace is refused for queue length.
- `VRAMD_WORKER_MAX_JOBS`: 0.3.9 recycles a worker after 12 jobs and never resets the count,
  so every later job of that model reloads it. The policy comparison sets it to 1000000; the
  "as shipped" row leaves it at its default.
Everything else (one job at a time, 120 s idle eviction, affinity cuts) is vramd's default.
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

from bench.live import traces
from bench.live.replayer import trace_json
from bench.workloads import Workload

__all__ = ["VRAMD_VERSION", "ensure_venv", "run_vramd", "venv_dir"]

VRAMD_VERSION = "0.3.9"
REPO = Path(__file__).resolve().parents[2]
_HERE = Path(__file__).resolve().parent
FAKE_NVML = _HERE / "fakenvml"
WORKER = _HERE / "vramd_worker.py"


def venv_dir() -> Path:
    return REPO / ".bench" / "vramd-venv"


def ensure_venv() -> Path:
    """The venv's python, creating the venv with pip on first use."""
    venv = venv_dir()
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import importlib.metadata as m; print(m.version('vramd'))"]
    if python.exists():
        r = subprocess.run(probe, capture_output=True, text=True, check=False)
        if r.returncode == 0 and r.stdout.strip() == VRAMD_VERSION:
            return python
    print(f"(creating {venv} with vramd=={VRAMD_VERSION} from PyPI)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"vramd=={VRAMD_VERSION}"], check=True
    )
    return python


def backends_yaml(workload: Workload, record: Path, mem_dir: Path, python: Path) -> str:
    # JSON is YAML: no YAML writer needed.
    backends = []
    for m in workload.models:
        backends.append(
            {
                "name": m.id,
                # Never imported: a backend with `tool` runs in its worker subprocess.
                "adapter": "bench_live_unused",
                "tool": "bench-live",
                "vram_mib": m.mb,
                "priority": 0,
                "vram": {"weights_gib": m.mb / 1024, "activation_gib": 0},
                "runtime": {
                    "command": [
                        str(python),
                        str(WORKER),
                        "--model",
                        m.id,
                        "--mb",
                        str(m.mb),
                        "--load-s",
                        str(m.load_s),
                        "--record",
                        str(record),
                        "--mem-dir",
                        str(mem_dir),
                    ],
                    "load_timeout_sec": 60,
                },
            }
        )
    return json.dumps({"version": 2, "backends": backends}, indent=1)


def run_vramd(workload: Workload, *, as_shipped: bool = False) -> dict[str, Any]:
    """Replay `workload` on a fresh vramd; returns what `run_gpulet` returns."""
    python = ensure_venv()
    vramd = python.parent / "vramd"
    home = Path(tempfile.mkdtemp(prefix="gpl-vramd-", dir="/tmp"))
    record = home / "workers.jsonl"
    record.touch()
    mem_dir = home / "gpu"
    mem_dir.mkdir()
    cfg = home / "backends.yaml"
    cfg.write_text(backends_yaml(workload, record, mem_dir, python))
    socket = home / ".cache" / "vramd" / "vramd.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VRAMD_", "GPULET_", "PYTHON"))}
    env.update(
        HOME=str(home),
        PYTHONPATH=os.pathsep.join([str(FAKE_NVML), str(REPO)]),
        BENCH_FAKE_GPU_DIR=str(mem_dir),
        BENCH_FAKE_GPU_MB=str(traces.GPU_MB),
        VRAMD_BACKENDS_FILE=str(cfg),
        VRAMD_BACKENDS_DIR=str(home / "no-overlays"),
        VRAMD_REAP_ON_START="0",
        VRAMD_MAX_QUEUE_DEPTH="256",
        VRAMD_VRAM_SAFETY_MIB=str(traces.SAFETY_MB),
    )
    if not as_shipped:
        env["VRAMD_WORKER_MAX_JOBS"] = "1000000"
    log = (home / "vramd.log").open("wb")
    proc = subprocess.Popen(
        [str(vramd), "start"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=home
    )
    try:
        deadline = time.monotonic() + 60
        while not socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"vramd did not start:\n{(home / 'vramd.log').read_text()[-3000:]}"
                )
            time.sleep(0.05)
        trace = home / "trace.json"
        trace.write_text(json.dumps(trace_json(workload.requests)))
        out = home / "records.json"
        started = time.time()
        subprocess.run(
            [str(python), "-m", "bench.live.replayer", "vramd", str(socket), str(trace), str(out)],
            env=env,
            cwd=REPO,
            check=True,
        )
        records = json.loads(out.read_text())
        workers = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
        return {"started": started, "requests": records, "workers": workers}
    finally:
        subprocess.run([str(vramd), "stop"], env=env, capture_output=True, check=False, cwd=home)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        shutil.rmtree(home, ignore_errors=True)
