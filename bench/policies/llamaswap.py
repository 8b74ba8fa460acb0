"""llama-swap-like with its default groups (baselines.md): one model loaded at a time; FIFO
with a static per-model priority; requests for the model being loaded join that load; a swap
waits until the running model has nothing in flight; idle unload after a TTL.

llama-swap's `ttl` is off unless configured; 300 s is used here (the same as Ollama's
keep-alive and gpulet's 16 GB grace period) so that idle unloads cost all three alike. The
queue ignores the requests' own priorities: llama-swap knows only the model's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bench.policies.base import PeerPolicy, split_evenly
from gpuletd.probe.types import GpuSnapshot
from gpuletd.scheduler.decisions import Decision, ModelState, StopReason

__all__ = ["LlamaSwapLike"]


class LlamaSwapLike(PeerPolicy):
    idle_ttl_s = 300.0

    def __init__(
        self,
        models: Mapping[str, int],
        gpus: Sequence[GpuSnapshot],
        static_priority: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(models, gpus)
        self._static = dict(static_priority or {})

    def _schedule(self, out: list[Decision]) -> None:
        while True:
            order = sorted(self._queue, key=lambda r: (-self._static.get(r.model, 0), r.seq))
            head = None
            for req in order:
                m = self._models[req.model]
                if not self._serve_warm(req, m, out):
                    head = req
                    break
            if head is None:
                return
            running = self._holding()
            if not running:
                m = self._models[head.model]
                # No memory check at all: the model's command decides. One GPU if it could
                # hold it, else all of them.
                best = max(self._uuids, key=lambda u: self._total[u], default=None)
                if best is not None and m.mb <= self._total[best]:
                    self._start(m, (best,), (m.mb,), out)
                elif self._uuids:
                    self._start(m, self._uuids, split_evenly(m.mb, self._uuids), out)
                else:
                    self._start(m, (), (), out)
                self._join(head, m)
                continue
            cur = running[0]
            if cur.state is ModelState.LOADED and not cur.leases:
                self._stop(cur, StopReason.EVICTED, out)
            return  # waiting for in-flight work to end, or for the unload
