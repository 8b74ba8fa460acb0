"""How the CLI prints: `--json` for scripts (snake_case keys), aligned tables for people."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from gpulet.v1 import profiles_pb2, types_pb2

__all__ = ["enum_str", "gpu_dict", "model_dict", "print_json", "profile_dict", "table"]


def enum_str(enum: Any, value: int) -> str:
    """STRATEGY_LOAD_UNLOAD → load_unload: the value names the config files use."""
    name: str = enum.Name(value)
    prefix = name.split("_")[0]
    # Prefix is the enum's own name in UPPER_SNAKE; strip exactly that many words.
    words = len(_upper_snake(enum.DESCRIPTOR.name).split("_"))
    return "_".join(name.split("_")[words:]).lower() if prefix else name.lower()


def _upper_snake(camel: str) -> str:
    out = "".join("_" + c if c.isupper() and i else c for i, c in enumerate(camel))
    return out.upper()


def opt(msg: Any, field: str) -> Any:
    return getattr(msg, field) if msg.HasField(field) else None


def profile_dict(p: types_pb2.Profile) -> dict[str, Any]:
    return {
        "name": p.name,
        "description": p.description,
        "max_vram_mb": p.max_vram_mb,
        "max_concurrent_models": p.max_concurrent_models,
        "preferred_quantizations": list(p.preferred_quantizations),
        "strategy": enum_str(types_pb2.Strategy, p.strategy),
        "autostart_timeout_seconds": p.autostart_timeout_seconds,
        "grace_period_seconds": p.grace_period_seconds,
        "model_selection_bias": enum_str(types_pb2.SelectionBias, p.model_selection_bias),
        "gpu_count": p.gpu_count,
        "tensor_parallel_threshold_mb": opt(p, "tensor_parallel_threshold_mb"),
        "headroom_mb": p.headroom_mb,
        "builtin": p.builtin,
    }


def gpu_dict(g: types_pb2.Gpu) -> dict[str, Any]:
    cc = (
        f"{g.compute_capability_major}.{g.compute_capability_minor}"
        if g.HasField("compute_capability_major")
        else None
    )
    return {
        "index": g.index,
        "uuid": g.uuid,
        "name": g.name,
        "pci_bus_id": g.pci_bus_id,
        "total_mb": opt(g, "total_mb"),
        "free_mb": opt(g, "free_mb"),
        "used_mb": opt(g, "used_mb"),
        "reserved_mb": opt(g, "reserved_mb"),
        "compute_capability": cc,
        "mig_mode": enum_str(types_pb2.MigMode, g.mig_mode),
        "state": enum_str(types_pb2.GpuState, g.state),
        "reading_age_seconds": round(g.reading_age_seconds, 3),
        "placed": [{"model_id": p.model_id, "reservation_mb": p.reservation_mb} for p in g.placed],
        "processes": [
            {
                "pid": p.pid,
                "used_mb": opt(p, "used_mb"),
                "managed": p.managed,
                "model_id": p.model_id,
            }
            for p in g.processes
        ],
    }


def model_dict(m: types_pb2.Model) -> dict[str, Any]:
    return {
        "id": m.id,
        "name": m.name,
        "backend": enum_str(types_pb2.BackendKind, m.backend),
        "quantization": m.quantization,
        "vram_estimate_mb": m.vram_estimate_mb,
        "role_priority": dict(sorted(m.role_priority.items())),
        "state": enum_str(types_pb2.ModelState, m.state),
        "gpu_uuids": list(m.gpu_uuids),
        "lease_count": m.lease_count,
        "idle_seconds": opt(m, "idle_seconds"),
        "reservation_mb": m.reservation_mb,
        "endpoint": m.endpoint,
    }


def source_str(source: int) -> str:
    return enum_str(profiles_pb2.ProfileSource, source)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, list | tuple):
        return ",".join(str(x) for x in v) or "-"
    return str(v)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
