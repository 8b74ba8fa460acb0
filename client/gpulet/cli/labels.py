"""`gpulet labels`: this node's labels for Kubernetes node-feature-discovery, from what gpuletd
says (the active profile, its GPUs, the registry), printed or written as NFD's local feature
file (see gpulet/nfd.py for the format and its limits).

`gpuletd --labels-file` keeps the same file up to date from inside the daemon; this command is
for a node where the daemon cannot write NFD's directory, as a sidecar with `--every`, or to
look at the labels before turning that on.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from pathlib import Path

from gpulet.cli import args
from gpulet.cli.exits import Exit
from gpulet.cli.output import err, print_json, say
from gpulet.client import Client
from gpulet.errors import GpuletError
from gpulet.nfd import (
    DEFAULT_TTL_SECONDS,
    FEATURES_DIR,
    NodeFacts,
    facts_from,
    label_lines,
    render,
    write_atomic,
)

__all__ = ["add_arguments", "labels", "node_facts"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--output",
        "-o",
        type=Path,
        default=None,
        metavar="PATH",
        help="write the feature file to PATH, atomically (e.g. "
        f"{FEATURES_DIR}/gpulet); default: print it",
    )
    _seconds(
        p,
        "--ttl",
        60,
        float(DEFAULT_TTL_SECONDS),
        f"the labels expire S seconds from now unless rewritten (default {DEFAULT_TTL_SECONDS})",
    )
    _seconds(
        p,
        "--every",
        1,
        None,
        "keep going: rewrite the file every S seconds (less than --ttl), riding out "
        "gpuletd restarts; needs --output",
    )


def _seconds(
    p: argparse.ArgumentParser, flag: str, minimum: float, default: float | None, help: str
) -> None:
    p.add_argument(
        flag, type=args.seconds(minimum=minimum), default=default, metavar="S", help=help
    )


def node_facts(client: Client) -> NodeFacts:
    active = client.active_profile()
    return facts_from(
        active.profile.name,
        [(g.name, g.total_mb) for g in active.gpus],
        active.usable_vram_mb,
        {m.id: m.role_priority for m in client.models()},
    )


def _once(client: Client, ns: argparse.Namespace) -> None:
    facts = node_facts(client)
    if ns.json:
        pairs, left_out = label_lines(facts)
        print_json({"labels": dict(pairs), "left_out": left_out})
        if ns.output is None:
            return
    r = render(facts, now=datetime.now(UTC), ttl_seconds=ns.ttl)
    if ns.output is None:
        print(r.text, end="")
        return
    write_atomic(ns.output, r.text)
    if not ns.json:
        say(f"wrote {len(r.labels)} labels to {ns.output}")


def labels(client: Client, ns: argparse.Namespace) -> int:
    if ns.every is not None:
        if ns.output is None:
            err("--every needs --output PATH")
            return Exit.USAGE
        if ns.every >= ns.ttl:
            err(f"--every ({ns.every:g} s) must be less than --ttl ({ns.ttl:g} s)")
            return Exit.USAGE
    if ns.output is not None and not ns.output.absolute().parent.is_dir():
        err(f"--output: directory {ns.output.absolute().parent} does not exist")
        return Exit.USAGE
    try:
        _once(client, ns)
    except OSError as e:
        err(f"--output: cannot write {ns.output}: {e.strerror or e}")
        return Exit.ERROR
    if ns.every is None:
        return Exit.OK
    while True:
        time.sleep(ns.every)
        try:
            _once(client, ns)
        except (GpuletError, OSError) as e:
            # The file keeps its expiry: if gpuletd stays away, the labels lapse by themselves.
            err(f"labels not rewritten: {getattr(e, 'message', None) or e}")
