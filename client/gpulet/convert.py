"""Protobuf messages → the client's own values (`gpulet.types`). The only module that reads
the wire types' fields; nothing here does I/O."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from google.protobuf import timestamp_pb2

from gpulet.types import (
    ActiveProfile,
    BackendKind,
    Candidate,
    EstimateConfidence,
    Excluded,
    ExplainStatus,
    Explanation,
    Gpu,
    GpuProcess,
    GpuState,
    GpuStatus,
    Lease,
    LeaseEvent,
    LeaseEventKind,
    MigMode,
    Model,
    ModelEvent,
    ModelState,
    PlacedModel,
    Plan,
    PlanOutcome,
    PlanVictim,
    Profile,
    ProfileList,
    ProfileSource,
    Progress,
    QueueItem,
    Selection,
    SelectionBias,
    SelectionLimit,
    Strategy,
    WatchEvent,
)
from gpulet.v1 import leases_pb2, profiles_pb2, selector_pb2, types_pb2

__all__ = [
    "active_profile",
    "explanation",
    "gpu",
    "gpu_status",
    "lease",
    "model",
    "plan",
    "profile",
    "profile_list",
    "progress",
    "queue_item",
    "selection",
    "watch_event",
]

E = TypeVar("E", bound=StrEnum)


def _enum(cls: type[E], pb_enum: Any, value: int) -> E:
    """STRATEGY_LOAD_UNLOAD → Strategy.LOAD_UNLOAD, by the protobuf name minus its prefix."""
    try:
        name: str = pb_enum.Name(value)
    except ValueError:  # a value from a newer gpuletd
        return cls("unspecified")
    words = len(_upper_snake(pb_enum.DESCRIPTOR.name).split("_"))
    try:
        return cls("_".join(name.split("_")[words:]).lower())
    except ValueError:
        return cls("unspecified")


def _upper_snake(camel: str) -> str:
    return "".join("_" + c if c.isupper() and i else c for i, c in enumerate(camel)).upper()


def _opt(msg: Any, name: str) -> Any:
    """An `optional` field: None when unset, so that unknown never reads as 0."""
    return getattr(msg, name) if msg.HasField(name) else None


def _time(ts: timestamp_pb2.Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def profile(p: types_pb2.Profile) -> Profile:
    return Profile(
        name=p.name,
        description=p.description,
        max_vram_mb=p.max_vram_mb,
        max_concurrent_models=p.max_concurrent_models,
        preferred_quantizations=tuple(p.preferred_quantizations),
        strategy=_enum(Strategy, types_pb2.Strategy, p.strategy),
        autostart_timeout_seconds=p.autostart_timeout_seconds,
        grace_period_seconds=p.grace_period_seconds,
        model_selection_bias=_enum(SelectionBias, types_pb2.SelectionBias, p.model_selection_bias),
        gpu_count=p.gpu_count,
        tensor_parallel_threshold_mb=_opt(p, "tensor_parallel_threshold_mb"),
        headroom_mb=p.headroom_mb,
        builtin=p.builtin,
        category=p.category,
        use_case=p.use_case,
        tags=tuple(p.tags),
        recommended_for=tuple(p.recommended_for),
        layer_names=tuple(p.layer_names),
        engine={k: _json_value(v) for k, v in sorted(p.engine.items())},
    )


def _json_value(text: str) -> Any:
    # The daemon sends each engine setting as JSON text; a value that is not JSON is kept
    # as the string it is rather than failing the whole answer.
    try:
        return json.loads(text)
    except ValueError:
        return text


def gpu(g: types_pb2.Gpu) -> Gpu:
    cc = (
        (g.compute_capability_major, g.compute_capability_minor)
        if g.HasField("compute_capability_major")
        else None
    )
    return Gpu(
        index=g.index,
        uuid=g.uuid,
        name=g.name,
        pci_bus_id=g.pci_bus_id,
        total_mb=_opt(g, "total_mb"),
        free_mb=_opt(g, "free_mb"),
        used_mb=_opt(g, "used_mb"),
        reserved_mb=_opt(g, "reserved_mb"),
        compute_capability=cc,
        mig_mode=_enum(MigMode, types_pb2.MigMode, g.mig_mode),
        state=_enum(GpuState, types_pb2.GpuState, g.state),
        reading_age_seconds=g.reading_age_seconds,
        placed=tuple(PlacedModel(p.model_id, p.reservation_mb) for p in g.placed),
        processes=tuple(
            GpuProcess(p.pid, _opt(p, "used_mb"), p.managed, p.model_id) for p in g.processes
        ),
    )


def gpu_status(r: profiles_pb2.GetGpuStatusResponse) -> GpuStatus:
    return GpuStatus(gpus=tuple(gpu(g) for g in r.gpus), probe=r.probe)


def active_profile(r: profiles_pb2.GetActiveProfileResponse) -> ActiveProfile:
    return ActiveProfile(
        profile=profile(r.profile),
        source=_enum(ProfileSource, profiles_pb2.ProfileSource, r.source),
        reason=r.reason,
        gpus=tuple(gpu(g) for g in r.gpus),
        usable_vram_mb=r.usable_vram_mb,
        available_profiles=tuple(r.available_profiles),
        warnings=tuple(r.warnings),
        probe=r.probe,
        overrides=tuple(r.overrides),
        derived_from=r.derived_from or None,
    )


def profile_list(r: profiles_pb2.ListProfilesResponse) -> ProfileList:
    return ProfileList(profiles=tuple(profile(p) for p in r.profiles), active=r.active)


def model(m: types_pb2.Model) -> Model:
    return Model(
        id=m.id,
        name=m.name,
        backend=_enum(BackendKind, types_pb2.BackendKind, m.backend),
        quantization=m.quantization,
        vram_estimate_mb=m.vram_estimate_mb,
        role_priority=dict(sorted(m.role_priority.items())),
        group=m.group,
        state=_enum(ModelState, types_pb2.ModelState, m.state),
        gpu_uuids=tuple(m.gpu_uuids),
        lease_count=m.lease_count,
        idle_seconds=_opt(m, "idle_seconds"),
        reservation_mb=m.reservation_mb,
        endpoint=m.endpoint,
        measured_mb=_opt(m, "measured_mb"),
        peak_mb=_opt(m, "peak_mb"),
        load_seconds=_opt(m, "load_seconds"),
        unload_seconds=_opt(m, "unload_seconds"),
        measured_loads=m.measured_loads,
        confidence=_enum(EstimateConfidence, types_pb2.EstimateConfidence, m.confidence),
        engine=m.engine,
    )


def _limit(value: int) -> SelectionLimit:
    return _enum(SelectionLimit, selector_pb2.SelectionLimit, value)


def selection(r: selector_pb2.SelectByRoleResponse) -> Selection:
    return Selection(
        role=r.role,
        profile=r.profile,
        candidates=tuple(
            Candidate(model(c.model), c.role_priority, c.engine) for c in r.candidates
        ),
        max_vram_mb=r.max_vram_mb,
        model_selection_bias=_enum(SelectionBias, types_pb2.SelectionBias, r.model_selection_bias),
        top_n=r.top_n,
        excluded=tuple(Excluded(x.model_id, _limit(x.limit), x.reason) for x in r.excluded),
        bf16_preferred=_opt(r, "bf16_preferred"),
    )


def explanation(r: selector_pb2.ExplainSelectionResponse, role: str, model_id: str) -> Explanation:
    return Explanation(
        role=role,
        model_id=model_id,
        status=_enum(ExplainStatus, selector_pb2.ExplainStatus, r.status),
        reason=r.reason,
        rank=r.rank or None,
        profile=r.profile,
        limit=_limit(r.limit),
        model_selection_bias=_enum(SelectionBias, types_pb2.SelectionBias, r.model_selection_bias),
        engine=r.engine,
    )


def lease(m: leases_pb2.Lease, *, token: str = "") -> Lease:
    """`token`: the caller's own, for a message that does not carry it (a Renew's answer)."""
    return Lease(
        lease_id=m.lease_id,
        token=m.token or token,
        model_id=m.model_id,
        gpu_uuids=tuple(m.gpu_uuids),
        cuda_visible_devices=m.cuda_visible_devices,
        endpoint=m.endpoint,
        expires_at=_time(m.expires_at),
        granted_at=_time(m.granted_at) if m.HasField("granted_at") else None,
        client_name=m.client_name,
        exclusive=m.exclusive,
    )


def progress(r: leases_pb2.AcquireResponse) -> Progress | None:
    """A queued or loading step of an Acquire; None for the grant (or an unknown step)."""
    which = r.WhichOneof("state")
    if which == "queued":
        return Progress("queued", r.queued.position, r.queued.queue_length)
    if which == "loading":
        return Progress("loading", model_id=r.loading.model_id)
    return None


def queue_item(m: leases_pb2.QueuedRequest) -> QueueItem:
    return QueueItem(
        position=_opt(m, "position"),
        model_id=m.model_id,
        client_name=m.client_name,
        priority=m.priority,
        effective_priority=m.effective_priority,
        exclusive=m.exclusive,
        waited_seconds=m.waited_seconds,
        waiting_for=m.waiting_for,
        arrived_at=_time(m.arrived_at) if m.HasField("arrived_at") else None,
        deadline=_time(m.deadline) if m.HasField("deadline") else None,
    )


def plan(m: leases_pb2.PlanResponse) -> Plan:
    return Plan(
        outcome=_enum(PlanOutcome, leases_pb2.PlanOutcome, m.outcome),
        model_id=m.model_id,
        gpu_uuids=tuple(m.gpu_uuids),
        victims=tuple(
            PlanVictim(
                model_id=v.model_id,
                gpu_uuids=tuple(v.gpu_uuids),
                reserved_mb=v.reserved_mb,
                reload_seconds=v.reload_seconds,
                reload_measured=v.reload_measured,
            )
            for v in m.victims
        ),
        position=_opt(m, "position"),
        waiting_for=m.waiting_for,
        message=m.message,
        code=m.code,
        reason=m.reason,
    )


def watch_event(r: leases_pb2.WatchResponse) -> WatchEvent | None:
    """None for an event kind this client does not know (from a newer gpuletd)."""
    when = _time(r.time)
    which = r.WhichOneof("event")
    if which == "model":
        m = r.model
        return ModelEvent(
            time=when,
            model_id=m.model_id,
            state=_enum(ModelState, types_pb2.ModelState, m.state),
            gpu_uuids=tuple(m.gpu_uuids),
            reason=m.reason,
        )
    if which == "lease":
        e = r.lease
        return LeaseEvent(
            time=when,
            kind=_enum(LeaseEventKind, leases_pb2.LeaseEventKind, e.kind),
            lease=lease(e.lease),
            reason=e.reason,
        )
    return None
