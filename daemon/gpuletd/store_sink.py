"""The first sink: the core's state is on disk before any decision takes effect.

A decision that changes what must survive a restart (a lease granted, renewed or ended, a
model starting, loaded or stopped) makes the core snapshot be written in one transaction,
before the supervisor starts a process or a client hears of its grant. Only what changed since
the last save is written (`scheduler/snapshot_delta.py`): a Renew rewrites one lease row, not
every model definition and ended lease the node remembers. Pure
queue traffic (Queued, Loading, Rejected) is not persisted: pending requests die with their
RPC streams. Measured footprints and load times are also kept apart, so they outlive a state
file that had to be set aside.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import assert_never

import structlog

from gpuletd.executor import Executor
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
    Renewed,
    StartBackend,
    StopBackend,
)
from gpuletd.scheduler.snapshot_delta import SnapshotWriter
from gpuletd.store import StateStore, StoreError

__all__ = ["StoreSink"]

log = structlog.get_logger(__name__)


class StoreSink:
    def __init__(self, store: StateStore, executor: Executor, runtime: Runtime) -> None:
        self._store = store
        self._ex = executor
        self._rt = runtime
        self._writer = SnapshotWriter()
        # The store's `core_epoch` when the writer's last delta was committed.
        self._epoch: int | None = None

    def apply(self, decisions: Sequence[Decision]) -> None:
        persist = False
        loaded: list[str] = []
        for d in decisions:
            match d:
                case Granted() | Renewed() | LeaseEnded() | StartBackend() | StopBackend():
                    persist = True
                case ModelStateChanged():
                    persist = True
                    if d.state is ModelState.LOADED:
                        loaded.append(d.model_id)
                case Queued() | Loading() | Rejected() | LeaseRefused() | PreloadSkipped():
                    pass
                case _:
                    assert_never(d)
        if persist:
            self.save(loaded)

    def save(self, learned: Sequence[str] = ()) -> None:
        core, clock, store = self._ex.core, self._ex.clock, self._store
        if store.core_epoch != self._epoch:
            # Something else wrote (or rolled back) the core since: start from a whole one.
            self._writer.forget()
        delta = core.snapshot_delta(self._writer)
        try:
            with store.transaction():
                store.save_core_delta(delta, wall=clock.wall(), mono=clock.mono())
                for mid in learned:
                    v = core.model(mid)
                    if v is not None:
                        self._store.put_footprint(
                            mid, measured_mb=v.measured_mb, load_seconds=v.load_seconds
                        )
        except StoreError as e:
            self._epoch = None
            # Serving goes on; what a restart would lose is said now, not discovered then.
            if not self._rt.store_error:
                log.error("store.save_failed", error=str(e))
            self._rt.store_error = str(e)
        else:
            self._epoch = store.core_epoch
            if self._rt.store_error:
                log.info("store.saving_again")
            self._rt.store_error = ""
