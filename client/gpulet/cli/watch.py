"""`gpulet watch`: every state change of models and leases, as they happen."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC
from typing import Any

from gpulet.cli.output import enum_str
from gpulet.client import Client
from gpulet.lease import lease_from_pb
from gpulet.v1 import leases_pb2, types_pb2

__all__ = ["event_dict", "watch"]


def event_dict(r: leases_pb2.WatchResponse) -> dict[str, Any]:
    when = r.time.ToDatetime(tzinfo=UTC).isoformat()
    if r.WhichOneof("event") == "model":
        m = r.model
        return {
            "time": when,
            "type": "model",
            "model_id": m.model_id,
            "state": enum_str(types_pb2.ModelState, m.state),
            "gpu_uuids": list(m.gpu_uuids),
            "reason": m.reason,
        }
    e = r.lease
    return {
        "time": when,
        "type": "lease",
        "kind": enum_str(leases_pb2.LeaseEventKind, e.kind),
        **lease_from_pb(e.lease).as_dict(token=False),
        "reason": e.reason,
    }


def watch(client: Client, ns: argparse.Namespace) -> int:
    try:
        for r in client.watch():
            ev = event_dict(r)
            if ns.json:
                print(json.dumps(ev), flush=True)
            elif ev["type"] == "model":
                print(
                    f"{ev['time']}  model {ev['model_id']}: {ev['state']}"
                    f"{'  ' + ev['reason'] if ev['reason'] else ''}",
                    flush=True,
                )
            else:
                print(
                    f"{ev['time']}  lease {ev['lease_id']} {ev['kind']} ({ev['model_id']}, "
                    f"{ev['client_name']}){'  ' + ev['reason'] if ev['reason'] else ''}",
                    flush=True,
                )
    except KeyboardInterrupt:
        return 0
    print("gpulet: gpuletd closed the watch stream", file=sys.stderr)
    return 1
