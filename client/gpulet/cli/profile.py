"""`gpulet profile show|list|get` and `gpulet gpus`."""

from __future__ import annotations

import argparse

from gpulet.cli import as_json
from gpulet.cli.output import print_json, say, table
from gpulet.client import Client

__all__ = ["gpus", "profile_get", "profile_list", "profile_show"]


def _mb(value: int | None) -> str:
    return "?" if value is None else str(value)


def profile_show(client: Client, ns: argparse.Namespace) -> int:
    a = client.active_profile()
    if ns.json:
        print_json(as_json.active_profile(a))
        return 0
    p = a.profile
    say(f"profile   {p.name} (source: {a.source}: ", a.reason, ")")
    say("          ", p.description)
    if a.derived_from:
        say("derived   from ", a.derived_from, ", sized to these GPUs")
    say(
        f"budget    {p.max_vram_mb} MiB of {a.usable_vram_mb} MiB usable, "
        f"{p.max_concurrent_models} model(s) at once, strategy {p.strategy}"
    )
    say(f"selection {p.model_selection_bias}, quantizations ", ", ".join(p.preferred_quantizations))
    say(
        f"timers    autostart {p.autostart_timeout_seconds:g} s, grace {p.grace_period_seconds:g} s"
    )
    for o in a.overrides:
        say("override  ", o)
    for w in a.warnings:
        say("WARNING   ", w)
    say(f"gpus      {len(a.gpus)} (", a.probe, " probe)")
    for g in a.gpus:
        say(
            f"  [{g.index}] ",
            g.name,
            f"  {_mb(g.total_mb)} MiB total, {_mb(g.free_mb)} MiB free  ",
            g.uuid,
        )
    return 0


def profile_get(client: Client, ns: argparse.Namespace) -> int:
    p = client.get_profile(ns.name)
    if ns.json:
        print_json(as_json.profile(p))
        return 0
    say(f"profile   {p.name}", " (built in)" if p.builtin else "")
    say("          ", p.description)
    if p.category or p.use_case:
        say("category  ", p.category or "-", "  ", p.use_case)
    if p.tags:
        say("tags      ", ", ".join(p.tags))
    if p.recommended_for:
        say("for       ", ", ".join(p.recommended_for))
    say(f"layers    {p.layers_count}: ", " -> ".join(p.layer_names))
    say(
        f"budget    {p.max_vram_mb} MiB, {p.max_concurrent_models} model(s) at once, "
        f"{p.gpu_count} GPU(s), strategy {p.strategy}"
    )
    say(f"selection {p.model_selection_bias}, quantizations ", ", ".join(p.preferred_quantizations))
    say(
        f"timers    autostart {p.autostart_timeout_seconds:g} s, grace {p.grace_period_seconds:g} s"
    )
    return 0


def profile_list(client: Client, ns: argparse.Namespace) -> int:
    r = client.list_profiles()
    if ns.json:
        profiles = [{**as_json.profile(p), "active": p.name == r.active} for p in r.profiles]
        print_json({"profiles": profiles, "active": r.active})
        return 0
    table(
        ["", "NAME", "CATEGORY", "MAX_VRAM_MB", "MODELS", "STRATEGY", "BIAS", "DESCRIPTION"],
        [
            [
                "*" if p.name == r.active else "",
                p.name,
                p.category,
                p.max_vram_mb,
                p.max_concurrent_models,
                p.strategy,
                p.model_selection_bias,
                p.description,
            ]
            for p in r.profiles
        ],
        flexible={"DESCRIPTION"},
    )
    return 0


def gpus(client: Client, ns: argparse.Namespace) -> int:
    status = client.gpu_status(include_processes=ns.processes)
    if ns.json:
        print_json({"gpus": [as_json.gpu(g) for g in status.gpus], "probe": status.probe})
        return 0
    if not status.gpus:
        say("no GPUs (", status.probe, " probe)")
        return 0
    table(
        ["INDEX", "NAME", "TOTAL_MB", "FREE_MB", "USED_MB", "STATE", "PLACED", "UUID"],
        [
            [
                g.index,
                g.name,
                g.total_mb,
                g.free_mb,
                g.used_mb,
                g.state,
                [f"{p.model_id}={p.reservation_mb}" for p in g.placed],
                g.uuid,
            ]
            for g in status.gpus
        ],
        flexible={"NAME", "PLACED"},
    )
    if ns.processes:
        rows = [
            [g.index, p.pid, p.used_mb, p.model_id or "(not gpuletd's)"]
            for g in status.gpus
            for p in g.processes
        ]
        say()
        if rows:
            table(["GPU", "PID", "USED_MB", "MODEL"], rows)
        else:
            say("no processes hold GPU memory")
    return 0
