"""`gpulet queue`: every request waiting for a lease, and what it waits for."""

from __future__ import annotations

import argparse
from typing import Any

from gpulet.cli.output import print_json, say, table
from gpulet.client import Client
from gpulet.types import QueueItem

__all__ = ["HEADERS", "as_dict", "queue", "row", "waited"]

HEADERS = ["POS", "MODEL", "CLIENT", "PRIO", "WAITED", "WAITING_FOR"]


def as_dict(q: QueueItem) -> dict[str, Any]:
    """The `--json` shape of a waiting request (add keys, never rename)."""
    return {
        "position": q.position,
        "model_id": q.model_id,
        "client_name": q.client_name,
        "priority": q.priority,
        "effective_priority": q.effective_priority,
        "exclusive": q.exclusive,
        "waited_seconds": round(q.waited_seconds, 3),
        "waiting_for": q.waiting_for,
        "arrived_at": None if q.arrived_at is None else q.arrived_at.isoformat(),
        "deadline": None if q.deadline is None else q.deadline.isoformat(),
    }


def waited(seconds: float) -> str:
    """12s, 3m05s, 2h01m: short enough for a column."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _priority(q: QueueItem) -> str:
    if q.effective_priority == q.priority:
        return str(q.priority)
    return f"{q.priority}→{q.effective_priority}"


def row(q: QueueItem) -> list[Any]:
    """One table row; None shows as `-` (a request riding on a load under way has no turn)."""
    model = f"{q.model_id} (exclusive)" if q.exclusive else q.model_id
    return [q.position, model, q.client_name, _priority(q), waited(q.waited_seconds), q.waiting_for]


def queue(client: Client, ns: argparse.Namespace) -> int:
    items = client.queue()
    if ns.json:
        print_json({"queue": [as_dict(q) for q in items]})
        return 0
    if not items:
        say("no request is waiting")
        return 0
    table(HEADERS, [row(q) for q in items], flexible={"CLIENT", "WAITING_FOR"})
    return 0
