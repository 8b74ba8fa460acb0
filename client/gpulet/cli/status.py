"""`gpulet status` (alias `top`): the profile, the GPUs, the models, the leases and the queue
on one screen; refreshed live on a terminal, printed once otherwise (or with `--once`)."""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from gpulet.cli import args, as_json
from gpulet.cli import queue as queue_cli
from gpulet.cli.exits import Exit
from gpulet.cli.output import STYLES, print_json, safe
from gpulet.client import Client
from gpulet.types import ActiveProfile, Gpu, GpuStatus, Lease, Model, QueueItem

__all__ = ["Snapshot", "add_arguments", "as_dict", "render", "snapshot", "status"]

BAR_WIDTH = 24
DEFAULT_INTERVAL_S = 2.0


@dataclass(frozen=True)
class Snapshot:
    """Everything one screen shows, read in one go."""

    profile: ActiveProfile
    gpus: GpuStatus  # live: the profile's own list is as the daemon started
    models: list[Model]
    leases: list[Lease]
    queue: list[QueueItem]
    taken_at: datetime


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--once", action="store_true", help="print one screen and exit (also when not a terminal)"
    )
    p.add_argument(
        "--interval",
        type=args.seconds(minimum=0.2),
        default=DEFAULT_INTERVAL_S,
        metavar="S",
        help=f"seconds between refreshes (default {DEFAULT_INTERVAL_S:g})",
    )


def snapshot(client: Client) -> Snapshot:
    return Snapshot(
        profile=client.active_profile(),
        gpus=client.gpu_status(),
        models=client.models(),
        leases=client.list_leases(),
        queue=client.queue(),
        taken_at=datetime.now(UTC),
    )


def as_dict(s: Snapshot) -> dict[str, Any]:
    """The `--json` shape (add keys, never rename)."""
    a = s.profile
    return {
        "time": s.taken_at.isoformat(),
        "profile": {
            **as_json.profile(a.profile),
            "source": a.source.value,
            "reason": a.reason,
            "usable_vram_mb": a.usable_vram_mb,
        },
        "probe": s.gpus.probe,
        "gpus": [as_json.gpu(g) for g in s.gpus.gpus],
        "models": [as_json.model(m) for m in s.models],
        "leases": [x.as_dict(token=False) for x in s.leases],
        "queue": [queue_cli.as_dict(q) for q in s.queue],
    }


def _t(value: object, style: str = "") -> Text:
    """A cell: made safe for a terminal (names come from whoever reaches the socket)."""
    if value is None:
        return Text("-")
    s = safe(value)
    return Text(s, style=style or STYLES.get(s, ""))


def _table(
    title: str, headers: list[str], *, wrap: set[str] | frozenset[str] = frozenset()
) -> Table:
    t = Table(
        title=Text(title, style="bold"),
        title_justify="left",
        box=None,
        pad_edge=False,
        header_style="bold",
        expand=False,
    )
    for h in headers:
        if h in wrap:
            t.add_column(h, overflow="fold", ratio=1, min_width=12)
        else:
            t.add_column(h, no_wrap=True)
    return t


def bar(g: Gpu, width: int = BAR_WIDTH) -> Text:
    """Memory as one bar: reserved by gpuletd for its models (█), used beyond that by
    anything else (▓), free (░). An unknown total shows as `?`."""
    if not g.total_mb:
        return Text("?" * width, style="dim")
    reserved = placed_mb(g)
    used = g.used_mb if g.used_mb is not None else reserved
    other = max(0, used - reserved)
    cells = [round(width * min(mb, g.total_mb) / g.total_mb) for mb in (reserved, other)]
    cells[1] = min(cells[1], width - cells[0])
    free = width - sum(cells)
    text = Text()
    text.append("█" * cells[0], style="cyan")
    text.append("▓" * cells[1], style="yellow")
    text.append("░" * free, style="dim")
    return text


def placed_mb(g: Gpu) -> int:
    """What gpuletd reserves on this GPU for the models placed there."""
    return sum(p.reservation_mb for p in g.placed)


def _mib(v: int | None) -> str:
    return "?" if v is None else f"{v:,}"


def _idle(m: Model) -> str | None:
    return None if m.idle_seconds is None else queue_cli.waited(m.idle_seconds)


def render(s: Snapshot) -> RenderableType:
    a = s.profile
    p = a.profile
    header = Text.assemble(
        ("gpulet status", "bold"),
        f"  {s.taken_at.astimezone():%H:%M:%S}  profile ",
        (safe(p.name), "bold"),
        f" ({a.source.value}: {safe(a.reason)})  ",
        f"max {p.max_concurrent_models} models / {p.max_vram_mb:,} MiB  probe {safe(s.gpus.probe)}",
    )
    index = {g.uuid: g.index for g in s.gpus.gpus}

    gpus = _table("GPUs", ["GPU", "NAME", "MEMORY", "USED_MB", "RESERVED_MB", "FREE_MB", "STATE"])
    for g in s.gpus.gpus:
        gpus.add_row(
            _t(g.index),
            _t(g.name),
            bar(g),
            _t(_mib(g.used_mb)),
            _t(_mib(placed_mb(g))),
            _t(_mib(g.free_mb)),
            _t(g.state.value),
        )

    models = _table("Models", ["MODEL", "STATE", "GPUS", "VRAM_MB", "LEASES", "IDLE"])
    for m in s.models:
        models.add_row(
            _t(m.id),
            _t(m.state.value),
            _t(",".join(str(index.get(u, "?")) for u in m.gpu_uuids) or None),
            _t(f"{m.reservation_mb:,}"),
            _t(m.lease_count),
            _t(_idle(m)),
        )

    leases = _table("Leases", ["LEASE", "MODEL", "CLIENT", "HELD", "EXPIRES_IN"], wrap={"CLIENT"})
    for x in s.leases:
        held = None if x.granted_at is None else (s.taken_at - x.granted_at).total_seconds()
        left = (x.expires_at - s.taken_at).total_seconds()
        leases.add_row(
            _t(x.lease_id),
            _t(x.model_id + (" (exclusive)" if x.exclusive else "")),
            _t(x.client_name),
            _t(None if held is None else queue_cli.waited(max(0.0, held))),
            _t(queue_cli.waited(max(0.0, left))),
        )

    waiting = _table("Queue", queue_cli.HEADERS, wrap={"CLIENT", "WAITING_FOR"})
    for q in s.queue:
        waiting.add_row(*(_t(v) for v in queue_cli.row(q)))

    parts: list[RenderableType] = [header, Text(""), gpus, Text("")]
    parts += [models, Text("")]
    parts += [leases if s.leases else Text("Leases: none", style="bold"), Text("")]
    parts += [waiting if s.queue else Text("Queue: empty", style="bold")]
    parts += [Text(f"warning: {safe(w)}", style="yellow") for w in a.warnings]
    return Group(*parts)


def _print_once(s: Snapshot) -> None:
    stream = sys.stdout
    if stream.isatty():
        colour = not os.environ.get("NO_COLOR")
        console = Console(highlight=False, markup=False, emoji=False, no_color=not colour)
        console.print(render(s))
        return
    # Piped: whole lines, no colour, no padding at the ends of lines (as `output.table`).
    buf = io.StringIO()
    console = Console(
        file=buf, width=200, color_system=None, highlight=False, markup=False, emoji=False
    )
    console.print(render(s))
    stream.write("".join(line.rstrip() + "\n" for line in buf.getvalue().splitlines()))
    stream.flush()


def status(client: Client, ns: argparse.Namespace) -> int:
    if ns.json:
        print_json(as_dict(snapshot(client)))
        return Exit.OK
    if ns.once or not sys.stdout.isatty():
        _print_once(snapshot(client))
        return Exit.OK
    console = Console(highlight=False, markup=False, emoji=False)
    try:
        with Live(
            render(snapshot(client)), console=console, auto_refresh=False, screen=True
        ) as live:
            while True:
                time.sleep(ns.interval)
                live.update(render(snapshot(client)), refresh=True)
    except KeyboardInterrupt:
        return Exit.OK
