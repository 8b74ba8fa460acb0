"""`gpulet lease acquire|renew|release|list`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from gpulet.cli.output import print_json, table
from gpulet.client import Client
from gpulet.lease import Lease, Progress

__all__ = ["acquire", "add_target_args", "list_leases", "progress_printer", "release", "renew"]


def add_target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="model id (or use --role)")
    p.add_argument("--role", help="let the daemon pick the best model for this role")
    p.add_argument(
        "--ttl",
        type=float,
        default=30.0,
        metavar="S",
        help="lease lifetime without renewal (default 30)",
    )
    p.add_argument(
        "--priority", type=int, default=0, metavar="P", help="higher is served first (default 0)"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="give up waiting after S seconds (default: wait)",
    )
    p.add_argument("--exclusive", action="store_true", help="share the model with no one")
    p.add_argument("--client-name", default=None, help="shown in `gpulet lease list`")


def check_target(ns: argparse.Namespace, p: argparse.ArgumentParser) -> None:
    if (ns.model is None) == (ns.role is None):
        p.error("give a MODEL or --role ROLE (one of them)")


def progress_printer(enabled: bool) -> Callable[[Progress], None] | None:
    """Queue position and loading progress on stderr, only for a person at a terminal."""

    def show(p: Progress) -> None:
        if p.state == "queued":
            msg = f"queued: position {p.position} of {p.queue_length}"
        else:
            msg = f"loading {p.model_id} ..."
        sys.stderr.write(f"\r\033[K{msg}")
        sys.stderr.flush()

    return show if enabled else None


def acquire_lease(client: Client, ns: argparse.Namespace) -> Lease:
    show = progress_printer(sys.stderr.isatty() and not ns.json)
    try:
        return client.acquire(
            ns.model,
            role=ns.role,
            client_name=ns.client_name,
            ttl=ns.ttl,
            priority=ns.priority,
            exclusive=ns.exclusive,
            timeout=ns.timeout,
            on_progress=show,
        )
    finally:
        if show is not None:
            sys.stderr.write("\r\033[K")


def acquire(client: Client, ns: argparse.Namespace) -> int:
    lease = acquire_lease(client, ns)
    if ns.json:
        print_json(lease.as_dict())
        return 0
    print(f"lease     {lease.lease_id}")
    print(f"token     {lease.token}")
    print(f"model     {lease.model_id}")
    print(f"gpus      {lease.cuda_visible_devices or '-'}")
    print(f"endpoint  {lease.endpoint or '-'}")
    print(
        f"expires   {lease.expires_at.isoformat()} (renew with `gpulet lease renew "
        f"{lease.lease_id} --token ...`)"
    )
    return 0


def renew(client: Client, ns: argparse.Namespace) -> int:
    lease = client.renew(ns.lease_id, ns.token, ttl=ns.ttl or 0.0)
    if ns.json:
        print_json(lease.as_dict(token=False))
    else:
        print(f"{lease.lease_id} renewed until {lease.expires_at.isoformat()}")
    return 0


def release(client: Client, ns: argparse.Namespace) -> int:
    client.release(ns.lease_id, ns.token)
    if ns.json:
        print_json({"lease_id": ns.lease_id, "released": True})
    else:
        print(f"{ns.lease_id} released")
    return 0


def list_leases(client: Client, ns: argparse.Namespace) -> int:
    leases = client.list_leases()
    if ns.json:
        print_json({"leases": [lease.as_dict(token=False) for lease in leases]})
        return 0
    if not leases:
        print("no leases")
        return 0
    table(
        ["LEASE", "MODEL", "CLIENT", "GPUS", "EXCLUSIVE", "EXPIRES"],
        [
            [
                x.lease_id,
                x.model_id,
                x.client_name,
                x.cuda_visible_devices,
                x.exclusive,
                x.expires_at.isoformat(timespec="seconds"),
            ]
            for x in leases
        ],
    )
    return 0
