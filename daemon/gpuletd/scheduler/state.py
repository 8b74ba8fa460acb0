"""Everything the scheduler core knows, in one plain object.

`State` is a mutable dataclass with no behaviour of its own: the other modules are functions
over it, each with one job (`accounting`: memory and placement questions; `views`: read-only
snapshots; `transitions`: each record change with the decision announcing it; `admission`: the
scheduling pass; `drain`: what a reconfigure leaves behind; `timers`: what the clock makes due;
`handlers` and `reconfigure`: the events; `snapshot` and `codec`: persistence). `core.Scheduler`
composes them and is the only public entry point.
Holding all of it in one value is what makes the core easy to persist (`snapshot.py` writes
these fields out) and to reason about: nothing is hidden in a base class.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gpuletd.probe.types import GpuSnapshot, GpuState
from gpuletd.profiles import Profile
from gpuletd.registry import Backend, Model
from gpuletd.scheduler.decisions import ModelState
from gpuletd.scheduler.eviction import FutureView, Plan, Population, ReuseEstimator, ReuseTally
from gpuletd.scheduler.placement import GpuInfo
from gpuletd.scheduler.queue import RequestQueue
from gpuletd.scheduler.records import GpuRecord, LeaseRecord, ModelRecord

__all__ = [
    "MEMORY_PREFIX",
    "Holding",
    "Inherited",
    "Quiet",
    "State",
    "Tuning",
    "advance_clock",
    "drop_caches",
    "gpu_record",
    "holders",
    "instance",
    "instances",
    "memory_model_id",
    "memory_record",
    "model_record",
    "new_state",
    "watch_lease",
    "watch_leases",
]


@dataclass(frozen=True)
class Tuning:
    """Knobs of the policy; the defaults are the documented behaviour."""

    default_ttl_s: float = 60.0
    # Delaying bypasses a blocked head of the queue tolerates (vramd uses 3).
    bypass_limit: int = 3
    # One priority level gained per this many seconds of waiting; None disables aging.
    aging_interval_s: float | None = 30.0
    # How long freed memory may take to show as free in a probe reading before we trust
    # accounting alone.
    memory_settle_s: float = 10.0
    # A reading within this much of the expected use counts as "the memory is back".
    settle_slack_mb: int = 256
    # Past autostart_timeout_seconds, how long the core waits for the shell's own verdict.
    load_timeout_slack_s: float = 5.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    # Weight of the newest gap between requests in a model's smoothed reuse pattern.
    reuse_alpha: float = 0.3
    # Expected time to the next use of a model asked for at most once.
    reuse_unknown_s: float = 600.0
    # Load time assumed for a model never measured (baselines.md: 2 s per GB).
    default_load_s_per_gib: float = 2.0
    # Weight of the newest load-time measurement in the smoothed value.
    load_time_alpha: float = 0.5
    # Up to this many eviction candidates the cheapest set is found exactly.
    exact_eviction_limit: int = 8
    # Loads may run side by side on a GPU when this much stays free there beyond the headroom
    # once all of them are in (and memory there is certain); None: one load per GPU.
    concurrent_load_margin_mb: int | None = 2048
    # Among the cheapest few victim sets, prefer one whose victims can come back without
    # forcing out another model (`eviction._knock_on`).
    eviction_lookahead: bool = True
    # Patience (ski rental, `patience.py`): the longest a request holds off an eviction for a
    # cheaper one on its way (0: never), and the horizon, in requests to the daemon, over
    # which a victim's reload counts.
    patience_max_s: float = 30.0
    patience_horizon_requests: int = 6
    # Ended leases remembered to explain a late renew/release ("expired", "backend died").
    ended_lease_memory: int = 4096


@dataclass(frozen=True)
class Inherited:
    """Use above the profile's limits, inherited from a reconfigure (or a restore) to a profile
    that no longer fits what is loaded. Leased and loading models are never stopped for it, so
    the excess drains as they are released; until then these are the ceilings the invariants
    hold the core to. They start at what was in use when the profile shrank and only go down
    (`drain.tighten` replaces the record, never edits it, so it can be handed out as a view); it
    is dropped once the profile's own limits hold again."""

    vram_mb: int
    models: int
    # Per GPU, for a profile whose larger headroom leaves less room than is reserved there.
    gpu_mb: Mapping[str, int] = field(default_factory=dict)
    # Heavy models holding memory, for a profile whose `max_heavy_models` is now lower
    # (None: the profile's cap holds).
    heavy: int | None = None


@dataclass(eq=False)
class State:
    profile: Profile
    tuning: Tuning
    queue_limit: int
    # The registry's models by id: what requests may name.
    models: dict[str, ModelRecord]
    # Instances whose model was removed from the registry or redefined while they held memory,
    # by id (at most one per id: a redefined model's new instance waits for the old one).
    retired: dict[str, ModelRecord]
    gpus: dict[str, GpuRecord]
    leases: dict[str, LeaseRecord]
    queue: RequestQueue
    # Ended lease id -> why, oldest first, to explain a late renew/release.
    ended: OrderedDict[str, str] = field(default_factory=OrderedDict)
    # The configured preload list, until `start` turns it into `preload_wanted`.
    preload_requested: tuple[str, ...] = ()
    # Preloads not yet started, in order.
    preload_wanted: list[str] = field(default_factory=list)
    inherited: Inherited | None = None
    seq: int = 0
    # When the last request arrived, and the smoothed seconds between requests: the clock of
    # the models' reuse patterns, which count in requests (`eviction.ReuseEstimator`).
    last_request_at: float | None = None
    pace_s: float | None = None
    # Sums over the models' reuse patterns, for the prior of those with little history:
    # updated as a request updates its model's pattern, recounted when the models are
    # replaced (reconfigure, restore). `check_invariants` recounts it.
    reuse_tally: ReuseTally = field(default_factory=ReuseTally)
    # `accounting.reuse_population` at (clock, request number); the tally changes only with
    # the request number, or is replaced whole (which drops this too).
    population_memo: tuple[float, int, Population] | None = None
    now: float = float("-inf")
    # Per-pass caches. GPU infos change only with a probe reading or a profile; plans (without
    # hypothesis) are memoised during one scheduling pass only, and every transition clears
    # them (`accounting.changed`; a benign one, `accounting.touched`, only if its model's
    # candidate changed).
    gpu_info_cache: list[GpuInfo] | None = None
    plan_cache: dict[tuple[str, bool], Plan | None] | None = None
    # Also memoised within one pass only, and cleared by every transition but the benign ones
    # (which take and free no memory): what holds memory (`accounting.holding`). Outside a
    # pass it is recomputed on each question, since the event handlers change records between
    # passes.
    holding_cache: Holding | None = None
    # The future view without a hypothesis, made by a pass at `view_at` (clock, request
    # number) and good while both stay there (a new request moves every reuse pattern's
    # count): cleared by every transition but the benign ones, which only reweigh their
    # model's candidate in it (`accounting.touched`). A full pass starts without it (a
    # handler may have changed records without a transition); a quiet one keeps it.
    view_cache: FutureView | None = None
    view_at: tuple[float, int] = (float("nan"), -1)
    # Instances whose candidate in `view_cache` is to be made again before it is read, by id.
    view_stale: dict[str, ModelRecord] = field(default_factory=dict)
    # Within a pass, answers that depend only on the shape of a need (`accounting._shape`),
    # not on which model it is: where it would start now, and the victim search's answer when
    # it is "no room at all" or "room without evicting". Cleared with `holding_cache`.
    place_cache: dict[tuple[object, ...], tuple[str, ...] | None] | None = None
    shape_plans: dict[tuple[object, ...], Plan | None] | None = None
    # Shapes (with "footprint measured") whose request this pass found no way to move on:
    # no load now and no eviction to make one (`admission._serve`).
    stuck: set[tuple[object, ...]] | None = None
    # (time, lease id) for every lease's expiry and claim deadline, earliest first, so that an
    # event need not look at every lease; an entry whose lease ended or moved is dropped when
    # it comes up (`timers.advance`, `timers.next_wakeup`). See `watch_lease`.
    lease_timers: list[tuple[float, str]] = field(default_factory=list)
    # Bumped by every transition (`accounting.changed`, `accounting.touched`): a pass that
    # sees it unchanged from its start changed no record.
    version: int = 0
    # Of those, the ones that give no waiting request a way forward: grants and joins of a
    # load under way (no memory taken or freed; they pin a model, which only takes victims
    # away), and the end of a non-exclusive lease on a model that stays leased
    # (`transitions.grant` / `join` / `end_lease`).
    benign: int = 0
    # The instances holding memory, in `instances` order (`holders`). A model starts holding
    # memory only in `transitions.start_load` and stops only in `release_memory`, which drop
    # it, as do a reconfigure and a restore (which make or reorder instances).
    holders_cache: list[ModelRecord] | None = None
    # What a quiet pass left for the next (`admission.settle`), or None.
    quiet: Quiet | None = None
    # No load timeout or grace unload falls due before this time, so `timers.advance` need
    # not walk the models until it has come (None: not known). Set by that walk; a lower
    # bound that every transition that may bring a due time forward clears
    # (`accounting.changed`, and a load becoming healthy).
    models_due: float | None = None


@dataclass(frozen=True)
class Quiet:
    """A scheduling pass that left every request it saw waiting for a reason that only the
    clock (at `until`) or a transition other than a benign one (`version`, `benign`) can
    undo: until then, the next pass need look only at the requests that arrived since
    (`arrivals`). See `admission.settle`."""

    version: int
    benign: int
    until: float
    # The head's request id (None: no request was left waiting for its turn).
    head: str | None
    # What the head needed gone, when a request was left waiting because of it (its model
    # is among these and the head's bypasses are used up): the next pass may skip such
    # requests only if the head, recomputed, needs the same. None: none was.
    head_need: frozenset[str] | None
    # Models whose earliest waiting request could not start its load (`_pump`'s set).
    blocked: frozenset[str]
    # Requests with a turn, i.e. the last queue position handed out.
    waiting: int
    # `RequestQueue.arrivals` when it ended.
    arrivals: int


@dataclass
class Holding:
    """What the instances holding memory (loading, loaded or unloading) add up to: one walk
    over the models answers every memory question of a pass instead of one walk each."""

    # MiB reserved per GPU uuid.
    held: dict[str, int]
    count: int
    reserved_mb: int
    heavy: int
    # Instances loading, in `instances` order.
    loading: list[ModelRecord]
    # A load or an unload under way.
    moving: bool
    # `accounting.place_now`'s available MiB per usable GPU, once asked.
    room: dict[str, int] | None = None


def watch_lease(st: State, lease: LeaseRecord) -> None:
    """Note a lease's (new) expiry and claim deadline in `lease_timers`."""
    heapq.heappush(st.lease_timers, (lease.expires_at, lease.lease_id))
    if lease.claim_by is not None:
        heapq.heappush(st.lease_timers, (lease.claim_by, lease.lease_id))
    if len(st.lease_timers) > 64 + 4 * len(st.leases):
        # Mostly entries of leases released or renewed since: start again from the live ones.
        watch_leases(st)


def watch_leases(st: State) -> None:
    """`lease_timers` afresh from the leases."""
    timers = [(le.expires_at, le.lease_id) for le in st.leases.values()]
    timers += [(le.claim_by, le.lease_id) for le in st.leases.values() if le.claim_by is not None]
    heapq.heapify(timers)
    st.lease_timers = timers


def drop_caches(st: State) -> None:
    """Forget everything derived from the records (after a restore hands a State over)."""
    st.gpu_info_cache = None
    st.plan_cache = None
    st.holding_cache = st.view_cache = None
    st.view_stale.clear()
    st.place_cache = st.shape_plans = st.stuck = None
    st.quiet = None
    st.holders_cache = None
    st.models_due = None
    watch_leases(st)
    for rec in instances(st):
        rec.need_memo = None
        rec.exclusive_leases = sum(le.exclusive for le in rec.leases.values())


def model_record(model: Model, tuning: Tuning) -> ModelRecord:
    return ModelRecord(
        model=model,
        usage=ReuseEstimator(alpha=tuning.reuse_alpha, unknown_s=tuning.reuse_unknown_s),
    )


_HOLDS = frozenset({ModelState.LOADING, ModelState.LOADED, ModelState.UNLOADING})

MEMORY_PREFIX = "vram:"


def memory_model_id(request_id: str) -> str:
    """The id of the record a memory lease (`request(..., vram_mb=N)`) is held on."""
    return f"{MEMORY_PREFIX}{request_id}"


def memory_record(model_id: str, vram_mb: int, tuning: Tuning) -> ModelRecord:
    """A memory lease's record: a reservation (no process) of `vram_mb` MiB on one GPU, with
    no roles, never in the registry."""
    model = Model(
        id=model_id,
        name=f"{vram_mb} MiB of VRAM",
        backend=Backend.RESERVATION,
        quantization="",
        vram_estimate_mb=vram_mb,
        role_priority={},
    )
    rec = model_record(model, tuning)
    rec.memory = True
    return rec


def gpu_record(g: GpuSnapshot, *, held_mb: int = 0) -> GpuRecord:
    """A GPU as first read; `held_mb`: what gpulet's own models hold there already (after a
    restore), so that only the rest counts as someone else's."""
    return GpuRecord(
        uuid=g.uuid,
        index=g.index,
        name=g.name,
        total_mb=g.total_mb,
        state=g.state,
        free_mb=g.free_mb,
        read_at=g.read_at,
        lost=g.state is GpuState.LOST,
        foreign_mb=(
            max(0, g.total_mb - g.free_mb - held_mb)
            if g.total_mb is not None and g.free_mb is not None
            else 0
        ),
    )


def new_state(
    profile: Profile,
    models: Mapping[str, Model],
    gpus: Sequence[GpuSnapshot],
    *,
    queue_limit: int = 256,
    preload: Sequence[str] = (),
    tuning: Tuning | None = None,
) -> State:
    tuning = tuning or Tuning()
    return State(
        profile=profile,
        tuning=tuning,
        queue_limit=queue_limit,
        models={mid: model_record(m, tuning) for mid, m in models.items()},
        retired={},
        # Nothing is placed yet: whatever is in use belongs to someone else.
        gpus={g.uuid: gpu_record(g) for g in sorted(gpus, key=lambda s: s.index)},
        leases={},
        queue=RequestQueue(tuning.aging_interval_s),
        preload_requested=tuple(preload),
    )


def advance_clock(st: State, now: float) -> float:
    # A clock that steps back (a shell bug, or two sources) must not undo expiries.
    if math.isnan(now):
        raise ValueError("now is NaN")
    st.now = max(st.now, now)
    return st.now


def instances(st: State) -> Iterable[ModelRecord]:
    """Every model instance: the registry's, then the retired ones (so that, with none
    retired, every walk over the models is in registry order, as it always was)."""
    if not st.retired:
        return st.models.values()
    return [*st.models.values(), *st.retired.values()]


def holders(st: State) -> list[ModelRecord]:
    """The instances loading, loaded or unloading, in `instances` order (do not modify)."""
    found = st.holders_cache
    if found is None:
        found = [r for r in instances(st) if r.state in _HOLDS]
        st.holders_cache = found
    return found


def instance(st: State, model_id: str) -> ModelRecord | None:
    """The instance a backend event or a lease of `model_id` is about: the retired one while
    there is one (a redefined model's new instance is not started before the old is gone)."""
    return st.retired.get(model_id) or st.models.get(model_id)
