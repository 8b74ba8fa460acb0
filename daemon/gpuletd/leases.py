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
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, assert_never

import structlog

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
    GpuView,
    Granted,
    LeaseEnded,
    LeaseRefused,
    LeaseView,
    Loading,
    ModelState,
    ModelStateChanged,
    ModelView,
    PreloadSkipped,
    Queued,
    QueueEntry,
    Rejected,
    Renewed,
    Scheduler,
    StartBackend,
    StopBackend,
)
from gpuletd.selector import Hardware, misfits, select

if TYPE_CHECKING:
    from gpuletd.plan import PlanResult

__all__ = [
    "LEASE_ID",
    "TOKEN_PREFIX",
    "AcquireUpdate",
    "Commits",
    "LeaseFailed",
    "LeaseInfo",
    "LeaseManager",
    "QueueInfo",
    "lease_info",
    "waiting_for",
]

log = structlog.get_logger(__name__)

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


@dataclass(frozen=True)
class _Ask:
    """An Acquire's terms, the same for each model a role request tries."""

    client: str
    ttl_s: float
    priority: int
    exclusive: bool
    timeout_s: float | None
    claim_within_s: float
    vram_mb: int


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


@dataclass(frozen=True)
class QueueInfo:
    """A waiting request as `gpulet queue` shows it: never its id or token."""

    position: int | None  # None while it waits on a load of its model under way
    model_id: str
    client: str
    priority: int
    effective_priority: int
    exclusive: bool
    waited_s: float
    waiting_for: str
    arrived_at: float  # wall clock
    deadline: float | None  # wall clock


def _names(parts: Sequence[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _pinned_phrase(pinned: Sequence[ModelView], gpu_index: Mapping[str, int]) -> str:
    """What ending the pinned models takes: their loads finishing, their leases ending."""
    loading = [v for v in pinned if v.state is ModelState.LOADING]
    leased = [v for v in pinned if v.state is not ModelState.LOADING]
    parts = []
    if loading:
        gpus = sorted({gpu_index[u] for v in loading for u in v.gpu_uuids if u in gpu_index})
        where = _names([f"GPU {i}" for i in gpus]) or "a GPU"
        parts.append(f"{'a load' if len(loading) == 1 else 'loads'} on {where} finishing")
    if leased:
        owners = [f"{v.model_id}'s" for v in leased]
        noun = "lease" if len(leased) == 1 and leased[0].lease_count == 1 else "leases"
        parts.append(f"{_names(owners)} {noun} ending")
    return " and ".join(parts)


def waiting_for(
    e: QueueEntry,
    models: Mapping[str, ModelView],
    gpus: Sequence[GpuView],
    *,
    max_concurrent_models: int,
    max_vram_mb: int,
    wall: Callable[[float], float],
) -> str:
    """What a waiting request waits for, in words, from the core's views at this moment.

    A reading of the same state the scheduling pass reads, not its verdict: the pass may
    still serve a request out of turn, or keep one waiting behind the head of the queue."""
    gpu_index = {g.uuid: g.index for g in gpus}
    mv = models.get(e.model_id)
    turn = f"its turn (position {e.position})"
    if mv is None:
        return turn
    if e.position is None or mv.state is ModelState.LOADING:
        where = _names([f"GPU {gpu_index[u]}" for u in mv.gpu_uuids if u in gpu_index])
        return "its model's load under way" + (f" on {where}" if where else "")
    if mv.state is ModelState.UNLOADING:
        return f"{mv.model_id}'s unload finishing before it loads again"
    if mv.state is ModelState.LOADED:
        if e.exclusive and mv.lease_count:
            return f"{_pinned_phrase([mv], gpu_index)} (it asked for the model to itself)"
        # Loaded, and not granted: either an exclusive holder or the head's claim on it.
        return f"{mv.model_id}'s exclusive lease ending or {turn}"
    if mv.retired:
        return f"the old definition of {mv.model_id} being stopped"
    if mv.backoff_until is not None:
        when = datetime.fromtimestamp(wall(mv.backoff_until)).astimezone()
        return f"backoff after failures until {when:%H:%M:%S}"
    need = mv.reservation_mb
    active = [v for v in models.values() if v.holds_memory]
    idle = [v for v in active if v.state is ModelState.LOADED and not v.lease_count]
    pinned = [
        v for v in active if v.state is ModelState.LOADING or (v.lease_count and not v.retired)
    ]
    going = [v for v in active if v.state is ModelState.UNLOADING]
    # The slot limit: the models holding memory, and whether idle ones can make way.
    over = len(active) + 1 - max_concurrent_models
    if over > 0 and over > len(idle) + len(going):
        why = _pinned_phrase(pinned, gpu_index)
        limit = f"the slot limit ({len(active)} of {max_concurrent_models} models)"
        return f"{limit}: {why}" if why else limit
    usable = [g for g in gpus if not g.lost and g.total_mb is not None]

    def on(g: GpuView, vs: Sequence[ModelView]) -> list[ModelView]:
        return [v for v in vs if g.uuid in v.gpu_uuids]

    def share(g: GpuView, vs: Sequence[ModelView]) -> int:
        return sum(
            mb
            for v in vs
            for u, mb in zip(v.gpu_uuids, v.gpu_reservations_mb, strict=True)
            if u == g.uuid
        )

    # A GPU's memory first: room now, with idle models evicted and unloads seen through.
    fits_now = [g for g in usable if g.available_mb >= need]
    freeable = [
        g for g in usable if g.available_mb + g.pending_free_mb + share(g, [*idle, *going]) >= need
    ]
    if not fits_now and not freeable:
        best = max(
            usable,
            key=lambda g: g.available_mb + g.pending_free_mb + share(g, [*idle, *going, *pinned]),
            default=None,
        )
        if best is None:
            return f"{need:,} MiB: a GPU to be usable"
        why = _pinned_phrase(on(best, pinned), gpu_index)
        if not why:
            return f"{need:,} MiB on a GPU: memory held outside gpuletd to be freed"
        return f"{need:,} MiB: {why}"
    # Then the profile's budget across GPUs.
    used = sum(v.reserved_mb for v in active)
    spare = sum(v.reserved_mb for v in [*idle, *going])
    if used + need > max_vram_mb and used - spare + need > max_vram_mb:
        why = _pinned_phrase(pinned, gpu_index)
        budget = f"the VRAM budget ({used:,} of {max_vram_mb:,} MiB)"
        return f"{budget}: {why}" if why else budget
    if fits_now:
        if all(g.loading_model is not None for g in fits_now):
            return f"a load on GPU {fits_now[0].index} finishing"
        return turn
    g = freeable[0]
    if on(g, going) or g.pending_free_mb:
        return f"{need:,} MiB: the unload on GPU {g.index} finishing"
    return f"{turn}, after idle models on GPU {g.index} are evicted"


def _falls_back(reason: str, i: int, choices: Sequence[str]) -> bool:
    """Whether a refusal of `choices[i]` hands a request by role to the next candidate: only a
    model the core finds can never fit now (measured larger than its estimate, memory held
    outside gpuletd) and only while there is a next one. Acquire and Plan both ask this, so a
    plan names the model an Acquire would be granted."""
    return reason == "MODEL_TOO_LARGE" and i + 1 < len(choices)


def _check_priority(priority: int) -> None:
    if priority not in PRIORITY_RANGE:
        raise LeaseFailed(
            "INVALID_ARGUMENT",
            "INVALID_PRIORITY",
            f"priority: must be between {PRIORITY_RANGE.start} and "
            f"{PRIORITY_RANGE.stop - 1}, got {priority}",
            "priority",
        )


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


class Commits(Protocol):
    """The store's group commit (`StoreSink`): which group holds the changes made so far,
    and waiting until a group (by default: all of them so far) is saved."""

    def group(self) -> int: ...

    async def durable(self, group: int | None = None) -> None: ...


class LeaseManager:
    """Each change the API acknowledges (a grant, a renewal, a release) is on disk before its
    answer (`durable`)."""

    def __init__(
        self,
        runtime: Runtime,
        executor: Executor,
        *,
        commits: Commits | None = None,
    ) -> None:
        self._rt = runtime
        self._ex = executor
        # Without a store nothing is saved, and nothing waits.
        self._commits = commits
        self._waiters: dict[str, asyncio.Queue[Decision | None]] = {}
        self._closing = False
        # An administrator's drain (admin.py): unlike `_closing`, held leases and waiting
        # requests carry on; only new Acquires are refused, and undrain lifts it.
        self._draining = False

    def drain(self) -> None:
        """Shutting down: refuse new requests and end the waiting ones with UNAVAILABLE."""
        if self._closing:
            return
        self._closing = True
        for q in self._waiters.values():
            q.put_nowait(None)

    @property
    def draining(self) -> bool:
        return self._draining

    def set_draining(self, on: bool) -> bool:
        """Refuse (True) or accept again (False) new Acquires; returns the previous setting."""
        was, self._draining = self._draining, on
        return was

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
        vram_mb: int = 0,
    ) -> AsyncGenerator[AcquireUpdate, None]:
        """Yields Queued / Loading updates, then the granted LeaseInfo (with its token), or
        raises Refused (LeaseFailed, UnknownRole, a bound). Closed before the grant, the request
        leaves the queue.

        A grant can be on its way when the caller goes away, and nothing on the server tells
        whether it was read: a caller that passes `claim_within_s` promises to renew (or
        release) it within that time, and a grant not claimed by then ends. A cancellation
        the RPC layer does see is handed to `abandon`.

        `vram_mb` > 0: a *memory lease* of that many MiB on one GPU instead of a model (its
        lease's model_id is `vram:<lease id>`); exclusive of `model_id` and `role`."""
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
        _check_priority(priority)
        if self._closing:
            raise LeaseFailed("UNAVAILABLE", "SHUTTING_DOWN", "gpuletd is shutting down")
        if self._draining:
            # UNAVAILABLE, as for a shutdown: the clients' retry logic already treats it as
            # "try again later", which is what a drain means.
            raise LeaseFailed(
                "UNAVAILABLE",
                "DRAINING",
                "gpuletd is draining (an administrator stopped new leases; held leases run "
                "on): try again later",
            )
        choices = [model_id]
        if vram_mb:
            self._check_vram(vram_mb, model_id, role)
        elif role:
            check_name("role", role)
            choices = self._role_choices(role)
        elif not model_id:
            raise LeaseFailed(
                "INVALID_ARGUMENT",
                "MISSING_FIELD",
                "model_id, role or vram_mb: one of them is required",
                "model_id",
            )
        else:
            check_name("model_id", model_id)
        started = self._ex.clock.mono()
        for i, choice in enumerate(choices):
            # A fallback does not restart the caller's clock.
            left = None if timeout_s is None else timeout_s - (self._ex.clock.mono() - started)
            args = _Ask(client, ttl_s, priority, exclusive, left, claim_within_s, vram_mb)
            try:
                # aclosing: when our caller goes away, the request must leave the queue now,
                # not whenever the inner generator is collected.
                async with aclosing(self._request(choice, args)) as updates:
                    async for update in updates:
                        yield update
                return
            except LeaseFailed as e:
                if not _falls_back(e.reason, i, choices):
                    raise
                log.info("role.fell_back", role=role, model=choice, reason=e.message)

    async def _request(self, model_id: str, a: _Ask) -> AsyncGenerator[AcquireUpdate, None]:
        """One model's request to the core, followed to its grant or refusal."""
        client, ttl_s, priority, exclusive = a.client, a.ttl_s, a.priority, a.exclusive
        timeout_s, claim_within_s, vram_mb = a.timeout_s, a.claim_within_s, a.vram_mb
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
                    vram_mb=vram_mb or None,
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
                        # Cancelled while it waits for the commit, the grant was never
                        # delivered: `finally` ends it (not `granted` yet).
                        await self.durable()
                        if self._ex.core.lease(rid) is None:
                            granted = True  # nothing left to cancel
                            # Ended in the same breath as it was granted, or while it was
                            # being saved (its backend died, an administrator revoked it).
                            mv = self._ex.core.model(d.model_id)
                            raise LeaseFailed(
                                "FAILED_PRECONDITION",
                                "BACKEND_FAILED",
                                f"the lease on {d.model_id} ended as it was granted: "
                                f"{(mv.last_error if mv else '') or 'ended'}",
                            )
                        granted = True
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

    async def renew(self, lease_id: str, token: str, ttl_s: float = 0.0) -> LeaseInfo:
        self._check_lease_access(lease_id, token)
        self._check_ttl(ttl_s)
        out = self._ex.feed(lambda c, now: c.renew(lease_id, now=now, ttl_s=ttl_s or None))
        self._raise_if_refused(out, lease_id)
        # Read now: by the time the commit is done, another call may have ended it.
        view = self._ex.core.lease(lease_id)
        if view is None:  # pragma: no cover - a Renewed lease exists by construction
            raise LeaseFailed("NOT_FOUND", "LEASE_ENDED", f"lease_id: {lease_id} has ended")
        info = lease_info(self._ex, view)
        await self.durable()
        return info

    async def release(self, lease_id: str, token: str) -> None:
        self._check_lease_access(lease_id, token)
        out = self._ex.feed(lambda c, now: c.release(lease_id, now=now))
        self._raise_if_refused(out, lease_id)
        await self.durable()

    async def durable(self) -> None:
        """Returns once every change made so far is saved."""
        if self._commits is not None:
            await self._commits.durable()

    @property
    def changes(self) -> int:
        """Grows whenever the leases may have changed: what was read of them before still
        holds while it has not moved."""
        return self._ex.events

    def leases(self) -> list[LeaseInfo]:
        return [lease_info(self._ex, v) for v in self._ex.core.leases()]

    def queue(self) -> list[QueueInfo]:
        """Every waiting request, in turn order, with what it waits for. Reads only."""
        core = self._ex.core
        models, gpus, profile = core.models(), core.gpus(), core.profile
        now = self._ex.clock.mono()
        return [
            QueueInfo(
                position=e.position,
                model_id=e.model_id,
                client=e.client,
                priority=e.priority,
                effective_priority=e.effective_priority,
                exclusive=e.exclusive,
                waited_s=max(0.0, now - e.arrived_at),
                waiting_for=waiting_for(
                    e,
                    models,
                    gpus,
                    max_concurrent_models=profile.max_concurrent_models,
                    max_vram_mb=profile.max_vram_mb,
                    wall=self._ex.clock.to_wall,
                ),
                arrived_at=self._ex.clock.to_wall(e.arrived_at),
                deadline=None if e.deadline is None else self._ex.clock.to_wall(e.deadline),
            )
            for e in core.queue()
        ]

    def plan(
        self,
        *,
        model_id: str = "",
        role: str = "",
        priority: int = 0,
        exclusive: bool = False,
        vram_mb: int = 0,
    ) -> PlanResult:
        """What an Acquire of `model_id` (or `role`) would meet now, run against a copy of the
        core: nothing changes (see plan.py). Raises Refused for a request the Acquire would
        refuse before it reached the core (bad field, unknown model or role)."""
        from gpuletd.plan import Outcome, PlanResult, what_if  # plan.py imports this module

        _check_priority(priority)
        choices = [model_id]
        if vram_mb:
            self._check_vram(vram_mb, model_id, role)
        elif role:
            check_name("role", role)
            try:
                choices = self._role_choices(role)
            except LeaseFailed as e:  # no model for the role fits: the Acquire's answer too
                return PlanResult(
                    Outcome.REFUSED, "", message=e.message, code=e.code, reason=e.reason
                )
            model_id = choices[0]
        elif not model_id:
            raise LeaseFailed(
                "INVALID_ARGUMENT",
                "MISSING_FIELD",
                "model_id or role: one of them is required",
                "model_id",
            )
        else:
            check_name("model_id", model_id)
        if not vram_mb and self._ex.core.model(model_id) is None:
            raise LeaseFailed(
                "NOT_FOUND",
                "UNKNOWN_MODEL",
                f"model_id: unknown model {quote(model_id)}; known models: "
                f"{listing(self._rt.registry.models)}",
                "model_id",
            )
        if self._closing or self._draining:
            why = "shutting down" if self._closing else "draining (new leases are refused)"
            return PlanResult(
                Outcome.REFUSED,
                model_id,
                message=f"gpuletd is {why}",
                code="UNAVAILABLE",
                reason="SHUTTING_DOWN" if self._closing else "DRAINING",
            )
        # By role, the candidates in the order an Acquire tries them (see `_falls_back`).
        for i, choice in enumerate(choices):
            result = what_if(
                self._ex.core,
                choice,
                now=self._ex.clock.mono(),
                models=self._rt.registry.models,
                waiting=self._waiting_for,
                priority=priority,
                exclusive=exclusive,
                vram_mb=vram_mb or None,
            )
            if result.outcome is not Outcome.REFUSED or not _falls_back(result.reason, i, choices):
                break
        return result

    def _waiting_for(self, core: Scheduler, request_id: str) -> str:
        """What `request_id` waits for in `core` (a copy, for a plan), as `queue` says it."""
        entry = next((e for e in core.queue() if e.request_id == request_id), None)
        if entry is None:
            return ""
        profile = core.profile
        return waiting_for(
            entry,
            core.models(),
            core.gpus(),
            max_concurrent_models=profile.max_concurrent_models,
            max_vram_mb=profile.max_vram_mb,
            wall=self._ex.clock.to_wall,
        )

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

    def _check_vram(self, vram_mb: int, model_id: str, role: str) -> None:
        if model_id or role:
            raise LeaseFailed(
                "INVALID_ARGUMENT",
                "INVALID_ARGUMENT",
                "vram_mb: a memory lease names no model_id or role",
                "vram_mb",
            )
        largest = max((g.total_mb or 0 for g in self._ex.core.gpus()), default=0)
        if largest <= 0:
            raise LeaseFailed(
                "INVALID_ARGUMENT",
                "INVALID_ARGUMENT",
                "vram_mb: no GPU with a known total to reserve memory on",
                "vram_mb",
            )
        if not 1 <= vram_mb <= largest:
            raise LeaseFailed(
                "INVALID_ARGUMENT",
                "INVALID_ARGUMENT",
                f"vram_mb: must be between 1 and {largest} MiB (the largest GPU's total), "
                f"got {vram_mb}",
                "vram_mb",
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

    def _role_choices(self, role: str) -> list[str]:
        """The models for `role` that fit the profile and this machine, best first; raises
        when none does, saying what kept the best ones out."""
        core, reg, profile = self._ex.core, self._rt.registry, self._rt.profile
        loaded = {
            mid
            for mid, v in core.models().items()
            if v.state in (ModelState.LOADED, ModelState.LOADING)
        }
        hw = Hardware.now(self._rt.gpus, core)
        # An unknown role raises UnknownRole, a refusal naming the field (also when the
        # registry is empty: there is no role at all then).
        ranked = select(reg, profile, role, None, loaded=loaded, hardware=hw)
        if not ranked:
            out = misfits(reg, profile, role, hardware=hw)
            why = "; ".join(x.reason for x in out[:3]) + ("; ..." if len(out) > 3 else "")
            raise LeaseFailed(
                "RESOURCE_EXHAUSTED",
                "MODEL_TOO_LARGE",
                f"role: no model for {quote(role)} fits profile {profile.name} on this "
                f"machine: {why}",
                "role",
            )
        return [m.id for m in ranked]

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
