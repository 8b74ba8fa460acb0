"""What gpuletd measured of each model (seed 003): load time, unload time, peak memory, and how
far the reservation is to be trusted.

The core already learns a model's footprint when its backend becomes healthy (the probe's
reading of its process tree) and a smoothed load time, and the store keeps both (`footprints`).
This sink adds what the core has no use for but an operator has: the largest footprint seen
across loads (`peak_mb`), how many healthy loads were measured, and the time from a stop to the
backend being gone (`unload_seconds`, the last one: an unload is rarely slow twice for the
same reason). It is kept in the store's `measurements` table, so it outlives restarts.

`confidence` follows from the count of measured loads: never measured → low (only the
configured `vram_estimate_mb`), once or twice → medium, three times or more → high. A count
rather than a configured label: what gpulet saw on this machine is what its reservation is
built on (max of estimate and measurement).

Peak memory is sampled when a backend becomes healthy, which is when model servers have
allocated their weights and cache (vLLM pre-allocates its KV cache at start). Memory that
grows later under load is not followed: process lists take a driver lock and are read rarely.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import assert_never

import structlog

from gpuletd.executor import Executor
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
from gpuletd.scheduler.state import MEMORY_PREFIX
from gpuletd.store import Measurement, StateStore, StoreError

__all__ = ["HIGH_CONFIDENCE_LOADS", "Confidence", "Measurements", "confidence"]

log = structlog.get_logger(__name__)

HIGH_CONFIDENCE_LOADS = 3
_NONE = Measurement(peak_mb=None, loads=0, unload_seconds=None, unloads=0)


class Confidence(enum.Enum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


def confidence(loads: int) -> Confidence:
    if loads <= 0:
        return Confidence.LOW
    return Confidence.HIGH if loads >= HIGH_CONFIDENCE_LOADS else Confidence.MEDIUM


class Measurements:
    """An executor sink; `get` answers ListModels. Without a store it measures this run only."""

    def __init__(self, executor: Executor, store: StateStore | None) -> None:
        self._ex = executor
        self._store = store
        self._stopping: dict[str, float] = {}
        # Loads started in this run: a model adopted after a restart was measured already.
        self._starting: set[str] = set()
        self._by_model: dict[str, Measurement] = {}
        if store is not None:
            try:
                self._by_model = store.measurements()
            except StoreError as e:
                log.warning("measurements.not_read", error=str(e))

    def get(self, model_id: str) -> Measurement:
        return self._by_model.get(model_id, _NONE)

    def all(self) -> Mapping[str, Measurement]:
        return dict(self._by_model)

    def apply(self, decisions: Sequence[Decision]) -> None:
        for d in decisions:
            match d:
                case StartBackend():
                    self._starting.add(d.model_id)
                case StopBackend():
                    self._starting.discard(d.model_id)
                    self._stopping.setdefault(d.model_id, self._ex.clock.mono())
                case ModelStateChanged():
                    self._changed(d)
                case (
                    Granted()
                    | Renewed()
                    | LeaseEnded()
                    | Queued()
                    | Loading()
                    | Rejected()
                    | LeaseRefused()
                    | PreloadSkipped()
                ):
                    pass
                case _:
                    assert_never(d)

    def _changed(self, d: ModelStateChanged) -> None:
        mid = d.model_id
        if mid.startswith(MEMORY_PREFIX):
            self._stopping.pop(mid, None)
            self._starting.discard(mid)
            return  # a memory lease's reservation: nothing to learn about a model
        if d.state is ModelState.LOADED:
            if mid not in self._starting:
                return
            self._starting.discard(mid)
            v = self._ex.core.model(mid)
            if v is None or v.memory or v.measured_mb is None:
                return  # a memory lease, or a backend the probe could not measure
            m = self.get(mid)
            peak = max(m.peak_mb or 0, v.measured_mb)
            self._put(mid, replace(m, peak_mb=peak, loads=m.loads + 1))
        elif d.state in (ModelState.UNLOADED, ModelState.FAILED):
            self._starting.discard(mid)
            started = self._stopping.pop(mid, None)
            if started is None or d.state is ModelState.FAILED:
                return  # a failed load, or a stop that did not finish cleanly: not an unload
            m = self.get(mid)
            took = max(0.0, self._ex.clock.mono() - started)
            self._put(mid, replace(m, unload_seconds=took, unloads=m.unloads + 1))

    def _put(self, model_id: str, m: Measurement) -> None:
        self._by_model[model_id] = m
        if self._store is None:
            return
        try:
            self._store.put_measurement(model_id, m)
        except StoreError as e:
            # The store sink reports an unusable store; one line here is enough.
            log.warning("measurements.not_saved", model=model_id, error=str(e))
