"""What the scheduler core decides: the values its event methods return.

The core never acts; the daemon's shell executes these in the order given. Every decision is a
frozen dataclass so that tests compare them by value and a trace can be replayed and diffed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "Decision",
    "Granted",
    "LeaseEndReason",
    "LeaseEnded",
    "LeaseRefused",
    "Loading",
    "ModelState",
    "ModelStateChanged",
    "PreloadSkipped",
    "Queued",
    "RejectCode",
    "RejectReason",
    "Rejected",
    "Renewed",
    "StartBackend",
    "StopBackend",
    "StopReason",
]


class ModelState(enum.Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"
    # The last load failed or the backend died. Holds no memory and no slot: a later request
    # retries once the backoff has passed. Kept (rather than going back to `unloaded`) so that
    # `gpulet models` and Watch show why the model is not there.
    FAILED = "failed"


class RejectCode(enum.Enum):
    """The gRPC status code the shell should answer with (names match grpc.StatusCode)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELLED = "CANCELLED"


class RejectReason(enum.Enum):
    """Finer than the code: meant for `google.rpc.ErrorInfo.reason` (the client maps it to
    QueueFull, ModelTooLarge, LeaseLost, ...)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    UNKNOWN_MODEL = "UNKNOWN_MODEL"
    UNKNOWN_LEASE = "UNKNOWN_LEASE"
    # The lease existed but has ended (expired, released, backend died): renew/release too late.
    LEASE_ENDED = "LEASE_ENDED"
    QUEUE_FULL = "QUEUE_FULL"
    # Can never fit on this machine under this profile: retrying will not help.
    MODEL_TOO_LARGE = "MODEL_TOO_LARGE"
    BACKEND_FAILED = "BACKEND_FAILED"
    DEADLINE = "DEADLINE"
    CANCELLED = "CANCELLED"
    # An `unload` refused: the model is leased (one LeaseRefused per holder, naming it) ...
    MODEL_LEASED = "MODEL_LEASED"
    # ... or still loading (lease_id ""): unload it once loaded.
    MODEL_LOADING = "MODEL_LOADING"


class LeaseEndReason(enum.Enum):
    RELEASED = "released"
    EXPIRED = "expired"
    BACKEND_DIED = "backend_died"
    # The request was cancelled by its client at the moment it was granted (a race the shell
    # cannot avoid): the grant is taken back at once.
    CANCELLED = "cancelled"
    # Ended by the `revoke` event (an administrator); its message says why.
    REVOKED = "revoked"


class StopReason(enum.Enum):
    GRACE_EXPIRED = "grace_expired"
    EVICTED = "evicted"
    LOAD_TIMEOUT = "load_timeout"
    # Healthy, but its measured memory does not fit where it was placed.
    TOO_LARGE = "too_large"
    # Its model was removed from the registry or redefined by a reconfigure, and its last lease
    # ended (a redefined model is loaded again under its new definition once this is gone).
    RETIRED = "retired"
    # Idle, stopped because a reconfigure left more loaded than the new profile allows.
    RECONFIGURED = "reconfigured"
    # Idle, stopped at once by the `unload` event (an administrator); its message says why.
    ADMIN = "admin"
    # A memory lease ended: its reservation is given back.
    RELEASED = "released"


@dataclass(frozen=True)
class Queued:
    """The request waits; emitted when it is queued and again whenever its position changes."""

    request_id: str
    model_id: str
    position: int  # 1 = next


@dataclass(frozen=True)
class Loading:
    """The request waits for a load of its model (started for it, or joined)."""

    request_id: str
    model_id: str
    gpu_uuids: tuple[str, ...]


@dataclass(frozen=True)
class StartBackend:
    """Start the model on these GPUs and answer with load_succeeded / load_failed."""

    model_id: str
    gpu_uuids: tuple[str, ...]
    # Total MiB reserved across its GPUs, and the share on each GPU (same order as gpu_uuids).
    reservation_mb: int
    gpu_reservations_mb: tuple[int, ...]


@dataclass(frozen=True)
class StopBackend:
    """Stop the model's backend and answer with exactly one unload_finished once it is gone."""

    model_id: str
    gpu_uuids: tuple[str, ...]
    reason: StopReason
    message: str


@dataclass(frozen=True)
class Granted:
    """A lease, with everything its consumers (the client's answer, the store, Watch) need
    without asking the core again."""

    lease_id: str
    model_id: str
    gpu_uuids: tuple[str, ...]
    expires_at: float
    exclusive: bool
    # Who asked (the request's client name), when it was granted and for how long.
    client: str = ""
    granted_at: float = 0.0
    ttl_s: float = 0.0
    # Where the model's backend answers: what the shell gave load_succeeded, else the
    # registry's endpoint, else "" (a reservation backend has none).
    endpoint: str = ""


@dataclass(frozen=True)
class Renewed:
    lease_id: str
    model_id: str
    expires_at: float
    # The lease's ttl from now on (a renew may change it).
    ttl_s: float = 0.0


@dataclass(frozen=True)
class Rejected:
    """The request failed; it is no longer pending."""

    request_id: str
    code: RejectCode
    reason: RejectReason
    message: str


@dataclass(frozen=True)
class LeaseRefused:
    """A renew, release or revoke that cannot be done (NOT_FOUND: no such lease, or it has
    ended; INVALID_ARGUMENT: bad ttl), or an `unload` refused (FAILED_PRECONDITION: reason
    MODEL_LEASED, once per live lease of the model, `lease_id` and `client` naming the holder;
    reason MODEL_LOADING with `lease_id` ""). Kept apart from Rejected so that it can never be
    mistaken for the fate of a pending request."""

    lease_id: str
    code: RejectCode
    reason: RejectReason
    message: str
    # For an `unload` refusal: the model, and the holder's client name (MODEL_LEASED).
    model_id: str = ""
    client: str = ""


@dataclass(frozen=True)
class LeaseEnded:
    lease_id: str
    model_id: str
    reason: LeaseEndReason
    message: str
    # Who held it and where, for Watch: the lease itself is gone once this is decided.
    client: str = ""
    gpu_uuids: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelStateChanged:
    model_id: str
    state: ModelState
    gpu_uuids: tuple[str, ...]
    message: str = ""


@dataclass(frozen=True)
class PreloadSkipped:
    """A `preload` entry that was not loaded (unknown, too large, no room without evicting)."""

    model_id: str
    message: str


Decision = (
    Queued
    | Loading
    | StartBackend
    | StopBackend
    | Granted
    | Renewed
    | Rejected
    | LeaseRefused
    | LeaseEnded
    | ModelStateChanged
    | PreloadSkipped
)
