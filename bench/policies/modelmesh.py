"""ModelMesh-like (baselines.md): size-weighted LRU against a capacity; evict only under
pressure; refuse a load when the least-recently-used model is younger than a minimum churn age.

One cache per GPU (an instance per GPU), its capacity the GPU's memory less 2048 MiB (the same
headroom gpulet keeps). A cache entry weighs its model's size; evicting removes the entry at
once and the unload runs in the background, so the next load may start while the victim still
holds its memory (the simulator counts that as an overcommit when the GPU cannot hold both).
The minimum churn age is ModelMesh's default, 10 x max(3 s, load timeout / 3) = 10 minutes.
A model in use counts as used now: it is never the one evicted (the one generous reading of
the description), and an LRU entry in use is by definition too young.
A refused load is final here: ModelMesh would send the request to another instance, and a
single node has none.
"""

from __future__ import annotations

from bench.policies.base import PeerPolicy, Slot
from gpuletd.scheduler.decisions import (
    Decision,
    ModelState,
    RejectCode,
    RejectReason,
    StopReason,
)

__all__ = ["ModelMeshLike"]

_HEADROOM_MB = 2048
_MIN_CHURN_AGE_S = 600.0


class ModelMeshLike(PeerPolicy):
    def _capacity(self, uuid: str) -> int:
        return self._total[uuid] - _HEADROOM_MB

    def _weight(self, uuid: str) -> int:
        # Entries in the cache: loading or loaded (an evicted one has left it already).
        return self._held(uuid, counting_unloads=False)

    def _entries(self, uuid: str) -> list[Slot]:
        return [
            m
            for m in self._models.values()
            if m.state in (ModelState.LOADING, ModelState.LOADED) and uuid in m.gpus
        ]

    def _used_at(self, m: Slot) -> float:
        return self._now if (m.leases or m.state is ModelState.LOADING) else m.last_used

    def _schedule(self, out: list[Decision]) -> None:
        for req in list(self._queue):
            m = self._models[req.model]
            if self._serve_warm(req, m, out):
                continue
            if m.state is ModelState.UNLOADING:
                continue  # reload once the old copy is gone
            fits = [u for u in self._uuids if m.mb <= self._capacity(u)]
            if not fits:
                self._take(req)
                message = f"model {m.id} ({m.mb} MiB) is larger than any instance's capacity"
                self._refuse(
                    req, RejectCode.RESOURCE_EXHAUSTED, RejectReason.MODEL_TOO_LARGE, message, out
                )
                continue
            room = {u: self._capacity(u) - self._weight(u) for u in fits}
            best = max(fits, key=lambda u: room[u])
            if m.mb <= room[best]:
                self._start(m, (best,), (m.mb,), out)
                self._join(req, m)
                continue
            # Under pressure: the instance whose least recently used entry is oldest.
            target = min(fits, key=lambda u: min(map(self._used_at, self._entries(u))))
            entries = sorted(self._entries(target), key=lambda s: (self._used_at(s), s.id))
            age = self._now - self._used_at(entries[0])
            if age < _MIN_CHURN_AGE_S:
                self._take(req)
                message = (
                    f"cache churn: least recently used model was used {age:.0f} s ago "
                    f"(< {_MIN_CHURN_AGE_S:.0f} s)"
                )
                self._refuse(
                    req, RejectCode.RESOURCE_EXHAUSTED, RejectReason.QUEUE_FULL, message, out
                )
                continue
            victims: list[Slot] = []
            free = room[target]
            for s in entries:
                if free >= m.mb:
                    break
                if s.leases or s.state is not ModelState.LOADED:
                    continue
                victims.append(s)
                free += s.mb
            if free < m.mb:
                continue  # the rest is in use: wait
            for s in victims:
                self._stop(s, StopReason.EVICTED, out)
            self._start(m, (target,), (m.mb,), out)
            self._join(req, m)
