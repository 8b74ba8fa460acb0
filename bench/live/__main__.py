"""`python -m bench.live`: replay the live traces on a real gpuletd and on the real vramd,
one after the other (never at once: they would compete for the two cores), and print a table
per trace. A few minutes in all; `--quick` for shorter traces (about a minute)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence

from bench.live import traces
from bench.live.report import LIVE_LEGEND, format_live, format_seeds
from bench.live.results import LiveResult, summarise
from bench.policies import OfflineBound, VramdLike, gpulet_build
from bench.replay import Contender, replay
from bench.sim import RunResult
from bench.workloads import Workload
from gpuletd.profiles import BUILTIN_PROFILES, Bias, IdleUnload, Profile, Strategy

_VRAMD_RECYCLE_JOBS = 12
# Seeds of the Zipf mix other than the live one (21), in the pure core only: how much of a
# result on one seed is the seed.
ZIPF_SEEDS = range(100, 140)

__all__ = [
    "live_profile",
    "main",
    "recycles",
    "run_live",
    "run_trace",
    "simulated",
    "without_spawn",
]


def live_profile(workload: Workload) -> Profile:
    """The pure-core twin of gpulet_side's `bench_live` profile."""
    return dataclasses.replace(
        BUILTIN_PROFILES["constrained_16gb"],
        name="bench_live",
        description="live replay",
        max_vram_mb=traces.USABLE_MB,
        headroom_mb=traces.SAFETY_MB,
        max_concurrent_models=len(workload.models),
        preferred_quantizations=("q4_k_m",),
        strategy=Strategy.CONCURRENT_FULL,
        autostart_timeout_seconds=30,
        grace_period_seconds=120,
        model_selection_bias=Bias.BALANCED,
        max_heavy_models=None,
        heavy_threshold_mb=None,
        idle_unload=IdleUnload.GRACE,
        layer_names=("bench_live",),
    )


def without_spawn(workload: Workload) -> Workload:
    """The workload with workers that start their load at once (`ModelSpec.spawn_s` = 0)."""
    models = tuple(dataclasses.replace(m, spawn_s=0.0) for m in workload.models)
    return dataclasses.replace(workload, models=models)


def simulated(workload: Workload) -> list[RunResult]:
    """gpulet's core, the vramd-like emulation and the offline bound on `workload` in simulated
    time. gpuletd starts a process for every load, so its loads pay the trace's spawn time;
    vramd keeps each worker process alive across unloads (only the first load of a model
    starts one), and the bound is an ideal: neither pays it here."""
    machine = workload.machines[0]
    profile = live_profile(workload)
    instant = without_spawn(workload)

    chosen = [
        Contender("gpulet", lambda w, m: gpulet_build(w, m, profile=profile)),
        Contender(
            "vramd-like",
            lambda w, m: lambda gpus: (VramdLike({x.id: x.mb for x in w.models}, gpus), None),
        ),
        Contender(
            "lower bound*",
            lambda w, m: (
                lambda gpus: (
                    OfflineBound({x.id: x.mb for x in w.models}, gpus, w.requests),
                    None,
                )
            ),
        ),
    ]
    return replay(workload, machine, chosen[:1]) + replay(instant, machine, chosen[1:])


def recycles(workload: Workload) -> bool:
    """vramd 0.3.9 recycles a worker after 12 jobs: only then does "as shipped" differ."""
    jobs: dict[str, int] = {}
    for r in workload.requests:
        jobs[r.model] = jobs.get(r.model, 0) + 1
    return max(jobs.values(), default=0) > _VRAMD_RECYCLE_JOBS


def run_trace(
    workload: Workload, *, vramd: bool = True, as_shipped: bool = False
) -> tuple[LiveResult, LiveResult | None, list[LiveResult]]:
    from bench.live.gpulet_side import run_gpulet

    g = summarise("gpulet", run_gpulet(workload))
    v: LiveResult | None = None
    extra: list[LiveResult] = []
    if vramd:
        from bench.live.vramd_side import VRAMD_VERSION, run_vramd

        v = summarise(f"vramd {VRAMD_VERSION}", run_vramd(workload))
        if as_shipped and recycles(workload):
            extra.append(
                summarise(f"vramd {VRAMD_VERSION} as shipped", run_vramd(workload, as_shipped=True))
            )
    return g, v, extra


def run_live(
    *,
    quick: bool,
    only: Sequence[str] = (),
    vramd: bool = True,
    as_shipped: bool = True,
) -> None:
    """Print the legend, how the traces were made, and one table per trace."""
    print(LIVE_LEGEND + "\n", flush=True)
    print((traces.__doc__ or "").strip() + "\n", flush=True)
    for w in traces.live_traces(quick=quick):
        if only and w.name not in only:
            continue
        g, v, extra = run_trace(w, vramd=vramd, as_shipped=as_shipped)
        print(format_live(w, g, v, extra, simulated(w)) + "\n", flush=True)
    if not quick and (not only or "zipf" in only):
        runs = [simulated(traces.zipf_mix(seed=s)) for s in ZIPF_SEEDS]
        title = (
            f"Zipf mix on {len(ZIPF_SEEDS)} other seeds ({ZIPF_SEEDS.start}-"
            f"{ZIPF_SEEDS.stop - 1}), pure core only"
        )
        print(format_seeds(title, runs) + "\n", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.live", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short traces (about a minute)")
    parser.add_argument("--no-vramd", action="store_true", help="gpulet only")
    parser.add_argument(
        "--no-as-shipped",
        action="store_true",
        help="skip vramd with its default worker recycling (one more run per trace)",
    )
    parser.add_argument(
        "--trace",
        choices=[w.name for w in traces.live_traces(quick=True)],
        action="append",
        help="only these traces (repeatable)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    run_live(
        quick=args.quick,
        only=args.trace or (),
        vramd=not args.no_vramd,
        as_shipped=not args.no_as_shipped,
    )
    print(f"(live replay finished in {time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
