"""What the client returns: frozen values of its own, never protobuf messages.

The enums' values are the lower_snake names the config files and `--json` use, so
`model.state == "loaded"` and `json.dumps(model.state)` both read naturally. A value a newer
gpuletd sends that this client does not know becomes `UNSPECIFIED` instead of failing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

__all__ = [
    "ActiveProfile",
    "BackendKind",
    "Candidate",
    "EstimateConfidence",
    "Excluded",
    "ExplainStatus",
    "Explanation",
    "Gpu",
    "GpuProcess",
    "GpuState",
    "GpuStatus",
    "Lease",
    "LeaseEvent",
    "LeaseEventKind",
    "MigMode",
    "Model",
    "ModelEvent",
    "ModelState",
    "PlacedModel",
    "Plan",
    "PlanOutcome",
    "PlanVictim",
    "Profile",
    "ProfileList",
    "ProfileSource",
    "Progress",
    "ProgressCallback",
    "QueueItem",
    "Selection",
    "SelectionBias",
    "SelectionLimit",
    "Strategy",
    "WatchEvent",
]


class Strategy(StrEnum):
    """How a profile keeps models on its GPUs."""

    UNSPECIFIED = "unspecified"
    LOAD_UNLOAD = "load_unload"
    CONCURRENT_LIMITED = "concurrent_limited"
    CONCURRENT_FULL = "concurrent_full"
    TENSOR_PARALLEL_OR_DISTRIBUTED = "tensor_parallel_or_distributed"


class SelectionLimit(StrEnum):
    """Which limit keeps a model that supports a role out of its candidates."""

    UNSPECIFIED = "unspecified"
    PROFILE_BUDGET = "profile_budget"  # larger than the profile's max_vram_mb
    GPU_MEMORY = "gpu_memory"  # no GPU (or tensor-parallel span) here has that much usable
    GPU_COUNT = "gpu_count"  # needs more usable GPUs than there are (or it is pinned to)
    PINNING = "pinning"  # pinned to GPUs this machine does not have


class EstimateConfidence(StrEnum):
    """How far to trust a model's reservation: low = the configured estimate only, medium =
    measured by the probe once or twice, high = three or more times."""

    UNSPECIFIED = "unspecified"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class SelectionBias(StrEnum):
    """Which candidate wins a tie on role priority and quantization."""

    UNSPECIFIED = "unspecified"
    VRAM_EFFICIENT = "vram_efficient"
    BALANCED = "balanced"
    QUALITY = "quality"


class ProfileSource(StrEnum):
    """Where the active profile came from, highest precedence first."""

    UNSPECIFIED = "unspecified"
    FLAG = "flag"
    ENV = "env"
    CONFIG = "config"
    AUTO = "auto"
    DEFAULT = "default"
    # Switched at run time on the admin socket.
    ADMIN = "admin"


class GpuState(StrEnum):
    UNSPECIFIED = "unspecified"
    OK = "ok"
    STALE = "stale"  # repeated read failures: the memory numbers are the last good ones
    LOST = "lost"  # fell off the bus: nothing is placed on it


class MigMode(StrEnum):
    UNSPECIFIED = "unspecified"
    DISABLED = "disabled"
    ENABLED = "enabled"


class BackendKind(StrEnum):
    UNSPECIFIED = "unspecified"
    RESERVATION = "reservation"  # the holder loads the model; gpuletd only accounts VRAM
    PROCESS = "process"  # gpuletd starts, health-checks and stops a serving process


class ModelState(StrEnum):
    UNSPECIFIED = "unspecified"
    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"
    FAILED = "failed"


class ExplainStatus(StrEnum):
    UNSPECIFIED = "unspecified"
    ELIGIBLE = "eligible"
    REJECTED = "rejected"  # supports the role but does not fit the profile
    NO_SUPPORT = "no_support"
    NOT_FOUND = "not_found"


class LeaseEventKind(StrEnum):
    UNSPECIFIED = "unspecified"
    GRANTED = "granted"
    RENEWED = "renewed"
    RELEASED = "released"
    EXPIRED = "expired"
    BACKEND_DIED = "backend_died"  # the lease is over and its endpoint gone
    CANCELLED = "cancelled"  # its holder went away as it was granted


@dataclass(frozen=True)
class Profile:
    """A deployment profile: the budget and policy gpuletd runs under."""

    name: str
    description: str
    max_vram_mb: int
    max_concurrent_models: int
    preferred_quantizations: tuple[str, ...]
    strategy: Strategy
    autostart_timeout_seconds: float
    grace_period_seconds: float
    model_selection_bias: SelectionBias
    gpu_count: int
    tensor_parallel_threshold_mb: int | None
    headroom_mb: int
    builtin: bool
    # Metadata: where it is meant to run ("edge", "onprem", "cloud" or ""), what for, and
    # the layers it was built from, base first (the `extends` chain, then itself).
    category: str = ""
    use_case: str = ""
    tags: tuple[str, ...] = ()
    recommended_for: tuple[str, ...] = ()
    layer_names: tuple[str, ...] = ()
    # Settings handed to the serving engines (docs/engines.md): dtype, max_model_len, ...
    engine: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def layers_count(self) -> int:
        return len(self.layer_names)


@dataclass(frozen=True)
class PlacedModel:
    """A model's memory placed on a GPU by gpuletd."""

    model_id: str
    reservation_mb: int


@dataclass(frozen=True)
class GpuProcess:
    """A process holding GPU memory; `managed` when gpuletd started it."""

    pid: int
    used_mb: int | None
    managed: bool
    model_id: str


@dataclass(frozen=True)
class Gpu:
    """One GPU. A memory number the GPU cannot report is None, never 0."""

    index: int
    uuid: str
    name: str
    pci_bus_id: str
    total_mb: int | None
    free_mb: int | None
    used_mb: int | None
    reserved_mb: int | None
    compute_capability: tuple[int, int] | None
    mig_mode: MigMode
    state: GpuState
    reading_age_seconds: float
    placed: tuple[PlacedModel, ...]
    processes: tuple[GpuProcess, ...]


@dataclass(frozen=True)
class GpuStatus:
    gpus: tuple[Gpu, ...]
    probe: str  # `nvml`, `simulated` or `none`


@dataclass(frozen=True)
class ActiveProfile:
    """The profile in force (with `--set` overrides applied) and why it was chosen."""

    profile: Profile
    source: ProfileSource
    reason: str
    gpus: tuple[Gpu, ...]
    usable_vram_mb: int
    available_profiles: tuple[str, ...]
    warnings: tuple[str, ...]
    probe: str
    overrides: tuple[str, ...]
    # A dynamic profile's predefined base (e.g. generous_96gb for dynamic_1x80gb), else None.
    derived_from: str | None = None


@dataclass(frozen=True)
class ProfileList:
    profiles: tuple[Profile, ...]
    active: str


@dataclass(frozen=True)
class Model:
    """A registry entry with its live state."""

    id: str
    name: str
    backend: BackendKind
    quantization: str
    vram_estimate_mb: int
    # Excluded from the hash: a mapping has none, and the id already tells models apart.
    role_priority: Mapping[str, int] = field(hash=False)
    group: str
    state: ModelState
    gpu_uuids: tuple[str, ...]
    lease_count: int
    idle_seconds: float | None  # since its last lease ended; None while leased or unloaded
    reservation_mb: int  # what gpuletd counts for it: max(estimate, measured)
    endpoint: str
    # What gpuletd measured (None until measured): footprint at its last healthy start, the
    # largest seen, seconds from start to healthy (smoothed) and from stop to gone (last).
    measured_mb: int | None = None
    peak_mb: int | None = None
    load_seconds: float | None = None
    unload_seconds: float | None = None
    measured_loads: int = 0
    confidence: EstimateConfidence = EstimateConfidence.UNSPECIFIED
    # The serving engine (docs/engines.md); "custom" when it names none.
    engine: str = ""


@dataclass(frozen=True)
class Candidate:
    model: Model
    role_priority: int
    engine: str = ""


@dataclass(frozen=True)
class Excluded:
    """A model with the role that can never be placed under the profile on this machine."""

    model_id: str
    limit: SelectionLimit
    reason: str


@dataclass(frozen=True)
class Selection:
    """The best models for a role under the active profile, best first."""

    role: str
    profile: str
    candidates: tuple[Candidate, ...]
    max_vram_mb: int
    model_selection_bias: SelectionBias
    top_n: int = 0
    excluded: tuple[Excluded, ...] = ()
    # Every GPU runs bf16 natively (SM >= 8.0): bf16 wins ties. None when unknown.
    bf16_preferred: bool | None = None


@dataclass(frozen=True)
class Explanation:
    """Why a model is or is not a candidate for a role."""

    role: str
    model_id: str
    status: ExplainStatus
    reason: str
    rank: int | None  # 1-based among eligible models
    profile: str
    limit: SelectionLimit = SelectionLimit.UNSPECIFIED  # for REJECTED: which limit
    model_selection_bias: SelectionBias = SelectionBias.UNSPECIFIED
    engine: str = ""


@dataclass(frozen=True)
class Progress:
    """Where an Acquire stands: `queued` (with position) or `loading`."""

    state: str
    position: int = 0
    queue_length: int = 0
    model_id: str = ""


ProgressCallback = Callable[[Progress], None]


class _Loss:
    """The one mutable part of a lease: whether it was lost, and why. Shared by the copies
    `dataclasses.replace` makes (a renewal's), so a loss seen by the renewer is seen by all."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason = ""


@dataclass(frozen=True)
class Lease:
    """A granted lease. `token` is set only for the caller that acquired it."""

    lease_id: str
    # A secret: kept out of repr, so that a logged lease or a traceback does not leak it.
    token: str = field(repr=False)
    model_id: str
    gpu_uuids: tuple[str, ...]
    cuda_visible_devices: str
    endpoint: str
    expires_at: datetime
    granted_at: datetime | None = None
    client_name: str = ""
    exclusive: bool = False
    _loss: _Loss = field(default_factory=_Loss, repr=False, compare=False)

    @property
    def lost(self) -> threading.Event:
        """Set when the lease was found gone (expired, its backend died, revoked)."""
        return self._loss.event

    @property
    def lost_reason(self) -> str:
        return self._loss.reason

    def mark_lost(self, reason: str) -> None:
        """Record that the lease is gone; the background renewal calls it, and so may a
        holder that learned it otherwise (e.g. from `watch()`)."""
        self._loss.reason = reason
        self._loss.event.set()

    def env(self) -> dict[str, str]:
        """What a program using this lease needs in its environment."""
        return {
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "CUDA_VISIBLE_DEVICES": self.cuda_visible_devices,
            "GPULET_LEASE_ID": self.lease_id,
            "GPULET_MODEL_ID": self.model_id,
            "GPULET_ENDPOINT": self.endpoint,
        }

    def as_dict(self, *, token: bool = True) -> dict[str, object]:
        """JSON-ready; `token=False` for anything shown to others or logged."""
        d: dict[str, object] = {
            "lease_id": self.lease_id,
            "model_id": self.model_id,
            "gpu_uuids": list(self.gpu_uuids),
            "cuda_visible_devices": self.cuda_visible_devices,
            "endpoint": self.endpoint,
            "expires_at": self.expires_at.isoformat(),
            "client_name": self.client_name,
            "exclusive": self.exclusive,
        }
        if token:
            d["token"] = self.token
        return d


@dataclass(frozen=True)
class QueueItem:
    """A request waiting for a lease, as `gpulet queue` shows it (never its id or token)."""

    position: int | None  # 1 is next; None while it waits on its model's load under way
    model_id: str
    client_name: str
    priority: int
    effective_priority: int  # its priority plus what waiting has gained it
    exclusive: bool
    waited_seconds: float
    waiting_for: str  # e.g. "9,000 MiB: qwen3-vl's lease ending"
    arrived_at: datetime | None
    deadline: datetime | None  # None: it waits as long as it takes


class PlanOutcome(StrEnum):
    """What an Acquire would meet now (`Client.plan`)."""

    UNSPECIFIED = "unspecified"
    GRANTED = "granted"  # its model is loaded: granted at once
    LOAD = "load"  # its model would load now (after evicting the victims, if any)
    WAIT = "wait"  # it would wait: in the queue (position) or on its model's load under way
    REFUSED = "refused"  # it would be refused (code, reason, message)


@dataclass(frozen=True)
class PlanVictim:
    """An idle model a load would evict, and what loading it again is expected to cost."""

    model_id: str
    gpu_uuids: tuple[str, ...]
    reserved_mb: int
    reload_seconds: float
    reload_measured: bool  # False: estimated at 2 s per GiB of its reservation


@dataclass(frozen=True)
class Plan:
    """The answer to "what if I asked for this now?" — found without changing anything."""

    outcome: PlanOutcome
    model_id: str  # the model asked for, or the one the role resolves to
    gpu_uuids: tuple[str, ...]
    victims: tuple[PlanVictim, ...]
    position: int | None  # its queue position when it would wait for a turn
    waiting_for: str
    message: str
    code: str = ""  # refused: the status code name the Acquire would get
    reason: str = ""  # refused: e.g. MODEL_TOO_LARGE, QUEUE_FULL


@dataclass(frozen=True)
class ModelEvent:
    time: datetime
    model_id: str
    state: ModelState
    gpu_uuids: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class LeaseEvent:
    time: datetime
    kind: LeaseEventKind
    lease: Lease  # without its token
    reason: str


WatchEvent = ModelEvent | LeaseEvent
