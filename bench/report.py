"""Tables a person can read: one per (workload, machine), load time as ratios to gpulet and to
the lower bound measured in the same run."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

from bench.replay import BOUND, GPULET, SpeedResult
from bench.sim import RunResult
from bench.workloads import Machine, Workload

__all__ = ["FOOTNOTES", "format_seed_summary", "format_speed", "format_table"]

FOOTNOTES = """\
* lower bound: offline Belady (evicts the idle model needed furthest in the future, larger
  first among equals) with the whole GPU, no model-count limit and parallel loads. With
  models of different sizes this is a strong reference, not an exact optimum.
\u00b0 what-if, not a built-in profile: the machine's profile with its limit on the number of
  models lifted (budget, headroom and grace period unchanged).
\u2020 did not serve every request (refused, lost or unserved): its load time bought less work
  and is not comparable with the others'."""

_COLUMNS = (
    ("policy", 17, "<"),
    ("loads", 5, ">"),
    ("load s", 6, ">"),
    ("xgpulet", 7, ">"),
    ("xbound", 6, ">"),
    ("wait", 7, ">"),
    ("p95", 7, ">"),
    ("refused", 7, ">"),
    ("lost", 4, ">"),
    ("unserved", 8, ">"),
    ("OOM/over", 8, ">"),
    ("stop idle/evict", 15, ">"),
    ("makespan", 8, ">"),
)


def _ratio(x: float, base: float | None) -> str:
    if base is None:
        return "-"
    if base <= 0:
        return "=" if x <= 0 else "inf"
    return f"{x / base:.2f}x"


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} m"
    return f"{s / 3600:.1f} h"


def _row(cells: Sequence[str]) -> str:
    return "  ".join(
        f"{c:{align}{width}}" for c, (_n, width, align) in zip(cells, _COLUMNS, strict=True)
    )


def _name(r: RunResult) -> str:
    return r.policy + ("\u2020" if r.refused or r.lost or r.unserved else "")


def format_table(workload: Workload, machine: Machine, results: Sequence[RunResult]) -> str:
    by = {r.policy: r for r in results}
    gp = by.get(GPULET)
    lb = by.get(BOUND)
    lines = [
        f"== {workload.description}",
        f"   on {machine.label} (gpulet profile {machine.profile}), "
        f"{len(workload.requests)} requests",
        _row([n for n, _w, _a in _COLUMNS]),
    ]
    for r in results:
        lines.append(
            _row(
                [
                    _name(r),
                    str(r.loads),
                    f"{r.load_s:.0f}",
                    _ratio(r.load_s, gp.load_s if gp else None),
                    _ratio(r.load_s, lb.load_s if lb else None),
                    f"{r.wait_mean_s:.1f} s",
                    f"{r.wait_p95_s:.1f} s",
                    str(r.refused),
                    str(r.lost),
                    str(r.unserved),
                    f"{r.oom}/{r.overcommit}",
                    f"{r.idle_unloads}/{r.evictions}",
                    _duration(r.makespan_s),
                ]
            )
        )
    notes = []
    for r in results:
        if r.refuse_reasons:
            why = ", ".join(f"{k} {v}" for k, v in r.refuse_reasons)
            notes.append(f"   {r.policy} refused: {why}")
        if r.anomaly_count:
            notes.append(f"   {r.policy}: {r.anomaly_count} anomalies, first: {r.anomalies[0]}")
    return "\n".join(lines + notes)


def format_seed_summary(
    title: str, runs: Mapping[str, Sequence[Sequence[RunResult]]], policies: Sequence[str]
) -> str:
    """Per machine (key) and policy: load time / gpulet's over several seeds (one list of
    results per seed), as median and range."""
    machines = list(runs)
    width = 20
    lines = [f"== {title}", "   " + f"{'policy':17}" + "".join(f"{m:>{width}}" for m in machines)]
    for p in policies:
        cells = []
        flagged = False
        for m in machines:
            ratios = []
            for seed_results in runs[m]:
                by = {r.policy: r for r in seed_results}
                r, g = by[p], by[GPULET]
                flagged = flagged or bool(r.refused or r.lost or r.unserved)
                ratios.append(r.load_s / g.load_s if g.load_s > 0 else float("nan"))
            cells.append(f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
        name = p + ("\u2020" if flagged else "")
        lines.append("   " + f"{name:17}" + "".join(f"{c:>{width}}" for c in cells))
    lines.append("   \u2020 refused, lost or left unserved some requests on some machine or seed")
    return "\n".join(lines)


def format_speed(s: SpeedResult) -> str:
    per_event_us = (s.core_s - s.noop_s) / s.events * 1e6
    return "\n".join(
        [
            f"== core speed: the {s.events} events gpulet's core received replaying "
            f"'{s.workload}' on {s.machine}, fed again (best of 3)",
            f"   gpulet core  {s.core_rate:12,.0f} events/s",
            f"   no-op policy {s.noop_rate:12,.0f} events/s   (the same calls, nothing decided)",
            f"   ratio        {s.core_rate / s.noop_rate:12.4f}      "
            f"(the core spends ~{per_event_us:.0f} us per event deciding)",
        ]
    )
