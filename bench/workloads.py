"""Seeded, deterministic workload traces for the policy replay (baselines.md, "Workloads").

A trace is a list of requests. A *root* request arrives at a fixed time; a *follower* arrives
`gap_s` after every request it follows is done (released, refused or cut short). Followers
make the traces closed-loop: a pipeline step or the next request of a session starts only
when the previous one has finished, as real clients do, so a policy that makes clients wait
also delays their later requests instead of piling them up at times no client would ask.

Each request also carries `nominal_s`, the time it would arrive if nobody ever waited: the
future as the offline lower bound sees it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Machine",
    "ModelSpec",
    "Request",
    "Workload",
    "cyclic_scan",
    "default_load_s",
    "default_unload_s",
    "multi_tenant_day",
    "seed003_workflow",
]

_MIB_PER_GB = 1024
# baselines.md: 2 s per GB when nothing is measured.
_LOAD_S_PER_GB = 2.0


def default_load_s(mb: int) -> float:
    return mb / _MIB_PER_GB * _LOAD_S_PER_GB


def default_unload_s(mb: int) -> float:
    # Stopping a process and freeing its memory is quick next to a load: 0.5 s plus 0.1 s
    # per GB, at most 2 s.
    return min(2.0, 0.5 + 0.1 * mb / _MIB_PER_GB)


@dataclass(frozen=True)
class ModelSpec:
    id: str
    mb: int
    load_s: float
    unload_s: float
    # A static per-model priority (llama-swap's only notion of priority); higher first.
    priority: int = 0
    # Time from the start of its process to the start of its load (an interpreter starting):
    # it delays readiness like the load does but is not GPU time, so `load_s` leaves it out.
    spawn_s: float = 0.0


@dataclass(frozen=True)
class Request:
    rid: str
    model: str
    hold_s: float
    priority: int
    # Roots: the arrival time. Followers: unused (they arrive `gap_s` after `after`).
    at_s: float
    after: tuple[str, ...] = ()
    gap_s: float = 0.0
    nominal_s: float = 0.0


@dataclass(frozen=True)
class Machine:
    label: str
    gpus_mb: tuple[int, ...]
    profile: str


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    models: tuple[ModelSpec, ...]
    requests: tuple[Request, ...]
    machines: tuple[Machine, ...]

    def model(self, model_id: str) -> ModelSpec:
        for m in self.models:
            if m.id == model_id:
                return m
        raise KeyError(model_id)


class _Builder:
    """Collects requests and computes their nominal arrival (no waiting anywhere)."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._requests: list[Request] = []
        self._nominal_done: dict[str, float] = {}

    def add(
        self,
        model: str,
        hold_s: float,
        *,
        priority: int = 0,
        at_s: float = 0.0,
        after: Sequence[str] = (),
        gap_s: float = 0.0,
    ) -> str:
        rid = f"{self._prefix}{len(self._requests):05d}"
        nominal = max(self._nominal_done[a] for a in after) + gap_s if after else at_s
        self._requests.append(
            Request(rid, model, round(hold_s, 3), priority, at_s, tuple(after), gap_s, nominal)
        )
        self._nominal_done[rid] = nominal + hold_s
        return rid

    def build(self) -> tuple[Request, ...]:
        return tuple(sorted(self._requests, key=lambda r: (r.nominal_s, r.rid)))


# -- (a) the seed 003 workflow -------------------------------------------------------------------

# /work/shared/seeds/003: an RTX 5080 16 GB running LLM -> SDXL -> LLM with TTS beside.
# Switching times from its "Performance Targets": start LLM 15-25 s, stop LLM 5-8 s, load
# SDXL 5-8 s, unload SDXL 2-3 s; nothing is given for the TTS, so 2 s per GB.
SEED003_MODELS = (
    ModelSpec("qwen2.5-14b", int(11.5 * _MIB_PER_GB), load_s=20.0, unload_s=6.5),
    ModelSpec("sdxl-base", int(10.5 * _MIB_PER_GB), load_s=6.5, unload_s=2.5),
    ModelSpec("gpt-sovits", int(3.5 * _MIB_PER_GB), load_s=7.0, unload_s=1.0),
)


def seed003_workflow(iterations: int, *, seed: int = 3) -> Workload:
    """One creative agent repeating: the LLM plans, SDXL draws, then the LLM judges while the
    TTS speaks beside it; the next iteration starts when both are done and the user has
    looked at the result."""
    rng = random.Random(seed)
    b = _Builder("s")
    prev: list[str] = []
    t = 0.0
    for _ in range(iterations):
        plan = b.add("qwen2.5-14b", rng.uniform(5, 15), after=prev, gap_s=t)
        draw = b.add("sdxl-base", rng.uniform(15, 40), after=[plan], gap_s=0.5)
        judge = b.add("qwen2.5-14b", rng.uniform(5, 15), after=[draw], gap_s=0.5)
        speak = b.add("gpt-sovits", rng.uniform(5, 20), after=[draw], gap_s=0.5)
        prev = [judge, speak]
        # The user looks at the result before the next iteration.
        t = rng.expovariate(1 / 45.0)
    return Workload(
        name="seed003",
        description=(
            f"seed 003 workflow: {iterations} x (LLM -> SDXL -> LLM + TTS beside), "
            "closed loop, one user"
        ),
        models=SEED003_MODELS,
        requests=b.build(),
        machines=(Machine("1x16GB", (16384,), "constrained_16gb"),),
    )


# -- (b) a multi-tenant day ------------------------------------------------------------------------

# The example registry's five (daemon/gpuletd/data/example_models.toml) and seven more of the
# same range of sizes (MiB).
DAY_MODELS: tuple[tuple[str, int], ...] = (
    ("qwen3-vl", 10600),
    ("qwen25vl", 6400),
    ("florence-2-large", 3500),
    ("siglip-large-patch16-384", 2600),
    ("gpt-oss-20b", 13800),
    ("whisper-large-v3", 3100),
    ("llama-3.1-8b-awq", 6200),
    ("qwen2.5-14b-awq", 9800),
    ("sdxl-base", 10752),
    ("flux1-schnell-fp8", 12600),
    ("bge-m3", 2200),
    ("gpt-sovits", 3584),
)

DAY_MACHINES = (
    Machine("1x16GB", (16384,), "constrained_16gb"),
    Machine("1x24GB", (24576,), "balanced_24gb"),
    Machine("2x16GB", (16384, 16384), "multi_gpu_2x16gb"),
    Machine("1x96GB", (98304,), "generous_96gb"),
)


def _diurnal(t: float) -> float:
    """Relative load at time t (s): a quarter at night, a full day between 07:00 and 21:00
    peaking mid-afternoon."""
    h = (t / 3600.0) % 24
    day = math.sin(math.pi * (h - 7) / 14) if 7 <= h <= 21 else 0.0
    return 0.25 + 0.75 * max(0.0, day)


def multi_tenant_day(
    *, start_h: float = 0.0, hours: float = 24.0, seed: int = 11, sessions_per_hour: float = 24.0
) -> Workload:
    """A day of a shared GPU box.

    - *Sessions* (Poisson, diurnal rate): a tenant picks a model by Zipf popularity (s = 1.1)
      and sends 1 + Geometric(mean 3) requests, each `Exp(8 s)` after the previous one is done.
      Holds are log-normal (median 12 s, from 1 s to 10 min): a caption, a chat turn, a long
      transcription. One session in ten is interactive (priority 1).
    - *Bursts* (about one an hour, more by day): a batch job sends 8-24 concurrent requests for
      one model within a minute, holding 2-30 s each.
    """
    rng = random.Random(seed)
    names = [m for m, _ in DAY_MODELS]
    ranked = names[:]
    rng.shuffle(ranked)
    weights = [1 / (r + 1) ** 1.1 for r in range(len(ranked))]
    b = _Builder("d")
    t0, t1 = start_h * 3600, (start_h + hours) * 3600
    peak = sessions_per_hour / 3600
    # Sessions by thinning a Poisson process at the peak rate.
    t = t0
    while True:
        t += rng.expovariate(peak)
        if t >= t1:
            break
        if rng.random() > _diurnal(t):
            continue
        model = rng.choices(ranked, weights)[0]
        priority = 1 if rng.random() < 0.1 else 0
        n = 1
        while rng.random() > 1 / 3:
            n += 1
        prev: list[str] = []
        for i in range(n):
            hold = min(600.0, max(1.0, rng.lognormvariate(math.log(12), 1.2)))
            gap = 0.0 if i == 0 else rng.expovariate(1 / 8)
            rid = b.add(model, hold, priority=priority, at_s=t - t0, after=prev, gap_s=gap)
            prev = [rid]
    # Bursts.
    t = t0
    while True:
        t += rng.expovariate(1.5 / 3600)
        if t >= t1:
            break
        if rng.random() > _diurnal(t):
            continue
        model = rng.choices(ranked, weights)[0]
        for _ in range(rng.randint(8, 24)):
            b.add(model, rng.uniform(2, 30), at_s=t - t0 + rng.uniform(0, 60))
    models = tuple(
        ModelSpec(m, mb, default_load_s(mb), default_unload_s(mb)) for m, mb in DAY_MODELS
    )
    span = f"{start_h:02.0f}:00-{(start_h + hours) % 24:02.0f}:00" if hours < 24 else "24 h"
    return Workload(
        name="day",
        description=(
            f"multi-tenant day ({span}): {len(models)} models, Zipf popularity, sessions and "
            "batch bursts, holds 1 s-10 min"
        ),
        models=models,
        requests=b.build(),
        machines=DAY_MACHINES,
    )


# -- (c) a cyclic scan -----------------------------------------------------------------------------


def cyclic_scan(rounds: int, *, k: int = 3, mb: int = 28000, hold_s: float = 20.0) -> Workload:
    """One client cycling through k+1 models where k fit: the case that breaks LRU.

    On one 96 GB GPU, k = 3 models of 28000 MiB fit every policy's rule (gpulet's 90000 MiB
    budget, Ollama's 3 models and 0.8 x free, Ray's 3 per replica, a 96 GB capacity), four
    do not. A 28000 MiB load takes 55 s at 2 s per GB, within the profile's 60 s start
    timeout."""
    b = _Builder("c")
    ids = [f"llm-{chr(ord('a') + i)}" for i in range(k + 1)]
    prev: list[str] = []
    for r in range(rounds):
        for mid in ids:
            first = r == 0 and mid == ids[0]
            rid = b.add(mid, hold_s, at_s=0.0, after=prev, gap_s=0.0 if first else 2.0)
            prev = [rid]
    models = tuple(ModelSpec(m, mb, default_load_s(mb), default_unload_s(mb)) for m in ids)
    return Workload(
        name="cyclic",
        description=(
            f"cyclic scan: {rounds} rounds over {k + 1} models of {mb} MiB with room for {k}, "
            f"holds {hold_s:g} s, one client"
        ),
        models=models,
        requests=b.build(),
        machines=(Machine("1x96GB", (98304,), "generous_96gb"),),
    )
