"""Read-only snapshots of the scheduler's state, for the daemon (ListLeases, `gpulet models`,
GetGpuStatus, metrics) and for the invariant checks. Frozen values, never the live records."""

from __future__ import annotations

from dataclasses import dataclass

from gpuletd.probe.types import GpuState
from gpuletd.scheduler.accounting import available_now, grace_due, held_on
from gpuletd.scheduler.decisions import ModelState
from gpuletd.scheduler.records import LeaseRecord, ModelRecord
from gpuletd.scheduler.state import State, instances

__all__ = [
    "GpuView",
    "LeaseView",
    "ModelView",
    "QueueEntry",
    "gpu_views",
    "lease_view",
    "model_view",
    "model_views",
    "queue_entries",
    "waiting_count",
]


@dataclass(frozen=True)
class ModelView:
    model_id: str
    state: ModelState
    gpu_uuids: tuple[str, ...]
    # MiB reserved on each of gpu_uuids (same order); empty when it holds no memory.
    gpu_reservations_mb: tuple[int, ...]
    # Total MiB it counts against the budget now (0 when unloaded or failed).
    reserved_mb: int
    # What it would reserve if loaded: max(estimate, last measurement).
    reservation_mb: int
    measured_mb: int | None
    lease_count: int
    # Request ids waiting on its load under way.
    waiters: tuple[str, ...]
    # Since when it has been loaded with no lease (None when leased or not loaded).
    idle_since: float | None
    # When it unloads for idleness if still unleased (None: not due, or keep-warm).
    grace_until: float | None
    keep_warm: bool
    load_seconds: float | None
    consecutive_failures: int
    # No load is started before this time (backoff after failures); None when not backing off.
    backoff_until: float | None
    last_error: str
    # Where its backend answers (from load_succeeded, else the registry's); "" when it holds
    # no memory or none is known.
    endpoint: str = ""
    # Why this instance is retired (removed from the registry or redefined by a reconfigure):
    # it serves its holders, takes no new lease and stops once unleased. "" for a live model.
    retired: str = ""
    # A memory lease's reservation (id `vram:<request id>`), not a model of the registry.
    memory: bool = False
    # Counted against the profile's `max_heavy_models` (meaningful while it holds memory).
    heavy: bool = False

    @property
    def holds_memory(self) -> bool:
        """Loading, loaded or unloading: it has a backend (or a reservation) to answer for."""
        return self.state in (ModelState.LOADING, ModelState.LOADED, ModelState.UNLOADING)


@dataclass(frozen=True)
class LeaseView:
    lease_id: str
    model_id: str
    client: str
    priority: int
    exclusive: bool
    gpu_uuids: tuple[str, ...]
    granted_at: float
    expires_at: float
    ttl_s: float


@dataclass(frozen=True)
class QueueEntry:
    request_id: str
    model_id: str
    client: str
    priority: int
    effective_priority: int
    exclusive: bool
    arrived_at: float
    deadline: float | None
    # 1 = next; None while it waits on a load of its model (then it needs no turn).
    position: int | None
    # Arrival order, to check FIFO.
    seq: int
    bypassed: int
    # When it began and until when it may hold off an eviction for a cheaper one on its way
    # (patience); None when it never did.
    patient_from: float | None = None
    patient_until: float | None = None


@dataclass(frozen=True)
class GpuView:
    uuid: str
    index: int
    name: str
    total_mb: int | None
    headroom_mb: int
    state: GpuState
    lost: bool
    # Sum of the reservations of models placed here (loading, loaded or unloading).
    reserved_mb: int
    # Given back by unloads but not yet seen free by the probe.
    pending_free_mb: int
    foreign_mb: int
    # What a new placement could use right now (min of live and accounted).
    available_mb: int
    live_free_mb: int | None
    loading_model: str | None
    models: tuple[str, ...]


def model_view(st: State, r: ModelRecord) -> ModelView:
    return ModelView(
        model_id=r.model.id,
        state=r.state,
        gpu_uuids=r.gpu_uuids,
        gpu_reservations_mb=tuple(r.shares.get(u, 0) for u in r.gpu_uuids),
        reserved_mb=r.reserved_mb,
        reservation_mb=r.reservation_mb,
        measured_mb=r.measured_mb,
        lease_count=len(r.leases),
        waiters=tuple(r.waiters),
        idle_since=r.idle_since if r.state is ModelState.LOADED and not r.leases else None,
        grace_until=grace_due(st, r),
        keep_warm=r.keep_warm,
        load_seconds=r.load_seconds,
        consecutive_failures=r.consecutive_failures,
        backoff_until=r.backoff_until if r.backoff_until > st.now else None,
        last_error=r.last_error,
        endpoint=r.endpoint,
        retired=r.retired,
        memory=r.memory,
        heavy=r.heavy,
    )


def model_views(st: State) -> dict[str, ModelView]:
    """One view per model id: the instance that holds memory and leases (a retired one while
    it exists: a redefined model's new instance has nothing to show until it is gone)."""
    views = {mid: model_view(st, r) for mid, r in st.models.items()}
    for mid, r in st.retired.items():
        views[mid] = model_view(st, r)
    return views


def lease_view(le: LeaseRecord) -> LeaseView:
    return LeaseView(
        lease_id=le.lease_id,
        model_id=le.model_id,
        client=le.client,
        priority=le.priority,
        exclusive=le.exclusive,
        gpu_uuids=le.gpu_uuids,
        granted_at=le.granted_at,
        expires_at=le.expires_at,
        ttl_s=le.ttl_s,
    )


def waiting_count(st: State) -> int:
    """Requests waiting for their turn: O(n), no ordering (asked on every Queued update)."""
    return sum(1 for r in st.queue if not r.joined)


def queue_entries(st: State) -> list[QueueEntry]:
    """Every pending request: those with a turn first, in turn order, then those waiting on a
    load, in arrival order."""
    q = st.queue
    ordered = q.ordered(st.now)
    joined = [r for r in q if r.joined]
    return [
        QueueEntry(
            request_id=r.request_id,
            model_id=r.model_id,
            client=r.client,
            priority=r.priority,
            effective_priority=q.effective_priority(r, st.now),
            exclusive=r.exclusive,
            arrived_at=r.arrived_at,
            deadline=r.deadline,
            position=None if r.joined else i + 1,
            seq=r.seq,
            bypassed=r.bypassed,
            patient_from=r.patient_from,
            patient_until=r.patient_until,
        )
        for i, r in enumerate([*ordered, *joined])
    ]


def gpu_views(st: State) -> list[GpuView]:
    views = []
    for u, g in st.gpus.items():
        usable = not g.lost and g.total_mb is not None
        loading = [
            r.model.id for r in instances(st) if r.state is ModelState.LOADING and u in r.gpu_uuids
        ]
        views.append(
            GpuView(
                uuid=u,
                index=g.index,
                name=g.name,
                total_mb=g.total_mb,
                headroom_mb=st.profile.headroom_mb,
                state=g.state,
                lost=g.lost,
                reserved_mb=held_on(st, u),
                pending_free_mb=sum(p.mb for p in g.pending),
                foreign_mb=g.foreign_mb,
                available_mb=max(0, available_now(st, g)) if usable else 0,
                live_free_mb=g.free_mb,
                loading_model=loading[0] if loading else None,
                models=tuple(
                    r.model.id for r in instances(st) if r.holds_memory and u in r.gpu_uuids
                ),
            )
        )
    return views
