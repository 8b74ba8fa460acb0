"""What-if: what an Acquire would meet now, found without changing anything.

The request is run against a deep copy of the scheduler core (a pure object), under a
synthetic request id, at the current monotonic time, and the copy's decisions are read:
Granted (its model is loaded), StartBackend + Loading (it would be loaded, after the idle models
a StopBackend(EVICTED) names are gone), Queued (it would wait, at a position, for something
`waiting_for` names) or Rejected (it would be refused). The live core is never fed an event.

An eviction is finished in the copy as the shell would finish it: the victims' unloads are
reported done and the clock runs on (at most `FOLLOW_S`) until the memory counts as free, so
that "evict A, then load B on GPU 0" reads as one answer. Anything else due in that window (a
lease expiring) is ignored for the answer's outcome but may make it slightly optimistic.
"""

from __future__ import annotations

import copy
import enum
import gc
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import BuiltinFunctionType, FunctionType, MappingProxyType, ModuleType
from typing import Any

from gpuletd.profiles import Profile
from gpuletd.registry import Backend, Model
from gpuletd.scheduler import (
    Decision,
    Granted,
    Loading,
    ModelView,
    Queued,
    Rejected,
    Scheduler,
    StartBackend,
    StopBackend,
    StopReason,
    Tuning,
)

__all__ = [
    "FOLLOW_S",
    "PLAN_REQUEST_ID",
    "Outcome",
    "PlanResult",
    "Victim",
    "isolated_copy",
    "reload_estimate",
    "what_if",
]

# Never a lease id (`l-` and 16 hex digits), so it cannot collide with a real request.
PLAN_REQUEST_ID = "plan-what-if"
# How far the copy's clock may run to see an eviction through (memory settling after unload).
FOLLOW_S = 60.0
_FOLLOW_STEPS = 8
_MIB_PER_GIB = 1024
# The core's assumption for a load never measured (Tuning.default_load_s_per_gib; the daemon
# runs the core with the default tuning).
_DEFAULT_LOAD_S_PER_GIB = Tuning().default_load_s_per_gib


class Outcome(enum.Enum):
    GRANTED = "granted"
    LOAD = "load"
    WAIT = "wait"
    REFUSED = "refused"


@dataclass(frozen=True)
class Victim:
    model_id: str
    gpu_uuids: tuple[str, ...]
    reserved_mb: int
    reload_s: float
    reload_measured: bool  # False: the 2 s per GiB estimate


@dataclass(frozen=True)
class PlanResult:
    outcome: Outcome
    model_id: str
    gpu_uuids: tuple[str, ...] = ()
    victims: tuple[Victim, ...] = ()
    position: int | None = None
    waiting_for: str = ""
    message: str = ""
    code: str = ""  # refused: the gRPC status code name
    reason: str = ""  # refused: the ErrorInfo reason


# Immutable values the core holds that deepcopy cannot (or need not) copy: shared as they are.
_SHARED = (Model, Profile, MappingProxyType)
_OPAQUE = (type, ModuleType, FunctionType, BuiltinFunctionType)


def _shared_memo(root: object) -> dict[int, Any]:
    """A deepcopy memo mapping every frozen registry model, profile and read-only mapping
    reachable from `root` to itself (deepcopy cannot pickle a mappingproxy)."""
    memo: dict[int, Any] = {}
    seen: set[int] = set()
    stack: list[object] = [root]
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, _OPAQUE):
            continue
        seen.add(id(o))
        if isinstance(o, _SHARED):
            memo[id(o)] = o
            continue
        stack.extend(gc.get_referents(o))
    return memo


def isolated_copy(core: Scheduler) -> Scheduler:
    """A copy of `core` that shares no mutable state with it: events fed to the copy leave
    the live core as it was (only frozen models, profiles and read-only mappings are shared)."""
    return copy.deepcopy(core, _shared_memo(core))


def reload_estimate(
    v: ModelView, models: Mapping[str, Model], *, s_per_gib: float = _DEFAULT_LOAD_S_PER_GIB
) -> tuple[float, bool]:
    """Seconds to load `v` again, and whether they were measured: the core's own rule (its
    measured load time for a process backend, else 2 s per GiB of what it reserves; a
    reservation backend's "load" is instant for the core, its holder loads after the grant)."""
    m = models.get(v.model_id)
    if v.load_seconds is not None and m is not None and m.backend is Backend.PROCESS:
        return v.load_seconds, True
    mb = v.reserved_mb or v.reservation_mb
    return mb / _MIB_PER_GIB * s_per_gib, False


WaitingFor = Callable[[Scheduler, str], str]


def what_if(
    core: Scheduler,
    model_id: str,
    *,
    now: float,
    models: Mapping[str, Model],
    waiting: WaitingFor,
    priority: int = 0,
    exclusive: bool = False,
    vram_mb: int | None = None,
) -> PlanResult:
    """What a request for `model_id` (or, with `vram_mb`, a memory lease) would meet at `now`.
    `core` is only read: the request runs on an isolated copy. `waiting(copy, request_id)` says
    what a waiting request waits for."""
    sim = isolated_copy(core)
    now = max(now, sim.now)
    # What the clock has made due runs first, so that the request's own decisions stand apart.
    sim.tick(now)
    before = sim.models()
    out = sim.request(
        PLAN_REQUEST_ID,
        model_id,
        now=now,
        client="gpulet plan",
        priority=priority,
        exclusive=exclusive,
        vram_mb=vram_mb,
    )
    if vram_mb:
        model_id = f"vram:{PLAN_REQUEST_ID}"  # the core's name for a memory lease's record
    victims = [d for d in out if isinstance(d, StopBackend) and d.reason is StopReason.EVICTED]
    if victims and _pending(out):
        out = out + _follow(sim, [d.model_id for d in victims], now)
    fate = _fate(out, model_id)
    gone = tuple(_victim(d, before, models) for d in victims)
    match fate:
        case Granted():
            return PlanResult(
                Outcome.GRANTED,
                model_id,
                fate.gpu_uuids,
                message=f"{model_id} is loaded: a lease would be granted now",
            )
        case StartBackend():
            where = _gpus(fate.gpu_uuids, sim)
            after = f", after evicting {', '.join(v.model_id for v in gone)}" if gone else ""
            return PlanResult(
                Outcome.LOAD,
                model_id,
                fate.gpu_uuids,
                gone,
                message=f"{model_id} would load now on {where}{after}",
            )
        case Rejected():
            return PlanResult(
                Outcome.REFUSED,
                model_id,
                message=fate.message,
                code=fate.code.value,
                reason=fate.reason.value,
            )
        case Loading():
            # Its model's load is already under way: it would ride on it, needing no turn.
            why = waiting(sim, PLAN_REQUEST_ID)
            return PlanResult(
                Outcome.WAIT,
                model_id,
                fate.gpu_uuids,
                gone,
                waiting_for=why,
                message=f"would wait for {why}",
            )
        case Queued() | None:
            position = fate.position if fate is not None else _position(sim)
            why = waiting(sim, PLAN_REQUEST_ID)
            at = f" at position {position}" if position is not None else ""
            return PlanResult(
                Outcome.WAIT,
                model_id,
                victims=gone,
                position=position,
                waiting_for=why,
                message=f"would wait{at} for {why}" if why else f"would wait{at}",
            )


def _pending(out: list[Decision]) -> bool:
    """The request is still waiting after this batch (no grant, load or refusal for it)."""
    return not any(
        isinstance(d, Granted | Rejected | Loading) and _rid(d) == PLAN_REQUEST_ID for d in out
    )


def _rid(d: Granted | Rejected | Loading | Queued) -> str:
    return d.lease_id if isinstance(d, Granted) else d.request_id


def _follow(sim: Scheduler, victims: list[str], now: float) -> list[Decision]:
    """See the evictions through in the copy: unloads done, then the clock up to FOLLOW_S on,
    until the request is served or refused."""
    out: list[Decision] = []
    for mid in victims:
        out += sim.unload_finished(mid, now=now)
    for _ in range(_FOLLOW_STEPS):
        if not _pending(out):
            break
        wake = sim.next_wakeup()
        if wake is None or wake > now + FOLLOW_S:
            break
        out += sim.tick(max(wake, sim.now))
    return out


def _fate(
    out: list[Decision], model_id: str
) -> Granted | StartBackend | Rejected | Loading | Queued | None:
    """The request's last word in `out`: a grant, a load started for its model, a refusal, a
    load joined, or its latest queue position (None: nothing said about it)."""
    fate: Granted | StartBackend | Rejected | Loading | Queued | None = None
    started: StartBackend | None = None
    for d in out:
        if isinstance(d, StartBackend) and d.model_id == model_id:
            started = d
        elif isinstance(d, Granted | Rejected | Queued) and _rid(d) == PLAN_REQUEST_ID:
            fate = d
        elif isinstance(d, Loading) and d.request_id == PLAN_REQUEST_ID:
            fate = started if started is not None else d
    return fate


def _position(sim: Scheduler) -> int | None:
    return next((e.position for e in sim.queue() if e.request_id == PLAN_REQUEST_ID), None)


def _victim(d: StopBackend, before: Mapping[str, ModelView], models: Mapping[str, Model]) -> Victim:
    v = before.get(d.model_id)
    if v is None:  # pragma: no cover - an evicted model held memory before the request
        return Victim(d.model_id, d.gpu_uuids, 0, 0.0, False)
    seconds, measured = reload_estimate(v, models)
    return Victim(d.model_id, d.gpu_uuids, v.reserved_mb, seconds, measured)


def _gpus(uuids: tuple[str, ...], sim: Scheduler) -> str:
    index = {g.uuid: g.index for g in sim.gpus()}
    names = [f"GPU {index[u]}" if u in index else u for u in uuids]
    return ", ".join(names) or "a GPU"
