"""vramd-like (baselines.md): one job at a time; priority bands; within a band FIFO, but skip a
head whose model is cold for a later request whose model is warm, at most 3 times per head;
evict by weight + LRU.

"One job" is one lease: the GPU runs a single job, and a load happens only while no job runs.
"Weight + LRU" is read as: evict the heaviest idle models first, least recently used among
equals, until the new one fits a capacity of the GPU's memory less 2048 MiB (gpulet's headroom).
"""

from __future__ import annotations

from bench.policies.base import PeerPolicy, Slot, split_evenly
from gpuletd.scheduler.decisions import Decision, ModelState, StopReason

__all__ = ["VramdLike"]

_HEADROOM_MB = 2048
_SKIP_LIMIT = 3


class VramdLike(PeerPolicy):
    def _room(self, uuid: str) -> int:
        return self._total[uuid] - _HEADROOM_MB - self._held(uuid)

    def _schedule(self, out: list[Decision]) -> None:
        if self._leases or self._busy() or not self._queue:
            return
        order = sorted(self._queue, key=lambda r: (-r.priority, r.seq))
        head = order[0]
        hm = self._models[head.model]
        if hm.state is ModelState.LOADED:
            self._take(head)
            self._grant(head, hm, out)
            return
        if head.skipped < _SKIP_LIMIT:
            for r in order[1:]:
                if r.priority != head.priority:
                    break
                rm = self._models[r.model]
                if rm.state is ModelState.LOADED:
                    head.skipped += 1
                    self._take(r)
                    self._grant(r, rm, out)
                    return
        if not self._uuids:
            self._start(hm, (), (), out)
            self._join(head, hm)
            return
        capacity = {u: self._total[u] - _HEADROOM_MB for u in self._uuids}
        if hm.mb > max(capacity.values()):
            # Larger than any GPU: over all of them (never the case in these workloads).
            self._start(hm, self._uuids, split_evenly(hm.mb, self._uuids), out)
            self._join(head, hm)
            return
        fits = [u for u in self._uuids if hm.mb <= self._room(u)]
        if fits:
            best = min(fits, key=lambda u: self._room(u) - hm.mb)
            self._start(hm, (best,), (hm.mb,), out)
            self._join(head, hm)
            return
        # Evict on the GPU where the fewest MiB must go.
        plans: list[tuple[int, str, list[Slot]]] = []
        for u in self._uuids:
            if hm.mb > capacity[u]:
                continue
            loaded = [s for s in self._models.values() if u in s.gpus]
            loaded.sort(key=lambda s: (-s.mb, s.last_used, s.id))
            victims: list[Slot] = []
            room = self._room(u)
            for s in loaded:
                if room >= hm.mb:
                    break
                victims.append(s)
                room += s.mb
            plans.append((sum(s.mb for s in victims), u, victims))
        _freed, _u, victims = min(plans, key=lambda p: (p[0], p[1]))
        for s in victims:
            self._stop(s, StopReason.EVICTED, out)
