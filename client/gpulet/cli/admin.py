"""`gpulet admin ...`: operator actions over the admin socket (see gpulet.admin).

Registered by cli/main.py with `add_parser`; its commands set `admin_handler`, which main
runs with an AdminClient (`run`) instead of the user socket's Client: the user socket does
not serve these calls, and an operator may reach the admin socket by another path."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from gpulet.admin import ENV_ADMIN_ADDRESS, AdminClient
from gpulet.cli import args
from gpulet.cli.output import print_json, say

__all__ = ["AdminHandler", "add_parser", "run"]

AdminHandler = Callable[[AdminClient, argparse.Namespace], int]


def end_lease(admin: AdminClient, ns: argparse.Namespace) -> int:
    e = admin.end_lease(ns.lease_id, ns.reason)
    if ns.json:
        print_json({"lease_id": e.lease_id, "model_id": e.model_id, "client": e.client_name})
    else:
        say(f"ended {e.lease_id} on {e.model_id} (held by ", e.client_name or "?", ")")
    return 0


def unload(admin: AdminClient, ns: argparse.Namespace) -> int:
    u = admin.unload(ns.model, force=ns.force, reason=ns.reason or "")
    if ns.json:
        print_json(
            {
                "model_id": u.model_id,
                "ended_lease_ids": list(u.ended_lease_ids),
                "state": u.state,
                "unloads_at": u.unloads_at.isoformat() if u.unloads_at else None,
                "message": u.message,
            }
        )
        return 0
    for lid in u.ended_lease_ids:
        say("ended ", lid)
    say(u.message)
    return 0


def pin(admin: AdminClient, ns: argparse.Namespace) -> int:
    p = admin.pin(ns.model, ns.reason or "")
    if ns.json:
        print_json({"model_id": p.model_id, "pinned": True, "state": p.state, "message": p.message})
    else:
        say(f"{p.model_id}: {p.message}")
    return 0


def unpin(admin: AdminClient, ns: argparse.Namespace) -> int:
    u = admin.unpin(ns.model)
    if ns.json:
        print_json(
            {
                "model_id": u.model_id,
                "pinned": False,
                "was_pinned": u.was_pinned,
                "state": u.state,
                "unloads_at": u.unloads_at.isoformat() if u.unloads_at else None,
                "message": u.message,
            }
        )
    else:
        say(f"{u.model_id}: {u.message}")
    return 0


def profile(admin: AdminClient, ns: argparse.Namespace) -> int:
    s = admin.switch_profile(ns.name, ns.reason or "")
    if ns.json:
        print_json({"previous_profile": s.previous_profile, "profile": s.profile})
    else:
        say(f"profile {s.previous_profile} -> {s.profile}")
    return 0


def drain(admin: AdminClient, ns: argparse.Namespace) -> int:
    d = admin.drain()
    if ns.json:
        print_json({"draining": True, "leases_held": d.leases_held, "waiting": d.waiting})
    else:
        say(
            f"draining: new leases refused; {d.leases_held} lease(s) held, "
            f"{d.waiting} request(s) waiting run on (`gpulet admin undrain` to end it)"
        )
    return 0


def undrain(admin: AdminClient, ns: argparse.Namespace) -> int:
    was = admin.undrain()
    if ns.json:
        print_json({"draining": False, "was_draining": was})
    else:
        say("accepting new leases" + ("" if was else " (it was not draining)"))
    return 0


def add_parser(
    sub: argparse._SubParsersAction[args.ArgumentParser], out: args.ArgumentParser
) -> None:
    """`gpulet admin COMMAND`; `out` is main's parent parser holding `--json`."""
    common = args.ArgumentParser(add_help=False)
    common.add_argument(
        "--admin-socket",
        type=args.address,
        default=os.environ.get(ENV_ADMIN_ADDRESS),
        metavar="PATH",
        help=f"the admin socket (default: ${ENV_ADMIN_ADDRESS}, else admin.sock beside the "
        "user socket); only gpuletd's own user can connect to it",
    )
    p = sub.add_parser(
        "admin",
        help="operator actions over the admin socket: end a lease, unload, pin, drain, switch "
        "profile",
    )
    asub = p.add_subparsers(dest="admin_command", metavar="COMMAND", required=True)

    def add(name: str, handler: AdminHandler, help: str) -> argparse.ArgumentParser:
        q = asub.add_parser(name, parents=[out, common], help=help, description=help)
        q.set_defaults(admin_handler=handler)
        return q

    q = add("end-lease", end_lease, "end a lease now; its holder is told the reason")
    q.add_argument("lease_id", metavar="LEASE_ID")
    q.add_argument("--reason", required=True, help="told to the lease's holder")
    q = add(
        "unload",
        unload,
        "unload a model: refused while leased (naming the holders) unless --force, which "
        "ends its leases first; it then unloads at the end of its grace period",
    )
    q.add_argument("model", metavar="MODEL")
    q.add_argument("--force", action="store_true", help="end the model's leases first")
    q.add_argument("--reason", help="told to the holders whose leases --force ends (required)")
    q = add(
        "pin",
        pin,
        "keep a model warm: never unloaded for idleness, still evicted when a request needs "
        "its room; an unloaded model is loaded if it fits without evicting",
    )
    q.add_argument("model", metavar="MODEL")
    q.add_argument("--reason", help="why, for the daemon's log")
    q = add("unpin", unpin, "stop keeping a model warm; idle, it unloads after its grace period")
    q.add_argument("model", metavar="MODEL")
    q = add("profile", profile, "make another known profile active (as a reload would)")
    q.add_argument("name", metavar="PROFILE")
    q.add_argument("--reason", help="shown by `gpulet profile show`")
    add("drain", drain, "refuse new leases; held leases and waiting requests run on")
    add("undrain", undrain, "accept new leases again")


def run(handler: AdminHandler, ns: argparse.Namespace) -> int:
    with AdminClient(address=ns.admin_socket) as admin:
        return handler(admin, ns)
