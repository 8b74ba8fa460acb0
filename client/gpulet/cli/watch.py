"""`gpulet watch`: every state change of models and leases, as they happen."""

from __future__ import annotations

import argparse
import json
import sys

from gpulet.cli import as_json
from gpulet.cli.exits import Exit
from gpulet.cli.output import say
from gpulet.client import Client
from gpulet.types import LeaseEvent, WatchEvent

__all__ = ["describe", "watch"]


def describe(ev: WatchEvent) -> list[object]:
    """One event as the parts of a line for people (`say` makes each part safe)."""
    when = ev.time.isoformat()
    reason = ["  ", ev.reason] if ev.reason else []
    if isinstance(ev, LeaseEvent):
        x = ev.lease
        return [
            f"{when}  lease ",
            x.lease_id,
            f" {ev.kind} (",
            x.model_id,
            ", ",
            x.client_name,
            ")",
            *reason,
        ]
    return [f"{when}  model ", ev.model_id, f": {ev.state}", *reason]


def watch(client: Client, ns: argparse.Namespace) -> int:
    try:
        for ev in client.watch():
            if ns.json:
                print(json.dumps(as_json.event(ev)), flush=True)
            else:
                say(*describe(ev), flush=True)
    except KeyboardInterrupt:
        return Exit.OK
    print("gpulet: gpuletd closed the watch stream", file=sys.stderr)
    return Exit.UNREACHABLE
