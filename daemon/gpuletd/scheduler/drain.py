"""What a reconfigure (or a restore under another registry or profile) leaves behind, and how
it drains: retired instances, and more loaded than the new profile allows.

Both sweeps run at the start of every scheduling pass while there is something to drain, so a
release that frees a retired model or an over-limit slot takes effect in the same event. With
nothing to drain they do nothing, and the policy is exactly what it is without them.

- A **retired** instance (its model was removed from the registry, or redefined in a way that
  needs a new backend) keeps serving its holders and takes no new lease; it is stopped
  (`StopReason.RETIRED`) as soon as it has no lease, and forgotten once it holds no memory.
  A redefined model's new instance waits for that (admission treats it as unloading).
- **Over the limits**: nothing leased or loading is stopped; idle models are stopped
  (`StopReason.RECONFIGURED`), the cheapest to bring back first (the eviction cost), until the
  new count and budget hold (counting only what is not already unloading), or only leased and
  loading models are left. Admission starts no load meanwhile: `place_now` counts every model
  that holds memory, and eviction plans count against the new limits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields

from gpuletd.profiles import Profile
from gpuletd.registry import Model
from gpuletd.scheduler.accounting import changed, held_on, load_estimate_s, reuse_per_s
from gpuletd.scheduler.decisions import Decision, ModelState, StopReason
from gpuletd.scheduler.eviction import reload_cost
from gpuletd.scheduler.records import ModelRecord
from gpuletd.scheduler.state import Inherited, State, instances
from gpuletd.scheduler.transitions import stop

__all__ = [
    "INSTANCE_FIELDS",
    "inherit",
    "instance_changes",
    "redefined_reason",
    "removed_reason",
    "sweep",
    "tighten",
]

# The fields of a registry Model that a running backend was built from: changing any of them
# needs a new instance. The others (name, roles, group, timers) are taken over in place.
INSTANCE_FIELDS = frozenset(
    {
        "backend",
        "quantization",
        "vram_estimate_mb",
        "command",
        "health_url",
        "endpoint",
        "env",
        "gpus",
    }
)


def instance_changes(old: Model, new: Model) -> list[str]:
    """The instance fields that differ (empty: the running instance can stay)."""
    return [
        f.name
        for f in fields(Model)
        if f.name in INSTANCE_FIELDS and getattr(old, f.name) != getattr(new, f.name)
    ]


def removed_reason(model_id: str) -> str:
    return f"model {model_id} was removed from the registry"


def redefined_reason(model_id: str, changed_fields: Sequence[str]) -> str:
    return f"model {model_id} was redefined ({', '.join(changed_fields)} changed)"


def sweep(st: State, out: list[Decision]) -> None:
    """Stop what a reconfigure left behind (see the module docstring). Runs inside a pass."""
    if st.retired:
        _retire(st, out)
    if st.inherited is not None:
        _drain(st, out)


def _retire(st: State, out: list[Decision]) -> None:
    for mid, rec in list(st.retired.items()):
        if not rec.holds_memory and not rec.leases:
            changed(st)
            del st.retired[mid]
        elif not rec.leases and rec.state in (ModelState.LOADED, ModelState.LOADING):
            # A load under way is stopped too: it would only ever serve requests that now
            # want the new definition (or none at all).
            stop(st, rec, StopReason.RETIRED, f"{rec.retired}; stopped once unleased", out)


def _heavy_over(p: Profile, heavies: int) -> bool:
    return p.max_heavy_models is not None and heavies > p.max_heavy_models


def _over(st: State, recs: list[ModelRecord]) -> tuple[bool, bool, set[str], bool]:
    p = st.profile
    over_gpus = set()
    for u, g in st.gpus.items():
        if g.total_mb is None:
            continue
        cap = g.total_mb - p.headroom_mb
        if sum(r.shares.get(u, 0) for r in recs) > cap:
            over_gpus.add(u)
    return (
        len(recs) > p.max_concurrent_models,
        sum(r.reserved_mb for r in recs) > p.max_vram_mb,
        over_gpus,
        _heavy_over(p, sum(r.heavy for r in recs)),
    )


def _drain(st: State, out: list[Decision]) -> None:
    p = st.profile
    # What will still hold memory once the unloads under way are done.
    staying = [r for r in instances(st) if r.state in (ModelState.LOADING, ModelState.LOADED)]
    over_count, over_mb, over_gpus, over_heavy = _over(st, staying)
    if not (over_count or over_mb or over_gpus or over_heavy):
        return
    want = st.queue.wanted()
    idle = [r for r in staying if r.state is ModelState.LOADED and not r.leases]
    idle.sort(
        key=lambda r: (reload_cost(load_estimate_s(st, r), reuse_per_s(st, r, want)), r.model.id)
    )
    for rec in idle:
        if not (over_count or over_mb or over_gpus or over_heavy):
            break
        if not (over_count or over_mb or over_gpus & set(rec.shares) or (over_heavy and rec.heavy)):
            continue
        message = (
            f"profile {p.name} allows {p.max_concurrent_models} model(s) and "
            f"{p.max_vram_mb} MiB: stopped to fit after a reconfigure"
        )
        stop(st, rec, StopReason.RECONFIGURED, message, out)
        staying.remove(rec)
        over_count, over_mb, over_gpus, over_heavy = _over(st, staying)


def _in_use(st: State) -> tuple[int, int, dict[str, int], int]:
    holding = [r for r in instances(st) if r.holds_memory]
    return (
        sum(r.reserved_mb for r in holding),
        len(holding),
        {u: held_on(st, u) for u in st.gpus},
        sum(r.heavy for r in holding),
    )


def _caps(st: State) -> dict[str, int]:
    return {
        u: g.total_mb - st.profile.headroom_mb for u, g in st.gpus.items() if g.total_mb is not None
    }


def inherit(st: State) -> None:
    """After a profile change: record how far what holds memory exceeds the new limits."""
    p = st.profile
    mb, count, per_gpu, heavies = _in_use(st)
    caps = _caps(st)
    gpu_over = {u: held for u, held in per_gpu.items() if u in caps and held > caps[u]}
    heavy = heavies if _heavy_over(p, heavies) else None
    if mb <= p.max_vram_mb and count <= p.max_concurrent_models and not gpu_over and not heavy:
        st.inherited = None
        return
    st.inherited = Inherited(
        vram_mb=max(p.max_vram_mb, mb),
        models=max(p.max_concurrent_models, count),
        gpu_mb=gpu_over,
        heavy=heavy,
    )


def tighten(st: State) -> None:
    """After each event while draining: lower the inherited ceilings to what is in use (they
    never go up), and forget them once the profile's own limits hold."""
    inh = st.inherited
    if inh is None:
        return
    p = st.profile
    mb, count, per_gpu, heavies = _in_use(st)
    caps = _caps(st)
    gpu_mb = {
        u: min(ceiling, per_gpu.get(u, 0))
        for u, ceiling in inh.gpu_mb.items()
        if u in caps and per_gpu.get(u, 0) > caps[u]
    }
    vram_mb = min(inh.vram_mb, max(p.max_vram_mb, mb))
    models = min(inh.models, max(p.max_concurrent_models, count))
    heavy = None
    if inh.heavy is not None and _heavy_over(p, heavies):
        heavy = min(inh.heavy, heavies)
    if vram_mb <= p.max_vram_mb and models <= p.max_concurrent_models and not gpu_mb and not heavy:
        st.inherited = None
    else:
        st.inherited = Inherited(vram_mb, models, gpu_mb, heavy)
