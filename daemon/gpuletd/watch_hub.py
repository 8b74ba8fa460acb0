"""Fan-out of state changes to Watch subscribers, each with a backlog bounded in events and in
bytes.

A subscriber that stops reading (a stopped `gpulet watch`, a hung client) keeps every event
published since alive in its backlog: bounded in events only, a few large events (long client
names, long backend errors) still add up to hundreds of MB. Each event's size is estimated
once, when it is published (`size`), and a subscriber whose backlog would pass either bound
is cut off: its backlog is dropped at once and it learns why on its next read.

Closing the hub (shutdown) ends every subscriber at once, ahead of whatever it still had to
read, so no Watch stream holds the server's graceful stop open.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Callable
from typing import Generic, TypeVar

__all__ = ["MAX_BACKLOG_BYTES", "WatchClosed", "WatchHub", "WatchOverflow"]

T = TypeVar("T")

MAX_BACKLOG_BYTES = 1 << 20


class WatchOverflow(Exception):
    """The subscriber fell too far behind and was cut off."""


class WatchClosed(Exception):
    """The daemon is shutting down."""


class _Subscriber(Generic[T]):
    __slots__ = ("backlog", "bytes", "ended", "wake")

    def __init__(self) -> None:
        self.backlog: deque[tuple[T, int]] = deque()
        self.bytes = 0
        self.ended: Exception | None = None
        self.wake = asyncio.Event()


class WatchHub(Generic[T]):
    def __init__(
        self,
        buffer: int = 1024,
        *,
        max_bytes: int = MAX_BACKLOG_BYTES,
        size: Callable[[T], int] = lambda _: 0,
    ) -> None:
        self.buffer = buffer
        self.max_bytes = max_bytes
        self._size = size
        self._subscribers: set[_Subscriber[T]] = set()
        self._closed = False

    @property
    def listened(self) -> bool:
        """Someone is subscribed: only then is an event worth making."""
        return bool(self._subscribers)

    def backlogs(self) -> list[tuple[int, int]]:
        """(events, estimated bytes) queued for each subscriber: what the bounds bound."""
        return [(len(s.backlog), s.bytes) for s in self._subscribers]

    def publish(self, event: T) -> None:
        if not self._subscribers:
            return
        size = self._size(event)
        for s in list(self._subscribers):
            if len(s.backlog) >= self.buffer:
                self._end(s, WatchOverflow(f"fell more than {self.buffer} events behind"))
            elif s.bytes + size > self.max_bytes:
                # A subscriber that cannot keep up is cut off rather than holding memory.
                self._end(s, WatchOverflow(f"fell more than {self.max_bytes // 1024} KiB behind"))
            else:
                s.backlog.append((event, size))
                s.bytes += size
                s.wake.set()

    def close(self) -> None:
        """Shutting down: every subscriber ends now, and new ones are refused."""
        self._closed = True
        for s in list(self._subscribers):
            self._end(s, WatchClosed("gpuletd is shutting down"))

    def _end(self, s: _Subscriber[T], why: Exception) -> None:
        # The backlog goes at once: it is what the bound is for, and nobody will read it.
        s.backlog.clear()
        s.bytes = 0
        s.ended = why
        s.wake.set()
        self._subscribers.discard(s)

    async def subscribe(self) -> AsyncGenerator[T, None]:
        """Events from now on; raises WatchOverflow or WatchClosed when the stream ends."""
        if self._closed:
            raise WatchClosed("gpuletd is shutting down")
        s: _Subscriber[T] = _Subscriber()
        self._subscribers.add(s)
        try:
            while True:
                while not s.backlog and s.ended is None:
                    s.wake.clear()
                    await s.wake.wait()
                if s.ended is not None:
                    raise s.ended
                event, size = s.backlog.popleft()
                s.bytes -= size
                yield event
        finally:
            self._subscribers.discard(s)
