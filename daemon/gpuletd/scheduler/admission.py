"""The scheduling pass: who gets served, who waits, what gets evicted.

One pass runs after every event. It walks the queue in turn order (effective priority, then
arrival) and moves each request on if it can: a grant on a loaded model, a join of a load under
way, a new load where there is room, or evictions of idle models to make room. The first
request that cannot be served becomes the *head*: later requests may still be served, but
only in ways that do not delay it (see `_may_bypass` and `_delays`).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from gpuletd.probe.types import GpuState
from gpuletd.scheduler.accounting import (
    Hypothesis,
    ceiling,
    changed,
    in_flux,
    need,
    need_and_ceiling,
    newcomer_id_free,
    place_now,
    plan,
    stuck_key,
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
from gpuletd.scheduler.state import MEMORY_PREFIX, Quiet, State, instance
from gpuletd.scheduler.transitions import exclusive_conflict, grant, join, refuse, start_load, stop

__all__ = ["settle"]

_RESTING = (ModelState.UNLOADED, ModelState.FAILED)


@dataclass(frozen=True)
class _Wait:
    """What the head of a pass waits for.

    `need`: models it needs gone (or, if `exclusive_wait`, the model whose leases it waits
    out): a new lease on one of them is a *delaying bypass*, allowed `bypass_limit` times.
    `blockers`: the pinned models among them; a later load must not add to this set.
    `soon`: it waits only for memory on its way back (an unload, a load ending): a later
    load on the GPU it will go to would hold that GPU's load lock just when its room is back."""

    need: frozenset[str]
    blockers: frozenset[str]
    exclusive_wait: bool
    soon: bool = False


class _Verdict(enum.Enum):
    """How a load (after its evictions) would change what the head waits for (`_delays`)."""

    # It would wait on a leased or loading model more, or find no room at all.
    PINNED = enum.auto()
    # On no more of them, and the load is on GPUs the head does not go to.
    ELSEWHERE = enum.auto()
    # On no more of them, but the load would hold the load lock of a GPU the head goes to.
    ITS_GPU = enum.auto()


class _Head:
    """The first request of this pass that could not be served: later ones must not delay it.

    What it waits for (`wait`) is worked out when first asked: a quiet pass whose newcomers
    want models that cannot load anyway never asks. Asking late changes nothing: before a
    request asks, a quiet pass makes no transition but refusing requests for models neither
    loaded nor loading, which no eviction search weighs. (`_pump` asks at once: in a full
    pass a retired instance, which the searches do weigh, may share such a model's id.)"""

    __slots__ = ("_at", "_rec", "_st", "_verdicts", "_wait", "req")

    def __init__(self, st: State, req: PendingRequest, rec: ModelRecord) -> None:
        self.req = req
        self._st, self._rec = st, rec
        self._wait: _Wait | None = None
        # `verdict`'s answers, by the shape of the load, while `State.version` is `_at`.
        self._verdicts: dict[tuple[object, ...], _Verdict] = {}
        self._at = -1

    def wait(self) -> _Wait:
        if self._wait is None:
            self._wait = _wait_of(self._st, self.req, self._rec)
        return self._wait

    def verdict(self, added: Need, shares: dict[str, int], removed: frozenset[str]) -> _Verdict:
        """What loading `added` on `shares` after evicting `removed` does to the head. The
        same for every model of that shape when its id can break no tie in the search
        (`accounting.newcomer_id_free`): then it is remembered until the next transition, as
        the dozens of models of one size that fit now each ask in a pass."""
        st = self._st
        if self._at != st.version:
            self._verdicts.clear()
            self._at = st.version
        key = (tuple(shares.items()), added.total_mb, added.heavy, removed)
        known = self._verdicts.get(key)
        if known is not None:
            return known
        hypo = Hypothesis(added.model_id, shares, added.total_mb, removed, added.heavy)
        found = plan(st, self._rec, allow_pinned=True, hypo=hypo)
        if found is None or not found.pinned_victims <= self.wait().blockers:
            answer = _Verdict.PINNED
        elif not set(shares) & set(found.gpu_uuids):
            answer = _Verdict.ELSEWHERE
        else:
            answer = _Verdict.ITS_GPU
        if newcomer_id_free(st, removed):
            self._verdicts[key] = answer
        return answer


@dataclass
class _Calm:
    """What a pass learns about whether the next one may skip the requests it saw (see
    `settle`). `safe`: every request it left waiting did so for a reason that neither the
    clock nor a different head can undo, except (`by_head`) a model the head needs gone;
    `until`: when the clock could undo one (a backoff ending)."""

    safe: bool = True
    until: float = math.inf
    # A request was left waiting for a model the head needs gone (its bypasses used up).
    by_head: bool = False


def settle(st: State, out: list[Decision], *, quiet_ok: bool = False) -> None:
    """One scheduling pass, then the queue positions that changed.

    `quiet_ok`: the event since the last pass (a tick, an accepted request, a renew, a
    release or a revoke) changed nothing but through transitions (`st.version`), besides
    adding the request and moving lease times. If the last pass left every request it saw
    waiting for a reason only a transition can undo (`_Calm`), and every transition since is
    one that undoes none (`st.benign`), those requests would meet the same fate again: only
    the requests that arrived since are examined, at the end of the queue in turn order, with
    the same head. This is what keeps a long queue of requests for cold models from being
    walked again on every arrival. `bench.decisions` is the proof that nothing changes."""
    if quiet_ok and _settle_quietly(st, out):
        return
    st.quiet = None
    marks = (st.version, st.benign)
    calm = _Calm()
    order = st.queue.ordered(st.now)
    queued: list[Decision] = []
    _open_pass(st)
    try:
        if sweep_memory(st, out):
            calm.safe = False
        if st.retired or st.inherited is not None:
            sweep(st, out)
        head, blocked, at = _pump(st, order, out, queued, calm)
        # What the pass refused (a memory request too large) leaves nothing behind.
        sweep_memory(st, out)
    finally:
        _close_pass(st)
    if st.inherited is not None:
        tighten(st)
    out += queued
    _remember(st, calm, marks, head, blocked, at)


def _open_pass(st: State, *, quiet: bool = False) -> None:
    st.plan_cache = {}
    st.holding_cache = None
    if not quiet:
        st.view_cache = None
        st.view_stale.clear()
    st.place_cache, st.shape_plans, st.stuck = {}, {}, set()


def _close_pass(st: State) -> None:
    # (The future view stays, for the next quiet pass: see `State.view_cache`.)
    st.plan_cache = None
    st.holding_cache = None
    st.place_cache, st.shape_plans, st.stuck = None, None, None


def _positions(st: State, order: list[PendingRequest], at: int, out: list[Decision]) -> int:
    """Number the requests of `order` still waiting from `at` + 1; the last number given."""
    pending = st.queue.pending()
    for req in order:
        if req.joined or req.request_id not in pending:
            continue
        at += 1
        if req.position != at:
            req.position = at
            out.append(Queued(req.request_id, req.model_id, at))
    return at


def _calm_changes(st: State, marks: tuple[int, int]) -> bool:
    """Since `marks` (version, benign), every transition was one that gives no waiting
    request a way forward (`State.benign`): a request left waiting in a calm pass would be
    left waiting again."""
    return st.version - marks[0] == st.benign - marks[1]


def _remember(
    st: State,
    calm: _Calm,
    marks: tuple[int, int],
    head: _Head | None,
    blocked: set[str],
    at: int,
) -> None:
    """Leave a `Quiet` for the next pass when this one changed nothing it could undo."""
    if (
        not calm.safe
        or not _calm_changes(st, marks)
        or st.retired
        or st.inherited is not None
        or st.preload_wanted
        or not st.queue.in_turn_order()
    ):
        return
    st.quiet = Quiet(
        version=st.version,
        benign=st.benign,
        until=min(calm.until, _reading_flips_at(st)),
        head=None if head is None else head.req.request_id,
        head_need=head.wait().need if calm.by_head and head is not None else None,
        blocked=frozenset(blocked),
        waiting=at,
        arrivals=st.queue.arrivals,
    )


def _reading_flips_at(st: State) -> float:
    """When a GPU reading taken before its last unload stops counting (`accounting._live_term`):
    room there changes with the clock alone then."""
    settle_s = st.tuning.memory_settle_s
    t = math.inf
    for g in st.gpus.values():
        if g.state is GpuState.OK and g.free_mb is not None and g.read_at < g.last_release_at:
            flip = g.last_release_at + settle_s
            if st.now < flip:
                t = min(t, flip)
    return t


def _settle_quietly(st: State, out: list[Decision]) -> bool:
    """The pass after a quiet one (see `settle`); False when it must be a full pass."""
    q = st.quiet
    if (
        q is None
        or not _calm_changes(st, (q.version, q.benign))
        or st.now >= q.until
        or st.retired
        or st.inherited is not None
        or st.preload_wanted
        or not st.queue.in_turn_order()
    ):
        return False
    # Nothing was removed since (that is a transition), so the newcomers are the last added.
    new = st.queue.latest(st.queue.arrivals - q.arrivals)
    calm = _Calm()
    marks = (st.version, st.benign)
    head: _Head | None = None
    # Models added to `q.blocked` by this pass (the rest stays as it was).
    newly: set[str] = set()
    pending = st.queue.pending()
    _open_pass(st, quiet=True)
    try:
        if q.head_need is not None:
            # Requests were left waiting for what the head needs gone: only if it still needs
            # the same would they be left waiting again.
            first = pending[q.head] if q.head is not None else None
            assert first is not None
            head = _Head(st, first, st.models[first.model_id])
            if head.wait().need != q.head_need:
                return False
        for req in new:
            mid = req.model_id
            if req.joined or mid in q.blocked or mid in newly or req.request_id not in pending:
                continue
            if head is None and q.head is not None:
                # The same request heads this pass; what it needs is recomputed (if asked).
                first = pending[q.head]
                head = _Head(st, first, st.models[first.model_id])
            rec = st.models[mid]
            if _serve(st, req, rec, head, newly, out, calm) and head is None:
                head = _Head(st, req, rec)
    finally:
        _close_pass(st)
    at = _positions(st, new, q.waiting, out)
    st.quiet = None
    head_id = q.head if q.head is not None else (None if head is None else head.req.request_id)
    head_need = q.head_need
    if calm.by_head and head is not None:
        head_need = head.wait().need
    if calm.safe and _calm_changes(st, marks):
        st.quiet = Quiet(
            version=st.version,
            benign=st.benign,
            until=min(q.until, calm.until, _reading_flips_at(st)),
            head=head_id,
            head_need=head_need,
            blocked=q.blocked | newly if newly else q.blocked,
            waiting=at,
            arrivals=st.queue.arrivals,
        )
    return True


def sweep_memory(st: State, out: list[Decision]) -> bool:
    """A memory lease's record lives as long as its request or lease: once neither is left,
    its reservation is stopped (a load under way too), and once it holds nothing it is
    forgotten. True when there is any memory lease's record."""
    seen = False
    for mid, rec in list(st.models.items()):
        if not rec.memory:
            continue
        seen = True
        if rec.leases or mid.removeprefix(MEMORY_PREFIX) in st.queue:
            continue
        if rec.state in (ModelState.LOADED, ModelState.LOADING):
            stop(st, rec, StopReason.RELEASED, f"memory lease {mid} ended", out)
        elif not rec.holds_memory:
            changed(st)
            del st.models[mid]
    return seen


def _pump(
    st: State,
    order: list[PendingRequest],
    out: list[Decision],
    queued: list[Decision],
    calm: _Calm,
) -> tuple[_Head | None, set[str], int]:
    """Serve the requests in turn order, then the preloads. The requests left waiting are
    numbered on the way, Queued for those whose position changed going to `queued`: a
    request's fate is settled once its turn has passed (no later step of the pass grants,
    joins or refuses another), and effective priorities depend on the clock only, so the
    pass does not reorder them. Returns the head, the models whose earliest waiting request
    could not start its load, and the last position given."""
    head: _Head | None = None
    load_blocked: set[str] = set()
    pending = st.queue.pending()
    at = 0
    for req in order:
        if req.joined or req.request_id not in pending:
            continue
        mid = req.model_id
        # (load_blocked: an earlier request for this model could not start its load; this
        # one cannot either, and it is not the head since that one came first.)
        if mid not in load_blocked:
            rec = st.models[mid]
            if not _serve(st, req, rec, head, load_blocked, out, calm):
                continue
            if head is None:
                head = _Head(st, req, rec)
                head.wait()
        at += 1
        if req.position != at:
            req.position = at
            queued.append(Queued(req.request_id, mid, at))
    _pump_preloads(st, head, out)
    return head, load_blocked, at


def _serve(
    st: State,
    req: PendingRequest,
    rec: ModelRecord,
    head: _Head | None,
    load_blocked: set[str],
    out: list[Decision],
    calm: _Calm,
) -> bool:
    """Try to move one request on. True when it still waits for its turn. `calm` learns
    whether that wait could end with the clock or another head alone."""
    mid = rec.model.id
    if rec.state is ModelState.LOADED:
        if exclusive_conflict(rec, req):
            return True
        if not _may_bypass(st, head, mid):
            calm.by_head = True
            return True
        grant(st, req, rec, out)
        return False
    if rec.state is ModelState.LOADING:
        if not _may_bypass(st, head, mid):
            calm.by_head = True
            return True
        join(st, req, rec, out)
        return False
    if mid in load_blocked:
        return True
    load_blocked.add(mid)
    nd, problem = need_and_ceiling(st, rec)
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
        if rec.state is not ModelState.UNLOADING and rec.backoff_until > st.now:
            calm.until = min(calm.until, rec.backoff_until)
        return True
    # What follows reads the need's shape only, unless it ends in a load or an eviction: a
    # shape stuck once in this pass stays stuck until a transition clears `stuck`.
    key = stuck_key(rec, nd)
    if st.stuck is not None and key in st.stuck:
        return True
    gpus = place_now(st, rec, nd)
    if gpus is not None:
        shares = {u: nd.share_mb for u in gpus}
        if head is None or not _delays(st, head, nd, shares, frozenset()):
            start_load(st, rec, nd, gpus, out)
            join(st, req, rec, out)
            load_blocked.discard(mid)
            return False
        calm.safe = False
        return True
    found = plan(st, rec, allow_pinned=False, nd=nd)
    if (found is None or not found.victims) and st.stuck is not None:
        st.stuck.add(key)
    if found is not None and found.victims:
        calm.safe = False
        shares = {u: nd.share_mb for u in found.gpu_uuids}
        victims = frozenset(found.victims)
        if head is None or not _delays(st, head, nd, shares, victims, spend=False):
            # A request that holds off does nothing yet: only an eviction made spends one of
            # the head's bounded bypasses.
            if hold_off(st, req, rec, found.victims):
                st.queue.note_patient(req)
                return True
            if head is not None:
                _delays(st, head, nd, shares, victims)
            for vid in found.victims:
                victim = instance(st, vid)
                assert victim is not None
                message = f"evicted to make room for {mid}"
                stop(st, victim, StopReason.EVICTED, message, out)
    return True


def _wait_of(st: State, req: PendingRequest, rec: ModelRecord) -> _Wait:
    mid = rec.model.id
    if rec.state is ModelState.LOADED:
        return _Wait(frozenset({mid}), frozenset({mid}), exclusive_wait=True)
    found = plan(st, rec, allow_pinned=True)
    if found is None:
        return _Wait(frozenset(), frozenset(), exclusive_wait=False)
    # Not in backoff nor waiting for a retired instance: those waits are long, and holding
    # every later load off the GPU for them would stall it for nothing.
    # Nor while it waits by choice (patience): memory is not on its way back for it, and
    # holding the GPU's loads off would make models that fit now wait out its patience.
    patient = req.patient_until is not None and req.patient_until > st.now
    soon = (
        not found.pinned_victims
        and rec.backoff_until <= st.now
        and mid not in st.retired
        and not patient
    )
    return _Wait(frozenset(found.victims), found.pinned_victims, exclusive_wait=False, soon=soon)


def _may_bypass(st: State, head: _Head | None, model_id: str) -> bool:
    """A new lease on a model the head needs gone delays the head: allowed only
    `bypass_limit` times per head; after that such requests wait behind it."""
    if head is None or model_id not in head.wait().need:
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
    *,
    spend: bool = True,
) -> bool:
    """Would loading `added` (after evicting `removed`) make the head wait on more leased or
    loading models than it already does, or hold the load lock of a GPU the head goes to?
    The latter pushes the head back by the load's time: never allowed while the head only
    waits for memory on its way back (`soon`); otherwise it is a delaying bypass, like a new
    lease on a model the head needs gone (`bypass_limit`). Requests and preloads alike: a
    preload allowed where a request for the same model was not would start a load that
    request joins in the next pass, with nothing having happened in between. `spend`: count
    an allowed bypass against the head now (False when the caller may yet hold off)."""
    wait = head.wait()
    if wait.exclusive_wait:
        return False
    verdict = head.verdict(added, shares, removed)
    if verdict is _Verdict.PINNED:
        return True
    if verdict is _Verdict.ELSEWHERE:
        return False
    if wait.soon:
        return True
    if head.req.bypassed < st.tuning.bypass_limit:
        if spend:
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
