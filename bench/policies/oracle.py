"""The offline lower bound: a policy that knows the whole trace.

It evicts the idle model whose next use is furthest away (Belady), larger first among equals,
and otherwise has every advantage a policy could have: the whole of each GPU (no headroom, no
model-count limit, no budget), loads on a GPU in parallel, any number of requests sharing a
loaded model at once, and hits served out of turn. Misses are served in arrival order (a miss
that cannot be placed yet blocks later misses, never hits) and a load waits for the memory its
evictions free, so it never overcommits.

With models of different sizes, evicting by furthest next use is not always optimal (the exact
problem is NP-hard), and the order requests are served in also matters: this is a strong
reference, not an exact optimum. A policy can beat it, rarely and by a little.

"Next use" is the next request for the model that has not arrived yet, by its nominal time
(the time it would arrive if nobody ever waited); a model someone is already waiting for is
needed now.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from bench.policies.base import PeerPolicy, Slot, split_evenly
from bench.workloads import Request
from gpuletd.probe.types import GpuSnapshot
from gpuletd.scheduler.decisions import Decision, ModelState, StopReason

__all__ = ["OfflineBound"]


class OfflineBound(PeerPolicy):
    def __init__(
        self, models: Mapping[str, int], gpus: Sequence[GpuSnapshot], trace: Sequence[Request]
    ) -> None:
        super().__init__(models, gpus)
        self._future: dict[str, list[tuple[float, str]]] = {m: [] for m in models}
        for r in trace:
            self._future.setdefault(r.model, []).append((r.nominal_s, r.rid))
        for uses in self._future.values():
            uses.sort()
        self._cursor = dict.fromkeys(self._future, 0)
        self._arrived: set[str] = set()

    def request(
        self,
        request_id: str,
        model_id: str,
        *,
        now: float,
        priority: int = 0,
        ttl_s: float | None = None,
    ) -> list[Decision]:
        self._arrived.add(request_id)
        return super().request(request_id, model_id, now=now, priority=priority, ttl_s=ttl_s)

    def _next_use(self, model_id: str, wanted: set[str]) -> float:
        if model_id in wanted:
            return -math.inf
        uses = self._future.get(model_id, [])
        i = self._cursor.get(model_id, 0)
        while i < len(uses) and uses[i][1] in self._arrived:
            i += 1
        self._cursor[model_id] = i
        # Followers may arrive out of nominal order: skip over arrived ones further on too.
        for t, rid in uses[i:]:
            if rid not in self._arrived:
                return t
        return math.inf

    def _schedule(self, out: list[Decision]) -> None:
        for req in list(self._queue):
            m = self._models[req.model]
            self._serve_warm(req, m, out)
        for req in list(self._queue):
            m = self._models[req.model]
            if m.state is ModelState.LOADING:
                self._join(req, m)
                continue
            if m.state is not ModelState.UNLOADED or not self._place(m, out):
                return
            self._join(req, m)

    def _place(self, m: Slot, out: list[Decision]) -> bool:
        """Start loading m if it fits now; else evict for it. True when the load started."""
        if not self._uuids:
            self._start(m, (), (), out)
            return True
        if m.mb > max(self._total.values()):
            now_room = sum(self._total[u] - self._held(u) for u in self._uuids)
            if m.mb <= now_room:
                self._start(m, self._uuids, split_evenly(m.mb, self._uuids), out)
                return True
            return False  # (never the case in these workloads: no eviction across GPUs)
        room_now = {u: self._total[u] - self._held(u) for u in self._uuids}
        fits = [u for u in self._uuids if m.mb <= room_now[u]]
        if fits:
            best = min(fits, key=lambda u: room_now[u] - m.mb)
            self._start(m, (best,), (m.mb,), out)
            return True
        room_later = {u: self._total[u] - self._held(u, counting_unloads=False) for u in room_now}
        if any(m.mb <= room_later[u] for u in self._uuids):
            return False  # the memory of evictions under way is on its way back
        wanted = {r.model for r in self._queue}
        best_plan: tuple[float, list[Slot]] | None = None
        for u in self._uuids:
            if m.mb > self._total[u]:
                continue
            idle = [
                s
                for s in self._models.values()
                if s.state is ModelState.LOADED and not s.leases and u in s.gpus
            ]
            idle.sort(key=lambda s: (-self._next_use(s.id, wanted), -s.mb, s.id))
            victims: list[Slot] = []
            room = room_later[u]
            for s in idle:
                if room >= m.mb:
                    break
                victims.append(s)
                room += s.mb
            if room < m.mb:
                continue
            # The plan whose soonest-needed victim is needed latest.
            soonest = min(self._next_use(s.id, wanted) for s in victims)
            if best_plan is None or soonest > best_plan[0]:
                best_plan = (soonest, victims)
        if best_plan is not None:
            for s in best_plan[1]:
                self._stop(s, StopReason.EVICTED, out)
        return False
