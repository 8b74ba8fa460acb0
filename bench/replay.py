"""The trace replay: every policy on every workload and machine, and the core's raw speed."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.policies import (
    LlamaSwapLike,
    ModelMeshLike,
    NoOp,
    OfflineBound,
    OllamaLike,
    RayServeLike,
    VramdLike,
    gpulet_build,
)
from bench.sim import Build, Recorded, RunResult, Simulator
from bench.workloads import Machine, Workload, cyclic_scan, multi_tenant_day, seed003_workflow
from gpuletd.probe.types import GpuSnapshot
from gpuletd.profiles import BUILTIN_PROFILES, Profile, Strategy
from gpuletd.scheduler.events import PolicyEvents

__all__ = [
    "BOUND",
    "DAY_SEEDS",
    "GPULET",
    "UNCAPPED",
    "Contender",
    "SpeedResult",
    "contenders",
    "day_seeds",
    "measure_speed",
    "replay",
    "uncapped",
    "workloads",
]

GPULET = "gpulet"
UNCAPPED = "gpulet, no cap°"
BOUND = "lower bound*"
# The multi-tenant day is replayed on several seeds to see how much its ratios depend on one
# draw of the trace.
DAY_SEEDS = (11, 12, 13, 14, 15)


@dataclass(frozen=True)
class Contender:
    label: str
    build: Callable[[Workload, Machine], Build]


def _peer(
    make: Callable[[Workload, dict[str, int], list[GpuSnapshot]], PolicyEvents],
) -> Callable[[Workload, Machine], Build]:
    def for_run(workload: Workload, machine: Machine) -> Build:
        sizes = {m.id: m.mb for m in workload.models}

        def build(gpus: list[GpuSnapshot]) -> tuple[PolicyEvents, Callable[[], list[str]] | None]:
            return make(workload, sizes, gpus), None

        return build

    return for_run


def uncapped(profile: Profile, models: int) -> Profile:
    """What-if: the profile without its limit on the number of models (budget, headroom and
    timers unchanged), to tell what the built-in profile costs from what the core does."""
    strategy = (
        Strategy.CONCURRENT_LIMITED
        if profile.strategy is Strategy.LOAD_UNLOAD
        else profile.strategy
    )
    return dataclasses.replace(profile, max_concurrent_models=models, strategy=strategy)


def contenders(*, what_if: bool = True) -> list[Contender]:
    extra = []
    if what_if:
        extra.append(
            Contender(
                UNCAPPED,
                lambda w, m: gpulet_build(
                    w, m, profile=uncapped(BUILTIN_PROFILES[m.profile], len(w.models))
                ),
            )
        )
    return [
        Contender(GPULET, lambda w, m: gpulet_build(w, m)),
        *extra,
        Contender("Ollama-like", _peer(lambda w, s, g: OllamaLike(s, g))),
        Contender(
            "llama-swap-like",
            _peer(lambda w, s, g: LlamaSwapLike(s, g, {m.id: m.priority for m in w.models})),
        ),
        Contender("ModelMesh-like", _peer(lambda w, s, g: ModelMeshLike(s, g))),
        Contender("Ray-Serve-like", _peer(lambda w, s, g: RayServeLike(s, g))),
        Contender("vramd-like", _peer(lambda w, s, g: VramdLike(s, g))),
        Contender(BOUND, _peer(lambda w, s, g: OfflineBound(s, g, w.requests))),
    ]


def day_seeds(*, quick: bool) -> list[Workload]:
    """The multi-tenant day on every seed of DAY_SEEDS (its first is the one in the tables)."""
    if quick:
        return [multi_tenant_day(start_h=9, hours=3, seed=s) for s in DAY_SEEDS[:2]]
    return [multi_tenant_day(seed=s) for s in DAY_SEEDS]


def workloads(*, quick: bool) -> list[Workload]:
    if quick:
        return [
            seed003_workflow(8),
            multi_tenant_day(start_h=9, hours=3, seed=DAY_SEEDS[0]),
            cyclic_scan(8),
        ]
    return [seed003_workflow(40), multi_tenant_day(seed=DAY_SEEDS[0]), cyclic_scan(30)]


def replay(
    workload: Workload,
    machine: Machine,
    chosen: Sequence[Contender] | None = None,
) -> list[RunResult]:
    results = []
    for c in chosen or contenders():
        sim = Simulator(workload, machine, c.build(workload, machine), label=c.label)
        results.append(sim.run())
    return results


@dataclass(frozen=True)
class SpeedResult:
    workload: str
    machine: str
    events: int
    core_s: float
    noop_s: float

    @property
    def core_rate(self) -> float:
        return self.events / self.core_s

    @property
    def noop_rate(self) -> float:
        return self.events / self.noop_s


def _replay_calls(policy: PolicyEvents, calls: Sequence[Recorded]) -> float:
    started = time.perf_counter()
    for name, args, kwargs in calls:
        getattr(policy, name)(*args, **kwargs)
    return time.perf_counter() - started


def measure_speed(workload: Workload, machine: Machine, *, repeats: int = 3) -> SpeedResult:
    """Record the events the simulator fed gpulet's core on a trace, then time feeding the
    same events to a fresh core and to a policy that does nothing, alternately, keeping the
    best of each (the machine is shared and noisy; the ratio is what to read)."""
    calls: list[Recorded] = []
    first: list[list[GpuSnapshot]] = []
    inner = gpulet_build(workload, machine, check=False)

    def build(gpus: list[GpuSnapshot]) -> tuple[PolicyEvents, Callable[[], list[str]] | None]:
        first.append(gpus)
        return inner(gpus)

    Simulator(workload, machine, build, label=GPULET, record=calls).run()
    core_best = noop_best = float("inf")
    for _ in range(repeats):
        core, _check = inner(first[0])
        core_best = min(core_best, _replay_calls(core, calls))
        noop_best = min(noop_best, _replay_calls(NoOp(), calls))
    return SpeedResult(workload.name, machine.label, len(calls), core_best, noop_best)
