"""`gpulet profile show|list` and `gpulet gpus`."""

from __future__ import annotations

import argparse

from gpulet.cli.output import gpu_dict, print_json, profile_dict, source_str, table
from gpulet.client import Client

__all__ = ["gpus", "profile_list", "profile_show"]


def profile_show(client: Client, ns: argparse.Namespace) -> int:
    r = client.active_profile()
    data = {
        **profile_dict(r.profile),
        "source": source_str(r.source),
        "reason": r.reason,
        "usable_vram_mb": r.usable_vram_mb,
        "warnings": list(r.warnings),
        "overrides": list(r.overrides),
        "probe": r.probe,
        "available_profiles": list(r.available_profiles),
        "gpus": [gpu_dict(g) for g in r.gpus],
    }
    if ns.json:
        print_json(data)
        return 0
    print(f"profile   {data['name']} (source: {data['source']}: {data['reason']})")
    print(f"          {data['description']}")
    print(
        f"budget    {data['max_vram_mb']} MiB of {data['usable_vram_mb']} MiB usable, "
        f"{data['max_concurrent_models']} model(s) at once, strategy {data['strategy']}"
    )
    print(
        f"selection {data['model_selection_bias']}, quantizations "
        f"{', '.join(data['preferred_quantizations'])}"
    )
    print(
        f"timers    autostart {data['autostart_timeout_seconds']:g} s, "
        f"grace {data['grace_period_seconds']:g} s"
    )
    for o in data["overrides"]:
        print(f"override  {o}")
    for w in data["warnings"]:
        print(f"WARNING   {w}")
    print(f"gpus      {len(data['gpus'])} ({data['probe']} probe)")
    for g in data["gpus"]:
        print(
            f"  [{g['index']}] {g['name']}  {g['total_mb']} MiB total, {g['free_mb']} MiB free"
            f"  {g['uuid']}"
        )
    return 0


def profile_list(client: Client, ns: argparse.Namespace) -> int:
    r = client.list_profiles()
    profiles = [{**profile_dict(p), "active": p.name == r.active} for p in r.profiles]
    if ns.json:
        print_json({"profiles": profiles, "active": r.active})
        return 0
    table(
        ["", "NAME", "MAX_VRAM_MB", "MODELS", "STRATEGY", "BIAS", "DESCRIPTION"],
        [
            [
                "*" if p["active"] else "",
                p["name"],
                p["max_vram_mb"],
                p["max_concurrent_models"],
                p["strategy"],
                p["model_selection_bias"],
                p["description"],
            ]
            for p in profiles
        ],
    )
    return 0


def gpus(client: Client, ns: argparse.Namespace) -> int:
    r = client.gpu_status(include_processes=ns.processes)
    data = [gpu_dict(g) for g in r.gpus]
    if ns.json:
        print_json({"gpus": data, "probe": r.probe})
        return 0
    if not data:
        print(f"no GPUs ({r.probe} probe)")
        return 0
    table(
        ["INDEX", "NAME", "TOTAL_MB", "FREE_MB", "USED_MB", "STATE", "PLACED", "UUID"],
        [
            [
                g["index"],
                g["name"],
                g["total_mb"],
                g["free_mb"],
                g["used_mb"],
                g["state"],
                [f"{p['model_id']}={p['reservation_mb']}" for p in g["placed"]],
                g["uuid"],
            ]
            for g in data
        ],
    )
    if ns.processes:
        rows = [
            [g["index"], p["pid"], p["used_mb"], p["model_id"] or "(not gpuletd's)"]
            for g in data
            for p in g["processes"]
        ]
        print()
        if rows:
            table(["GPU", "PID", "USED_MB", "MODEL"], rows)
        else:
            print("no processes hold GPU memory")
    return 0
