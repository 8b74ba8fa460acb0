"""A discrete-event simulator that plays the daemon's shell around a scheduling policy.

The policy is anything with the part of the scheduler core's event interface that the bench
drives (`gpuletd.scheduler.events.PolicyEvents`): the real `gpuletd.scheduler.Scheduler`, or one
of the peer emulations in `bench.policies`, all answering with the core's decision types. The
simulator is the rest of the world:

- clients: each request of the trace arrives (roots at their time, followers `gap_s` after
  what they follow is done), waits for its grant, holds the lease for `hold_s`, releases it;
- backends: a `StartBackend` becomes `load_succeeded` after the model's spawn and load
  times (only the load counts as load seconds), a `StopBackend` becomes `unload_finished`
  after its unload time;
- the GPUs: memory is taken at `StartBackend` and given back at `unload_finished` (true
  footprint = the reservation the policy asked for); a probe reading consistent with that is
  fed after every change; `tick` is called at `next_wakeup()`.

It also referees. A placement that makes a GPU hold more than it has is an *overcommit*; if
the GPU is still over when that load would finish, the load fails as a CUDA OOM would
(`load_failed`) and its time counts as wasted. A lease cut short (its model stopped under
it) is *lost*. Shell-contract breaches (a grant on a model that is not loaded, a start for a
model whose process still runs, a refusal after a grant) are *anomalies*, as are invariant
violations reported by `check` after every event.
"""

from __future__ import annotations

import enum
import heapq
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, assert_never

from bench.workloads import Machine, Request, Workload
from gpuletd.probe.simulated import SimulatedGpu, SimulatedProbe
from gpuletd.probe.types import GpuSnapshot
from gpuletd.scheduler.decisions import (
    Decision,
    Granted,
    LeaseEnded,
    LeaseEndReason,
    LeaseRefused,
    Loading,
    ModelStateChanged,
    PreloadSkipped,
    Queued,
    Rejected,
    Renewed,
    StartBackend,
    StopBackend,
    StopReason,
)
from gpuletd.scheduler.events import PolicyEvents

__all__ = ["Build", "Recorded", "RunResult", "Simulator", "simulated_gpus"]

# A client keeps its lease for hold_s and releases it; the ttl only has to outlast that (the
# daemon's clients renew; the replay does not model renewals).
_TTL_MARGIN_S = 120.0
# Requests still pending this long after the last nominal arrival are reported as never served.
_HORIZON_S = 86400.0
_MAX_ANOMALIES_KEPT = 8


# Makes the policy from the GPUs' first readings; returns it and, optionally, an invariant
# check to run after every event (violations as sentences).
Build = Callable[[list[GpuSnapshot]], tuple[PolicyEvents, Callable[[], list[str]] | None]]

# One recorded call to the policy: method name, positional args, keyword args. Replaying a
# recording into a fresh core measures the core alone, without the simulator around it.
Recorded = tuple[str, tuple[Any, ...], dict[str, Any]]


class _Ev(enum.IntEnum):
    # At equal times: backends report before clients act, releases before arrivals (a client
    # done at t frees room for one arriving at t), timers last.
    LOAD_DONE = 0
    UNLOAD_DONE = 1
    RELEASE = 2
    ARRIVAL = 3
    WAKE = 4


@dataclass(frozen=True)
class RunResult:
    workload: str
    machine: str
    policy: str
    requests: int
    granted: int
    # Granted leases that ended normally (released by their client) and that were cut short.
    released: int
    lost: int
    refused: int
    unserved: int
    loads: int
    load_s: float
    # Backends stopped because they sat idle (grace / keep-alive / TTL), or to make room.
    idle_unloads: int
    evictions: int
    wait_mean_s: float
    wait_p95_s: float
    oom: int
    overcommit: int
    makespan_s: float
    policy_calls: int
    wall_s: float
    anomaly_count: int
    anomalies: tuple[str, ...]
    refuse_reasons: tuple[tuple[str, int], ...]
    # For consistency checks.
    granted_ids: frozenset[str] = field(repr=False)
    refused_ids: frozenset[str] = field(repr=False)
    lost_ids: frozenset[str] = field(repr=False)


def simulated_gpus(machine: Machine) -> list[SimulatedGpu]:
    return [SimulatedGpu(f"Simulated {mb // 1024} GB", mb) for mb in machine.gpus_mb]


class Simulator:
    def __init__(
        self,
        workload: Workload,
        machine: Machine,
        build: Build,
        *,
        label: str,
        record: list[Recorded] | None = None,
    ) -> None:
        self._w = workload
        self._machine = machine
        self._label = label
        self._record = record
        self._now = 0.0
        self._probe = SimulatedProbe(simulated_gpus(machine), clock=lambda: self._now)
        self._policy, self._check = build(self._probe.open())
        self._totals = dict(zip(self._probe.uuids, machine.gpus_mb, strict=True))
        self._specs = {m.id: m for m in workload.models}
        self._reqs: dict[str, Request] = {r.rid: r for r in workload.requests}
        self._heap: list[tuple[float, int, int, str, int]] = []
        self._seq = 0
        # Closed loop: who follows whom, and how many predecessors each still waits for.
        self._followers: dict[str, list[str]] = {}
        self._deps_left: dict[str, int] = {}
        for r in workload.requests:
            self._deps_left[r.rid] = len(r.after)
            for a in r.after:
                self._followers.setdefault(a, []).append(r.rid)
        # Physical state.
        self._held: dict[str, dict[str, int]] = {}
        self._loading: dict[str, tuple[float, float, int]] = {}  # model -> start, end, token
        self._loaded: set[str] = set()
        self._unloading: dict[str, int] = {}  # model -> token
        self._token = 0
        # Clients.
        self._arrived: dict[str, float] = {}
        self._granted: dict[str, float] = {}
        self._refused: set[str] = set()
        self._reasons: Counter[str] = Counter()
        self._live: dict[str, str] = {}  # lease -> model
        self._released = 0
        self._release_token: dict[str, int] = {}
        self._lost: set[str] = set()
        self._done = 0
        self._last_done = 0.0
        # Results.
        self._loads = 0
        self._load_s = 0.0
        self._idle_unloads = 0
        self._evictions = 0
        self._oom = 0
        self._overcommit = 0
        self._calls = 0
        self._anomalies: list[str] = []
        self._anomaly_count = 0
        self._wake_at: float | None = None
        self._same_time_wakes = 0
        self._probe_due = False

    # -- plumbing ----------------------------------------------------------------------------

    def _push(self, t: float, kind: _Ev, key: str, token: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, int(kind), self._seq, key, token))

    def _anomaly(self, message: str) -> None:
        self._anomaly_count += 1
        if len(self._anomalies) < _MAX_ANOMALIES_KEPT:
            self._anomalies.append(f"t={self._now:.1f}: {message}")

    def _call(self, name: str, *args: Any, **kwargs: Any) -> None:
        """Feed one event to the policy, execute its decisions, then feed the probe reading
        that the resulting memory changes would produce (and so on until quiet)."""
        self._calls += 1
        if self._record is not None:
            self._record.append((name, args, kwargs))
        out: list[Decision] = getattr(self._policy, name)(*args, **kwargs)
        if self._check is not None:
            for v in self._check():
                self._anomaly(f"invariant after {name}: {v}")
        self._apply(out)
        if self._probe_due:
            self._probe_due = False
            self._probe.set_used({u: self._used(u) for u in self._totals})
            self._call("probe", self._probe.read(), now=self._now)

    def _used(self, uuid: str) -> int:
        return sum(shares.get(uuid, 0) for shares in self._held.values())

    # -- decisions ---------------------------------------------------------------------------

    def _apply(self, out: list[Decision]) -> None:
        for d in out:
            match d:
                case StartBackend():
                    self._start(d)
                case StopBackend():
                    self._stop(d)
                case Granted():
                    self._grant(d)
                case Rejected():
                    self._reject(d)
                case LeaseEnded():
                    # A release is the client's own doing; anything else cut the lease short.
                    if d.reason is not LeaseEndReason.RELEASED:
                        self._cut(d.lease_id, f"lease ended: {d.reason.value}")
                case (
                    Queued()
                    | Loading()
                    | Renewed()
                    | LeaseRefused()
                    | ModelStateChanged()
                    | PreloadSkipped()
                ):
                    # Progress reports: the simulated clients and GPUs do not act on them.
                    pass
                case _:
                    assert_never(d)

    def _start(self, d: StartBackend) -> None:
        mid = d.model_id
        if mid in self._held:
            self._anomaly(f"StartBackend {mid} while its previous process still holds memory")
            return
        spec = self._specs[mid]
        self._held[mid] = dict(zip(d.gpu_uuids, d.gpu_reservations_mb, strict=True))
        if any(self._used(u) > self._totals[u] for u in d.gpu_uuids):
            self._overcommit += 1
        self._token += 1
        end = self._now + spec.spawn_s + spec.load_s
        self._loading[mid] = (self._now, end, self._token)
        self._loads += 1
        self._load_s += spec.load_s
        self._push(end, _Ev.LOAD_DONE, mid, self._token)
        self._probe_due = True

    def _stop(self, d: StopBackend) -> None:
        mid = d.model_id
        if mid in self._loading:
            # Stopped while loading (a load timeout): only the time spent so far was wasted.
            _start, end, _token = self._loading.pop(mid)
            self._load_s -= min(self._specs[mid].load_s, max(0.0, end - self._now))
        elif mid in self._loaded:
            self._loaded.discard(mid)
        else:
            self._anomaly(f"StopBackend {mid}, which is not running")
            return
        if d.reason is StopReason.GRACE_EXPIRED:
            self._idle_unloads += 1
        else:
            self._evictions += 1
        for lid, m in list(self._live.items()):
            if m == mid:
                self._cut(lid, "its model was stopped while in use")
        self._token += 1
        self._unloading[mid] = self._token
        self._push(self._now + self._specs[mid].unload_s, _Ev.UNLOAD_DONE, mid, self._token)

    def _grant(self, d: Granted) -> None:
        rid = d.lease_id
        if d.model_id not in self._loaded:
            self._anomaly(f"Granted {rid} on {d.model_id}, which is not loaded")
        if rid in self._granted or rid in self._refused or rid not in self._arrived:
            self._anomaly(f"Granted {rid}, which is not pending")
            return
        self._granted[rid] = self._now
        self._live[rid] = d.model_id
        self._token += 1
        self._release_token[rid] = self._token
        self._push(self._now + self._reqs[rid].hold_s, _Ev.RELEASE, rid, self._token)

    def _reject(self, d: Rejected) -> None:
        rid = d.request_id
        if rid in self._granted or rid in self._refused or rid not in self._arrived:
            self._anomaly(f"Rejected {rid}, which is not pending")
            return
        self._refused.add(rid)
        # ModelMesh's churn refusal has no reason of its own in the core's vocabulary.
        why = "CACHE_CHURN" if d.message.startswith("cache churn") else d.reason.value
        self._reasons[why] += 1
        self._finish(rid)

    def _cut(self, lease_id: str, why: str) -> None:
        if self._live.pop(lease_id, None) is None:
            return
        self._release_token.pop(lease_id, None)
        self._lost.add(lease_id)
        self._finish(lease_id)

    def _finish(self, rid: str) -> None:
        """A request is done (released, refused or cut short): its followers may come."""
        self._done += 1
        self._last_done = self._now
        for f in self._followers.get(rid, ()):
            self._deps_left[f] -= 1
            if self._deps_left[f] == 0:
                self._push(self._now + self._reqs[f].gap_s, _Ev.ARRIVAL, f)

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> RunResult:
        started = time.perf_counter()
        for r in self._w.requests:
            if not r.after:
                self._push(r.at_s, _Ev.ARRIVAL, r.rid)
        total = len(self._w.requests)
        horizon = max((r.nominal_s for r in self._w.requests), default=0.0) + _HORIZON_S
        while self._heap and self._done < total:
            t, kind, _seq, key, token = heapq.heappop(self._heap)
            if t > horizon:
                break
            self._now = max(self._now, t)
            if kind == _Ev.WAKE:
                if self._wake_at is None or t != self._wake_at:
                    continue  # superseded
                self._wake_at = None
                self._call("tick", self._now)
            elif kind == _Ev.ARRIVAL:
                r = self._reqs[key]
                self._arrived[key] = self._now
                self._call(
                    "request",
                    key,
                    r.model,
                    now=self._now,
                    priority=r.priority,
                    ttl_s=r.hold_s + _TTL_MARGIN_S,
                )
            elif kind == _Ev.RELEASE:
                if self._release_token.get(key) != token:
                    continue
                del self._release_token[key]
                self._live.pop(key, None)
                self._released += 1
                self._finish(key)
                self._call("release", key, now=self._now)
            elif kind == _Ev.LOAD_DONE:
                self._load_done(key, token)
            elif kind == _Ev.UNLOAD_DONE:
                if self._unloading.get(key) != token:
                    continue
                del self._unloading[key]
                self._held.pop(key, None)
                self._probe_due = True
                self._call("unload_finished", key, now=self._now)
            self._schedule_wake()
        return self._result(time.perf_counter() - started)

    def _load_done(self, mid: str, token: int) -> None:
        entry = self._loading.get(mid)
        if entry is None or entry[2] != token:
            return
        del self._loading[mid]
        shares = self._held[mid]
        if any(self._used(u) > self._totals[u] for u in shares):
            # The weights no longer fit next to what else is resident: CUDA out of memory.
            self._oom += 1
            del self._held[mid]
            self._probe_due = True
            self._call("load_failed", mid, "CUDA out of memory", now=self._now)
            return
        self._loaded.add(mid)
        self._probe_due = True
        self._call("load_succeeded", mid, now=self._now)

    def _schedule_wake(self) -> None:
        nxt = self._policy.next_wakeup()
        if nxt is None or nxt == self._wake_at:
            return
        if nxt <= self._now:
            # Something is due now although the policy just ran: tick again at once, but
            # never spin on the same instant.
            self._same_time_wakes += 1
            if self._same_time_wakes > 10:
                self._anomaly(f"next_wakeup() keeps returning {nxt:.3f} <= now")
                nxt = self._now + 1e-3
                self._same_time_wakes = 0
            else:
                nxt = self._now
        else:
            self._same_time_wakes = 0
        self._wake_at = nxt
        self._push(nxt, _Ev.WAKE, "")

    def _result(self, wall: float) -> RunResult:
        waits = sorted(self._granted[r] - self._arrived[r] for r in self._granted)
        p95 = waits[max(0, math.ceil(0.95 * len(waits)) - 1)] if waits else 0.0
        served = set(self._granted) | self._refused
        first = min(self._arrived.values(), default=0.0)
        return RunResult(
            workload=self._w.name,
            machine=self._machine.label,
            policy=self._label,
            requests=len(self._w.requests),
            granted=len(self._granted),
            released=self._released,
            lost=len(self._lost),
            refused=len(self._refused),
            unserved=len(self._w.requests) - len(served),
            loads=self._loads,
            load_s=self._load_s,
            idle_unloads=self._idle_unloads,
            evictions=self._evictions,
            wait_mean_s=sum(waits) / len(waits) if waits else 0.0,
            wait_p95_s=p95,
            oom=self._oom,
            overcommit=self._overcommit,
            makespan_s=self._last_done - first,
            policy_calls=self._calls,
            wall_s=wall,
            anomaly_count=self._anomaly_count,
            anomalies=tuple(self._anomalies),
            refuse_reasons=tuple(sorted(self._reasons.items())),
            granted_ids=frozenset(self._granted),
            refused_ids=frozenset(self._refused),
            lost_ids=frozenset(self._lost),
        )
