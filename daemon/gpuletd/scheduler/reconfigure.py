"""The configuration event: a new profile, registry and preload list (SIGHUP, an admin profile
switch). It is a core event like any other, so a grant and a reconfiguration are ordered by
the same single-threaded core: a request either saw the old configuration or the new one.

What changes, model by model (the GPU set does not change):

- **same definition** (or only fields that do not touch the running backend: name, roles,
  group, timers — see `drain.INSTANCE_FIELDS`): the record stays, loaded or not, with the new
  definition in place; the new timers apply from now on;
- **removed**: requests waiting for it are refused `NOT_FOUND` (as for any unknown model, and
  so are new ones); if it is leased its instance is *retired*: it serves its holders (renew and
  release work) and is stopped (`StopReason.RETIRED`) once unleased; loaded but idle, or
  loading, it is stopped at once; holding nothing, it is forgotten;
- **redefined** (an instance field changed) while it holds memory: the old instance is retired
  as above; requests for the model (including those that had joined its load) wait until it is
  gone, then load the new definition. Holding nothing, the record starts afresh under the new
  definition (its request history is kept: demand for a model id survives its redefinition);
- **added**: a new record.

A retired instance whose model comes back with the same definition is reinstated instead of
being reloaded.

The new profile applies at once to everything decided from now on (limits, grace periods,
headroom, strategy). If what holds memory no longer fits its limits, it drains gracefully
(`drain.py`): idle models are stopped (`StopReason.RECONFIGURED`), nothing leased or loading
is, and no load starts while over. The preload list is replaced: `keep_warm` follows the new
list, and a listed model already loading or loaded is not loaded again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gpuletd.profiles import Profile
from gpuletd.registry import Model
from gpuletd.scheduler.accounting import changed
from gpuletd.scheduler.admission import settle
from gpuletd.scheduler.decisions import (
    Decision,
    ModelState,
    ModelStateChanged,
    RejectCode,
    RejectReason,
)
from gpuletd.scheduler.drain import inherit, instance_changes, redefined_reason, removed_reason
from gpuletd.scheduler.eviction import ReuseTally
from gpuletd.scheduler.handlers import want_preloads
from gpuletd.scheduler.records import ModelRecord
from gpuletd.scheduler.state import State, advance_clock, model_record
from gpuletd.scheduler.timers import advance
from gpuletd.scheduler.transitions import refuse

__all__ = ["on_reconfigure"]


def on_reconfigure(
    st: State,
    profile: Profile,
    models: Mapping[str, Model],
    *,
    now: float,
    preload: Sequence[str],
) -> list[Decision]:
    advance_clock(st, now)
    # What was due is done under the configuration it became due under.
    out = advance(st)
    changed(st)
    st.profile = profile
    st.gpu_info_cache = None
    _apply_registry(st, models, out)
    # The instances are new or in a new order: nothing derived from the old ones holds.
    changed(st)
    st.holders_cache = None
    _replace_preloads(st, preload, out)
    # Shorter timers (a grace period, a load timeout) may have made something due already:
    # done now, so that no event finds the new configuration's timers overdue.
    out += advance(st)
    inherit(st)
    settle(st, out)
    return out


def _refuse_requests(st: State, model_id: str, message: str, out: list[Decision]) -> None:
    for req in st.queue:
        if req.model_id == model_id:
            refuse(st, req, RejectCode.NOT_FOUND, RejectReason.UNKNOWN_MODEL, message, out)


def _retire(st: State, rec: ModelRecord, why: str) -> None:
    # At most one instance per id holds memory: a redefined model's new instance never loads
    # while the old one exists, so there is no retired instance to collide with.
    assert rec.model.id not in st.retired, f"{rec.model.id} retired twice"
    rec.retired = why
    st.retired[rec.model.id] = rec


def _requeue_waiters(st: State, rec: ModelRecord) -> None:
    """Requests that joined the old definition's load want the model, not that instance: they
    go back to the queue (in their arrival order) to wait for the new definition."""
    for rid in rec.waiters:
        req = st.queue.get(rid)
        if req is not None:
            st.queue.set_joined(req, False)
            req.position = None
    rec.waiters = []


def _apply_registry(st: State, models: Mapping[str, Model], out: list[Decision]) -> None:
    kept: dict[str, ModelRecord] = {}
    memory: dict[str, ModelRecord] = {}
    for mid, rec in st.models.items():
        if rec.memory:
            # A memory lease is no model of the registry: a new registry leaves it alone.
            memory[mid] = rec
            continue
        new = models.get(mid)
        busy = rec.holds_memory or bool(rec.leases)
        if new is None:
            why = removed_reason(mid)
            _refuse_requests(st, mid, why, out)
            if busy:
                _retire(st, rec, why)
            continue
        diff = instance_changes(rec.model, new)
        if not diff:
            rec.model = new
            kept[mid] = rec
            continue
        why = redefined_reason(mid, diff)
        fresh = model_record(new, st.tuning)
        fresh.usage = rec.usage
        if busy:
            _requeue_waiters(st, rec)
            _retire(st, rec, why)
        elif rec.state is not ModelState.UNLOADED:
            # A failed model starts afresh: its failure was the old definition's.
            out.append(ModelStateChanged(mid, ModelState.UNLOADED, (), why))
        kept[mid] = fresh
    for mid, m in models.items():
        old = st.retired.get(mid)
        if old is not None and not instance_changes(old.model, m):
            # Back to the definition the retired instance runs: reinstate it, no reload. The
            # record that was waiting for it holds nothing (it could not load meanwhile).
            waiting = kept.get(mid)
            assert waiting is None or not waiting.holds_memory
            del st.retired[mid]
            old.retired = ""
            old.model = m
            if waiting is not None:
                old.usage = waiting.usage
            kept[mid] = old
        elif mid not in kept:
            kept[mid] = model_record(m, st.tuning)
    # Registry order, as a fresh start would have it.
    st.models = {mid: kept[mid] for mid in models} | memory
    st.reuse_tally = ReuseTally.of(r.usage for r in st.models.values())
    st.population_memo = None


def _replace_preloads(st: State, preload: Sequence[str], out: list[Decision]) -> None:
    # An administrator's pin outlives a new preload list.
    for rec in st.models.values():
        rec.keep_warm = rec.pinned
    st.preload_wanted = [
        mid for mid, rec in st.models.items() if rec.pinned and mid in st.preload_wanted
    ]
    st.preload_requested = ()
    want_preloads(st, preload, out)
