"""What Watch subscribers see: model state changes and lease events, made from decisions."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import assert_never

from gpuletd.executor import Executor
from gpuletd.leases import Commits, LeaseFailed, LeaseInfo, lease_info
from gpuletd.scheduler import (
    Decision,
    Granted,
    LeaseEnded,
    LeaseRefused,
    Loading,
    ModelStateChanged,
    PreloadSkipped,
    Queued,
    Rejected,
    Renewed,
    StartBackend,
    StopBackend,
)
from gpuletd.watch_hub import MAX_BACKLOG_BYTES, WatchClosed, WatchHub, WatchOverflow

__all__ = ["LeaseEvent", "WatchEvent", "WatchSink", "event_size"]


@dataclass(frozen=True)
class LeaseEvent:
    kind: str  # granted, renewed, released, expired, backend_died, cancelled
    lease: LeaseInfo
    reason: str = ""
    # The store's commit group holding the change (`StoreSink.group`): a watcher hears of it
    # once that group is saved. Model state changes are saved at once.
    group: int = 0


WatchEvent = ModelStateChanged | LeaseEvent

# What an event holds alive beyond its strings (the objects, their dicts, the GPU tuple),
# measured roughly with sys.getsizeof: the estimate must be cheap, not exact.
_LEASE_EVENT_BYTES = 1024
_MODEL_EVENT_BYTES = 512


def event_size(ev: WatchEvent) -> int:
    """A cheap estimate of the memory an event keeps alive while it waits in a backlog:
    fixed overhead plus its strings (no serialization, it runs once per event)."""
    if isinstance(ev, LeaseEvent):
        x = ev.lease
        strings = (x.lease_id, x.model_id, x.endpoint, x.client, ev.reason, *x.gpu_uuids)
        return _LEASE_EVENT_BYTES + sum(len(t) for t in strings)
    return _MODEL_EVENT_BYTES + len(ev.model_id) + len(ev.message) + sum(map(len, ev.gpu_uuids))


class WatchSink:
    def __init__(
        self,
        executor: Executor,
        *,
        buffer: int = 1024,
        max_bytes: int = MAX_BACKLOG_BYTES,
        commits: Commits | None = None,
    ) -> None:
        self._ex = executor
        # Without a store nothing is saved, and nothing waits.
        self._commits = commits
        self.hub: WatchHub[WatchEvent] = WatchHub(buffer, max_bytes=max_bytes, size=event_size)

    def apply(self, decisions: Sequence[Decision]) -> None:
        if not self.hub.listened:
            # (A lease's details cost more to gather than the Renew that changed them.)
            return
        group = 0 if self._commits is None else self._commits.group()
        for d in decisions:
            match d:
                case ModelStateChanged():
                    self.hub.publish(d)
                case Granted():
                    self.hub.publish(LeaseEvent("granted", lease_info(self._ex, d), group=group))
                case Renewed():
                    view = self._ex.core.lease(d.lease_id)
                    if view is not None:
                        self.hub.publish(
                            LeaseEvent("renewed", lease_info(self._ex, view), group=group)
                        )
                case LeaseEnded():
                    now = self._ex.clock.wall()
                    info = LeaseInfo(
                        d.lease_id, d.model_id, d.gpu_uuids, "", d.client, False, now, now
                    )
                    self.hub.publish(LeaseEvent(d.reason.value, info, d.message, group))
                case (
                    Queued()
                    | Loading()
                    | Rejected()
                    | LeaseRefused()
                    | StartBackend()
                    | StopBackend()
                    | PreloadSkipped()
                ):
                    pass
                case _:
                    assert_never(d)

    async def subscribe(self) -> AsyncGenerator[WatchEvent, None]:
        try:
            async for ev in self.hub.subscribe():
                if self._commits is not None and isinstance(ev, LeaseEvent):
                    # Nobody hears of a change before it is saved, not even a watcher (model
                    # state changes are saved at once).
                    await self._commits.durable(ev.group)
                yield ev
        except WatchOverflow as e:
            raise LeaseFailed(
                "RESOURCE_EXHAUSTED",
                "WATCH_OVERFLOW",
                f"watch stream {e}; reconnect and re-read the state",
            ) from None
        except WatchClosed as e:
            raise LeaseFailed("UNAVAILABLE", "SHUTTING_DOWN", str(e)) from None

    def close(self) -> None:
        self.hub.close()
