"""The executor: the one place where events reach the scheduler core and its decisions leave it.

Every event — a request, a release, a backend outcome, a probe reading, the clock, a
reconfiguration — is one call into the core on the event loop's thread, so a grant and an
eviction are always decided one after the other. The decisions of that call then go, in order,
through each sink (`Sink`): the store first (state is on disk before anything acts on it), then
the supervisor (processes), then the watch hub, the log, and last the waiting Acquire streams.
Nothing below calls back up: backend outcomes and probe readings come back here as events.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, assert_never

import structlog

from gpuletd.probe.types import GpuSnapshot
from gpuletd.scheduler import Decision, Scheduler, check_invariants

__all__ = [
    "BackendDied",
    "BackendOutcome",
    "Clock",
    "Executor",
    "LoadFailed",
    "Loaded",
    "Sink",
    "Unloaded",
]

log = structlog.get_logger(__name__)

Event = Callable[[Scheduler, float], list[Decision]]


class Sink(Protocol):
    """Carries out (or records) a batch of decisions; must not call into the core."""

    def apply(self, decisions: Sequence[Decision]) -> None: ...


@dataclass(frozen=True)
class Loaded:
    model_id: str
    measured_mb: int | None
    endpoint: str


@dataclass(frozen=True)
class LoadFailed:
    model_id: str
    reason: str


@dataclass(frozen=True)
class BackendDied:
    model_id: str
    reason: str


@dataclass(frozen=True)
class Unloaded:
    model_id: str


# What the supervisor reports back: each answers exactly one StartBackend or StopBackend.
BackendOutcome = Loaded | LoadFailed | BackendDied | Unloaded


@dataclass(frozen=True)
class Clock:
    """Monotonic time for the core; the wall clock only to show times to people."""

    mono: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time

    def to_wall(self, mono: float) -> float:
        return mono + (self.wall() - self.mono())


class Executor:
    def __init__(
        self,
        core: Scheduler,
        *,
        clock: Clock | None = None,
        check: bool = False,
    ) -> None:
        self.core = core
        self.clock = clock or Clock()
        self._sinks: list[Sink] = []
        self._check = check
        self._kick = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None
        # When the timer task wakes up by itself (None: only when kicked): an event that
        # leaves the core's next wakeup no earlier need not wake it.
        self._sleeps_until: float | None = None
        self._stopped = False
        self._dispatching = False
        self._later: list[Event] = []
        # Grows with every event: something computed from the core's views (an answer kept by
        # a servicer) still holds while it has not moved. Events are the only way in.
        self.events = 0

    def add_sink(self, sink: Sink) -> None:
        """Sinks run in the order they were added (the store first)."""
        self._sinks.append(sink)

    # -- events ---------------------------------------------------------------------------

    def feed(self, event: Event) -> list[Decision]:
        """Run one event through the core and its decisions through every sink.

        An event raised by a sink while it handles a batch (a backend outcome known at once)
        runs after that batch has reached every sink, so that every sink sees the decisions
        in the order the core made them; it returns nothing to the sink that raised it."""
        if self._dispatching:
            self._later.append(event)
            return []
        decisions = event(self.core, self.clock.mono())
        self._dispatch(decisions)
        while self._later:
            later = self._later.pop(0)
            self._dispatch(later(self.core, self.clock.mono()))
        return decisions

    def backend_outcome(self, o: BackendOutcome) -> None:
        match o:
            case Loaded(mid, mb, endpoint):
                self.feed(
                    lambda c, now: c.load_succeeded(mid, now=now, measured_mb=mb, endpoint=endpoint)
                )
            case LoadFailed(mid, reason):
                self.feed(lambda c, now: c.load_failed(mid, reason, now=now))
            case BackendDied(mid, reason):
                self.feed(lambda c, now: c.backend_died(mid, reason, now=now))
            case Unloaded(mid):
                self.feed(lambda c, now: c.unload_finished(mid, now=now))
            case _:
                assert_never(o)

    def probe(self, readings: list[GpuSnapshot]) -> None:
        if not self._stopped:
            self.feed(lambda c, now: c.probe(readings, now=now))

    def _dispatch(self, decisions: Sequence[Decision]) -> None:
        self.events += 1
        self._dispatching = True
        try:
            for sink in self._sinks:
                try:
                    sink.apply(decisions)
                except Exception:
                    # One sink's bug must not keep the decisions from the others (a waiting
                    # client would never hear of its grant).
                    log.exception("executor.sink_failed", sink=type(sink).__name__)
        finally:
            self._dispatching = False
        if self._check and (problems := check_invariants(self.core)):
            # Debug aid for tests and load runs: the core broke a promise.
            log.error("scheduler.invariant_violated", problems=problems)
        self._wake_timer()

    def _wake_timer(self) -> None:
        """Most events (a Renew) bring no timer forward: waking the timer task for each would
        cost more than the event itself. One that pushed a timer back wakes it early, in vain,
        once."""
        try:
            wake = self.core.next_wakeup()
        except Exception:
            wake = -math.inf  # the timer task asks again, and logs the failure
        if wake is not None and (self._sleeps_until is None or wake < self._sleeps_until):
            self._kick.set()

    # -- the clock ----------------------------------------------------------------------

    def start(self) -> None:
        self.feed(lambda c, now: c.start(now))
        self._timer = asyncio.create_task(self._run_timer(), name="scheduler-timer")

    async def stop(self) -> None:
        """No more timer events (expiries, grace unloads) from now on."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            await asyncio.gather(self._timer, return_exceptions=True)

    async def _run_timer(self) -> None:
        while True:
            self._kick.clear()
            try:
                wake = self.core.next_wakeup()
                now = self.clock.mono()
                if wake is not None and wake <= now:
                    self.feed(lambda c, t: c.tick(t))
                    await asyncio.sleep(0)
                    continue
            except Exception:
                # Expiries and unloads depend on this loop: log and keep it alive.
                log.exception("scheduler.tick_failed")
                await asyncio.sleep(0.1)
                continue
            delay = None if wake is None else wake - now
            self._sleeps_until = wake
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), delay)
