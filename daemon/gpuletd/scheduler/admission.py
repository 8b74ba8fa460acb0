"""The scheduling pass: who gets served, who waits, what gets evicted.

One pass runs after every event. It walks the queue in turn order (effective priority, then
arrival) and moves each request on if it can: a grant on a loaded model, a join of a load under
way, a new load where there is room, or evictions of idle models to make room. The first
request that cannot be served becomes the *head*: later requests may still be served, but
only in ways that do not delay it (see `_may_bypass` and `_delays`).
"""

from __future__ import annotations

from dataclasses import dataclass

from gpuletd.scheduler.decisions import (
    Decision,
    ModelState,
    PreloadSkipped,
    Queued,
    RejectCode,
    RejectReason,
    StopReason,
)
from gpuletd.scheduler.queue import PendingRequest
from gpuletd.scheduler.records import ModelRecord
from gpuletd.scheduler.state import Hypothesis
from gpuletd.scheduler.transitions import Transitions

__all__ = ["Admission"]

_RESTING = (ModelState.UNLOADED, ModelState.FAILED)


@dataclass
class _Head:
    """The first request of this pass that could not be served: later ones must not delay it.

    `need`: models it needs gone (or, if `exclusive_wait`, the model whose leases it waits
    out): a new lease on one of them is a *delaying bypass*, allowed `bypass_limit` times.
    `blockers`: the pinned models among them; a later load must not add to this set."""

    req: PendingRequest
    need: frozenset[str]
    blockers: frozenset[str]
    exclusive_wait: bool


class Admission(Transitions):
    def _settle(self, out: list[Decision]) -> None:
        """One scheduling pass, then the queue positions that changed."""
        order = self._queue.ordered(self._now)
        self._plan_cache, self._wanted_cache = {}, None
        try:
            self._pump(order, out)
        finally:
            self._plan_cache, self._wanted_cache = None, None
        # Effective priorities depend on the clock only, so the pass did not reorder: the
        # requests still waiting keep their relative order.
        still = [r for r in order if not r.joined and r.request_id in self._queue]
        for i, req in enumerate(still):
            if req.position != i + 1:
                req.position = i + 1
                out.append(Queued(req.request_id, req.model_id, i + 1))

    def _pump(self, order: list[PendingRequest], out: list[Decision]) -> None:
        head: _Head | None = None
        load_blocked: set[str] = set()
        for req in order:
            if req.joined or req.model_id in load_blocked or req.request_id not in self._queue:
                # (load_blocked: an earlier request for this model could not start its load;
                # this one cannot either, and it is not the head since that one came first.)
                continue
            rec = self._models[req.model_id]
            if self._serve(req, rec, head, load_blocked, out) and head is None:
                head = self._make_head(req, rec)
        self._pump_preloads(head, out)

    def _serve(
        self,
        req: PendingRequest,
        rec: ModelRecord,
        head: _Head | None,
        load_blocked: set[str],
        out: list[Decision],
    ) -> bool:
        """Try to move one request on. True when it still waits for its turn."""
        mid = rec.model.id
        if rec.state is ModelState.LOADED:
            if self._exclusive_conflict(rec, req) or not self._may_bypass(head, mid):
                return True
            self._grant(req, rec, out)
            return False
        if rec.state is ModelState.LOADING:
            if not self._may_bypass(head, mid):
                return True
            self._join(req, rec, out)
            return False
        if mid in load_blocked:
            return True
        load_blocked.add(mid)
        ceiling = self._ceiling(rec)
        if ceiling is not None:
            if ceiling.structural or not self._in_flux():
                code, reason = RejectCode.RESOURCE_EXHAUSTED, RejectReason.MODEL_TOO_LARGE
                self._refuse(req, code, reason, ceiling.message, out)
                load_blocked.discard(mid)
                return False
            return True
        if rec.state is ModelState.UNLOADING or rec.backoff_until > self._now:
            return True
        need = self._need(rec)
        gpus = self._place_now(rec, need)
        if gpus is not None:
            shares = {u: need.share_mb for u in gpus}
            if head is None or not self._delays(head, mid, shares, need.total_mb, frozenset()):
                self._start_load(rec, need, gpus, out)
                self._join(req, rec, out)
                load_blocked.discard(mid)
                return False
            return True
        plan = self._plan(rec, allow_pinned=False)
        if plan is not None and plan.victims:
            shares = {u: need.share_mb for u in plan.gpu_uuids}
            victims = frozenset(plan.victims)
            if head is None or not self._delays(head, mid, shares, need.total_mb, victims):
                for vid in plan.victims:
                    message = f"evicted to make room for {mid}"
                    self._stop(self._models[vid], StopReason.EVICTED, message, out)
        return True

    def _make_head(self, req: PendingRequest, rec: ModelRecord) -> _Head:
        mid = rec.model.id
        if rec.state is ModelState.LOADED:
            return _Head(req, frozenset({mid}), frozenset({mid}), exclusive_wait=True)
        plan = self._plan(rec, allow_pinned=True)
        if plan is None:
            return _Head(req, frozenset(), frozenset(), exclusive_wait=False)
        return _Head(req, frozenset(plan.victims), plan.pinned_victims, exclusive_wait=False)

    def _may_bypass(self, head: _Head | None, model_id: str) -> bool:
        """A new lease on a model the head needs gone delays the head: allowed only
        `bypass_limit` times per head; after that such requests wait behind it."""
        if head is None or model_id not in head.need:
            return True
        if head.req.bypassed < self._tuning.bypass_limit:
            head.req.bypassed += 1
            return True
        return False

    def _delays(
        self,
        head: _Head,
        added_id: str,
        shares: dict[str, int],
        total_mb: int,
        removed: frozenset[str],
    ) -> bool:
        """Would loading `added_id` (after evicting `removed`) make the head wait on more
        leased or loading models than it already does?"""
        if head.exclusive_wait:
            return False
        hypo = Hypothesis(added_id, shares, total_mb, removed)
        plan = self._plan(self._models[head.req.model_id], allow_pinned=True, hypo=hypo)
        return plan is None or not plan.pinned_victims <= head.blockers

    def _pump_preloads(self, head: _Head | None, out: list[Decision]) -> None:
        for mid in list(self._preload_wanted):
            rec = self._models[mid]
            if rec.state not in _RESTING:
                self._preload_wanted.remove(mid)
                continue
            ceiling = self._ceiling(rec)
            if ceiling is not None and (ceiling.structural or not self._in_flux()):
                self._preload_wanted.remove(mid)
                out.append(PreloadSkipped(mid, ceiling.message))
                continue
            if ceiling is not None or rec.backoff_until > self._now:
                continue
            need = self._need(rec)
            gpus = self._place_now(rec, need)
            if gpus is not None:
                shares = {u: need.share_mb for u in gpus}
                if head is None or not self._delays(head, mid, shares, need.total_mb, frozenset()):
                    self._preload_wanted.remove(mid)
                    self._start_load(rec, need, gpus, out)
                continue
            plan = self._plan(rec, allow_pinned=False)
            if plan is None or plan.victims:
                # Preloading never evicts: it is a wish, not a request.
                self._preload_wanted.remove(mid)
                out.append(
                    PreloadSkipped(
                        mid,
                        f"no room for {mid} ({need.total_mb} MiB) without evicting: "
                        f"limit {self._profile.max_concurrent_models} models / "
                        f"{self._profile.max_vram_mb} MiB",
                    )
                )
