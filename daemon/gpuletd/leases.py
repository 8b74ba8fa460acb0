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

from gpuletd.bounds import (
    MIN_TTL_S,
    Refused,
    check_client_name,
    check_name,
    check_token,
    listing,
    quote,
)
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
from gpuletd.selector import select

__all__ = [
    "LEASE_ID",
    "TOKEN_PREFIX",
    "AcquireUpdate",
    "LeaseFailed",
    "LeaseInfo",
    "LeaseManager",
    "lease_info",
]

LEASE_ID = re.compile(r"^l-[0-9a-f]{16}$")
# Aging gains one level per interval: an unbounded priority would starve everyone else.
PRIORITY_RANGE = range(-1000, 1001)
# A caller that needs longer than this to claim its grant is not waiting for it; one that
# promises less than this cannot keep the promise (a claim is a round trip), and a window such
# as 5e-324 s would end every grant as it is made.
MAX_CLAIM_WITHIN_S = 300.0
MIN_CLAIM_WITHIN_S = 0.1
# Tokens start with a fixed prefix: never with `-` (which a shell command line takes for an
# option), and greppable by secret scanners (like GitHub's `ghp_`).
TOKEN_PREFIX = "gpl_"


class LeaseFailed(Refused):
    """A lease operation refused (see `Refused`): also raised once a request is under way, for
    the fate the core decided (NOT_FOUND, DEADLINE_EXCEEDED, shutting down, ...)."""


def new_token() -> str:
    # 24 random bytes, url-safe base64 (A-Z a-z 0-9 - _) behind the prefix.
    return TOKEN_PREFIX + secrets.token_urlsafe(24)


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
        if self._closing:
            return
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
        raises Refused (LeaseFailed, UnknownRole, a bound). Closed before the grant, the request
        leaves the queue.

        A grant can be on its way when the caller goes away, and nothing on the server tells
        whether it was read: a caller that passes `claim_within_s` promises to renew (or
        release) it within that time, and a grant not claimed by then ends. A cancellation
        the RPC layer does see is handed to `abandon`."""
        self._check_ttl(ttl_s)
        check_client_name(client)
        if not (
            math.isfinite(claim_within_s)
            and (claim_within_s == 0 or MIN_CLAIM_WITHIN_S <= claim_within_s <= MAX_CLAIM_WITHIN_S)
        ):
            raise LeaseFailed(
                "INVALID_ARGUMENT",
                "INVALID_ARGUMENT",
                f"claim_within_seconds: must be 0 (no claim) or between {MIN_CLAIM_WITHIN_S:g} "
                f"and {MAX_CLAIM_WITHIN_S:g} s, got {claim_within_s:g}",
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
        if self._closing:
            raise LeaseFailed("UNAVAILABLE", "SHUTTING_DOWN", "gpuletd is shutting down")
        if role:
            check_name("role", role)
            model_id = self._pick_for_role(role)
        elif not model_id:
            raise LeaseFailed(
                "INVALID_ARGUMENT",
                "MISSING_FIELD",
                "model_id or role: one of them is required",
                "model_id",
            )
        else:
            check_name("model_id", model_id)
        rid = f"l-{secrets.token_hex(8)}"
        token = new_token()
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
                        raise self._rejection(d, model_id)
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
        # needs more renews (the clients do it in the background). One shorter than a second
        # expires before its holder can use it (0 is not short: it means the default).
        limit = self._rt.config.max_lease_ttl_s
        if not (math.isfinite(ttl_s) and 0 <= ttl_s <= limit):
            raise LeaseFailed(
                "INVALID_ARGUMENT",
                "INVALID_TTL",
                f"ttl_seconds: must be 0 (the default) or between {MIN_TTL_S:g} and {limit:g} s "
                f"(max_lease_ttl_seconds), got {ttl_s:g}; renew to hold a lease longer",
                "ttl_seconds",
            )
        if 0 < ttl_s < MIN_TTL_S:
            raise LeaseFailed(
                "INVALID_ARGUMENT",
                "INVALID_TTL",
                f"ttl_seconds: at least {MIN_TTL_S:g} s (or 0 for the default), got {ttl_s:g}: "
                "a shorter lease would expire before its holder could use or renew it",
                "ttl_seconds",
            )

    def _rejection(self, d: Rejected, model_id: str) -> LeaseFailed:
        if d.reason.value != "UNKNOWN_MODEL":
            return LeaseFailed(d.code.value, d.reason.value, d.message)
        # The core's message repeats the id in full; a refusal quotes a short prefix.
        return LeaseFailed(
            d.code.value,
            d.reason.value,
            f"model_id: unknown model {quote(model_id)}; known models: "
            f"{listing(self._rt.registry.models)}",
            "model_id",
        )

    def _pick_for_role(self, role: str) -> str:
        loaded = {
            mid
            for mid, v in self._ex.core.models().items()
            if v.state in (ModelState.LOADED, ModelState.LOADING)
        }
        # An unknown role raises UnknownRole, a refusal naming the field.
        best = select(self._rt.registry, self._rt.profile, role, 1, loaded=loaded)
        if not best:
            raise LeaseFailed(
                "RESOURCE_EXHAUSTED",
                "MODEL_TOO_LARGE",
                f"role: no model for {quote(role)} fits profile {self._rt.profile.name} "
                f"(max_vram_mb={self._rt.profile.max_vram_mb})",
                "role",
            )
        return best[0].id

    def _check_lease_access(self, lease_id: str, token: str) -> None:
        if not LEASE_ID.match(lease_id):
            raise LeaseFailed(
                "INVALID_ARGUMENT",
                "MALFORMED_LEASE_ID",
                f"lease_id: {quote(lease_id)} is not a lease id (l- and 16 hex digits)",
                "lease_id",
            )
        check_token(token)
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
