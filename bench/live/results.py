"""The figures of one live replay, from what the clients and the workers recorded."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["LiveResult", "grant_lags", "summarise"]


@dataclass(frozen=True)
class LiveResult:
    system: str
    requests: int
    served: int
    refused: int
    loads: int
    # Worker time from start to ready, summed: what the GPU spent loading.
    load_s: float
    wait_mean_s: float
    wait_p95_s: float
    makespan_s: float
    # Grant seen by the client minus the worker's ready time, for grants that waited on a load.
    lag_p50_s: float | None
    lag_p95_s: float | None
    errors: tuple[str, ...] = ()


def _pct(xs: Sequence[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))] if s else 0.0


def grant_lags(
    requests: Sequence[Mapping[str, Any]], workers: Sequence[Mapping[str, Any]]
) -> list[float]:
    """For every load, the first grant of its model to a request that arrived before the load
    was ready: how long after readiness the client got its lease."""
    lags = []
    for w in workers:
        if w.get("event") != "ready":
            continue
        ready = float(w["ready"])
        grants = [
            float(r["granted"])
            for r in requests
            if r["model"] == w["model"]
            and r["granted"] is not None
            and float(r["arrived"]) <= ready
            # A grant before this load was ready belongs to an earlier load of the model.
            and float(r["granted"]) >= ready - 0.005
        ]
        if grants:
            lags.append(max(0.0, min(grants) - ready))
    return lags


def summarise(system: str, run: Mapping[str, Any]) -> LiveResult:
    requests: list[Mapping[str, Any]] = run["requests"]
    workers: list[Mapping[str, Any]] = run["workers"]
    ready = [w for w in workers if w.get("event") == "ready"]
    served = [r for r in requests if r["error"] is None]
    waits = [float(r["granted"]) - float(r["arrived"]) for r in served]
    lags = grant_lags(requests, workers)
    first = min((float(r["arrived"]) for r in requests), default=0.0)
    last = max((float(r["done"]) for r in requests), default=0.0)
    return LiveResult(
        system=system,
        requests=len(requests),
        served=len(served),
        refused=len(requests) - len(served),
        loads=len(ready),
        load_s=sum(float(w["ready"]) - float(w["start"]) for w in ready),
        wait_mean_s=statistics.fmean(waits) if waits else 0.0,
        wait_p95_s=_pct(waits, 0.95),
        makespan_s=last - first,
        lag_p50_s=statistics.median(lags) if lags else None,
        lag_p95_s=_pct(lags, 0.95) if lags else None,
        errors=tuple(sorted({str(r["error"]) for r in requests if r["error"]}))[:3],
    )
