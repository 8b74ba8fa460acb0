"""The measurements sink (seed 003): peak memory, measured loads and unload time per model, as
the real core and executor produce them, kept in a real state store."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import MappingProxyType

import pytest

from gpulet.v1 import types_pb2 as pb
from gpuletd.executor import Clock, Executor
from gpuletd.measurements import Confidence, Measurements, confidence
from gpuletd.probe.types import GpuSnapshot, MigMode
from gpuletd.profiles import BUILTIN_PROFILES
from gpuletd.registry import Backend, Model
from gpuletd.scheduler import Scheduler, StartBackend, StopBackend
from gpuletd.services.convert import model_pb
from gpuletd.store import Measurement, StateStore

MODEL = Model("m", "m", Backend.PROCESS, "q4_k_m", 3000, MappingProxyType({"caption": 50}))
GPU = GpuSnapshot(0, "GPU-0", "sim", "0:0", 16384, 16384, 0, 0, (8, 9), MigMode.DISABLED)


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _executor(t: FakeTime) -> Executor:
    core = Scheduler(BUILTIN_PROFILES["development"], {"m": MODEL}, [GPU])
    return Executor(core, clock=Clock(mono=t, wall=t))


def _load_and_unload(ex: Executor, t: FakeTime, rid: str, mb: int, stop_s: float) -> None:
    out = ex.feed(lambda c, now: c.request(rid, "m", now=now))
    assert any(isinstance(d, StartBackend) for d in out)
    t.now += 2.0
    ex.feed(lambda c, now: c.load_succeeded("m", now=now, measured_mb=mb))
    ex.feed(lambda c, now: c.release(rid, now=now))
    out = ex.feed(lambda c, now: c.unload("m", now=now, message="test"))
    assert any(isinstance(d, StopBackend) for d in out)
    t.now += stop_s
    ex.feed(lambda c, now: c.unload_finished("m", now=now))


def test_loads_and_unloads_are_measured_and_kept(tmp_path: Path) -> None:
    t = FakeTime()
    store = StateStore.open(tmp_path / "state.db")
    ex = _executor(t)
    ms = Measurements(ex, store)
    ex.add_sink(ms)
    assert ms.get("m").loads == 0
    _load_and_unload(ex, t, "l-0000000000000001", 3500, 1.5)
    _load_and_unload(ex, t, "l-0000000000000002", 3200, 0.5)
    m = ms.get("m")
    # The peak is the largest footprint seen, the unload time the last one.
    assert (m.peak_mb, m.loads, m.unload_seconds, m.unloads) == (3500, 2, 0.5, 2)
    store.close()
    again = Measurements(_executor(t), StateStore.open(tmp_path / "state.db"))
    assert again.get("m") == m


def test_a_load_the_probe_could_not_measure_counts_nothing() -> None:
    t = FakeTime()
    ex = _executor(t)
    ms = Measurements(ex, None)
    ex.add_sink(ms)
    ex.feed(lambda c, now: c.request("l-0000000000000001", "m", now=now))
    ex.feed(lambda c, now: c.load_succeeded("m", now=now, measured_mb=None))
    assert (ms.get("m").loads, ms.get("m").peak_mb) == (0, None)


@pytest.mark.parametrize(
    ("loads", "expected"),
    [(0, Confidence.LOW), (1, Confidence.MEDIUM), (2, Confidence.MEDIUM), (3, Confidence.HIGH)],
)
def test_confidence_grows_with_measurements(loads: int, expected: Confidence) -> None:
    assert confidence(loads) is expected


def test_list_models_carries_the_measurements() -> None:
    t = FakeTime()
    ex = _executor(t)
    ms = Measurements(ex, None)
    ex.add_sink(ms)
    unmeasured = model_pb(MODEL, ex.core.model("m"), measured=ms.get("m"))
    assert unmeasured.confidence == pb.ESTIMATE_CONFIDENCE_LOW
    assert not unmeasured.HasField("peak_mb") and not unmeasured.HasField("unload_seconds")
    _load_and_unload(ex, t, "l-0000000000000001", 3500, 1.5)
    msg = model_pb(MODEL, ex.core.model("m"), measured=ms.get("m"))
    assert (msg.peak_mb, msg.measured_mb, msg.measured_loads) == (3500, 3500, 1)
    assert (msg.load_seconds, msg.unload_seconds) == (2.0, 1.5)
    assert msg.confidence == pb.ESTIMATE_CONFIDENCE_MEDIUM


def test_a_state_file_from_before_the_measurements_table_keeps_its_state(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = StateStore.open(path)
    store.put_footprint("m", measured_mb=3100, load_seconds=4.0)
    store.close()
    # As the release before wrote it: schema 1 without the measurements table.
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE measurements")
    conn.commit()
    conn.close()
    reopened = StateStore.open(path)
    assert reopened.moved_aside is None
    assert reopened.footprints()["m"].measured_mb == 3100
    assert reopened.measurements() == {}
    reopened.put_measurement("m", Measurement(3100, 1, 0.5, 1))
    assert reopened.measurements()["m"].unload_seconds == 0.5
