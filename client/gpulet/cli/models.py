"""`gpulet models`, `gpulet roles`, `gpulet select ROLE`, `gpulet explain ROLE MODEL`."""

from __future__ import annotations

import argparse
from typing import Any

from gpulet.cli.output import enum_str, model_dict, print_json, table
from gpulet.client import Client
from gpulet.v1 import selector_pb2

__all__ = ["explain", "models", "roles", "select"]


def models(client: Client, ns: argparse.Namespace) -> int:
    data = [model_dict(m) for m in client.models().models]
    if ns.json:
        print_json({"models": data})
        return 0
    table(
        ["ID", "BACKEND", "QUANT", "VRAM_MB", "STATE", "GPUS", "LEASES", "IDLE_S", "ROLES"],
        [
            [
                m["id"],
                m["backend"],
                m["quantization"],
                m["vram_estimate_mb"],
                m["state"],
                [u[:12] for u in m["gpu_uuids"]],
                m["lease_count"],
                None if m["idle_seconds"] is None else f"{m['idle_seconds']:.0f}",
                [f"{k}={v}" for k, v in m["role_priority"].items()],
            ]
            for m in data
        ],
    )
    return 0


def roles(client: Client, ns: argparse.Namespace) -> int:
    names = list(client.roles().roles)
    if ns.json:
        print_json({"roles": names})
    else:
        print("\n".join(names))
    return 0


def select(client: Client, ns: argparse.Namespace) -> int:
    r = client.select(ns.role, top_n=ns.top)
    data: dict[str, Any] = {
        "role": r.role,
        "profile": r.profile,
        "max_vram_mb": r.max_vram_mb,
        "models": [
            {
                "id": c.model.id,
                "name": c.model.name,
                "quantization": c.model.quantization,
                "vram_estimate_mb": c.model.vram_estimate_mb,
                "role_priority": c.role_priority,
            }
            for c in r.candidates
        ],
    }
    if ns.json:
        print_json(data)
        return 0
    if not data["models"]:
        print(f"no model for {r.role} fits profile {r.profile} (max_vram_mb={r.max_vram_mb})")
        return 0
    print(f"best models for {r.role} on profile {r.profile}:")
    table(
        ["RANK", "ID", "PRIORITY", "QUANT", "VRAM_MB"],
        [
            [i, m["id"], m["role_priority"], m["quantization"], m["vram_estimate_mb"]]
            for i, m in enumerate(data["models"], start=1)
        ],
    )
    return 0


def explain(client: Client, ns: argparse.Namespace) -> int:
    r = client.explain(ns.role, ns.model)
    status = enum_str(selector_pb2.ExplainStatus, r.status)
    if ns.json:
        print_json(
            {
                "status": status,
                "reason": r.reason,
                "rank": r.rank or None,
                "profile": r.profile,
                "role": ns.role,
                "model_id": ns.model,
            }
        )
    else:
        print(f"{status}: {r.reason}")
    return 0
