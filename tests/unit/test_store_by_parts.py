"""The core saved by parts (schema 2): after any sequence of decisions, what the store gives
back is the core's whole snapshot, and a restart from it resumes the same state; files written
whole by schema 1 still load."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from gpuletd.executor import Clock, Executor
from gpuletd.profiles import BUILTIN_PROFILES
from gpuletd.runtime import Runtime
from gpuletd.scheduler import Decision, Scheduler, check_invariants
from gpuletd.scheduler.snapshot_delta import SnapshotWriter
from gpuletd.scheduler.state import Tuning
from gpuletd.store import SCHEMA_VERSION, StateStore
from gpuletd.store_sink import StoreSink
from tests.fakes.snapshots import snapshot as snap
from tests.helpers import snapshot_json, stored_snapshot
from tests.unit.test_scheduler_core import REG, lease, probe_free

GPUS = [snap(0, 98304)]
# The registry after the reconfigure in `decisions`: a's instance, leased, is retired.
BIGGER_A = {**REG, "a": dataclasses.replace(REG["a"], vram_estimate_mb=6500)}
# Few ended leases remembered, so that a short test forgets some.
TUNING = Tuning(ended_lease_memory=4)


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def restored(snapshot: dict[str, Any], now: float) -> Scheduler:
    profile = BUILTIN_PROFILES["generous_96gb"]
    core = Scheduler.restore(
        snapshot, profile, BIGGER_A, GPUS, now=now, preload=["siglip"], tuning=TUNING
    )
    assert check_invariants(core) == []
    return core


class Rig:
    """A real executor feeding a real StoreSink over a real state file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.time = FakeTime()
        self.store = StateStore.open(path)
        core = Scheduler(
            BUILTIN_PROFILES["generous_96gb"], REG, GPUS, preload=["siglip"], tuning=TUNING
        )
        self.ex = Executor(core, clock=Clock(mono=self.time, wall=self.time))
        # The sink reads and sets only `store_error` on the runtime.
        self.runtime = cast(Runtime, SimpleNamespace(store_error=""))
        self.sink = StoreSink(self.store, self.ex, self.runtime)
        self.ex.add_sink(self.sink)

    @property
    def core(self) -> Scheduler:
        return self.ex.core

    def step(self, event: Callable[[Scheduler, float], list[Decision]]) -> None:
        self.time.now += 1.0
        self.ex.feed(event)
        # Decisions that persist nothing (a request queued) leave the file behind the core
        # until the next one that does; save here so that every step can be compared.
        self.sink.save()
        assert self.runtime.store_error == ""
        assert stored_snapshot(self.path) == snapshot_json(self.core)


def decisions(rig: Rig) -> None:
    """Grants, renews, releases past the ended-lease memory, a failure with backoff, a
    reconfigure that retires a leased instance, and loads finishing."""
    rig.step(lambda c, now: c.start(now))
    rig.step(lambda c, now: c.load_succeeded("siglip", now=now, measured_mb=2700, endpoint="x"))
    rig.step(lambda c, now: [lease(c, "r1", "a", now, client="tagger", ttl_s=1e4, secret="d")])
    rig.step(lambda c, now: [lease(c, "r2", "a", now, priority=2, ttl_s=1e4)])
    rig.step(lambda c, now: c.renew("r1", now=now, ttl_s=500.0))
    for i in range(7):
        rig.step(lambda c, now, i=i: [lease(c, f"e{i}", "siglip", now)])
        rig.step(lambda c, now, i=i: c.release(f"e{i}", now=now))
    rig.step(lambda c, now: c.request("r4", "c", now=now))
    rig.step(lambda c, now: c.load_failed("c", "exit status 1", now=now))
    rig.step(lambda c, now: [lease(c, "r5", "b", now, ttl_s=1e4)])
    rig.step(lambda c, now: c.reconfigure(c.profile, BIGGER_A, now=now, preload=["siglip"]))
    rig.step(lambda c, now: c.renew("r2", now=now))
    rig.step(lambda c, now: c.release("r1", now=now))
    rig.step(lambda c, now: c.release("r2", now=now))
    rig.step(lambda c, now: probe_free(c, now))
    rig.step(lambda c, now: c.tick(now + 4000.0))


def test_after_every_decision_the_store_gives_back_the_whole_snapshot(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "state.db")
    decisions(rig)
    snapshot = stored_snapshot(rig.path)
    # What was meant to be covered was: old ended leases forgotten, a retired instance.
    ended = [lid for lid, _ in snapshot["ended"]]
    assert len(ended) == TUNING.ended_lease_memory and "e0" not in ended
    assert any(m["retired"] for m in snapshot["models"])
    # A restart from it resumes the same state.
    again = restored(snapshot, rig.time.now)
    assert snapshot_json(again) == snapshot_json(rig.core)


def test_a_restarted_daemon_goes_on_saving_by_parts(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "state.db")
    decisions(rig)
    rig.store.close()
    # The next daemon: restored from the file, saving with a writer that has seen nothing.
    second = Rig(rig.path)
    second.ex.core = restored(stored_snapshot(rig.path), rig.time.now)
    second.time.now = rig.time.now
    second.step(lambda c, now: [lease(c, "n1", "siglip", now, ttl_s=1e4)])
    second.step(lambda c, now: c.renew("n1", now=now))
    second.step(lambda c, now: c.release("n1", now=now))


def test_a_renew_writes_one_lease_and_nothing_else(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "state.db")
    rig.step(lambda c, now: c.start(now))
    rig.step(lambda c, now: c.load_succeeded("siglip", now=now, measured_mb=2700, endpoint="x"))
    for i in range(6):
        rig.step(lambda c, now, i=i: [lease(c, f"e{i}", "siglip", now)])
        rig.step(lambda c, now, i=i: c.release(f"e{i}", now=now))
    rig.step(lambda c, now: [lease(c, "r1", "siglip", now, ttl_s=100.0)])
    writer = SnapshotWriter()
    rig.core.snapshot_delta(writer)
    rig.time.now += 1.0
    rig.core.renew("r1", now=rig.time.now)
    delta = rig.core.snapshot_delta(writer)
    assert not delta.full
    assert [key for key, _, _ in delta.leases] == ["r1"]
    assert (delta.models, delta.models_gone, delta.leases_gone) == ((), (), ())
    assert (delta.ended, delta.ended_from) == ((), None)


def test_a_failed_save_is_followed_by_a_whole_one(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "state.db")
    rig.step(lambda c, now: c.start(now))
    rig.step(lambda c, now: c.load_succeeded("siglip", now=now, measured_mb=2700, endpoint="x"))
    rig.step(lambda c, now: [lease(c, "r1", "siglip", now, ttl_s=100.0)])
    # A save that is rolled back (the enclosing block fails) never reached the disk ...
    with pytest.raises(RuntimeError), rig.store.transaction():
        rig.ex.feed(lambda c, now: c.release("r1", now=now))
        raise RuntimeError("disk gone")
    assert [le["lease_id"] for le in stored_snapshot(rig.path)["leases"]] == ["r1"]
    # ... so the next one writes everything, not just what changed after it.
    rig.step(lambda c, now: c.tick(now))


def test_clearing_the_state_leaves_nothing_of_the_parts(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "state.db")
    decisions(rig)
    rig.store.clear_state()
    reopened = StateStore.open(rig.path)
    assert reopened.load_core() is None
    reopened.close()
    # And the sink, finding the core written behind its back, writes it whole again.
    rig.step(lambda c, now: c.tick(now))


def test_a_whole_snapshot_replaces_one_saved_by_parts(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "state.db")
    decisions(rig)
    rig.store.save_core({"version": 1, "note": "whole"}, wall=1.0, mono=2.0)
    assert stored_snapshot(rig.path) == {"version": 1, "note": "whole"}


# -- schema 1 --------------------------------------------------------------------------------

# The tables as schema 1 created them.
_SCHEMA_1 = [
    """CREATE TABLE core (id INTEGER PRIMARY KEY CHECK (id = 1), snapshot TEXT NOT NULL,
        saved_wall REAL NOT NULL, saved_mono REAL NOT NULL, boot_id TEXT)""",
    """CREATE TABLE backends (model_id TEXT PRIMARY KEY NOT NULL, record TEXT NOT NULL,
        updated_wall REAL NOT NULL)""",
    """CREATE TABLE footprints (model_id TEXT PRIMARY KEY NOT NULL, measured_mb INTEGER,
        load_seconds REAL, updated_wall REAL NOT NULL)""",
    """CREATE TABLE measurements (model_id TEXT PRIMARY KEY NOT NULL, peak_mb INTEGER,
        loads INTEGER NOT NULL, unload_seconds REAL, unloads INTEGER NOT NULL,
        updated_wall REAL NOT NULL)""",
]


def test_a_schema_1_file_loads_whole_and_is_then_saved_by_parts(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "old" / "state.db")
    decisions(rig)
    old_snapshot = snapshot_json(rig.core)
    path = tmp_path / "state.db"
    raw = sqlite3.connect(path)
    for ddl in _SCHEMA_1:
        raw.execute(ddl)
    raw.execute(
        "INSERT INTO core VALUES (1, ?, 1.0, 2.0, NULL)",
        (json.dumps(old_snapshot, allow_nan=False),),
    )
    raw.execute("INSERT INTO footprints VALUES ('a', 6100, 3.5, 1.0)")
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()

    assert stored_snapshot(path) == old_snapshot
    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert SCHEMA_VERSION == 2
    # The daemon that read it resumes, and saves by parts from then on.
    second = Rig(path)
    second.ex.core = restored(stored_snapshot(path), rig.time.now)
    second.time.now = rig.time.now
    assert snapshot_json(second.core) == old_snapshot
    second.step(lambda c, now: [lease(c, "n1", "siglip", now, ttl_s=1e4)])
    second.step(lambda c, now: c.release("n1", now=now))
    assert second.store.footprints()["a"].measured_mb == 6100
