"""`gpuletd --labels-file PATH`: keep a node-feature-discovery feature file (gpulet/nfd.py) in
step with the daemon.

A sink like the others, so it hears of every event, a reload (SIGHUP) and an admin profile
switch included (both are `reconfigure` events, with the runtime already changed). It reads
only slow facts (profile, GPUs, usable VRAM, the registry) and writes only when the labels
they make differ from the last ones written. Every event (a grant, the probe's readings every
second) costs one comparison of those facts as they are: the labels are rendered only when
one of them changed. A timer rewrites the file before its expiry comment lapses, so the labels
last exactly as long as a gpuletd keeps them fresh. A failed write is logged once per
distinct error and retried at the next change or refresh: labels are never worth a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from gpulet.nfd import DEFAULT_TTL_SECONDS, NodeFacts, facts_from, render, write_atomic
from gpuletd.registry import Registry
from gpuletd.runtime import Runtime
from gpuletd.scheduler import Decision

__all__ = ["LabelsWriter", "node_facts"]

log = structlog.get_logger("gpuletd")


def node_facts(rt: Runtime) -> NodeFacts:
    return facts_from(
        rt.profile.name,
        [(g.name, g.total_mb) for g in rt.gpus],
        rt.active.usable_vram_mb,
        {mid: m.role_priority for mid, m in rt.registry.models.items()},
    )


@dataclass(frozen=True)
class _Inputs:
    """What the labels are made of, as cheap to take and compare as it gets: the registry
    (frozen, replaced whole by a reload) by identity, the rest by value."""

    profile: str
    gpus: tuple[tuple[str, int | None], ...]
    usable_vram_mb: int
    registry: Registry

    @classmethod
    def of(cls, rt: Runtime) -> _Inputs:
        gpus = tuple((g.name, g.total_mb) for g in rt.gpus)
        return cls(rt.profile.name, gpus, rt.active.usable_vram_mb, rt.registry)

    def same_as(self, other: _Inputs) -> bool:
        return (
            self.registry is other.registry
            and self.usable_vram_mb == other.usable_vram_mb
            and self.profile == other.profile
            and self.gpus == other.gpus
        )


class LabelsWriter:
    def __init__(
        self, path: Path, runtime: Runtime, *, ttl_seconds: float = DEFAULT_TTL_SECONDS
    ) -> None:
        self.path = path
        self._rt = runtime
        self._ttl = ttl_seconds
        self._written: tuple[str, ...] | None = None
        self._seen: _Inputs | None = None
        self._last_error = ""
        self._refresher: asyncio.Task[None] | None = None

    def apply(self, decisions: Sequence[Decision]) -> None:
        if self._seen is None or not _Inputs.of(self._rt).same_as(self._seen):
            self.write()

    def write(self, *, refresh: bool = False) -> bool:
        """Write the file if its labels changed (or, `refresh`, to push its expiry on);
        whether it was written."""
        self._seen = _Inputs.of(self._rt)
        r = render(node_facts(self._rt), now=datetime.now(UTC), ttl_seconds=self._ttl)
        if not refresh and r.labels == self._written:
            return False
        try:
            write_atomic(self.path, r.text)
        except (OSError, ValueError) as e:
            message = str(e)
            if message != self._last_error:
                log.error("labels.write_failed", path=str(self.path), error=message)
                self._last_error = message
            return False
        self._last_error = ""
        if r.labels != self._written:
            log.info(
                "labels.written",
                path=str(self.path),
                labels=len(r.labels),
                left_out=list(r.left_out),
                profile=self._rt.profile.name,
            )
        self._written = r.labels
        return True

    def start(self) -> None:
        self.write()
        self._refresher = asyncio.create_task(self._refresh(), name="labels-refresh")

    async def _refresh(self) -> None:
        # A quarter of the lifetime: three refreshes may fail before the labels lapse.
        while True:
            await asyncio.sleep(self._ttl / 4)
            self.write(refresh=True)

    async def close(self, *, remove: bool) -> None:
        """Stop refreshing; `remove` the file too (a clean stop: the node no longer offers
        what it says), or leave it for the next gpuletd (a handoff)."""
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
            self._refresher = None
        if remove:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
