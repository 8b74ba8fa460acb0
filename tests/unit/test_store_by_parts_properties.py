"""The scheduler's random event sequences (`test_scheduler_properties.SchedulerMachine`), with
the core saved by parts after every step: what a real state file gives back is always the
core's whole snapshot, whatever happened (restarts, reconfigures, failures, expiries)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.stateful import invariant

from gpuletd.scheduler.snapshot_delta import SnapshotWriter
from gpuletd.store import StateStore
from tests.unit.test_scheduler_properties import SchedulerMachine


class SavedByPartsMachine(SchedulerMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="gpulet-parts-"))
        self.store = StateStore.open(self.dir / "state.db")
        # One writer for the whole run, across the machine's restarts: it compares by value,
        # so a core replaced by an equal one costs nothing and a changed one is caught.
        self.writer = SnapshotWriter()

    @invariant()
    def the_file_gives_back_the_whole_snapshot(self) -> None:
        if not hasattr(self, "sched"):
            return
        delta = self.sched.snapshot_delta(self.writer)
        self.store.save_core_delta(delta, wall=1.0, mono=2.0)
        saved = self.store.load_core()
        assert saved is not None
        assert saved.snapshot == json.loads(json.dumps(self.sched.snapshot(), allow_nan=False))

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            self.store.close()
            shutil.rmtree(self.dir, ignore_errors=True)


SavedByPartsMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSavedByParts = SavedByPartsMachine.TestCase
