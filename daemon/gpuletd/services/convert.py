"""Domain values → protobuf messages (one direction: the daemon only answers)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence

from gpulet.v1 import types_pb2 as pb
from gpuletd.measurements import Confidence, confidence
from gpuletd.probe.types import GpuProcess, GpuSnapshot, GpuState, MigMode
from gpuletd.profiles import BUILTIN_PROFILES, Bias, Profile, Strategy
from gpuletd.registry import Backend, Model
from gpuletd.scheduler.decisions import ModelState
from gpuletd.scheduler.views import ModelView
from gpuletd.store import Measurement

__all__ = ["bias_pb", "gpu_pb", "model_pb", "model_state_pb", "profile_pb"]

_STRATEGY = {
    Strategy.LOAD_UNLOAD: pb.STRATEGY_LOAD_UNLOAD,
    Strategy.CONCURRENT_LIMITED: pb.STRATEGY_CONCURRENT_LIMITED,
    Strategy.CONCURRENT_FULL: pb.STRATEGY_CONCURRENT_FULL,
    Strategy.TENSOR_PARALLEL_OR_DISTRIBUTED: pb.STRATEGY_TENSOR_PARALLEL_OR_DISTRIBUTED,
}
_BIAS = {
    Bias.VRAM_EFFICIENT: pb.SELECTION_BIAS_VRAM_EFFICIENT,
    Bias.BALANCED: pb.SELECTION_BIAS_BALANCED,
    Bias.QUALITY: pb.SELECTION_BIAS_QUALITY,
}
_GPU_STATE = {
    GpuState.OK: pb.GPU_STATE_OK,
    GpuState.STALE: pb.GPU_STATE_STALE,
    GpuState.LOST: pb.GPU_STATE_LOST,
}
_MIG = {
    MigMode.UNKNOWN: pb.MIG_MODE_UNSPECIFIED,
    MigMode.DISABLED: pb.MIG_MODE_DISABLED,
    MigMode.ENABLED: pb.MIG_MODE_ENABLED,
}
_BACKEND = {
    Backend.RESERVATION: pb.BACKEND_KIND_RESERVATION,
    Backend.PROCESS: pb.BACKEND_KIND_PROCESS,
}


def bias_pb(bias: Bias) -> pb.SelectionBias.ValueType:
    return _BIAS[bias]


def profile_pb(p: Profile) -> pb.Profile:
    msg = pb.Profile(
        name=p.name,
        description=p.description,
        max_vram_mb=p.max_vram_mb,
        max_concurrent_models=p.max_concurrent_models,
        preferred_quantizations=list(p.preferred_quantizations),
        strategy=_STRATEGY[p.strategy],
        autostart_timeout_seconds=p.autostart_timeout_seconds,
        grace_period_seconds=p.grace_period_seconds,
        model_selection_bias=_BIAS[p.model_selection_bias],
        gpu_count=p.gpu_count,
        headroom_mb=p.headroom_mb,
        builtin=BUILTIN_PROFILES.get(p.name) == p,
        category=p.category.value if p.category is not None else "",
        use_case=p.use_case,
        tags=list(p.tags),
        recommended_for=list(p.recommended_for),
        layer_names=list(p.layer_names or (p.name,)),
        layers_count=len(p.layer_names or (p.name,)),
        engine={k: json.dumps(list(v) if isinstance(v, tuple) else v) for k, v in p.engine.items()},
    )
    if p.tensor_parallel_threshold_mb is not None:
        msg.tensor_parallel_threshold_mb = p.tensor_parallel_threshold_mb
    return msg


def gpu_pb(
    g: GpuSnapshot,
    placed: Mapping[str, int] | None = None,
    processes: Sequence[GpuProcess] = (),
    managed: Mapping[int, str] | None = None,
) -> pb.Gpu:
    msg = pb.Gpu(
        index=g.index,
        uuid=g.uuid,
        name=g.name,
        pci_bus_id=g.pci_bus_id,
        mig_mode=_MIG[g.mig_mode],
        state=_GPU_STATE[g.state],
        reading_age_seconds=max(0.0, time.monotonic() - g.read_at) if g.read_at else 0.0,
        placed=[pb.PlacedModel(model_id=k, reservation_mb=v) for k, v in (placed or {}).items()],
    )
    for p in processes:
        owner = (managed or {}).get(p.pid)
        proc = msg.processes.add(pid=p.pid, managed=owner is not None, model_id=owner or "")
        if p.used_mb is not None:
            proc.used_mb = p.used_mb
    # Unknown stays unset: proto3 `optional` lets a client tell "unknown" from 0.
    for name in ("total_mb", "free_mb", "used_mb", "reserved_mb"):
        value = getattr(g, name)
        if value is not None:
            setattr(msg, name, value)
    if g.compute_capability is not None:
        msg.compute_capability_major, msg.compute_capability_minor = g.compute_capability
    return msg


_MODEL_STATE = {
    ModelState.UNLOADED: pb.MODEL_STATE_UNLOADED,
    ModelState.LOADING: pb.MODEL_STATE_LOADING,
    ModelState.LOADED: pb.MODEL_STATE_LOADED,
    ModelState.UNLOADING: pb.MODEL_STATE_UNLOADING,
    ModelState.FAILED: pb.MODEL_STATE_FAILED,
}


def model_state_pb(state: ModelState) -> pb.ModelState.ValueType:
    return _MODEL_STATE[state]


_CONFIDENCE = {
    Confidence.LOW: pb.ESTIMATE_CONFIDENCE_LOW,
    Confidence.MEDIUM: pb.ESTIMATE_CONFIDENCE_MEDIUM,
    Confidence.HIGH: pb.ESTIMATE_CONFIDENCE_HIGH,
}


def _measured(msg: pb.Model, view: ModelView | None, measured: Measurement) -> None:
    last = view.measured_mb if view is not None else None
    # A footprint from before the measurements table existed still counts as one load.
    loads = max(measured.loads, 1 if last else 0)
    peak = max(measured.peak_mb or 0, last or 0)
    if last is not None:
        msg.measured_mb = last
    if peak:
        msg.peak_mb = peak
    if view is not None and view.load_seconds is not None:
        msg.load_seconds = view.load_seconds
    if measured.unload_seconds is not None:
        msg.unload_seconds = measured.unload_seconds
    msg.measured_loads = loads
    msg.confidence = _CONFIDENCE[confidence(loads)]


# The registry's part of each model's message, kept while its Model is the one it was made
# from: SelectByRole and ListModels convert models on every call, and a copy of a message
# costs a fifth of building one field by field.
_REGISTERED: dict[str, tuple[Model, pb.Model]] = {}
_REGISTERED_MAX = 4096


def _registered_pb(m: Model) -> pb.Model:
    return pb.Model(
        id=m.id,
        name=m.name,
        backend=_BACKEND[m.backend],
        quantization=m.quantization,
        vram_estimate_mb=m.vram_estimate_mb,
        role_priority=dict(m.role_priority),
        group=m.group or "",
        state=pb.MODEL_STATE_UNLOADED,
        reservation_mb=m.vram_estimate_mb,
        engine=m.engine,
    )


def model_pb(
    m: Model,
    view: ModelView | None = None,
    *,
    endpoint: str = "",
    now: float = 0.0,
    measured: Measurement | None = None,
) -> pb.Model:
    kept = _REGISTERED.get(m.id)
    if kept is None or kept[0] is not m:
        if len(_REGISTERED) >= _REGISTERED_MAX:
            _REGISTERED.clear()  # bounded: models a reload replaced would stay otherwise
        kept = _REGISTERED[m.id] = (m, _registered_pb(m))
    msg = pb.Model()
    msg.CopyFrom(kept[1])
    msg.endpoint = endpoint
    if view is not None:
        msg.state = _MODEL_STATE[view.state]
        msg.gpu_uuids.extend(view.gpu_uuids)
        msg.lease_count = view.lease_count
        msg.reservation_mb = view.reservation_mb
        if view.idle_since is not None:
            msg.idle_seconds = max(0.0, now - view.idle_since)
    if measured is not None:
        _measured(msg, view, measured)
    return msg
