"""The live traces: short enough to replay in real time (tens of seconds each), seeded and
deterministic. All run on one 16384 MiB GPU of which both systems may fill 16000 MiB (vramd
keeps its default 384 MiB safety margin free; gpulet's profile has `headroom_mb = 384` and
`max_vram_mb = 16000`).

Models load in 0.15 s per GiB of their size (0.3-1.3 s here, from the start of the worker's
process, or from the load command when vramd reuses a worker): a load costs about as much as
one or two leases, as on a real box where a model takes tens of seconds to load and is used
for tens of seconds, compressed so that each replay takes tens of seconds. How each trace is
generated:

- `workflow`: one user repeating LLM -> TTS -> image -> LLM (8704, 3584 and 6656 MiB: any two
  fit in 16000 MiB, all three do not), each step when the previous one is done plus 0.2 s;
  holds uniform in 0.4-1.0 s; 0.5 s between iterations. Seed 8.
- `zipf`: four tenants, each a closed loop of 12 requests over six models (2048-7168 MiB,
  25600 MiB in all) picked by Zipf popularity (s = 1.1, over a seeded shuffle of the models);
  holds log-normal (median 0.5 s, sigma 0.6, 0.1-2 s); think time Exp(mean 0.8 s); tenants
  start 0.3 s apart. Seed 21.
- `cyclic`: one client cycling through four models of 5120 MiB where three fit (the case that
  breaks LRU), six rounds, holds 0.5 s, 0.2 s between requests.
"""

from __future__ import annotations

import math
import random

from bench.workloads import Machine, ModelSpec, Workload, _Builder

__all__ = [
    "GPU_MB",
    "LOAD_S_PER_GIB",
    "MACHINE",
    "SAFETY_MB",
    "SPAWN_S",
    "USABLE_MB",
    "cyclic",
    "live_traces",
    "workflow",
    "zipf_mix",
]

GPU_MB = 16384
# vramd's default VRAMD_VRAM_SAFETY_MIB; gpulet's profile keeps the same free (headroom_mb).
SAFETY_MB = 384
USABLE_MB = GPU_MB - SAFETY_MB
LOAD_S_PER_GIB = 0.15
# What gpuletd adds to each load, beyond the load itself: the process start (StartBackend to
# the new process, with the victim's exit before it) and the readiness poll (ready to grant),
# about 0.05 s together on the shared 2-CPU bench box (the workers count their own
# interpreter start-up as load time, as a real server's start is part of its load). The
# pure-core replay of gpulet delays readiness by it too: the closed loops of the Zipf mix meet
# in another order when the timelines drift by ~0.1 s (19 loads or 23). vramd keeps its worker
# processes across unloads, so its emulation does not pay it (`bench.live.__main__.simulated`).
SPAWN_S = 0.05
# The live profile (bench.live.gpulet_side), named here for the pure-core replay of these traces.
MACHINE = Machine("1x16GB", (GPU_MB,), "bench_live")


def _model(mid: str, mb: int) -> ModelSpec:
    # Unloading a worker is a signal and an exit: quick next to a load.
    return ModelSpec(
        mid, mb, load_s=round(mb / 1024 * LOAD_S_PER_GIB, 3), unload_s=0.05, spawn_s=SPAWN_S
    )


def workflow(iterations: int = 6, *, seed: int = 8) -> Workload:
    rng = random.Random(seed)
    models = (_model("llm", 8704), _model("tts", 3584), _model("image", 6656))
    b = _Builder("w")
    prev: list[str] = []
    for i in range(iterations):
        for step, mid in enumerate(("llm", "tts", "image", "llm")):
            gap = 0.5 if step == 0 and i > 0 else (0.0 if not prev else 0.2)
            rid = b.add(mid, rng.uniform(0.4, 1.0), after=prev, gap_s=gap)
            prev = [rid]
    return Workload(
        name="workflow",
        description=(
            f"workflow: {iterations} x (LLM -> TTS -> image -> LLM), one user, any two of the "
            "three models fit, all three do not"
        ),
        models=models,
        requests=b.build(),
        machines=(MACHINE,),
    )


_ZIPF_MODELS = (
    ("chat-7b", 7168),
    ("vision-6b", 5632),
    ("coder-4b", 4608),
    ("whisper", 3584),
    ("embed", 2560),
    ("rerank", 2048),
)


def zipf_mix(tenants: int = 4, per_tenant: int = 12, *, seed: int = 21) -> Workload:
    rng = random.Random(seed)
    names = [m for m, _ in _ZIPF_MODELS]
    rng.shuffle(names)
    weights = [1 / (r + 1) ** 1.1 for r in range(len(names))]
    b = _Builder("z")
    for t in range(tenants):
        prev: list[str] = []
        for _ in range(per_tenant):
            model = rng.choices(names, weights)[0]
            hold = min(2.0, max(0.1, rng.lognormvariate(math.log(0.5), 0.6)))
            gap = rng.expovariate(1 / 0.8) if prev else 0.0
            rid = b.add(model, hold, at_s=0.3 * t, after=prev, gap_s=gap)
            prev = [rid]
    return Workload(
        name="zipf",
        description=(
            f"Zipf mix: {tenants} tenants x {per_tenant} requests over {len(names)} models "
            "(2-7 GiB, 25 GiB in all), closed loops"
        ),
        models=tuple(_model(m, mb) for m, mb in _ZIPF_MODELS),
        requests=b.build(),
        machines=(MACHINE,),
    )


def cyclic(rounds: int = 6, *, k: int = 3, mb: int = 5120) -> Workload:
    ids = [f"m{chr(ord('a') + i)}" for i in range(k + 1)]
    b = _Builder("c")
    prev: list[str] = []
    for _ in range(rounds):
        for mid in ids:
            rid = b.add(mid, 0.5, after=prev, gap_s=0.2 if prev else 0.0)
            prev = [rid]
    return Workload(
        name="cyclic",
        description=(
            f"cyclic scan: {rounds} rounds over {k + 1} models of {mb} MiB with room for {k}, "
            "one client"
        ),
        models=tuple(_model(m, mb) for m in ids),
        requests=b.build(),
        machines=(MACHINE,),
    )


def live_traces(*, quick: bool = False) -> list[Workload]:
    if quick:
        return [workflow(2), zipf_mix(2, 5), cyclic(2)]
    return [workflow(), zipf_mix(), cyclic()]
