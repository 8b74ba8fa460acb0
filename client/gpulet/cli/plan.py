"""`gpulet plan`: what an acquire would meet now, without changing anything."""

from __future__ import annotations

import argparse
from typing import Any

from gpulet.cli import args
from gpulet.cli.exits import Exit
from gpulet.cli.lease import VRAM_MB
from gpulet.cli.output import err, print_json, safe, say, table
from gpulet.client import Client
from gpulet.types import Plan, PlanOutcome

__all__ = ["HEADERS", "add_arguments", "as_dict", "plan"]

HEADERS = ["EVICTED", "GPUS", "MIB", "RELOAD"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", type=args.identifier("model id"), help="or use --role")
    p.add_argument(
        "--role",
        type=args.identifier("role"),
        help="the model the daemon would pick for this role",
    )
    p.add_argument(
        "--priority",
        type=args.integer(args.PRIORITY),
        default=0,
        metavar="P",
        help=f"{args.PRIORITY.start} to {args.PRIORITY.stop - 1} (default 0)",
    )
    p.add_argument("--exclusive", action="store_true", help="as if it asked for the model alone")
    p.add_argument(
        "--vram",
        type=args.integer(VRAM_MB),
        default=None,
        metavar="MiB",
        help="a memory lease of this much raw VRAM instead of a model",
    )


def as_dict(p: Plan) -> dict[str, Any]:
    """The `--json` shape of a plan (add keys, never rename)."""
    return {
        "outcome": p.outcome.value,
        "model_id": p.model_id,
        "gpu_uuids": list(p.gpu_uuids),
        "victims": [
            {
                "model_id": v.model_id,
                "gpu_uuids": list(v.gpu_uuids),
                "reserved_mb": v.reserved_mb,
                "reload_seconds": round(v.reload_seconds, 3),
                "reload_measured": v.reload_measured,
            }
            for v in p.victims
        ],
        "position": p.position,
        "waiting_for": p.waiting_for,
        "message": p.message,
        "code": p.code or None,
        "reason": p.reason or None,
    }


def _headline(p: Plan) -> str:
    model = safe(p.model_id)
    match p.outcome:
        case PlanOutcome.GRANTED:
            return f"{model}: granted now on {', '.join(p.gpu_uuids)} (it is loaded)"
        case PlanOutcome.LOAD:
            return f"{model}: would load now on {', '.join(p.gpu_uuids)}"
        case PlanOutcome.WAIT:
            at = f" at position {p.position}" if p.position is not None else ""
            why = f" for {safe(p.waiting_for)}" if p.waiting_for else ""
            return f"{model}: would wait{at}{why}"
        case PlanOutcome.REFUSED:
            code = f" ({p.reason or p.code})" if p.reason or p.code else ""
            return f"{model or 'request'}: would be refused{code}: {safe(p.message)}"
        case _:
            return f"{model}: {safe(p.message)}"


def plan(client: Client, ns: argparse.Namespace) -> int:
    """Exit 0 whatever the answer (it is a question); 3 for an unknown model or role."""
    if [ns.model, ns.role, ns.vram].count(None) != 2:
        err("gpulet plan: give a MODEL, --role ROLE or --vram MiB (one of them)")
        return Exit.USAGE
    p = client.plan(
        ns.model, role=ns.role, priority=ns.priority, exclusive=ns.exclusive, vram_mb=ns.vram
    )
    if ns.json:
        print_json(as_dict(p))
        return 0
    say(_headline(p))
    if p.victims:
        table(
            HEADERS,
            [
                [
                    v.model_id,
                    ", ".join(v.gpu_uuids),
                    f"{v.reserved_mb:,}",
                    f"{v.reload_seconds:.1f}s " + ("(measured)" if v.reload_measured else "(est.)"),
                ]
                for v in p.victims
            ],
            flexible={"GPUS"},
        )
    elif p.outcome is PlanOutcome.LOAD:
        say("nothing would be evicted")
    return 0
