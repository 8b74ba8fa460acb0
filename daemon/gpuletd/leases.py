"""The lease API: validation, lease ids and tokens, and the wait for a request's fate.

Holds no lease state of its own: leases live in the scheduler core (token digests included),
are persisted by the store and announced by the watch hub. This module turns a caller's
request into a core event, then follows the decisions that name it (it is the last sink), so an
Acquire is: validate → `request` event → Queued / Loading updates → Granted or Rejected.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import re
import secrets
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import assert_never

from gpuletd.executor import Executor
from gpuletd.runtime import Runtime
from gpuletd.scheduler import (
    Decision,
    Granted,
    LeaseEnded,
    LeaseRefused,
    LeaseView,
    Loading,
    ModelState,
    ModelStateChanged,
    PreloadSkipped,
    Queued,
    Rejected,
    Renewed,
    StartBackend,
    StopBackend,
)
from gpuletd.selector import UnknownRole, select

__all__ = [
    "LEASE_ID",
    "AcquireUpdate",
    "LeaseFailed",
    "LeaseInfo",
    "LeaseManager",
    "lease_info",
]

LEASE_ID = re.compile(r"^l-[0-9a-f]{16}$")
# Aging gains one level per interval: an unbounded priority would starve everyone else.
PRIORITY_RANGE = range(-1000, 1001)
# A caller that needs longer than this to claim its grant is not waiting for it.
MAX_CLAIM_WITHIN_S = 300.0
# Client names are shown in `gpulet lease list`, Watch and logs: bounded like any client input.
MAX_CLIENT_NAME = 128


class LeaseFailed(Exception):
    """A lease operation refused: `code` names the gRPC status, `reason` the ErrorInfo reason,
    `field` the request field at fault (empty when none is)."""

    def __init__(self, code: str, reason: str, message: str, field: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.field = field


@dataclass(frozen=True)
class LeaseInfo:
    lease_id: str
    model_id: str
    gpu_uuids: tuple[str, ...]
    endpoint: str
    client: str
    exclusive: bool
    granted_at: float  # wall clock
    expires_at: float  # wall clock
    token: str = ""  # only in the answer to the Acquire that made it

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(self.gpu_uuids)


AcquireUpdate = Queued | Loading | LeaseInfo


def _digest(token: str) -> str:
    # Only a digest is kept (and persisted): what is stored cannot be replayed as a token.
    return hashlib.sha256(token.encode()).hexdigest()


def lease_info(ex: Executor, v: LeaseView | Granted, token: str = "") -> LeaseInfo:
    """A live lease (or one just granted) as callers see it: wall-clock times, its endpoint."""
    if isinstance(v, Granted):
        endpoint = v.endpoint
    else:
        model = ex.core.model(v.model_id)
        endpoint = model.endpoint if model is not None else ""
    return LeaseInfo(
        lease_id=v.lease_id,
        model_id=v.model_id,
        gpu_uuids=v.gpu_uuids,
        endpoint=endpoint,
        client=v.client,
        exclusive=v.exclusive,
        granted_at=ex.clock.to_wall(v.granted_at),
        expires_at=ex.clock.to_wall(v.expires_at),
        token=token,
    )


class LeaseManager:
    def __init__(self, runtime: Runtime, executor: Executor) -> None:
        self._rt = runtime
        self._ex = executor
        self._waiters: dict[str, asyncio.Queue[Decision | None]] = {}
        self._closing = False

    def drain(self) -> None:
        """Shutting down: refuse new requests and end the waiting ones with UNAVAILABLE."""
        self._closing = True
        for q in self._waiters.values():
            q.put_nowait(None)

    # -- the API ---------------------------------------------------------------------------

    async def acquire(
        self,
        *,
        model_id: str = "",
        role: str = "",
        client: str = "",
        ttl_s: float = 0.0,
        priority: int = 0,
        exclusive: bool = False,
        timeout_s: float | None = None,
        claim_within_s: float = 0.0,
    ) -> AsyncGenerator[AcquireUpdate, None]:
        """Yields Queued / Loading updates, then the granted LeaseInfo (with its token), or
        raises LeaseFailed. Closed before the grant, the request leaves the queue.

        A grant can be on its way when the caller goes away, and nothing on the server tells
        whether it was read: a caller that passes `claim_within_s` promises to renew (or
        release) it within that time, and a grant not claimed by then ends. A cancellation
        the RPC layer does see is handed to `abandon`."""
        self._check_ttl(ttl_s)
        if not (math.isfinite(claim_within_s) and 0 <= claim_within_s <= MAX_CLAIM_WITHIN_S):
            raise LeaseFailed(
                "INVALID_ARGUMENT",
                "INVALID_ARGUMENT",
                f"claim_within_seconds: must be between 0 (no claim) and "
                f"{MAX_CLAIM_WITHIN_S:g} s, got {claim_within_s:g}",
                "claim_within_seconds",
            )
        if priority not in PRIORITY_RANGE:
            raise LeaseFailed(
                "INVALID_ARGUMENT",
                "INVALID_PRIORITY",
                f"priority: must be between {PRIORITY_RANGE.start} and "
                f"{PRIORITY_RANGE.stop - 1}, got {priority}",
                "priority",
            )
        if len(client) > MAX_CLIENT_NAME:
            raise LeaseFailed(
                "INVALID_ARGUMENT",
                "INVALID_ARGUMENT",
                f"client_name: at most {MAX_CLIENT_NAME} characters, got {len(client)} "
                f"({client[:20]!r}...)",
                "client_name",
            )
        if self._closing:
            raise LeaseFailed("UNAVAILABLE", "SHUTTING_DOWN", "gpuletd is shutting down")
        if role:
            model_id = self._pick_for_role(role)
        elif not model_id:
            raise LeaseFailed(
                "INVALID_ARGUMENT",
                "MISSING_FIELD",
                "model_id or role: one of them is required",
                "model_id",
            )
        rid = f"l-{secrets.token_hex(8)}"
        token = secrets.token_urlsafe(24)
        queue: asyncio.Queue[Decision | None] = asyncio.Queue()
        self._waiters[rid] = queue
        granted = False
        try:
            self._ex.feed(
                lambda c, now: c.request(
                    rid,
                    model_id,
                    now=now,
                    client=client,
                    priority=priority,
                    ttl_s=ttl_s or None,
                    exclusive=exclusive,
                    secret=_digest(token),
                    deadline=None if timeout_s is None else now + timeout_s,
                    claim_within_s=claim_within_s or None,
                )
            )
            while True:
                d = await queue.get()
                match d:
                    case None:
                        raise LeaseFailed(
                            "UNAVAILABLE", "SHUTTING_DOWN", "gpuletd is shutting down"
                        )
                    case Rejected():
                        field = "model_id" if d.reason.value == "UNKNOWN_MODEL" else ""
                        raise LeaseFailed(d.code.value, d.reason.value, d.message, field)
                    case Granted():
                        granted = True
                        if self._ex.core.lease(rid) is None:
                            # Ended in the same breath as it was granted (its backend died).
                            mv = self._ex.core.model(d.model_id)
                            raise LeaseFailed(
                                "FAILED_PRECONDITION",
                                "BACKEND_FAILED",
                                f"the lease on {d.model_id} ended as it was granted: "
                                f"{(mv.last_error if mv else '') or 'ended'}",
                            )
                        yield lease_info(self._ex, d, token)
                        return
                    case Queued() | Loading():
                        yield d
        finally:
            self._waiters.pop(rid, None)
            if not granted:
                self._ex.feed(lambda c, now: c.cancel(rid, now=now))

    def abandon(self, lease_id: str) -> None:
        """The Acquire that made this lease ended without its caller receiving the grant
        (cancelled, or its deadline passed while the grant was on its way): nobody holds it,
        so it ends now instead of pinning its model until the TTL."""
        self._ex.feed(lambda c, now: c.cancel(lease_id, now=now))

    def renew(self, lease_id: str, token: str, ttl_s: float = 0.0) -> LeaseInfo:
        self._check_lease_access(lease_id, token)
        self._check_ttl(ttl_s)
        out = self._ex.feed(lambda c, now: c.renew(lease_id, now=now, ttl_s=ttl_s or None))
        self._raise_if_refused(out, lease_id)
        view = self._ex.core.lease(lease_id)
        if view is None:  # pragma: no cover - a Renewed lease exists by construction
            raise LeaseFailed("NOT_FOUND", "LEASE_ENDED", f"lease_id: {lease_id} has ended")
        return lease_info(self._ex, view)

    def release(self, lease_id: str, token: str) -> None:
        self._check_lease_access(lease_id, token)
        out = self._ex.feed(lambda c, now: c.release(lease_id, now=now))
        self._raise_if_refused(out, lease_id)

    def leases(self) -> list[LeaseInfo]:
        return [lease_info(self._ex, v) for v in self._ex.core.leases()]

    def queue_length(self) -> int:
        """Requests waiting for their turn (not those only waiting on a load under way)."""
        return self._ex.core.waiting_count()

    # -- the last sink: fates of the requests waiting here ---------------------------------

    def apply(self, decisions: Sequence[Decision]) -> None:
        for d in decisions:
            match d:
                case Queued() | Loading() | Rejected():
                    rid = d.request_id
                case Granted():
                    rid = d.lease_id
                case (
                    Renewed()
                    | LeaseEnded()
                    | LeaseRefused()
                    | StartBackend()
                    | StopBackend()
                    | ModelStateChanged()
                    | PreloadSkipped()
                ):
                    continue
                case _:
                    assert_never(d)
            if (q := self._waiters.get(rid)) is not None:
                q.put_nowait(d)

    # -- helpers -----------------------------------------------------------------------------

    def _check_ttl(self, ttl_s: float) -> None:
        # A lease longer than this would pin its model past any holder's life: a holder that
        # needs more renews (the clients do it in the background).
        limit = self._rt.config.max_lease_ttl_s
        if not (math.isfinite(ttl_s) and 0 <= ttl_s <= limit):
            raise LeaseFailed(
                "INVALID_ARGUMENT",
                "INVALID_TTL",
                f"ttl_seconds: must be between 0 (the default) and {limit:g} s "
                f"(max_lease_ttl_seconds), got {ttl_s:g}; renew to hold a lease longer",
                "ttl_seconds",
            )

    def _pick_for_role(self, role: str) -> str:
        loaded = {
            mid
            for mid, v in self._ex.core.models().items()
            if v.state in (ModelState.LOADED, ModelState.LOADING)
        }
        try:
            best = select(self._rt.registry, self._rt.profile, role, 1, loaded=loaded)
        except UnknownRole as e:
            raise LeaseFailed("INVALID_ARGUMENT", "UNKNOWN_ROLE", f"role: {e}", "role") from None
        if not best:
            raise LeaseFailed(
                "RESOURCE_EXHAUSTED",
                "MODEL_TOO_LARGE",
                f"role: no model for {role[:64]!r} fits profile {self._rt.profile.name} "
                f"(max_vram_mb={self._rt.profile.max_vram_mb})",
                "role",
            )
        return best[0].id

    def _check_lease_access(self, lease_id: str, token: str) -> None:
        if not LEASE_ID.match(lease_id):
            raise LeaseFailed(
                "INVALID_ARGUMENT",
                "MALFORMED_LEASE_ID",
                f"lease_id: {lease_id[:40]!r} is not a lease id (l- and 16 hex digits)",
                "lease_id",
            )
        expected = self._ex.core.lease_secret(lease_id)
        # Unknown or ended leases fall through to the core, which says which of the two.
        if expected is not None and not hmac.compare_digest(expected, _digest(token)):
            raise LeaseFailed(
                "PERMISSION_DENIED",
                "WRONG_TOKEN",
                f"token: does not match lease {lease_id}: not your lease",
                "token",
            )

    @staticmethod
    def _raise_if_refused(out: list[Decision], lease_id: str) -> None:
        for d in out:
            if isinstance(d, LeaseRefused) and d.lease_id == lease_id:
                raise LeaseFailed(
                    d.code.value, d.reason.value, f"lease_id: {d.message}", "lease_id"
                )
