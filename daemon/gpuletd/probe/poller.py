"""Keeps a live GPU reading: polls the probe off the event loop at a fixed interval."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from gpuletd.probe.types import GpuProbe, GpuProcess, GpuSnapshot, ProbeUnavailable

__all__ = ["ProbePoller"]

log = structlog.get_logger(__name__)


class ProbePoller:
    """`gpus` is None in no-GPU mode (the probe could not open), else the latest reading."""

    def __init__(self, probe: GpuProbe | None, interval_s: float = 1.0) -> None:
        self._probe = probe
        self.interval_s = interval_s
        self.gpus: list[GpuSnapshot] | None = None
        self.unavailable_reason: str | None = None
        self._listeners: list[Callable[[list[GpuSnapshot]], None]] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def probe(self) -> GpuProbe | None:
        return self._probe

    @property
    def kind(self) -> str:
        return self._probe.kind if self._probe is not None and self.gpus is not None else "none"

    def subscribe(self, listener: Callable[[list[GpuSnapshot]], None]) -> None:
        self._listeners.append(listener)

    async def open(self) -> None:
        if self._probe is None:
            self.unavailable_reason = "no GPU probe configured"
            return
        try:
            self.gpus = await asyncio.to_thread(self._probe.open)
        except ProbeUnavailable as e:
            self.unavailable_reason = str(e)
            log.warning("probe.unavailable", reason=str(e), action="running without GPUs")

    def start(self) -> None:
        if self.gpus is not None and self._task is None:
            self._task = asyncio.create_task(self._run(), name="probe-poller")

    async def poll_once(self) -> list[GpuSnapshot] | None:
        if self._probe is None or self.gpus is None:
            return None
        # NVML calls block (~10 µs each, but a wedged driver can hang): never on the loop.
        self.gpus = await asyncio.to_thread(self._probe.read)
        for listener in self._listeners:
            listener(self.gpus)
        return self.gpus

    async def processes(self, uuid: str) -> tuple[GpuProcess, ...]:
        """Processes holding memory on one GPU: slow (a driver lock), so only on demand."""
        if self._probe is None or self.gpus is None:
            return ()
        try:
            return await asyncio.to_thread(self._probe.processes, uuid)
        except KeyError:
            return ()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.poll_once()
            except Exception:
                # A probe bug must not kill the daemon; the per-device states carry NVML errors.
                log.exception("probe.poll_failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._probe is not None:
            await asyncio.to_thread(self._probe.close)
