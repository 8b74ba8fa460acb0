"""The scheduler's mutable records: one per model instance, per GPU and per lease.

These are the core's private bookkeeping; the daemon reads the frozen views in `views.py`.
Lease and backend state live here, in one owner, so that persisting them is a matter of
writing these records out (`snapshot.py`), not of finding them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gpuletd.probe.types import GpuState
from gpuletd.registry import Model
from gpuletd.scheduler.decisions import ModelState
from gpuletd.scheduler.eviction import ReuseEstimator

__all__ = ["GpuRecord", "LeaseRecord", "ModelRecord", "PendingFree"]


@dataclass
class ModelRecord:
    model: Model
    usage: ReuseEstimator
    state: ModelState = ModelState.UNLOADED
    # Where it is, and the MiB reserved on each of those GPUs (empty while it holds nothing).
    gpu_uuids: tuple[str, ...] = ()
    shares: dict[str, int] = field(default_factory=dict)
    # Total MiB counted against the profile budget while it holds memory (0 otherwise).
    reserved_mb: int = 0
    # Its live leases, in grant order.
    leases: dict[str, LeaseRecord] = field(default_factory=dict)
    # Request ids waiting on the current load, in the order they joined.
    waiters: list[str] = field(default_factory=list)
    load_started_at: float | None = None
    idle_since: float | None = None
    # The state it settles in when the unload under way finishes.
    after_unload: ModelState = ModelState.UNLOADED
    last_error: str = ""
    measured_mb: int | None = None
    # Smoothed StartBackend -> healthy time; None until measured once.
    load_seconds: float | None = None
    consecutive_failures: int = 0
    backoff_until: float = float("-inf")
    # For telling a crash right after a healthy start (a crash loop) from one after a long run.
    healthy_since: float = float("-inf")
    streak_at_success: int = 0
    # A preloaded model (concurrent_full): never unloaded for idleness, evictable under pressure.
    keep_warm: bool = False
    # Kept warm by the `pin` event (an administrator) rather than the preload list: survives a
    # restore and a reconfigure; cleared by `pin(False)` and `unload`.
    pinned: bool = False
    # Where its backend answers, as the shell reported at load_succeeded; kept while it holds
    # memory so that every grant can carry it.
    endpoint: str = ""
    # Non-empty for a *retired* instance: its model was removed from the registry or redefined
    # by a reconfigure. It serves its holders, takes no new lease, and stops once unleased.
    retired: str = ""
    # A *memory lease*'s record (id `vram:<request id>`): raw VRAM for one holder, never in the
    # registry. Created by its request, stopped when its lease ends, forgotten once it holds
    # nothing (`admission.sweep_memory`).
    memory: bool = False
    # Counted against the profile's `max_heavy_models` while it holds memory: decided when
    # its load started (`placement.is_heavy`), so a later measurement does not move it.
    heavy: bool = False
    # `accounting.need_of`'s memo: (model, reservation, profile, GPU infos, need, ceiling
    # problem), valid while those four are the very same objects/values. Derived, never saved.
    need_memo: tuple[object, ...] | None = field(default=None, compare=False, repr=False)
    # How many of `leases` are exclusive (kept by `transitions.grant` / `end_lease`; recounted
    # by `state.drop_caches`): a popular model holds hundreds of leases, and every request
    # for it asks.
    exclusive_leases: int = field(default=0, compare=False, repr=False)

    @property
    def reservation_mb(self) -> int:
        """Estimate, raised to what was measured once the backend was healthy."""
        return max(self.model.vram_estimate_mb, self.measured_mb or 0)

    @property
    def holds_memory(self) -> bool:
        return self.state in (ModelState.LOADING, ModelState.LOADED, ModelState.UNLOADING)


@dataclass(frozen=True)
class PendingFree:
    """Memory given back by an unload, not yet seen free by the probe."""

    mb: int
    at: float


@dataclass
class GpuRecord:
    uuid: str
    index: int
    name: str
    total_mb: int | None
    state: GpuState
    free_mb: int | None
    read_at: float
    lost: bool = False
    foreign_mb: int = 0
    pending: list[PendingFree] = field(default_factory=list)
    last_release_at: float = float("-inf")


@dataclass
class LeaseRecord:
    lease_id: str
    model_id: str
    client: str
    priority: int
    exclusive: bool
    gpu_uuids: tuple[str, ...]
    granted_at: float
    expires_at: float
    ttl_s: float
    secret: str = ""
    # Until its caller claims it (a first renew or its release): a grant never claimed by
    # then never reached its caller, and ends. None: claimed, or no claim was asked for.
    claim_by: float | None = None
