"""The scheduling pass: who gets served, who waits, what gets evicted.

One pass runs after every event. It walks the queue in turn order (effective priority, then
arrival) and moves each request on if it can: a grant on a loaded model, a join of a load under
way, a new load where there is room, or evictions of idle models to make room. The first
request that cannot be served becomes the *head*: later requests may still be served, but
only in ways that do not delay it (see `_may_bypass` and `_delays`).
"""

from __future__ import annotations

from dataclasses import dataclass

from gpuletd.scheduler.accounting import (
    Hypothesis,
    ceiling,
    changed,
    in_flux,
    need,
    place_now,
    plan,
)
from gpuletd.scheduler.decisions import (
    Decision,
    ModelState,
    PreloadSkipped,
    Queued,
    RejectCode,
    RejectReason,
    StopReason,
)
from gpuletd.scheduler.drain import sweep, tighten
from gpuletd.scheduler.patience import hold_off
from gpuletd.scheduler.placement import Need
from gpuletd.scheduler.queue import PendingRequest
from gpuletd.scheduler.records import ModelRecord
from gpuletd.scheduler.state import MEMORY_PREFIX, State, instance
from gpuletd.scheduler.transitions import exclusive_conflict, grant, join, refuse, start_load, stop

__all__ = ["settle"]

_RESTING = (ModelState.UNLOADED, ModelState.FAILED)


@dataclass
class _Head:
    """The first request of this pass that could not be served: later ones must not delay it.

    `need`: models it needs gone (or, if `exclusive_wait`, the model whose leases it waits
    out): a new lease on one of them is a *delaying bypass*, allowed `bypass_limit` times.
    `blockers`: the pinned models among them; a later load must not add to this set.
    `soon`: it waits only for memory on its way back (an unload, a load ending): a later
    load on the GPU it will go to would hold that GPU's load lock just when its room is back."""

    req: PendingRequest
    need: frozenset[str]
    blockers: frozenset[str]
    exclusive_wait: bool
    soon: bool = False


def settle(st: State, out: list[Decision]) -> None:
    """One scheduling pass, then the queue positions that changed."""
    order = st.queue.ordered(st.now)
    st.plan_cache, st.wanted_cache = {}, None
    try:
        sweep_memory(st, out)
        if st.retired or st.inherited is not None:
            sweep(st, out)
        _pump(st, order, out)
        # What the pass refused (a memory request too large) leaves nothing behind.
        sweep_memory(st, out)
    finally:
        st.plan_cache, st.wanted_cache = None, None
    if st.inherited is not None:
        tighten(st)
    # Effective priorities depend on the clock only, so the pass did not reorder: the
    # requests still waiting keep their relative order.
    still = [r for r in order if not r.joined and r.request_id in st.queue]
    for i, req in enumerate(still):
        if req.position != i + 1:
            req.position = i + 1
            out.append(Queued(req.request_id, req.model_id, i + 1))


def sweep_memory(st: State, out: list[Decision]) -> None:
    """A memory lease's record lives as long as its request or lease: once neither is left,
    its reservation is stopped (a load under way too), and once it holds nothing it is
    forgotten."""
    for mid, rec in list(st.models.items()):
        if not rec.memory or rec.leases or mid.removeprefix(MEMORY_PREFIX) in st.queue:
            continue
        if rec.state in (ModelState.LOADED, ModelState.LOADING):
            stop(st, rec, StopReason.RELEASED, f"memory lease {mid} ended", out)
        elif not rec.holds_memory:
            changed(st)
            del st.models[mid]


def _pump(st: State, order: list[PendingRequest], out: list[Decision]) -> None:
    head: _Head | None = None
    load_blocked: set[str] = set()
    for req in order:
        if req.joined or req.model_id in load_blocked or req.request_id not in st.queue:
            # (load_blocked: an earlier request for this model could not start its load;
            # this one cannot either, and it is not the head since that one came first.)
            continue
        rec = st.models[req.model_id]
        if _serve(st, req, rec, head, load_blocked, out) and head is None:
            head = _make_head(st, req, rec)
    _pump_preloads(st, head, out)


def _serve(
    st: State,
    req: PendingRequest,
    rec: ModelRecord,
    head: _Head | None,
    load_blocked: set[str],
    out: list[Decision],
) -> bool:
    """Try to move one request on. True when it still waits for its turn."""
    mid = rec.model.id
    if rec.state is ModelState.LOADED:
        if exclusive_conflict(rec, req) or not _may_bypass(st, head, mid):
            return True
        grant(st, req, rec, out)
        return False
    if rec.state is ModelState.LOADING:
        if not _may_bypass(st, head, mid):
            return True
        join(st, req, rec, out)
        return False
    if mid in load_blocked:
        return True
    load_blocked.add(mid)
    problem = ceiling(st, rec)
    if problem is not None:
        if problem.structural or not in_flux(st):
            code, reason = RejectCode.RESOURCE_EXHAUSTED, RejectReason.MODEL_TOO_LARGE
            refuse(st, req, code, reason, problem.message, out)
            load_blocked.discard(mid)
            return False
        return True
    # A retired instance of this model (the old definition) must be gone first: it waits as
    # for an unload under way.
    if rec.state is ModelState.UNLOADING or rec.backoff_until > st.now or mid in st.retired:
        return True
    nd = need(st, rec)
    gpus = place_now(st, rec, nd)
    if gpus is not None:
        shares = {u: nd.share_mb for u in gpus}
        if head is None or not _delays(st, head, nd, shares, frozenset()):
            start_load(st, rec, nd, gpus, out)
            join(st, req, rec, out)
            load_blocked.discard(mid)
            return False
        return True
    found = plan(st, rec, allow_pinned=False)
    if found is not None and found.victims:
        shares = {u: nd.share_mb for u in found.gpu_uuids}
        victims = frozenset(found.victims)
        if head is None or not _delays(st, head, nd, shares, victims):
            if hold_off(st, req, rec, found.victims):
                return True
            for vid in found.victims:
                victim = instance(st, vid)
                assert victim is not None
                message = f"evicted to make room for {mid}"
                stop(st, victim, StopReason.EVICTED, message, out)
    return True


def _make_head(st: State, req: PendingRequest, rec: ModelRecord) -> _Head:
    mid = rec.model.id
    if rec.state is ModelState.LOADED:
        return _Head(req, frozenset({mid}), frozenset({mid}), exclusive_wait=True)
    found = plan(st, rec, allow_pinned=True)
    if found is None:
        return _Head(req, frozenset(), frozenset(), exclusive_wait=False)
    # Not in backoff nor waiting for a retired instance: those waits are long, and holding
    # every later load off the GPU for them would stall it for nothing.
    soon = not found.pinned_victims and rec.backoff_until <= st.now and mid not in st.retired
    return _Head(
        req, frozenset(found.victims), found.pinned_victims, exclusive_wait=False, soon=soon
    )


def _may_bypass(st: State, head: _Head | None, model_id: str) -> bool:
    """A new lease on a model the head needs gone delays the head: allowed only
    `bypass_limit` times per head; after that such requests wait behind it."""
    if head is None or model_id not in head.need:
        return True
    if head.req.bypassed < st.tuning.bypass_limit:
        head.req.bypassed += 1
        return True
    return False


def _delays(
    st: State,
    head: _Head,
    added: Need,
    shares: dict[str, int],
    removed: frozenset[str],
) -> bool:
    """Would loading `added` (after evicting `removed`) make the head wait on more leased or
    loading models than it already does, or hold the load lock of a GPU the head goes to?
    The latter pushes the head back by the load's time: never allowed while the head only
    waits for memory on its way back (`soon`); otherwise it is a delaying bypass, like a new
    lease on a model the head needs gone (`bypass_limit`). Requests and preloads alike: a
    preload allowed where a request for the same model was not would start a load that
    request joins in the next pass, with nothing having happened in between."""
    if head.exclusive_wait:
        return False
    hypo = Hypothesis(added.model_id, shares, added.total_mb, removed, added.heavy)
    found = plan(st, st.models[head.req.model_id], allow_pinned=True, hypo=hypo)
    if found is None or not found.pinned_victims <= head.blockers:
        return True
    if not set(shares) & set(found.gpu_uuids):
        return False
    if head.soon:
        return True
    if head.req.bypassed < st.tuning.bypass_limit:
        head.req.bypassed += 1
        return False
    return True


def _pump_preloads(st: State, head: _Head | None, out: list[Decision]) -> None:
    p = st.profile
    for mid in list(st.preload_wanted):
        rec = st.models[mid]
        if rec.state not in _RESTING:
            st.preload_wanted.remove(mid)
            continue
        problem = ceiling(st, rec)
        if problem is not None and (problem.structural or not in_flux(st)):
            st.preload_wanted.remove(mid)
            out.append(PreloadSkipped(mid, problem.message))
            continue
        if problem is not None or rec.backoff_until > st.now or mid in st.retired:
            continue
        nd = need(st, rec)
        gpus = place_now(st, rec, nd)
        if gpus is not None:
            shares = {u: nd.share_mb for u in gpus}
            if head is None or not _delays(st, head, nd, shares, frozenset()):
                st.preload_wanted.remove(mid)
                start_load(st, rec, nd, gpus, out)
                continue
            # Deferred for the head: the preloads after it wait their turn too (see below).
            break
        found = plan(st, rec, allow_pinned=False)
        if found is None or found.victims:
            # Preloading never evicts: it is a wish, not a request.
            st.preload_wanted.remove(mid)
            out.append(
                PreloadSkipped(
                    mid,
                    f"no room for {mid} ({nd.total_mb} MiB) without evicting: "
                    f"limit {p.max_concurrent_models} models / {p.max_vram_mb} MiB",
                )
            )
            continue
        # It fits once memory on its way back is free: the preloads after it wait their turn,
        # or one started now could take that room, and a later pass would skip this one with
        # nothing having happened in between.
        break
