"""What every peer emulation shares: the scheduler core's event interface and its decision
types, and the bookkeeping of models, leases and the queue.

A peer policy only decides, in `_schedule`, what to grant, load, evict or refuse; this base
records the results the simulator feeds back. Like the real core it does no I/O and reads no
clock. Memory is in MiB; a model's footprint is its estimate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gpuletd.probe.types import GpuSnapshot
from gpuletd.scheduler.decisions import (
    Decision,
    Granted,
    LeaseEnded,
    LeaseEndReason,
    ModelState,
    RejectCode,
    Rejected,
    RejectReason,
    StartBackend,
    StopBackend,
    StopReason,
)

__all__ = ["PeerPolicy", "Req", "Slot", "split_evenly"]

_HOLDING = (ModelState.LOADING, ModelState.LOADED, ModelState.UNLOADING)


@dataclass(eq=False)
class Req:
    rid: str
    model: str
    priority: int
    arrived: float
    seq: int
    # Times a later request was served ahead of this one while it was the head.
    skipped: int = 0


@dataclass(eq=False)
class Slot:
    """A model as a peer sees it."""

    id: str
    mb: int
    state: ModelState = ModelState.UNLOADED
    gpus: tuple[str, ...] = ()
    shares: tuple[int, ...] = ()
    leases: set[str] = field(default_factory=set)
    waiters: list[Req] = field(default_factory=list)
    last_used: float = -math.inf
    idle_since: float | None = None
    # Chosen for eviction while in use: unload when its last lease ends (Ollama).
    draining: bool = False

    def on(self, uuid: str) -> int:
        return dict(zip(self.gpus, self.shares, strict=True)).get(uuid, 0)


def split_evenly(mb: int, uuids: Sequence[str]) -> tuple[int, ...]:
    share = math.ceil(mb / len(uuids))
    return tuple(share for _ in uuids)


class PeerPolicy:
    """Base of the emulations. Subclasses set `queue_limit` / `idle_ttl_s` and implement
    `_schedule`."""

    # Pending requests beyond which new ones are refused (None: unbounded).
    queue_limit: int | None = None
    # Idle models unload this long after their last lease ends (None: never).
    idle_ttl_s: float | None = None

    def __init__(self, models: Mapping[str, int], gpus: Sequence[GpuSnapshot]) -> None:
        ordered = sorted(gpus, key=lambda g: g.index)
        self._uuids = tuple(g.uuid for g in ordered)
        self._total = {g.uuid: g.total_mb or 0 for g in ordered}
        self._reported = {g.uuid: g.free_mb or 0 for g in ordered}
        self._models = {mid: Slot(mid, mb) for mid, mb in models.items()}
        self._queue: list[Req] = []
        self._leases: dict[str, Slot] = {}
        self._now = -math.inf
        self._seq = 0

    # -- the core's event interface -----------------------------------------------------------

    def request(
        self,
        request_id: str,
        model_id: str,
        *,
        now: float,
        priority: int = 0,
        ttl_s: float | None = None,
    ) -> list[Decision]:
        out = self._begin(now)
        self._seq += 1
        req = Req(request_id, model_id, priority, self._now, self._seq)
        if model_id not in self._models:
            self._refuse(req, RejectCode.NOT_FOUND, RejectReason.UNKNOWN_MODEL, "unknown", out)
        elif self.queue_limit is not None and len(self._queue) >= self.queue_limit:
            message = f"queue full ({len(self._queue)} waiting)"
            self._refuse(req, RejectCode.RESOURCE_EXHAUSTED, RejectReason.QUEUE_FULL, message, out)
        else:
            self._queue.append(req)
        self._schedule(out)
        return out

    def release(self, lease_id: str, *, now: float) -> list[Decision]:
        out = self._begin(now)
        m = self._leases.pop(lease_id, None)
        if m is not None:
            m.leases.discard(lease_id)
            m.last_used = self._now
            if not m.leases:
                m.idle_since = self._now
                if m.draining:
                    self._stop(m, StopReason.EVICTED, out)
        self._schedule(out)
        return out

    def load_succeeded(
        self, model_id: str, *, now: float, measured_mb: int | None = None
    ) -> list[Decision]:
        out = self._begin(now)
        m = self._models[model_id]
        if m.state is ModelState.LOADING:
            m.state = ModelState.LOADED
            m.idle_since = self._now
            waiters, m.waiters = m.waiters, []
            for req in waiters:
                self._grant(req, m, out)
        self._schedule(out)
        return out

    def load_failed(self, model_id: str, reason: str, *, now: float) -> list[Decision]:
        out = self._begin(now)
        m = self._models[model_id]
        if m.state is ModelState.LOADING:
            self._forget(m)
            waiters, m.waiters = m.waiters, []
            for req in waiters:
                message = f"model {model_id} failed to load: {reason}"
                self._refuse(
                    req, RejectCode.FAILED_PRECONDITION, RejectReason.BACKEND_FAILED, message, out
                )
        self._schedule(out)
        return out

    def unload_finished(self, model_id: str, *, now: float) -> list[Decision]:
        out = self._begin(now)
        m = self._models[model_id]
        if m.state is ModelState.UNLOADING:
            self._forget(m)
        self._schedule(out)
        return out

    def probe(self, readings: Sequence[GpuSnapshot], *, now: float) -> list[Decision]:
        out = self._begin(now)
        for r in readings:
            if r.uuid in self._reported and r.free_mb is not None:
                self._reported[r.uuid] = r.free_mb
        self._schedule(out)
        return out

    def tick(self, now: float) -> list[Decision]:
        out = self._begin(now)
        self._schedule(out)
        return out

    def next_wakeup(self) -> float | None:
        if self.idle_ttl_s is None:
            return None
        due = [
            m.idle_since + self.idle_ttl_s
            for m in self._models.values()
            if m.state is ModelState.LOADED and not m.leases and m.idle_since is not None
        ]
        return min(due, default=None)

    # -- for subclasses -----------------------------------------------------------------------

    def _schedule(self, out: list[Decision]) -> None:
        raise NotImplementedError

    def _begin(self, now: float) -> list[Decision]:
        self._now = max(self._now, now)
        out: list[Decision] = []
        if self.idle_ttl_s is not None:
            for m in self._models.values():
                idle = m.state is ModelState.LOADED and not m.leases and m.idle_since is not None
                if idle and m.idle_since is not None and m.idle_since + self.idle_ttl_s <= now:
                    self._stop(m, StopReason.GRACE_EXPIRED, out)
        return out

    def _held(self, uuid: str, *, counting_unloads: bool = True) -> int:
        """MiB placed on a GPU; without the unloads under way when `counting_unloads` is
        False (the room there will be once they finish)."""
        states = _HOLDING if counting_unloads else (ModelState.LOADING, ModelState.LOADED)
        return sum(m.on(uuid) for m in self._models.values() if m.state in states)

    def _holding(self) -> list[Slot]:
        return [m for m in self._models.values() if m.state in _HOLDING]

    def _busy(self, uuid: str | None = None) -> bool:
        """A load or unload under way (on that GPU)."""
        return any(
            m.state in (ModelState.LOADING, ModelState.UNLOADING)
            and (uuid is None or uuid in m.gpus)
            for m in self._models.values()
        )

    def _start(
        self, m: Slot, gpus: tuple[str, ...], shares: tuple[int, ...], out: list[Decision]
    ) -> None:
        m.state = ModelState.LOADING
        m.gpus, m.shares = gpus, shares
        m.draining = False
        out.append(StartBackend(m.id, gpus, sum(shares), shares))

    def _stop(self, m: Slot, reason: StopReason, out: list[Decision]) -> None:
        for lid in sorted(m.leases):
            # Only a policy that evicts without checking use gets here with leases.
            del self._leases[lid]
            out.append(LeaseEnded(lid, m.id, LeaseEndReason.BACKEND_DIED, "evicted while in use"))
        m.leases.clear()
        m.state = ModelState.UNLOADING
        m.idle_since = None
        m.draining = False
        out.append(StopBackend(m.id, m.gpus, reason, reason.value))

    def _forget(self, m: Slot) -> None:
        m.state = ModelState.UNLOADED
        m.gpus, m.shares = (), ()
        m.idle_since = None
        m.draining = False

    def _take(self, req: Req) -> None:
        self._queue.remove(req)

    def _grant(self, req: Req, m: Slot, out: list[Decision]) -> None:
        m.leases.add(req.rid)
        m.last_used = self._now
        m.idle_since = None
        self._leases[req.rid] = m
        out.append(Granted(req.rid, m.id, m.gpus, math.inf, False))

    def _serve_warm(self, req: Req, m: Slot, out: list[Decision]) -> bool:
        """Every peer serves a loaded model at once and joins a load under way; True if so."""
        if m.state is ModelState.LOADED:
            self._take(req)
            self._grant(req, m, out)
            return True
        if m.state is ModelState.LOADING:
            self._join(req, m)
            return True
        return False

    def _join(self, req: Req, m: Slot) -> None:
        """The request waits on its model's load and is granted when it is healthy."""
        self._take(req)
        m.waiters.append(req)

    def _refuse(
        self, req: Req, code: RejectCode, reason: RejectReason, message: str, out: list[Decision]
    ) -> None:
        out.append(Rejected(req.rid, code, reason, message))
