"""The first sink: the core's state is on disk before any decision takes effect.

A decision that changes what must survive a restart (a lease granted, renewed or ended, a
model starting, loaded or stopped) makes the core snapshot be written in one transaction,
before the supervisor starts a process or a client hears of its grant. Only what changed since
the last save is written (`scheduler/snapshot_delta.py`): a Renew rewrites one lease row, not
every model definition and ended lease the node remembers. Pure
queue traffic (Queued, Loading, Rejected) is not persisted: pending requests die with their
RPC streams. Measured footprints and load times are also kept apart, so they outlive a state
file that had to be set aside.

A group commit for the lease API: a decision whose only effect outside the core is the answer
to the call that made it (a lease granted, renewed, released or cancelled; an expiry, which no
one is answered about) is saved a little later, in one transaction with every other such
decision made meanwhile, and the lease API holds each answer back until then (`durable`). An
isolated change is saved at the end of the event loop's turn; under load, commits come at most
once per GROUP_COMMIT_S, so the Renews in flight share one instead of paying one each. What
was acknowledged is still on disk before its answer. Anything else (a backend to start or
stop, a model's state, an administrator's revoke) is saved at once, with what was waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import assert_never

import structlog

from gpuletd.executor import Executor
from gpuletd.runtime import Runtime
from gpuletd.scheduler import (
    Decision,
    Granted,
    LeaseEnded,
    LeaseEndReason,
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

__all__ = ["GROUP_COMMIT_S", "StoreSink"]

log = structlog.get_logger(__name__)

# At most one group commit per this many seconds. Measured with eight Renews in flight on two
# cores: 1 ms gathered about three per commit, 2 ms about six; answers wait at most this long.
GROUP_COMMIT_S = 0.002


class StoreSink:
    def __init__(self, store: StateStore, executor: Executor, runtime: Runtime) -> None:
        self._store = store
        self._ex = executor
        self._rt = runtime
        self._writer = SnapshotWriter()
        # The store's `core_epoch` when the writer's last delta was committed.
        self._epoch: int | None = None
        # The group commit scheduled, and what the answers waiting on it await.
        self._flush: asyncio.Handle | None = None
        self._committed: asyncio.Future[None] | None = None
        # Groups are numbered as they are opened; `_saved` is the last one on disk.
        self._opened = 0
        self._saved = 0
        self._last_commit = float("-inf")  # time.monotonic()

    def apply(self, decisions: Sequence[Decision]) -> None:
        persist = at_once = False
        loaded: list[str] = []
        for d in decisions:
            match d:
                case Granted() | Renewed():
                    persist = True
                case LeaseEnded():
                    persist = True
                    # An administrator is answered without waiting on the commit.
                    at_once = at_once or d.reason is LeaseEndReason.REVOKED
                case StartBackend() | StopBackend():
                    persist = at_once = True
                case ModelStateChanged():
                    persist = at_once = True
                    if d.state is ModelState.LOADED:
                        loaded.append(d.model_id)
                case Queued() | Loading() | Rejected() | LeaseRefused() | PreloadSkipped():
                    pass
                case _:
                    assert_never(d)
        if at_once:
            self.save(loaded)
        elif persist:
            self._group()

    def _group(self) -> None:
        if self._flush is not None:
            return  # joins the commit already scheduled for this turn
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (tests driving the core by hand): nobody to group
            self.save()
            return
        self._committed = loop.create_future()
        self._opened += 1
        wait = self._last_commit + GROUP_COMMIT_S - time.monotonic()
        self._flush = loop.call_later(wait, self.save) if wait > 0 else loop.call_soon(self.save)

    def group(self) -> int:
        """The group that holds the decisions made so far: `durable(group)` waits for it
        only, not for groups opened later (a Watch stream would otherwise wait for every
        commit after its event's, and fall behind a stream of Renews)."""
        return self._opened

    async def durable(self, group: int | None = None) -> None:
        """Returns once every decision made so far (or up to `group`) is saved (or its save
        failed, which `store_error` says): the lease API awaits it before it answers."""
        if group is not None and group <= self._saved:
            return
        if self._committed is not None:
            # Shielded: one waiter cancelled must not cancel the others' commit.
            await asyncio.shield(self._committed)

    def save(self, learned: Sequence[str] = ()) -> None:
        """Saves every change since the last save now (the grouped ones too)."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        committed, self._committed = self._committed, None
        self._saved = self._opened
        self._last_commit = time.monotonic()
        try:
            self._save(learned)
        finally:
            if committed is not None and not committed.done():
                committed.set_result(None)

    def _save(self, learned: Sequence[str]) -> None:
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
