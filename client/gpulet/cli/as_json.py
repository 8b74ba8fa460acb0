"""The `--json` shape of each value: snake_case keys, enums as their config-file names,
unknown numbers as null. Scripts depend on these keys; add, never rename."""

from __future__ import annotations

from typing import Any

from gpulet.types import ActiveProfile, Explanation, Gpu, LeaseEvent, Model, Profile, WatchEvent

__all__ = ["active_profile", "event", "explanation", "gpu", "model", "profile"]


def profile(p: Profile) -> dict[str, Any]:
    return {
        "name": p.name,
        "description": p.description,
        "max_vram_mb": p.max_vram_mb,
        "max_concurrent_models": p.max_concurrent_models,
        "preferred_quantizations": list(p.preferred_quantizations),
        "strategy": p.strategy.value,
        "autostart_timeout_seconds": p.autostart_timeout_seconds,
        "grace_period_seconds": p.grace_period_seconds,
        "model_selection_bias": p.model_selection_bias.value,
        "gpu_count": p.gpu_count,
        "tensor_parallel_threshold_mb": p.tensor_parallel_threshold_mb,
        "headroom_mb": p.headroom_mb,
        "builtin": p.builtin,
        "category": p.category,
        "use_case": p.use_case,
        "tags": list(p.tags),
        "recommended_for": list(p.recommended_for),
        "layer_names": list(p.layer_names),
        "layers_count": p.layers_count,
        "engine": dict(p.engine),
    }


def gpu(g: Gpu) -> dict[str, Any]:
    cc = g.compute_capability
    return {
        "index": g.index,
        "uuid": g.uuid,
        "name": g.name,
        "pci_bus_id": g.pci_bus_id,
        "total_mb": g.total_mb,
        "free_mb": g.free_mb,
        "used_mb": g.used_mb,
        "reserved_mb": g.reserved_mb,
        "compute_capability": f"{cc[0]}.{cc[1]}" if cc else None,
        "mig_mode": g.mig_mode.value,
        "state": g.state.value,
        "reading_age_seconds": round(g.reading_age_seconds, 3),
        "placed": [{"model_id": p.model_id, "reservation_mb": p.reservation_mb} for p in g.placed],
        "processes": [
            {"pid": p.pid, "used_mb": p.used_mb, "managed": p.managed, "model_id": p.model_id}
            for p in g.processes
        ],
    }


def active_profile(a: ActiveProfile) -> dict[str, Any]:
    return {
        **profile(a.profile),
        "source": a.source.value,
        "reason": a.reason,
        "usable_vram_mb": a.usable_vram_mb,
        "warnings": list(a.warnings),
        "overrides": list(a.overrides),
        "derived_from": a.derived_from,
        "probe": a.probe,
        "available_profiles": list(a.available_profiles),
        "gpus": [gpu(g) for g in a.gpus],
    }


def model(m: Model) -> dict[str, Any]:
    return {
        "id": m.id,
        "name": m.name,
        "backend": m.backend.value,
        "quantization": m.quantization,
        "vram_estimate_mb": m.vram_estimate_mb,
        "role_priority": dict(m.role_priority),
        "state": m.state.value,
        "gpu_uuids": list(m.gpu_uuids),
        "lease_count": m.lease_count,
        "idle_seconds": m.idle_seconds,
        "reservation_mb": m.reservation_mb,
        "endpoint": m.endpoint,
        "measured_mb": m.measured_mb,
        "peak_mb": m.peak_mb,
        "load_seconds": m.load_seconds,
        "unload_seconds": m.unload_seconds,
        "measured_loads": m.measured_loads,
        "confidence": m.confidence.value,
        "engine": m.engine,
    }


def explanation(e: Explanation) -> dict[str, Any]:
    return {
        "status": e.status.value,
        "reason": e.reason,
        "rank": e.rank,
        "profile": e.profile,
        "limit": e.limit.value,
        "model_selection_bias": e.model_selection_bias.value,
        "engine": e.engine,
        "role": e.role,
        "model_id": e.model_id,
    }


def event(ev: WatchEvent) -> dict[str, Any]:
    when = ev.time.isoformat()
    if isinstance(ev, LeaseEvent):
        return {
            "time": when,
            "type": "lease",
            "kind": ev.kind.value,
            **ev.lease.as_dict(token=False),
            "reason": ev.reason,
        }
    return {
        "time": when,
        "type": "model",
        "model_id": ev.model_id,
        "state": ev.state.value,
        "gpu_uuids": list(ev.gpu_uuids),
        "reason": ev.reason,
    }
