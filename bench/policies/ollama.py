"""Ollama-like (baselines.md): one global FIFO queue (512, then refuse); one load at a time;
at most 3 x GPUs models loaded; a model fits when its estimate <= 0.8 x free, with free =
min(reported, total - sum of estimates); on a miss evict the idle model with the shortest
keep-alive (ties by name), or if none is idle drain the one with the shortest keep-alive; idle
models unload after 5 minutes; place on the single GPU with the most free memory, else spread.

Every client uses the default keep-alive, so "shortest keep-alive" always ties and the victim
is the first idle model by name. The queue is served strictly in order: Ollama's scheduler
handles one pending request at a time and waits on it (for a load, or for evicted memory to be
freed) before looking at the next.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bench.policies.base import PeerPolicy, Slot, split_evenly
from gpuletd.probe.types import GpuSnapshot
from gpuletd.scheduler.decisions import Decision, ModelState, StopReason

__all__ = ["OllamaLike"]

_KEEP_ALIVE_S = 300.0
_FIT_FRACTION = 0.8


class OllamaLike(PeerPolicy):
    queue_limit = 512
    idle_ttl_s = _KEEP_ALIVE_S

    def __init__(self, models: Mapping[str, int], gpus: Sequence[GpuSnapshot]) -> None:
        super().__init__(models, gpus)
        self._max_loaded = 3 * max(1, len(self._uuids))

    def _free(self, uuid: str) -> int:
        return min(self._reported[uuid], self._total[uuid] - self._held(uuid))

    def _fit(self, m: Slot) -> tuple[tuple[str, ...], tuple[int, ...]] | None:
        if not self._uuids:
            return None
        free = {u: self._free(u) for u in self._uuids}
        best = max(self._uuids, key=lambda u: free[u])  # first of equals: lowest index
        if m.mb <= _FIT_FRACTION * free[best]:
            return (best,), (m.mb,)
        if len(self._uuids) > 1 and m.mb <= _FIT_FRACTION * sum(free.values()):
            # Spread by layers, in proportion to each GPU's free memory.
            total_free = sum(free.values())
            shares = [m.mb * free[u] // total_free for u in self._uuids]
            shares[0] += m.mb - sum(shares)
            used = tuple(u for u, s in zip(self._uuids, shares, strict=True) if s > 0)
            return used, tuple(s for s in shares if s > 0)
        return None

    def _schedule(self, out: list[Decision]) -> None:
        while self._queue:
            req = self._queue[0]
            m = self._models[req.model]
            if self._serve_warm(req, m, out):
                continue
            if self._busy():
                return  # one load at a time; after an unload, wait for the memory to be back
            loaded = [s for s in self._models.values() if s.state is ModelState.LOADED]
            placement = self._fit(m)
            if placement is not None and len(loaded) < self._max_loaded:
                self._start(m, *placement, out)
                self._join(req, m)
                continue
            if not loaded:
                # It cannot fit by the 0.8 rule even on an empty machine. Ollama then loads
                # it anyway with some layers on the CPU; here it is placed whole, over every
                # GPU (the simulator will say if that does not fit).
                self._start(m, self._uuids, split_evenly(m.mb, self._uuids), out)
                self._join(req, m)
                continue
            victims = sorted(loaded, key=lambda s: s.id)  # same keep-alive for all: by name
            idle = [s for s in victims if not s.leases]
            if idle:
                self._stop(idle[0], StopReason.EVICTED, out)
            elif not any(s.draining for s in victims):
                victims[0].draining = True
            return
