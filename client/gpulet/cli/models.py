"""`gpulet models`, `gpulet roles`, `gpulet select ROLE`, `gpulet explain ROLE MODEL`."""

from __future__ import annotations

import argparse

from gpulet.cli import as_json
from gpulet.cli.exits import Exit
from gpulet.cli.output import print_json, say, table
from gpulet.client import Client
from gpulet.types import ExplainStatus, SelectionLimit

__all__ = ["explain", "models", "roles", "select"]


def _seconds(s: float | None) -> str | None:
    return None if s is None else f"{s:.1f}"


def models(client: Client, ns: argparse.Namespace) -> int:
    found = client.models()
    if ns.json:
        print_json({"models": [as_json.model(m) for m in found]})
        return 0
    # VRAM_MB is the configured estimate; PEAK_MB, LOAD_S and UNLOAD_S what gpuletd measured
    # (seed 003), CONF how far the reservation is to be trusted (low: never measured).
    table(
        [
            "ID",
            "BACKEND",
            "QUANT",
            "VRAM_MB",
            "PEAK_MB",
            "LOAD_S",
            "UNLOAD_S",
            "CONF",
            "STATE",
            "GPUS",
            "LEASES",
            "IDLE_S",
            "ROLES",
        ],
        [
            [
                m.id,
                m.backend,
                m.quantization,
                m.vram_estimate_mb,
                m.peak_mb,
                _seconds(m.load_seconds),
                _seconds(m.unload_seconds),
                m.confidence,
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
    s = client.select(ns.role, top_n=ns.top, profile=ns.profile)
    if ns.json:
        print_json(
            {
                "role": s.role,
                "profile": s.profile,
                "max_vram_mb": s.max_vram_mb,
                "top_n": s.top_n,
                "model_selection_bias": s.model_selection_bias.value,
                "bf16_preferred": s.bf16_preferred,
                "models": [
                    {
                        "id": c.model.id,
                        "name": c.model.name,
                        "engine": c.engine,
                        "quantization": c.model.quantization,
                        "vram_estimate_mb": c.model.vram_estimate_mb,
                        "reservation_mb": c.model.reservation_mb,
                        "role_priority": c.role_priority,
                    }
                    for c in s.candidates
                ],
                "excluded": [
                    {"id": x.model_id, "limit": x.limit.value, "reason": x.reason}
                    for x in s.excluded
                ],
            }
        )
        return 0
    if not s.candidates:
        say(
            f"no model for {s.role} fits profile {s.profile} (max_vram_mb={s.max_vram_mb}) "
            "on this machine"
        )
    else:
        say(
            f"best models for {s.role} on profile {s.profile} "
            f"({s.model_selection_bias} bias, top {s.top_n}):"
        )
        table(
            ["RANK", "ID", "ENGINE", "PRIORITY", "QUANT", "VRAM_MB"],
            [
                [
                    i,
                    c.model.id,
                    c.engine,
                    c.role_priority,
                    c.model.quantization,
                    c.model.reservation_mb,
                ]
                for i, c in enumerate(s.candidates, start=1)
            ],
        )
    for x in s.excluded:
        say(f"left out: {x.reason}")
    return 0


def explain(client: Client, ns: argparse.Namespace) -> int:
    e = client.explain(ns.role, ns.model, profile=ns.profile)
    if ns.json:
        print_json(as_json.explanation(e))
    else:
        limit = "" if e.limit is SelectionLimit.UNSPECIFIED else f" ({e.limit})"
        say(e.status, limit, ": ", e.reason)
    # Scripts ask "is this a model at all?" with the exit code, as with every other command.
    return Exit.NOT_FOUND if e.status is ExplainStatus.NOT_FOUND else Exit.OK
