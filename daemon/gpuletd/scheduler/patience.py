"""Patience: hold off an eviction for a while when a cheaper one is on its way (ski rental).

A request that can be served only by evicting idle models pays, later, for loading them again.
Sometimes a cheaper set of victims is about to become idle: a model whose lease is still held,
or whose load is under way for the requests that joined it (nobody else waits for it), and that
would be cheaper to bring back. Waiting for it costs the request time; evicting now costs
reload time. Like renting skis before buying them, the request waits at most about what the
eviction would cost, then evicts:

    saving = reload seconds expected of the victims now - of the cheaper victims on their way
    patience = min(saving, patience_max_s, (deadline - now - its own load time) / 2)

where a victim's expected reload seconds are its load time x min(1, N / the requests to the
daemon expected before its next one): the chance, roughly, that it is wanted again within the
next N = `patience_horizon_requests` requests (1 for a model someone waits for). Counted in
requests, the horizon fits a daemon with a request a second as well as one a minute.
Whatever happens, the wait is at most twice what the better choice in hindsight would have
cost (the ski-rental bound): if the lease ends in time, the cheaper victims go; if not, the
request has waited no longer than the eviction it then makes costs.

The patience begins once per request, its end is fixed then, and it is never renewed: a request
waits patiently at most `patience_max_s` in its whole life, and never past its deadline. The
cheaper set must free room the request can use the moment those leases end; it is found by the
same search as any eviction (`eviction.plan_room`) with the leased models counted as if idle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Container

from gpuletd.scheduler.accounting import (
    future_view,
    load_estimate_s,
    need,
    requests_to_next,
)
from gpuletd.scheduler.decisions import ModelState
from gpuletd.scheduler.eviction import Candidate, plan_room
from gpuletd.scheduler.queue import PendingRequest
from gpuletd.scheduler.records import ModelRecord
from gpuletd.scheduler.state import State, instance

__all__ = ["hold_off"]


def _expected_reload_s(st: State, model_id: str, want: Container[str]) -> float:
    rec = instance(st, model_id)
    if rec is None:
        return 0.0
    if model_id in want:
        chance = 1.0
    else:
        horizon = st.tuning.patience_horizon_requests
        chance = min(1.0, horizon / requests_to_next(st, rec))
    return load_estimate_s(st, rec) * chance


def _saving(st: State, rec: ModelRecord, victims: tuple[str, ...]) -> float:
    """Reload seconds saved by waiting for the cheapest set that includes a leased or loading
    model (0: there is none, or it is no cheaper)."""
    view = future_view(st)
    want = st.queue.wanted()
    leased = {
        c.model_id
        for c in view.candidates
        if c.pinned
        and (r := instance(st, c.model_id)) is not None
        and (r.leases or r.state is ModelState.LOADING)
        and c.model_id not in want
    }
    if not leased:
        return 0.0
    cands: list[Candidate] = [
        dataclasses.replace(c, pinned=False) if c.model_id in leased else c for c in view.candidates
    ]
    found = plan_room(
        need(st, rec),
        dataclasses.replace(view, candidates=cands),
        allow_pinned=False,
        exact_limit=st.tuning.exact_eviction_limit,
    )
    if found is None or not set(found.victims) & leased:
        return 0.0
    now_cost = sum(c.cost for c in view.candidates if c.model_id in victims)
    alt_cost = sum(c.cost for c in cands if c.model_id in found.victims)
    if alt_cost >= now_cost:
        # The eviction rule itself would not prefer it once the lease ends: nothing to wait for.
        return 0.0
    before = sum(_expected_reload_s(st, v, want) for v in victims)
    after = sum(_expected_reload_s(st, v, want) for v in found.victims)
    return max(0.0, before - after)


def hold_off(st: State, req: PendingRequest, rec: ModelRecord, victims: tuple[str, ...]) -> bool:
    """Should `req` wait instead of evicting `victims` for `rec` now? Begins its patience the
    first time a cheaper eviction is on its way; True until that patience runs out."""
    if req.patient_until is not None:
        # Still on its way? (Once those leases end the eviction rule picks the cheaper set
        # by itself: no reason left to wait.)
        return st.now < req.patient_until and _saving(st, rec, victims) > 0
    limit = st.tuning.patience_max_s
    if limit <= 0:
        return False
    saving = _saving(st, rec, victims)
    if saving <= 0:
        return False
    until = st.now + min(saving, limit)
    if req.deadline is not None:
        # Spend at most half of the slack its deadline leaves beyond its own load: after the
        # wait the victims must still unload and the load may take longer than estimated.
        slack = req.deadline - st.now - load_estimate_s(st, rec)
        until = min(until, st.now + slack / 2)
    if until <= st.now:
        return False
    req.patient_from, req.patient_until = st.now, until
    return True
