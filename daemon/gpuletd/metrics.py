"""Prometheus metrics: one more sink of the decisions Watch sees, plus what is read at scrape
time (GPU memory, models by state, the queue, leases held, the active profile).

Counters and histograms move only on decisions, so they say what the core decided, in the
order it decided it; gauges are read from the core's views and the probe when Prometheus
asks, so they are never stale and cost nothing between scrapes. Everything lives in this
daemon's own `CollectorRegistry` (never prometheus_client's global one, which would also
export the Python process collectors of whatever imported us, and which tests would share).

Names follow Prometheus conventions: a `gpulet_` prefix, base units (`_bytes`, `_seconds`),
`_total` on counters. GPU series carry DCGM's `UUID` and `gpu` labels so that they join with
NVIDIA's dcgm-exporter series. Label values come only from the registry (model ids), enums
(states, reasons) and the probe (GPUs): no client-chosen string becomes a label.
"""

from __future__ import annotations

import platform
from collections import Counter as Tally
from collections.abc import Iterable, Sequence
from typing import assert_never

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from gpuletd import __version__
from gpuletd.executor import Executor
from gpuletd.metrics_interceptor import RpcMetricsInterceptor
from gpuletd.runtime import Runtime
from gpuletd.scheduler import (
    Decision,
    Granted,
    LeaseEnded,
    LeaseRefused,
    Loading,
    ModelState,
    ModelStateChanged,
    PreloadSkipped,
    Queued,
    Rejected,
    RejectReason,
    Renewed,
    StartBackend,
    StopBackend,
)

__all__ = ["MAX_TRACKED_REQUESTS", "MetricsSink", "StateCollector"]

MIB = 1024 * 1024
# Loads run from a reservation's instant to a 70B model's minutes.
LOAD_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
# A wait is 0 for a warm model, seconds for a load, minutes behind someone else's lease.
WAIT_BUCKETS = (0.005, 0.05, 0.25, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
# Arrival times of pending requests, kept to time their wait. The core bounds its queue, but
# a request whose end we never hear of (a bug, a lost decision) must not grow us forever:
# past this many the oldest are forgotten (their wait then goes unmeasured, nothing worse).
MAX_TRACKED_REQUESTS = 10_000


def _series(model_id: str) -> str:
    """The `model` label: memory leases (`vram:<lease id>`) share one value, or each would
    add series that never go away."""
    return "vram" if model_id.startswith("vram:") else model_id


class StateCollector(Collector):
    """Gauges read at scrape time. Scrapes are served on the event loop's thread (see
    metrics_http), so the core's views are read between two events, never during one."""

    def __init__(self, executor: Executor, runtime: Runtime) -> None:
        self._ex = executor
        self._rt = runtime

    def collect(self) -> Iterable[Metric]:
        core = self._ex.core
        yield from self._gpus()

        by_state = GaugeMetricFamily(
            "gpulet_models", "Models in the registry, by state.", labels=["state"]
        )
        views = core.models()
        counts = Tally(v.state for v in views.values())
        for state in ModelState:  # every state, zeros included: absent is not zero
            by_state.add_metric([state.value], counts[state])
        yield by_state

        held = GaugeMetricFamily("gpulet_leases_held", "Live leases, by model.", labels=["model"])
        for mid, v in sorted(views.items()):
            held.add_metric([mid], v.lease_count)
        yield held

        waiting = core.waiting_count()
        yield GaugeMetricFamily(
            "gpulet_queue_depth",
            "Requests waiting for their turn (not those only waiting on a load under way).",
            value=waiting,
        )
        yield GaugeMetricFamily(
            "gpulet_requests_waiting_on_load",
            "Requests waiting for a load of their model that is already under way.",
            value=sum(len(v.waiters) for v in views.values()),
        )

        active = self._rt.active
        profile = InfoMetricFamily(
            "gpulet_profile", "The active deployment profile and where it came from."
        )
        profile.add_metric([], {"name": active.profile.name, "source": active.source.value})
        yield profile

    def _gpus(self) -> Iterable[Metric]:
        labels = ["UUID", "gpu"]
        total = GaugeMetricFamily(
            "gpulet_gpu_memory_total_bytes", "GPU memory in total.", labels=labels
        )
        used = GaugeMetricFamily(
            "gpulet_gpu_memory_used_bytes",
            "GPU memory in use, as the probe last read it.",
            labels=labels,
        )
        free = GaugeMetricFamily(
            "gpulet_gpu_memory_free_bytes",
            "GPU memory free, as the probe last read it.",
            labels=labels,
        )
        reserved = GaugeMetricFamily(
            "gpulet_gpu_memory_reserved_bytes",
            "GPU memory reserved by gpulet for the models placed on the GPU.",
            labels=labels,
        )
        available = GaugeMetricFamily(
            "gpulet_gpu_memory_available_bytes",
            "GPU memory a new placement could use now (the smaller of live and accounted free, "
            "less headroom).",
            labels=labels,
        )
        readings = {g.uuid: g for g in self._rt.gpus}
        for g in self._ex.core.gpus():
            key = [g.uuid, str(g.index)]
            snap = readings.get(g.uuid)
            # Unknown is left out, never exported as 0 (a 0 would read as "full" or "empty").
            if g.total_mb is not None:
                total.add_metric(key, g.total_mb * MIB)
            if snap is not None and snap.used_mb is not None:
                used.add_metric(key, snap.used_mb * MIB)
            if snap is not None and snap.free_mb is not None:
                free.add_metric(key, snap.free_mb * MIB)
            reserved.add_metric(key, g.reserved_mb * MIB)
            available.add_metric(key, g.available_mb * MIB)
        return (total, used, free, reserved, available)


class MetricsSink:
    """Counters and histograms from decisions. Keeps two small dicts, both on the core's
    clock: when each model's load started, and when each pending request arrived."""

    def __init__(self, executor: Executor, runtime: Runtime) -> None:
        self._ex = executor
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Info("gpulet_build", "gpuletd build information.", registry=r).info(
            {
                "version": __version__,
                "python": platform.python_version(),
                "grpcio": grpc.__version__,
            }
        )
        r.register(StateCollector(executor, runtime))
        self.interceptor = RpcMetricsInterceptor(r)

        self.loads = Counter(
            "gpulet_model_loads", "Loads started, by model.", ["model"], registry=r
        )
        self.load_failures = Counter(
            "gpulet_model_load_failures",
            "Loads that ended without the model becoming loaded (failed, timed out, too large).",
            ["model"],
            registry=r,
        )
        self.load_seconds = Histogram(
            "gpulet_model_load_duration_seconds",
            "Time from the start of a load to the model being loaded, by model.",
            ["model"],
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.evictions = Counter(
            "gpulet_model_evictions",
            "Backends gpulet decided to stop, by model and reason (evicted: to make room; "
            "grace_expired: idle past the grace period; load_timeout, too_large, retired, "
            "reconfigured).",
            ["model", "reason"],
            registry=r,
        )
        self.unloads = Counter(
            "gpulet_model_unloads", "Unloads completed, by model.", ["model"], registry=r
        )
        self.deaths = Counter(
            "gpulet_model_backend_deaths",
            "Loaded backends that died, by model.",
            ["model"],
            registry=r,
        )
        self.granted = Counter(
            "gpulet_leases_granted", "Leases granted, by model.", ["model"], registry=r
        )
        self.ended = Counter(
            "gpulet_leases_ended",
            "Leases ended, by model and reason (released, expired, backend_died, cancelled).",
            ["model", "reason"],
            registry=r,
        )
        self.rejected = Counter(
            "gpulet_requests_rejected",
            "Lease requests refused or abandoned, by reason.",
            ["reason"],
            registry=r,
        )
        for reason in RejectReason:  # a rate over a series that appears late misses its start
            self.rejected.labels(reason.value)
        self.wait = Histogram(
            "gpulet_request_wait_seconds",
            "Time from a lease request's arrival to its grant, by model.",
            ["model"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        # Seeded from the (possibly restored) core, so the first change after a restart is
        # judged against the real previous state. A load restored mid-way has no known start:
        # its duration is not observed.
        self._state = {mid: v.state for mid, v in executor.core.models().items()}
        self._load_started: dict[str, float] = {}
        self._arrived: dict[str, float] = {}

    def apply(self, decisions: Sequence[Decision]) -> None:
        # The core's time of the event that made these decisions: the same clock as
        # Granted.granted_at, and deterministic under a test's fake clock.
        now = self._ex.core.now
        for d in decisions:
            match d:
                case Queued() | Loading():
                    self._arrive(d.request_id, now)
                case Granted():
                    # No Queued/Loading before it: granted in the event that asked for it.
                    arrived = self._arrived.pop(d.lease_id, d.granted_at)
                    self.wait.labels(_series(d.model_id)).observe(max(0.0, d.granted_at - arrived))
                    self.granted.labels(_series(d.model_id)).inc()
                case Rejected():
                    self._arrived.pop(d.request_id, None)
                    self.rejected.labels(d.reason.value).inc()
                case LeaseEnded():
                    self.ended.labels(_series(d.model_id), d.reason.value).inc()
                case StartBackend():
                    self.loads.labels(_series(d.model_id)).inc()
                case StopBackend():
                    self.evictions.labels(_series(d.model_id), d.reason.value).inc()
                case ModelStateChanged():
                    self._changed(d, now)
                case Renewed() | LeaseRefused() | PreloadSkipped():
                    pass
                case _:
                    assert_never(d)

    def _arrive(self, request_id: str, now: float) -> None:
        # Queued repeats whenever a position changes: only the first sighting is the arrival.
        if request_id in self._arrived:
            return
        if len(self._arrived) >= MAX_TRACKED_REQUESTS:
            del self._arrived[next(iter(self._arrived))]  # the oldest (dicts keep order)
        self._arrived[request_id] = now

    def _changed(self, d: ModelStateChanged, now: float) -> None:
        before = self._state.get(d.model_id)
        self._state[d.model_id] = d.state
        mid = d.model_id
        if d.state is ModelState.LOADING:
            self._load_started[mid] = now
            return
        started = self._load_started.pop(mid, None)
        if before is ModelState.LOADING:
            if d.state is ModelState.LOADED:
                if started is not None:
                    self.load_seconds.labels(_series(mid)).observe(max(0.0, now - started))
            else:  # failed, or stopped by a timeout or a measurement too large to keep
                self.load_failures.labels(_series(mid)).inc()
        elif before is ModelState.LOADED and d.state is ModelState.FAILED:
            self.deaths.labels(_series(mid)).inc()
        if d.state is ModelState.UNLOADED:
            self.unloads.labels(_series(mid)).inc()
