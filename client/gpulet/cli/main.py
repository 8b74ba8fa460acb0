"""`gpulet`: talk to gpuletd from a shell."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from gpulet.address import default_address
from gpulet.cli import lease, models, profile, run, watch
from gpulet.client import Client
from gpulet.errors import GpuletError

__all__ = ["main"]

Handler = Callable[[Client, argparse.Namespace], int]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="gpulet",
        description="Ask gpuletd (the node's GPU model broker) about profiles, GPUs and models.",
        epilog="Every command takes --json (after the command) for output that scripts can "
        "parse, e.g. `gpulet select keywords --json`.",
    )
    ap.add_argument(
        "--address",
        default=None,
        help=f"daemon address (default: $GPULET_ADDRESS or {default_address()})",
    )
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        name: str,
        handler: Handler,
        help: str,
        parent: argparse._SubParsersAction[argparse.ArgumentParser] = sub,
    ) -> argparse.ArgumentParser:
        p = parent.add_parser(name, parents=[out], help=help, description=help)
        p.set_defaults(handler=handler)
        return p

    prof = sub.add_parser("profile", help="the deployment profile")
    psub = prof.add_subparsers(dest="profile_command", metavar="COMMAND", required=True)
    add("show", profile.profile_show, "the active profile, why it was chosen, and the GPUs", psub)
    add("list", profile.profile_list, "every known profile, the active one starred", psub)
    p = add("gpus", profile.gpus, "live memory of each GPU and the models placed on it")
    p.add_argument(
        "--processes",
        action="store_true",
        help="also list the processes holding GPU memory (slower: a driver lock)",
    )
    add("models", models.models, "the model registry with each model's state")
    add("roles", models.roles, "the task roles models declare")
    p = add("select", models.select, "the best models for a role under the active profile")
    p.add_argument("role", help="e.g. caption, keywords, description")
    p.add_argument("--top", type=int, default=None, metavar="N", help="how many (default 3)")
    p = add("explain", models.explain, "why a model is or is not a candidate for a role")
    p.add_argument("role")
    p.add_argument("model", help="model id, as in `gpulet models`")
    lease_p = sub.add_parser("lease", help="acquire, renew, release and list leases")
    lsub = lease_p.add_subparsers(dest="lease_command", metavar="COMMAND", required=True)
    p = add("acquire", lease.acquire, "wait for a lease on a model, print it and exit", lsub)
    lease.add_target_args(p)
    for name, handler, text in (
        ("renew", lease.renew, "extend a lease"),
        ("release", lease.release, "end a lease now"),
    ):
        p = add(name, handler, text, lsub)
        p.add_argument("lease_id")
        p.add_argument("--token", required=True, help="the token printed by `lease acquire`")
        if name == "renew":
            p.add_argument("--ttl", type=float, default=None, metavar="S")
    add("list", lease.list_leases, "live leases (without tokens)", lsub)
    add("watch", watch.watch, "stream model and lease state changes (--json: one per line)")
    p = add(
        "run",
        run.run,
        "hold a lease while COMMAND runs, with CUDA_VISIBLE_DEVICES, "
        "GPULET_ENDPOINT and GPULET_LEASE_ID set; exits with COMMAND's code",
    )
    p.usage = "gpulet run [options] (MODEL | --role ROLE) -- COMMAND [ARG ...]"
    lease.add_target_args(p)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # `gpulet run ... -- COMMAND`: everything after the first `--` is the command, untouched
    # by argparse (which would otherwise take its first word for MODEL).
    command: list[str] = []
    if "--" in args:
        cut = args.index("--")
        args, command = args[:cut], args[cut + 1 :]
    parser = _parser()
    ns = parser.parse_args(args)
    ns.command = command
    if hasattr(ns, "role") and hasattr(ns, "exclusive"):
        lease.check_target(ns, parser)
    handler: Handler = ns.handler
    try:
        with Client(address=ns.address) as client:
            return handler(client, ns)
    except GpuletError as e:
        print(f"gpulet: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Interrupted while waiting (e.g. in the queue): the request is cancelled with the call.
        print("gpulet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
