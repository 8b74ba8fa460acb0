"""The waiting room: pending requests, their order, and aging.

Order is by *effective* priority (high first), then arrival (FIFO). Effective priority is the
request's priority plus one level for every `aging_interval_s` it has waited, so a stream of
higher-priority requests can delay a low-priority one only for a bounded time. Two requests of
the same priority age at the same rate, so aging never reorders them: FIFO within a priority
holds at every instant.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["PendingRequest", "RequestQueue"]


@dataclass(eq=False)
class PendingRequest:
    request_id: str
    model_id: str
    client: str
    priority: int
    ttl_s: float
    exclusive: bool
    deadline: float | None
    arrived_at: float
    # Arrival order; breaks every tie so the order never depends on hashing.
    seq: int
    # Opaque to the core: what the shell checks a renew/release against (a token digest).
    # Kept with the lease so that lease state has one owner (and one place to persist).
    secret: str = ""
    # Seconds its caller has to claim the grant (see LeaseRecord.claim_by); None: no claim.
    claim_within_s: float | None = None
    # Delaying bypasses suffered while this request was the blocked head (bounded by the
    # scheduler's bypass limit).
    bypassed: int = 0
    # Waiting on a load of its model (started for it or joined): no longer has a position.
    joined: bool = False
    # Last position reported in a Queued decision (None: not reported, or joined).
    position: int | None = None
    # Until when it holds off an eviction for a cheaper one on its way (`patience.py`); set
    # once, when its patience begins, and never moved. None: it never waited patiently.
    patient_from: float | None = None
    patient_until: float | None = None


class RequestQueue:
    """Every request not yet granted or refused, in arrival order."""

    def __init__(self, aging_interval_s: float | None) -> None:
        self._aging = aging_interval_s if aging_interval_s and aging_interval_s > 0 else None
        self._items: dict[str, PendingRequest] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._items

    def __iter__(self) -> Iterator[PendingRequest]:
        return iter(list(self._items.values()))

    def get(self, request_id: str) -> PendingRequest | None:
        return self._items.get(request_id)

    def add(self, request: PendingRequest) -> None:
        if request.request_id in self._items:
            raise ValueError(f"request id {request.request_id!r} is already pending")
        self._items[request.request_id] = request

    def remove(self, request_id: str) -> PendingRequest | None:
        return self._items.pop(request_id, None)

    def _steps(self, request: PendingRequest, now: float) -> int:
        if self._aging is None or now <= request.arrived_at:
            return 0
        return int((now - request.arrived_at) // self._aging)

    def effective_priority(self, request: PendingRequest, now: float) -> int:
        return request.priority + self._steps(request, now)

    def ordered(self, now: float) -> list[PendingRequest]:
        """Requests that wait for a turn (not those already waiting on a load), next first."""
        waiting = [r for r in self._items.values() if not r.joined]
        waiting.sort(key=lambda r: (-self.effective_priority(r, now), r.seq))
        return waiting

    def next_reorder_at(self, now: float) -> float | None:
        """When aging next changes some request's effective priority, if that can change the
        order at all (it cannot when every waiting request has the same priority)."""
        if self._aging is None:
            return None
        waiting = [r for r in self._items.values() if not r.joined]
        if len({r.priority for r in waiting}) < 2:
            return None
        best: float | None = None
        for r in waiting:
            t = self._next_step_at(r, now)
            if best is None or t < best:
                best = t
        return best

    def _next_step_at(self, request: PendingRequest, now: float) -> float:
        assert self._aging is not None
        k = self._steps(request, now)
        t = request.arrived_at + (k + 1) * self._aging
        # Floating point may put the boundary a hair early; the shell must never be woken for
        # a tick that changes nothing (it would spin), so step until the floor really moves.
        while self._steps(request, t) <= k:
            t = math.nextafter(t, math.inf)
        return t
