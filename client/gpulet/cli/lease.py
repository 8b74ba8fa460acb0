"""`gpulet lease acquire|renew|release|list`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from gpulet.cli import args
from gpulet.cli.output import print_json, safe, say, table
from gpulet.client import Client
from gpulet.types import Lease, Progress

# A memory lease: 1 MiB up to a size no GPU has (the daemon bounds it by its largest GPU).
VRAM_MB = range(1, 1 << 30)

__all__ = [
    "acquire",
    "add_credential_args",
    "add_target_args",
    "check_target",
    "list_leases",
    "progress_printer",
    "release",
    "renew",
]


def add_target_args(p: argparse.ArgumentParser) -> None:
    """What to lease and how: shared by `lease acquire` and `run`."""
    p.add_argument("model", nargs="?", type=args.identifier("model id"), help="or use --role")
    p.add_argument(
        "--role",
        type=args.identifier("role"),
        help="let the daemon pick the best model for this role",
    )
    p.add_argument(
        "--vram",
        type=args.integer(VRAM_MB),
        default=None,
        metavar="MiB",
        help="a memory lease (lease acquire only): reserve this much raw VRAM on one GPU "
        "for something not in the registry, instead of a model",
    )
    p.add_argument(
        "--ttl",
        type=args.seconds(minimum=1),
        default=None,
        metavar="S",
        help="lease lifetime without renewal, at least 1 (default: the daemon's, 60)",
    )
    p.add_argument(
        "--priority",
        type=args.integer(args.PRIORITY),
        default=0,
        metavar="P",
        help=f"{args.PRIORITY.start} to {args.PRIORITY.stop - 1}, higher is served first "
        "(default 0)",
    )
    p.add_argument(
        "--timeout",
        type=args.seconds(minimum=0, inclusive=False),
        default=None,
        metavar="S",
        help="give up waiting after S seconds (default: wait)",
    )
    p.add_argument("--exclusive", action="store_true", help="share the model with no one")
    p.add_argument(
        "--client-name",
        type=args.client_name,
        default=None,
        metavar="NAME",
        help=f"shown in `gpulet lease list` (at most {args.MAX_CLIENT_NAME} characters)",
    )


def add_credential_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("lease_id", type=args.identifier("lease_id"))
    p.add_argument(
        "--token",
        default=None,
        help="the token printed by `lease acquire`; `-` reads it from standard input "
        f"(default: ${args.TOKEN_ENV}), either of which keeps it out of `ps`",
    )


def check_target(ns: argparse.Namespace, p: argparse.ArgumentParser) -> None:
    vram = getattr(ns, "vram", None)
    if [ns.model, ns.role, vram].count(None) != 2:
        p.error("give a MODEL, --role ROLE or --vram MiB (one of them)")


def progress_printer(enabled: bool) -> Callable[[Progress], None] | None:
    """Queue position and loading progress on stderr, only for a person at a terminal."""

    def show(p: Progress) -> None:
        if p.state == "queued":
            msg = f"queued: position {p.position} of {p.queue_length}"
        else:
            msg = f"loading {safe(p.model_id)} ..."
        sys.stderr.write(f"\r\033[K{msg}")
        sys.stderr.flush()

    return show if enabled else None


def json_progress(p: Progress) -> None:
    """`lease acquire --json` streams: one JSON line per step, the grant last."""
    step: dict[str, object] = {"state": p.state}
    if p.state == "queued":
        step.update(position=p.position, queue_length=p.queue_length)
    else:
        step.update(model_id=p.model_id)
    print(json.dumps(step), flush=True)


def acquire_lease(client: Client, ns: argparse.Namespace) -> Lease:
    show = json_progress if ns.json else progress_printer(sys.stderr.isatty())
    try:
        return client.acquire(
            ns.model,
            role=ns.role,
            vram_mb=getattr(ns, "vram", None),
            client_name=ns.client_name,
            ttl=ns.ttl,
            priority=ns.priority,
            exclusive=ns.exclusive,
            timeout=ns.timeout,
            on_progress=show,
        )
    finally:
        if show is not None and not ns.json:
            sys.stderr.write("\r\033[K")


def acquire(client: Client, ns: argparse.Namespace) -> int:
    lease = acquire_lease(client, ns)
    if ns.json:
        print(json.dumps({"state": "granted", **lease.as_dict()}), flush=True)
        return 0
    say("lease     ", lease.lease_id)
    say("token     ", lease.token)
    say("model     ", lease.model_id)
    say("gpus      ", lease.cuda_visible_devices or "-")
    say("endpoint  ", lease.endpoint or "-")
    say(
        "expires   ",
        lease.expires_at.isoformat(),
        f" (renew with `gpulet lease renew {lease.lease_id} --token=...`)",
    )
    return 0


def renew(client: Client, ns: argparse.Namespace) -> int:
    lease = client.renew(ns.lease_id, ns.token, ttl=ns.ttl)
    if ns.json:
        print_json(lease.as_dict(token=False))
    else:
        say(lease.lease_id, " renewed until ", lease.expires_at.isoformat())
    return 0


def release(client: Client, ns: argparse.Namespace) -> int:
    client.release(ns.lease_id, ns.token)
    if ns.json:
        print_json({"lease_id": ns.lease_id, "released": True})
    else:
        say(ns.lease_id, " released")
    return 0


def list_leases(client: Client, ns: argparse.Namespace) -> int:
    leases = client.list_leases()
    if ns.json:
        print_json({"leases": [lease.as_dict(token=False) for lease in leases]})
        return 0
    if not leases:
        say("no leases")
        return 0
    table(
        ["LEASE", "MODEL", "CLIENT", "GPUS", "EXCLUSIVE", "EXPIRES"],
        [
            [
                x.lease_id,
                x.model_id,
                x.client_name,
                # A GPU UUID is 40 characters; on a terminal its first 12 tell GPUs apart
                # (`--json` and piped output keep them whole, to be copied).
                [u[:12] if sys.stdout.isatty() else u for u in x.gpu_uuids],
                "yes" if x.exclusive else "",
                x.expires_at.isoformat(timespec="seconds"),
            ]
            for x in leases
        ],
        flexible={"CLIENT"},
    )
    return 0
