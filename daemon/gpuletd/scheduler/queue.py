"""The waiting room: pending requests, their order, and aging.

Order is by *effective* priority (high first), then arrival (FIFO). Effective priority is the
request's priority plus one level for every `aging_interval_s` it has waited, so a stream of
higher-priority requests can delay a low-priority one only for a bounded time. Two requests of
the same priority age at the same rate, so aging never reorders them: FIFO within a priority
holds at every instant.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from collections.abc import Set as AbstractSet
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
        # Derived, to spare the hot path a sort and a walk of every request: how many pending
        # requests have each priority; those with a deadline, in arrival order; and whether
        # arrivals came in turn order (seq and arrival time never going back), which makes the
        # turn order of one priority the arrival order.
        self._priorities: dict[int, int] = {}
        self._deadlined: dict[str, PendingRequest] = {}
        # Those waiting patiently (`note_patient`), for `timers.next_wakeup`.
        self._patient: dict[str, PendingRequest] = {}
        self._in_order = True
        self._last: tuple[int, float] | None = None
        # Requests ever added.
        self.arrivals = 0
        # Per model, how many of its requests wait for a turn (not joined to a load).
        self._turns: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._items

    def __iter__(self) -> Iterator[PendingRequest]:
        return iter(list(self._items.values()))

    def pending(self) -> Mapping[str, PendingRequest]:
        """Every pending request by id, read-only: the pass tests membership 10,000s of times
        an event, where a method call per test would be its largest cost."""
        return self._items

    def get(self, request_id: str) -> PendingRequest | None:
        return self._items.get(request_id)

    def add(self, request: PendingRequest) -> None:
        if request.request_id in self._items:
            raise ValueError(f"request id {request.request_id!r} is already pending")
        self._items[request.request_id] = request
        p = request.priority
        self._priorities[p] = self._priorities.get(p, 0) + 1
        if request.deadline is not None:
            self._deadlined[request.request_id] = request
        last = self._last
        if last is not None and (request.seq <= last[0] or request.arrived_at < last[1]):
            self._in_order = False
        self._last = (request.seq, request.arrived_at)
        self.arrivals += 1
        if not request.joined:
            self._count_turn(request.model_id, 1)

    def remove(self, request_id: str) -> PendingRequest | None:
        request = self._items.pop(request_id, None)
        if request is not None:
            p = request.priority
            left = self._priorities[p] - 1
            if left:
                self._priorities[p] = left
            else:
                del self._priorities[p]
            self._deadlined.pop(request_id, None)
            self._patient.pop(request_id, None)
            if not request.joined:
                self._count_turn(request.model_id, -1)
        return request

    def _count_turn(self, model_id: str, step: int) -> None:
        left = self._turns.get(model_id, 0) + step
        if left:
            self._turns[model_id] = left
        else:
            del self._turns[model_id]

    def set_joined(self, request: PendingRequest, joined: bool) -> None:
        """Mark a request as waiting on a load (or back to waiting for a turn). Always through
        here, so that `wanted` stays right."""
        if request.joined != joined and request.request_id in self._items:
            self._count_turn(request.model_id, -1 if joined else 1)
        request.joined = joined

    def wanted(self) -> AbstractSet[str]:
        """The models some request waits for a turn for: live and read-only, kept by
        `add`/`remove`/`set_joined`, so asking costs nothing."""
        return self._turns.keys()

    def derived_problems(self) -> list[str]:
        """Where the counts kept for the hot path disagree with the requests themselves."""
        bad = []
        counts: dict[int, int] = {}
        for r in self._items.values():
            counts[r.priority] = counts.get(r.priority, 0) + 1
        if counts != self._priorities:
            bad.append(f"queue: priority counts {self._priorities} != {counts}")
        turns: dict[str, int] = {}
        for r in self._items.values():
            if not r.joined:
                turns[r.model_id] = turns.get(r.model_id, 0) + 1
        if turns != self._turns:
            bad.append(f"queue: requests waiting for a turn per model {self._turns} != {turns}")
        deadlined = [rid for rid, r in self._items.items() if r.deadline is not None]
        if deadlined != list(self._deadlined):
            bad.append(f"queue: requests with a deadline {list(self._deadlined)} != {deadlined}")
        patient = {rid for rid, r in self._items.items() if r.patient_until is not None}
        if patient != set(self._patient):
            bad.append(f"queue: patient requests {set(self._patient)} != {patient}")
        if self._in_order:
            items = list(self._items.values())
            for a, b in itertools.pairwise(items):
                if not (a.seq < b.seq and a.arrived_at <= b.arrived_at):
                    bad.append(f"queue: {b.request_id} arrived out of order, unnoticed")
        return bad

    def in_turn_order(self) -> bool:
        """Arrival order is turn order (one priority among the pending, arrivals in order)."""
        return len(self._priorities) <= 1 and self._in_order

    def latest(self, n: int) -> list[PendingRequest]:
        """The last `n` requests added, oldest first (when none was removed since)."""
        if n <= 0:
            return []
        return list(itertools.islice(reversed(self._items.values()), n))[::-1]

    def note_patient(self, request: PendingRequest) -> None:
        """`request` has begun to wait patiently (its `patient_until` is set)."""
        if request.request_id in self._items:
            self._patient[request.request_id] = request

    def patient(self) -> list[PendingRequest]:
        """The pending requests that have waited patiently (`note_patient`)."""
        return list(self._patient.values())

    def with_deadline(self) -> list[PendingRequest]:
        """The pending requests that have a deadline, in arrival order (as `__iter__`)."""
        return list(self._deadlined.values())

    def _steps(self, request: PendingRequest, now: float) -> int:
        if self._aging is None or now <= request.arrived_at:
            return 0
        return int((now - request.arrived_at) // self._aging)

    def effective_priority(self, request: PendingRequest, now: float) -> int:
        return request.priority + self._steps(request, now)

    def ordered(self, now: float) -> list[PendingRequest]:
        """Requests that wait for a turn (not those already waiting on a load), next first."""
        waiting = [r for r in self._items.values() if not r.joined]
        if self.in_turn_order():
            # One priority, and arrivals in order: aging lifts the earlier arrival at least as
            # much as the later, so the sort would keep arrival (= seq) order as it is.
            return waiting
        waiting.sort(key=lambda r: (-self.effective_priority(r, now), r.seq))
        return waiting

    def next_reorder_at(self, now: float) -> float | None:
        """When aging next changes some request's effective priority, if that can change the
        order at all (it cannot when every waiting request has the same priority)."""
        if self._aging is None or len(self._priorities) < 2:
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
