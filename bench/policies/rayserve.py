"""Ray-Serve-like model multiplexing (baselines.md): LRU by count (3 per GPU), no check that a
model is in use.

One replica per GPU holding at most 3 models (`max_num_models_per_replica`). A request for a
model some replica holds goes there; otherwise to the replica with the fewest requests in
flight, which first unloads its least recently used model if it already holds 3 (in use or
not: its leases are cut) and then loads. Nothing checks memory: a load that does not fit next
to the others fails with CUDA OOM in the simulator. Each replica loads or unloads one model at
a time (its multiplexing wrapper awaits the unload before the load).
"""

from __future__ import annotations

from bench.policies.base import PeerPolicy
from gpuletd.scheduler.decisions import Decision, ModelState, StopReason

__all__ = ["RayServeLike"]

_MODELS_PER_REPLICA = 3


class RayServeLike(PeerPolicy):
    def _schedule(self, out: list[Decision]) -> None:
        for req in list(self._queue):
            m = self._models[req.model]
            if self._serve_warm(req, m, out):
                continue
            if m.state is ModelState.UNLOADING or not self._uuids:
                continue

            def in_flight(u: str) -> int:
                return sum(len(s.leases) for s in self._models.values() if u in s.gpus)

            replica = min(self._uuids, key=lambda u: (self._busy(u), in_flight(u)))
            if self._busy(replica):
                continue
            held = [s for s in self._models.values() if replica in s.gpus]
            if len(held) >= _MODELS_PER_REPLICA:
                lru = min(held, key=lambda s: (s.last_used, s.id))
                self._stop(lru, StopReason.EVICTED, out)
                continue
            self._start(m, (replica,), (m.mb,), out)
            self._join(req, m)
