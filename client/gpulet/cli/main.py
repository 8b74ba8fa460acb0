"""`gpulet`: talk to gpuletd from a shell."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence

import gpulet
from gpulet.address import default_address
from gpulet.cli import (
    admin,
    args,
    health,
    labels,
    lease,
    models,
    plan,
    profile,
    queue,
    run,
    status,
    watch,
)
from gpulet.cli.exits import HELP, Exit, exit_code
from gpulet.cli.output import err
from gpulet.client import Client
from gpulet.errors import GpuletError

__all__ = ["Handler", "main"]

Handler = Callable[[Client, argparse.Namespace], int]

DEBUG_ENV = "GPULET_DEBUG"


def _parser() -> argparse.ArgumentParser:
    ap = args.ArgumentParser(
        prog="gpulet",
        description="Ask gpuletd (the node's GPU model broker) about profiles, GPUs and models.",
        epilog="Every command takes --json (after the command) for output that scripts can\n"
        "parse, e.g. `gpulet select keywords --json`.\n\n" + HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--version", action="version", version=f"gpulet {gpulet.__version__}")
    ap.add_argument(
        "--address",
        type=args.address,
        default=None,
        help="daemon address: unix:///path, a socket path, or host:port "
        f"(default: $GPULET_ADDRESS or {default_address()})",
    )
    out = args.ArgumentParser(add_help=False)
    out.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        name: str,
        handler: Handler,
        help: str,
        parent: argparse._SubParsersAction[args.ArgumentParser] = sub,
    ) -> argparse.ArgumentParser:
        p = parent.add_parser(name, parents=[out], help=help, description=help)
        p.set_defaults(handler=handler)
        return p

    prof = sub.add_parser("profile", help="the deployment profile")
    psub = prof.add_subparsers(dest="profile_command", metavar="COMMAND", required=True)
    add("show", profile.profile_show, "the active profile, why it was chosen, and the GPUs", psub)
    add("list", profile.profile_list, "every known profile, the active one starred", psub)
    p = add("get", profile.profile_get, "one profile: its fields, metadata and layers", psub)
    p.add_argument("name", type=args.identifier("profile"), help="the profile's name")
    p = add("gpus", profile.gpus, "live memory of each GPU and the models placed on it")
    p.add_argument(
        "--processes",
        action="store_true",
        help="also list the processes holding GPU memory (slower: a driver lock)",
    )
    add("models", models.models, "the model registry with each model's state")
    add("roles", models.roles, "the task roles models declare")
    p = add("select", models.select, "the best models for a role under the active profile")
    p.add_argument("role", type=args.identifier("role"), help="e.g. caption, keywords")
    p.add_argument(
        "--top",
        type=args.integer(range(1, 2**31)),
        default=None,
        metavar="N",
        help="how many (default 3)",
    )
    p.add_argument(
        "--profile",
        type=args.identifier("profile"),
        default=None,
        metavar="NAME",
        help="what this machine would offer under that profile (default: the active one)",
    )
    p = add(
        "explain",
        models.explain,
        "why a model is or is not a candidate for a role (exit 3 when there is no such model)",
    )
    p.add_argument("role", type=args.identifier("role"))
    p.add_argument("model", type=args.identifier("model id"), help="as in `gpulet models`")
    p.add_argument(
        "--profile",
        type=args.identifier("profile"),
        default=None,
        metavar="NAME",
        help="explain under that profile on this machine (default: the active one)",
    )
    lease_p = sub.add_parser("lease", help="acquire, renew, release and list leases")
    lsub = lease_p.add_subparsers(dest="lease_command", metavar="COMMAND", required=True)
    p = add(
        "acquire",
        lease.acquire,
        "wait for a lease on a model, print it and exit (--json: one line per step, "
        "queued and loading, the grant last)",
        lsub,
    )
    lease.add_target_args(p)
    p = add("renew", lease.renew, "extend a lease", lsub)
    lease.add_credential_args(p)
    p.add_argument(
        "--ttl",
        type=args.seconds(minimum=1),
        default=None,
        metavar="S",
        help="seconds from now (default: the lease's own TTL)",
    )
    lease.add_credential_args(add("release", lease.release, "end a lease now", lsub))
    add("list", lease.list_leases, "live leases (without tokens)", lsub)
    add("watch", watch.watch, "stream model and lease state changes (--json: one per line)")
    add("queue", queue.queue, "requests waiting for a lease: position, wait, what each waits for")
    p = add(
        "plan",
        plan.plan,
        "what-if: would a lease be granted now, where, evicting what, or what would it wait "
        "for (changes nothing; exit 0 whatever the answer, 3 for an unknown model or role)",
    )
    plan.add_arguments(p)
    text = "profile, GPUs, models, leases and the queue on one screen (live on a terminal)"
    p = sub.add_parser("status", aliases=["top"], parents=[out], help=text, description=text)
    p.set_defaults(handler=status.status)
    status.add_arguments(p)
    # Not `add`: `run` prints nothing of its own for --json to shape.
    text = (
        "hold a lease while COMMAND runs, with CUDA_VISIBLE_DEVICES, "
        "GPULET_ENDPOINT and GPULET_LEASE_ID set; exits with COMMAND's code"
    )
    p = sub.add_parser(
        "run",
        help=text,
        description=text,
        usage="gpulet run [options] (MODEL | --role ROLE) -- COMMAND [ARG ...]",
    )
    p.set_defaults(handler=run.run, json=False)
    lease.add_target_args(p)
    # Checked by `run` itself (gpulet/cli/run.py), which knows the signals it can send.
    p.add_argument(
        "--on-lost",
        default=None,
        metavar="ACTION",
        help="when the lease is lost: term (SIGTERM, then SIGKILL after a grace; the "
        "default), ignore, or a signal name or number to send to COMMAND",
    )
    health.add_arguments(
        add(
            "health",
            health.health,
            "whether gpuletd serves (grpc.health.v1): exit 0 if so, 6 if not; for probes",
        )
    )
    labels.add_arguments(
        add(
            "labels",
            labels.labels,
            "this node's labels for Kubernetes node-feature-discovery, printed or written "
            "as its feature file (--output)",
        )
    )
    admin.add_parser(sub, out)
    return ap


def _subcommand(words: Sequence[str]) -> str | None:
    """The first word that is not a global option or its value."""
    it = iter(words)
    for w in it:
        if w == "--address":
            next(it, None)
        elif not w.startswith("-"):
            return w
    return None


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    # `gpulet run ... -- COMMAND`: everything after the first `--` is the command, untouched
    # by argparse (which would otherwise take its first word for MODEL).
    words = list(argv)
    command: list[str] = []
    # Only `run` takes a command: for every other subcommand `--` keeps its argparse meaning
    # (what follows is positional), so `gpulet select -- -x` and extra words are not dropped.
    if "--" in words and _subcommand(words[: words.index("--")]) == "run":
        cut = words.index("--")
        words, command = words[:cut], words[cut + 1 :]
    parser = _parser()
    ns = parser.parse_args(args.join_token_values(words))
    ns.command = command
    if hasattr(ns, "role") and hasattr(ns, "exclusive"):
        lease.check_target(ns, parser)
    if hasattr(ns, "token"):
        ns.token = args.read_token(ns.token, parser)
    return ns


def main(argv: Sequence[str] | None = None) -> int:
    """Run `gpulet ARGV` and return its exit code (see `exits.HELP`); never raises for a
    bad input or a daemon that is not there."""
    try:
        ns = _parse(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:  # --help, --version, or a usage error already printed
        return e.code if isinstance(e.code, int) else Exit.USAGE
    try:
        admin_handler = getattr(ns, "admin_handler", None)
        if admin_handler is not None:
            # `gpulet admin ...` talks to the admin socket, not the user one.
            return admin.run(admin_handler, ns)
        handler: Handler = ns.handler
        with Client(address=ns.address) as client:
            return handler(client, ns)
    except GpuletError as e:
        err(e.message)
        return exit_code(e)
    except KeyboardInterrupt:
        # Interrupted while waiting (e.g. in the queue): the request is cancelled with the call.
        print("gpulet: interrupted", file=sys.stderr)
        return Exit.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`gpulet models | head -1`): stop quietly, and point stdout
        # at /dev/null so that the interpreter's final flush does not complain either.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return Exit.OK
    except Exception as e:
        # A bug in gpulet itself: one line a person can report, the traceback on request.
        if os.environ.get(DEBUG_ENV):
            raise
        err(f"internal error: {type(e).__name__}: {e} (set {DEBUG_ENV}=1 for the traceback)")
        return Exit.ERROR


if __name__ == "__main__":
    sys.exit(main())
