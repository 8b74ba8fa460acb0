"""The metrics sink: a real scheduler core feeds it decisions through the executor, and the
counters, histograms and scrape-time gauges move exactly as those decisions say."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client.exposition import generate_latest

from gpuletd.active_profile import ActiveProfile, ProfileSource
from gpuletd.config import Config
from gpuletd.executor import BackendDied, Clock, Executor, Loaded, LoadFailed, Unloaded
from gpuletd.metrics import MetricsSink
from gpuletd.probe.poller import ProbePoller
from gpuletd.profiles import BUILTIN_PROFILES
from gpuletd.registry import Backend, Model, Registry
from gpuletd.runtime import Runtime
from gpuletd.scheduler import Queued, Scheduler
from tests.fakes.snapshots import snapshot as snap

MIB = 1024 * 1024
A, B, C = "l-000000000000000a", "l-000000000000000b", "l-000000000000000c"


class FakeTime:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Harness:
    def __init__(self) -> None:
        profile = BUILTIN_PROFILES["constrained_16gb"]
        models = {
            m.id: m
            for m in (
                Model("a", "a", Backend.PROCESS, "fp8", 10000, {"caption": 1}, command=("x",)),
                Model("b", "b", Backend.PROCESS, "fp8", 9000, {"caption": 1}, command=("x",)),
            )
        }
        gpus = [snap(0, 16384, 15000)]
        self.time = FakeTime()
        core = Scheduler(profile, models, gpus)
        self.ex = Executor(core, clock=Clock(mono=self.time, wall=lambda: self.time.t + 1e9))
        poller = ProbePoller(None)
        poller.gpus = gpus  # as if read: the collector takes used/free from the probe
        active = ActiveProfile(profile, ProfileSource.FLAG, "--profile", 14336, ())
        runtime = Runtime(Config(BUILTIN_PROFILES, Registry(models)), active, poller)
        self.sink = MetricsSink(self.ex, runtime)
        self.ex.add_sink(self.sink)

    def value(self, metric: str, /, **labels: str) -> float:
        v = self.sink.registry.get_sample_value(metric, labels)
        return 0.0 if v is None else v

    def request(self, rid: str, model: str) -> None:
        self.ex.feed(lambda c, now: c.request(rid, model, now=now, client="t", ttl_s=600))

    def after(self, seconds: float) -> None:
        self.time.t += seconds


def test_a_cold_load_counts_a_load_its_duration_the_wait_and_the_grant() -> None:
    h = Harness()
    h.request(A, "a")
    assert h.value("gpulet_model_loads_total", model="a") == 1
    assert h.value("gpulet_models", state="loading") == 1
    assert h.value("gpulet_requests_waiting_on_load") == 1
    h.after(3.0)
    h.ex.backend_outcome(Loaded("a", None, ""))
    assert h.value("gpulet_model_load_duration_seconds_count", model="a") == 1
    assert h.value("gpulet_model_load_duration_seconds_sum", model="a") == 3.0
    # Waited the whole load: from the Loading decision to the grant, on the core's clock.
    assert h.value("gpulet_request_wait_seconds_sum", model="a") == 3.0
    assert h.value("gpulet_request_wait_seconds_bucket", model="a", le="5.0") == 1
    assert h.value("gpulet_request_wait_seconds_bucket", model="a", le="2.5") == 0
    assert h.value("gpulet_leases_granted_total", model="a") == 1
    assert h.value("gpulet_leases_held", model="a") == 1
    assert h.value("gpulet_models", state="loaded") == 1
    assert h.value("gpulet_models", state="unloaded") == 1  # b; every state is present
    assert h.value("gpulet_requests_waiting_on_load") == 0

    # A warm model: granted in the event that asked, a wait of 0.
    h.request(B.replace("b", "d"), "a")
    assert h.value("gpulet_request_wait_seconds_count", model="a") == 2
    assert h.value("gpulet_request_wait_seconds_sum", model="a") == 3.0
    assert h.value("gpulet_model_loads_total", model="a") == 1  # no second load


def test_a_queued_request_an_eviction_an_unload_and_the_next_load() -> None:
    h = Harness()
    h.request(A, "a")
    h.ex.backend_outcome(Loaded("a", None, ""))
    h.request(B, "b")  # one model at a time on constrained_16gb: b waits for a's lease
    assert h.value("gpulet_queue_depth") == 1
    h.after(4.0)
    h.ex.feed(lambda c, now: c.release(A, now=now))
    assert h.value("gpulet_leases_ended_total", model="a", reason="released") == 1
    assert h.value("gpulet_model_evictions_total", model="a", reason="evicted") == 1
    assert h.value("gpulet_models", state="unloading") == 1
    h.ex.backend_outcome(Unloaded("a"))
    assert h.value("gpulet_model_unloads_total", model="a") == 1
    # The next load waits until the probe shows a's memory free again.
    h.ex.probe([snap(0, 16384, 16000, at=h.time.t)])
    assert h.value("gpulet_model_loads_total", model="b") == 1
    assert h.value("gpulet_queue_depth") == 0
    h.after(1.0)
    h.ex.backend_outcome(Loaded("b", None, ""))
    # b's request arrived at 100 and was granted at 105.
    assert h.value("gpulet_request_wait_seconds_sum", model="b") == 5.0
    assert h.value("gpulet_model_load_duration_seconds_sum", model="b") == 1.0


def test_a_failed_load_and_a_dead_backend_are_counted_apart() -> None:
    h = Harness()
    h.request(A, "a")
    h.ex.backend_outcome(LoadFailed("a", "exit 1"))
    assert h.value("gpulet_model_load_failures_total", model="a") == 1
    assert h.value("gpulet_requests_rejected_total", reason="BACKEND_FAILED") == 1
    assert h.value("gpulet_models", state="failed") == 1
    assert h.value("gpulet_model_load_duration_seconds_count", model="a") == 0
    assert not h.sink._arrived  # the rejected request is forgotten

    h.after(600)  # past any backoff
    h.request(B, "a")
    h.ex.backend_outcome(Loaded("a", None, ""))
    h.ex.backend_outcome(BackendDied("a", "segfault"))
    assert h.value("gpulet_model_backend_deaths_total", model="a") == 1
    assert h.value("gpulet_model_load_failures_total", model="a") == 1  # not a load failure
    assert h.value("gpulet_leases_ended_total", model="a", reason="backend_died") == 1
    assert h.value("gpulet_leases_held", model="a") == 0


def test_the_arrival_times_it_keeps_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import gpuletd.metrics as metrics

    monkeypatch.setattr(metrics, "MAX_TRACKED_REQUESTS", 3)
    h = Harness()
    h.ex.feed(lambda c, now: c.tick(now))  # the sink takes times from the core's last event
    h.sink.apply([Queued(f"l-{i:016x}", "a", i + 1) for i in range(10)])
    assert list(h.sink._arrived) == [f"l-{i:016x}" for i in (7, 8, 9)]
    # A repeated Queued (a position change) keeps the first arrival.
    h.after(5)
    h.ex.feed(lambda c, now: c.tick(now))
    h.sink.apply([Queued("l-0000000000000009", "a", 1)])
    assert h.sink._arrived["l-0000000000000009"] == 100.0


def test_gpu_memory_is_exported_in_bytes_with_dcgm_labels_and_the_profile_as_info() -> None:
    h = Harness()
    h.request(A, "a")
    gpu = {"UUID": "GPU-0", "gpu": "0"}
    assert h.value("gpulet_gpu_memory_total_bytes", **gpu) == 16384 * MIB
    assert h.value("gpulet_gpu_memory_free_bytes", **gpu) == 15000 * MIB
    assert h.value("gpulet_gpu_memory_used_bytes", **gpu) == 1384 * MIB
    assert h.value("gpulet_gpu_memory_reserved_bytes", **gpu) == 10000 * MIB
    assert h.value("gpulet_profile_info", name="constrained_16gb", source="flag") == 1
    build = [
        s for m in h.sink.registry.collect() for s in m.samples if s.name == "gpulet_build_info"
    ]
    assert len(build) == 1 and build[0].value == 1 and build[0].labels["version"]


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (Debian package `prometheus`; .ci/run installs it)",
)
def test_the_exposition_passes_promtool() -> None:
    h = Harness()
    h.request(A, "a")
    h.ex.backend_outcome(Loaded("a", None, ""))
    h.request(B, "b")
    text = generate_latest(h.sink.registry)
    r = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30
    )
    assert r.returncode == 0 and not r.stdout and not r.stderr, (r.stdout, r.stderr, text)
