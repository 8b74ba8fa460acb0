"""A fake `pynvml` for vramd in the live replay: put this directory first on PYTHONPATH.

Without a GPU vramd's free-memory query returns nothing and it admits every load. This module
stands in for NVIDIA's binding with exactly this much:

- one GPU, "Fake GPU (gpulet bench)", of BENCH_FAKE_GPU_MB MiB (env, default 16384);
- used memory = the sum of the numbers in the files of BENCH_FAKE_GPU_DIR (env) whose name is
  the pid of a live process (a vramd worker writes its model's size there when its load
  finishes and removes it on unload; a worker that died holds nothing); free = total - used;
- the compute processes are those same pids with those sizes;
- the driver version is "0.0 (fake)".

Nothing else is defined: vramd wraps every NVML call it makes in a try, and treats one that
fails as "NVML cannot say" for that reading.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_MIB = 1024 * 1024


class NVMLError(Exception):
    pass


@dataclass(frozen=True)
class _Memory:
    total: int
    free: int
    used: int


@dataclass(frozen=True)
class _Process:
    pid: int
    usedGpuMemory: int


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _holders() -> dict[int, int]:
    d = Path(os.environ.get("BENCH_FAKE_GPU_DIR", "/nonexistent"))
    out: dict[int, int] = {}
    try:
        entries = list(d.iterdir())
    except OSError:
        return out
    for f in entries:
        if not f.name.isdigit():
            continue
        try:
            mb = int(f.read_text().strip() or 0)
        except (OSError, ValueError):
            continue
        if _alive(int(f.name)):
            out[int(f.name)] = mb
    return out


def _total_mb() -> int:
    return int(os.environ.get("BENCH_FAKE_GPU_MB", "16384"))


def nvmlInit() -> None:
    pass


def nvmlShutdown() -> None:
    pass


def nvmlDeviceGetCount() -> int:
    return 1


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    if index != 0:
        raise NVMLError("invalid index")
    return 0


def nvmlDeviceGetMemoryInfo(handle: int) -> _Memory:
    total = _total_mb()
    used = min(total, sum(_holders().values()))
    return _Memory(total=total * _MIB, free=(total - used) * _MIB, used=used * _MIB)


def nvmlDeviceGetName(handle: int) -> str:
    return "Fake GPU (gpulet bench)"


def nvmlDeviceGetComputeRunningProcesses(handle: int) -> list[_Process]:
    return [_Process(pid, mb * _MIB) for pid, mb in sorted(_holders().items())]


nvmlDeviceGetComputeRunningProcesses_v3 = nvmlDeviceGetComputeRunningProcesses


def nvmlSystemGetDriverVersion() -> str:
    return "0.0 (fake)"
