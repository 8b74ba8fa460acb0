"""Fan-out of state changes to Watch subscribers, each with a bounded buffer."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncGenerator
from typing import Generic, TypeVar

__all__ = ["WatchClosed", "WatchHub", "WatchOverflow"]

T = TypeVar("T")


class _End(enum.Enum):
    SHUTDOWN = "shutdown"
    OVERFLOW = "overflow"


class WatchOverflow(Exception):
    """The subscriber fell too far behind and was cut off."""


class WatchClosed(Exception):
    """The daemon is shutting down."""


class WatchHub(Generic[T]):
    def __init__(self, buffer: int = 1024) -> None:
        self.buffer = buffer
        self._subscribers: set[asyncio.Queue[T | _End]] = set()

    def publish(self, event: T) -> None:
        for q in list(self._subscribers):
            if q.qsize() >= self.buffer - 1:
                # A subscriber that cannot keep up is cut off rather than slowing the daemon;
                # one slot is kept free so that it learns why.
                self._subscribers.discard(q)
                q.put_nowait(_End.OVERFLOW)
            else:
                q.put_nowait(event)

    def close(self) -> None:
        for q in self._subscribers:
            q.put_nowait(_End.SHUTDOWN)
        self._subscribers.clear()

    async def subscribe(self) -> AsyncGenerator[T, None]:
        """Events from now on; raises WatchOverflow or WatchClosed when the stream ends."""
        q: asyncio.Queue[T | _End] = asyncio.Queue(self.buffer)
        self._subscribers.add(q)
        try:
            while True:
                ev = await q.get()
                if ev is _End.OVERFLOW:
                    raise WatchOverflow(f"fell more than {self.buffer} events behind")
                if ev is _End.SHUTDOWN:
                    raise WatchClosed("gpuletd is shutting down")
                yield ev
        finally:
            self._subscribers.discard(q)
