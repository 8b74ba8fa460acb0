"""`gpulet models`, `gpulet roles`, `gpulet select ROLE`, `gpulet explain ROLE MODEL`."""

from __future__ import annotations

import argparse

from gpulet.cli import as_json
from gpulet.cli.exits import Exit
from gpulet.cli.output import print_json, say, table
from gpulet.client import Client
from gpulet.types import ExplainStatus

__all__ = ["explain", "models", "roles", "select"]


def models(client: Client, ns: argparse.Namespace) -> int:
    found = client.models()
    if ns.json:
        print_json({"models": [as_json.model(m) for m in found]})
        return 0
    table(
        ["ID", "BACKEND", "QUANT", "VRAM_MB", "STATE", "GPUS", "LEASES", "IDLE_S", "ROLES"],
        [
            [
                m.id,
                m.backend,
                m.quantization,
                m.vram_estimate_mb,
                m.state,
                [u[:12] for u in m.gpu_uuids],
                m.lease_count,
                None if m.idle_seconds is None else f"{m.idle_seconds:.0f}",
                [f"{k}={v}" for k, v in m.role_priority.items()],
            ]
            for m in found
        ],
        flexible={"GPUS", "ROLES"},
    )
    return 0


def roles(client: Client, ns: argparse.Namespace) -> int:
    names = client.roles()
    if ns.json:
        print_json({"roles": names})
    else:
        for name in names:
            say(name)
    return 0


def select(client: Client, ns: argparse.Namespace) -> int:
    s = client.select(ns.role, top_n=ns.top)
    if ns.json:
        print_json(
            {
                "role": s.role,
                "profile": s.profile,
                "max_vram_mb": s.max_vram_mb,
                "models": [
                    {
                        "id": c.model.id,
                        "name": c.model.name,
                        "quantization": c.model.quantization,
                        "vram_estimate_mb": c.model.vram_estimate_mb,
                        "role_priority": c.role_priority,
                    }
                    for c in s.candidates
                ],
            }
        )
        return 0
    if not s.candidates:
        say(f"no model for {s.role} fits profile {s.profile} (max_vram_mb={s.max_vram_mb})")
        return 0
    say(f"best models for {s.role} on profile {s.profile}:")
    table(
        ["RANK", "ID", "PRIORITY", "QUANT", "VRAM_MB"],
        [
            [i, c.model.id, c.role_priority, c.model.quantization, c.model.vram_estimate_mb]
            for i, c in enumerate(s.candidates, start=1)
        ],
    )
    return 0


def explain(client: Client, ns: argparse.Namespace) -> int:
    e = client.explain(ns.role, ns.model)
    if ns.json:
        print_json(as_json.explanation(e))
    else:
        say(e.status, ": ", e.reason)
    # Scripts ask "is this a model at all?" with the exit code, as with every other command.
    return Exit.NOT_FOUND if e.status is ExplainStatus.NOT_FOUND else Exit.OK
