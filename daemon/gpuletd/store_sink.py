"""The first sink: the core's state is on disk before any decision takes effect.

A decision that changes what must survive a restart (a lease granted, renewed or ended, a
model starting, loaded or stopped) makes the whole core snapshot be written in one
transaction, before the supervisor starts a process or a client hears of its grant. Pure
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
from gpuletd.store import StateStore, StoreError

__all__ = ["StoreSink"]

log = structlog.get_logger(__name__)


class StoreSink:
    def __init__(self, store: StateStore, executor: Executor, runtime: Runtime) -> None:
        self._store = store
        self._ex = executor
        self._rt = runtime

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
        core, clock = self._ex.core, self._ex.clock
        try:
            with self._store.transaction():
                self._store.save_core(core.snapshot(), wall=clock.wall(), mono=clock.mono())
                for mid in learned:
                    v = core.model(mid)
                    if v is not None:
                        self._store.put_footprint(
                            mid, measured_mb=v.measured_mb, load_seconds=v.load_seconds
                        )
        except StoreError as e:
            # Serving goes on; what a restart would lose is said now, not discovered then.
            if not self._rt.store_error:
                log.error("store.save_failed", error=str(e))
            self._rt.store_error = str(e)
        else:
            if self._rt.store_error:
                log.info("store.saving_again")
            self._rt.store_error = ""
