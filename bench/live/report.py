"""The live replay's table: one block per trace, gpulet against the real vramd, with ratios."""

from __future__ import annotations

from collections.abc import Sequence

from bench.live.results import LiveResult
from bench.sim import RunResult
from bench.workloads import Workload

__all__ = ["LIVE_LEGEND", "format_live", "format_seeds"]

LIVE_LEGEND = """\
Real-daemon replay: gpuletd (subprocess, process backends) and vramd 0.3.9 (PyPI, unmodified,
its own CLI and client) on the same trace in the same run, one simulated/faked 16384 MiB GPU
of which each may fill 16000 MiB. loads / load s: worker loads and the seconds from worker
start to ready, summed. wait: arrival -> grant (gpulet: Acquire returned; vramd: its worker
began the job), mean and 95th percentile. makespan: first arrival -> last request done.
lag: grant - worker ready, for grants that waited on a load (the daemon's readiness lag).
pure core: the same trace through bench.sim (gpulet's core under the same profile, the
vramd-like emulation, the offline bound), for comparison with the real runs.
x: gpulet's figure / vramd's (policy-comparable run)."""

_HEAD = (
    f"   {'system':26} {'loads':>5} {'load s':>7} {'wait':>7} {'p95':>7} "
    f"{'makespan':>8} {'refused':>7} {'lag p50/p95':>13}"
)


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.0f}"


def _row(r: LiveResult) -> str:
    lag = "-" if r.lag_p50_s is None else f"{_ms(r.lag_p50_s)}/{_ms(r.lag_p95_s)} ms"
    return (
        f"   {r.system:26} {r.loads:5d} {r.load_s:7.1f} {r.wait_mean_s:5.2f} s "
        f"{r.wait_p95_s:5.2f} s {r.makespan_s:6.1f} s {r.refused:7d} {lag:>13}"
    )


def _sim_row(r: RunResult) -> str:
    return (
        f"   {'pure core: ' + r.policy:26} {r.loads:5d} {r.load_s:7.1f} {r.wait_mean_s:5.2f} s "
        f"{r.wait_p95_s:5.2f} s {r.makespan_s:6.1f} s {r.refused + r.unserved:7d} {'':>13}"
    )


def _ratio(a: float, b: float) -> str:
    if b <= 0:
        return "=" if a <= 0 else "inf"
    return f"{a / b:.2f}x"


def format_live(
    workload: Workload,
    gpulet: LiveResult,
    vramd: LiveResult | None,
    extra: Sequence[LiveResult] = (),
    simulated: Sequence[RunResult] = (),
) -> str:
    lines = [f"== {workload.description}", f"   {len(workload.requests)} requests", _HEAD]
    for r in (gpulet, *([vramd] if vramd else []), *extra):
        lines.append(_row(r))
    for s in simulated:
        lines.append(_sim_row(s))
    if vramd is not None:
        lines.append(
            f"   gpulet / vramd: loads {_ratio(gpulet.loads, vramd.loads)}, load s "
            f"{_ratio(gpulet.load_s, vramd.load_s)}, "
            f"wait {_ratio(gpulet.wait_mean_s, vramd.wait_mean_s)}"
            f", p95 {_ratio(gpulet.wait_p95_s, vramd.wait_p95_s)}, makespan "
            f"{_ratio(gpulet.makespan_s, vramd.makespan_s)}"
        )
        bound = next((x for x in simulated if x.policy.startswith("lower bound")), None)
        like = next((x for x in simulated if x.policy.startswith("vramd")), None)
        if bound is not None:
            # Against the emulation too: both in simulated time, so the same timing model.
            also = (
                f" (/ vramd-like: {_ratio(bound.load_s, like.load_s)}, "
                f"{_ratio(bound.wait_mean_s, like.wait_mean_s)})"
                if like is not None
                else ""
            )
            lines.append(
                f"   offline bound (pure core) / vramd: load s "
                f"{_ratio(bound.load_s, vramd.load_s)}, wait "
                f"{_ratio(bound.wait_mean_s, vramd.wait_mean_s)}{also}: what any policy "
                "could reach, roughly"
            )
        met = gpulet.load_s <= 0.8 * vramd.load_s and gpulet.wait_mean_s <= 0.5 * vramd.wait_mean_s
        lines.append(
            "   issue 8 target (load s <= 0.8x and wait <= 0.5x vramd's): "
            + ("met" if met else "NOT met")
        )
    for r in (gpulet, *([vramd] if vramd else []), *extra):
        for e in r.errors:
            lines.append(f"   {r.system} refused: {e[:150]}")
    return "\n".join(lines)


def format_seeds(title: str, runs: Sequence[Sequence[RunResult]]) -> str:
    """gpulet's load seconds and mean wait as ratios to the vramd-like emulation's, and the
    offline bound's, over many seeds of one trace (each item: one seed's simulated results,
    gpulet first, then the emulation, then the bound)."""
    load = sorted(g.load_s / v.load_s for g, v, _b in runs)
    wait = sorted(g.wait_mean_s / v.wait_mean_s for g, v, _b in runs)
    bound = sorted(b.load_s / v.load_s for _g, v, b in runs)

    def total(i: int) -> float:
        return sum(r[i].load_s for r in runs)

    def spread(xs: Sequence[float]) -> str:
        return f"median {xs[len(xs) // 2]:.2f}x ({xs[0]:.2f}-{xs[-1]:.2f})"

    return "\n".join(
        [
            f"== {title}",
            f"   gpulet / vramd-like, load s: all seeds together {total(0) / total(1):.2f}x, "
            f"per seed {spread(load)}, at most 0.8x on {sum(x <= 0.8 for x in load)} of "
            f"{len(load)}",
            f"   gpulet / vramd-like, mean wait: per seed {spread(wait)}",
            f"   offline bound / vramd-like, load s: all seeds together "
            f"{total(2) / total(1):.2f}x, per seed {spread(bound)}",
        ]
    )
