"""Operator actions (the admin socket): each one a scheduler core event, fed through the executor
like any other, so it is ordered with every grant, reaches the store and the Watch streams, and
cannot leave the core and the shell disagreeing. No I/O here beyond the executor and the lease
API; services/admin_service.py turns the wire into these calls.

What the core offers, and so what these operations do:
- ending a lease: the `revoke` event (reason `revoked`, message "ended by an administrator:
  <reason>"), so Watch, the log, the store and a late renew/release (also after a restart: the
  core's ended-lease memory is in its snapshot) all say so;
- unloading: the `unload` event stops an idle loaded model at once (StopBackend reason
  `admin`) and stops keeping it warm; with `force` each lease is revoked first. The core
  refuses a leased or loading model, and that refusal is the answer;
- pinning: the `pin` event keeps a model warm (never unloaded for idleness, still evictable
  under pressure) and loads an unloaded one as a preload would, only when it fits without
  evicting; otherwise the core's PreloadSkipped is the answer. Unpinning starts an idle
  model's grace period;
- switching the profile: the `reconfigure` event, as a reload (SIGHUP) sends;
- draining: a flag of the lease API, not of the core (the core queues what it is given).
"""

from __future__ import annotations

import dataclasses
import unicodedata
from dataclasses import dataclass

import structlog

from gpuletd.active_profile import (
    ActiveProfile,
    ProfileSource,
    resolve_active_profile,
)
from gpuletd.bounds import Refused, check_name, listing, quote
from gpuletd.config_errors import ConfigError
from gpuletd.executor import Executor
from gpuletd.leases import LEASE_ID, LeaseManager
from gpuletd.runtime import Runtime
from gpuletd.scheduler import (
    Decision,
    LeaseEnded,
    LeaseRefused,
    ModelState,
    PreloadSkipped,
    RejectReason,
)

__all__ = [
    "Admin",
    "AdminFailed",
    "Drained",
    "EndedLease",
    "Pinned",
    "ProfileSwitched",
    "Unloaded",
    "Unpinned",
]

log = structlog.get_logger("gpuletd")

# A reason is shown to the holder in a gRPC status message: bounded like any client string.
MAX_REASON = 256


class AdminFailed(Refused):
    """An admin action refused before it changed anything (see `Refused`)."""


@dataclass(frozen=True)
class EndedLease:
    lease_id: str
    model_id: str
    client: str


@dataclass(frozen=True)
class Unloaded:
    model_id: str
    ended: tuple[EndedLease, ...]
    state: ModelState
    # Wall-clock time at which it unloads: always None now that an unload stops the model at
    # once (kept for the wire's `unloads_at`).
    unloads_at: float | None
    message: str


@dataclass(frozen=True)
class Pinned:
    model_id: str
    state: ModelState
    message: str


@dataclass(frozen=True)
class Unpinned:
    model_id: str
    # False when it was not kept warm (neither pinned nor preloaded).
    was_pinned: bool
    state: ModelState
    # Wall-clock time at which it unloads for idleness if it stays unleased; None when it is
    # not loaded, or leased (its grace period then starts when its last lease ends).
    unloads_at: float | None
    message: str


@dataclass(frozen=True)
class ProfileSwitched:
    previous: str
    profile: str


@dataclass(frozen=True)
class Drained:
    leases_held: int
    waiting: int


def _check_reason(reason: str, *, required: bool) -> str:
    reason = reason.strip()
    if required and not reason:
        raise AdminFailed(
            "INVALID_ARGUMENT",
            "MISSING_FIELD",
            "reason: required (the holders whose leases end are told it)",
            "reason",
        )
    check_name("reason", reason, required=False, limit=MAX_REASON)
    # Refused, not stripped: the reason is printed in the holder's terminal and in our log,
    # where a newline or an escape sequence could forge lines.
    for i, ch in enumerate(reason):
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            raise AdminFailed(
                "INVALID_ARGUMENT",
                "CONTROL_CHARACTER",
                f"reason: control character {ch!r} at position {i} is not allowed",
                "reason",
            )
    return reason


class Admin:
    def __init__(self, runtime: Runtime, executor: Executor, leases: LeaseManager) -> None:
        self._rt = runtime
        self._ex = executor
        self._leases = leases

    # -- leases --------------------------------------------------------------------------------

    def end_lease(self, lease_id: str, reason: str) -> EndedLease:
        if not LEASE_ID.match(lease_id):
            raise AdminFailed(
                "INVALID_ARGUMENT",
                "MALFORMED_LEASE_ID",
                f"lease_id: {quote(lease_id)} is not a lease id (l- and 16 hex digits)",
                "lease_id",
            )
        reason = _check_reason(reason, required=True)
        ended = self._end(lease_id, reason)
        if ended is None:
            raise AdminFailed(
                "NOT_FOUND", "UNKNOWN_LEASE", f"lease_id: no lease {lease_id} is held", "lease_id"
            )
        return ended

    def _end(self, lease_id: str, reason: str) -> EndedLease | None:
        """End one held lease; None if it is not held (never was, or has ended by itself)."""
        if self._ex.core.lease(lease_id) is None:
            # Checked first, for the answer's sake: the core would refuse it too.
            return None
        message = f"ended by an administrator: {reason}"
        out = self._ex.feed(lambda c, now: c.revoke(lease_id, message, now=now))
        for d in out:
            if isinstance(d, LeaseEnded) and d.lease_id == lease_id:
                log.info(
                    "admin.lease_ended",
                    lease_id=lease_id,
                    model_id=d.model_id,
                    client=d.client,
                    reason=reason,
                )
                return EndedLease(lease_id, d.model_id, d.client)
        # It expired in the same event (the core runs what is due first): its own reason holds.
        return None

    # -- models --------------------------------------------------------------------------------

    def unload(self, model_id: str, *, force: bool, reason: str) -> Unloaded:
        check_name("model_id", model_id)
        reason = _check_reason(reason, required=force)
        view = self._ex.core.model(model_id)
        if view is None and model_id not in self._rt.registry.models:
            raise AdminFailed(
                "NOT_FOUND",
                "UNKNOWN_MODEL",
                f"model_id: unknown model {quote(model_id)}; known models: "
                f"{listing(self._rt.registry.models)}",
                "model_id",
            )
        why = "unloaded by an administrator" + (f": {reason}" if reason else "")
        ended: list[EndedLease] = []
        # With force, a lease granted from the queue as another ends is revoked in turn; the
        # bound only guards against a shell bug.
        for _ in range(8 if force else 1):
            if force:
                held = [v.lease_id for v in self._ex.core.leases() if v.model_id == model_id]
                ended.extend(e for lid in held if (e := self._end(lid, reason)) is not None)
            out = self._ex.feed(lambda c, now: c.unload(model_id, now=now, message=why))
            refused = _unload_refusals(out, model_id)
            if not refused or refused[0].reason is not RejectReason.MODEL_LEASED or not force:
                break
        if refused and refused[0].reason is RejectReason.MODEL_LOADING:
            raise AdminFailed(
                "FAILED_PRECONDITION",
                "MODEL_LOADING",
                f"model_id: {refused[0].message}",
                "model_id",
            )
        if refused:
            holders = ", ".join(f"{r.lease_id} ({r.client or 'unnamed client'})" for r in refused)
            hint = (
                "; still leased after ending its leases: retry"
                if force
                else "; pass force (with a reason) to end those leases"
            )
            raise AdminFailed(
                "FAILED_PRECONDITION",
                "MODEL_LEASED",
                f"model {model_id} is leased by {holders}{hint}",
                "model_id",
            )
        result = self._after_unload(model_id, tuple(ended))
        log.info(
            "admin.unload_asked",
            model_id=model_id,
            force=force,
            ended=[e.lease_id for e in ended],
            state=result.state.value,
            reason=reason,
        )
        return result

    def _after_unload(self, model_id: str, ended: tuple[EndedLease, ...]) -> Unloaded:
        view = self._ex.core.model(model_id)
        state = view.state if view is not None else ModelState.UNLOADED
        if view is None or state in (ModelState.UNLOADED, ModelState.FAILED):
            message = f"{model_id} is not loaded"
        elif state is ModelState.UNLOADING:
            message = f"{model_id} is unloading"
        else:
            # Only reachable if the stop was answered and a request loaded it again at once.
            message = f"{model_id} is {state.value} again"
        return Unloaded(model_id, ended, state, None, message)

    def _known(self, model_id: str) -> None:
        check_name("model_id", model_id)
        if self._ex.core.model(model_id) is None and model_id not in self._rt.registry.models:
            raise AdminFailed(
                "NOT_FOUND",
                "UNKNOWN_MODEL",
                f"model_id: unknown model {quote(model_id)}; known models: "
                f"{listing(self._rt.registry.models)}",
                "model_id",
            )

    def _state(self, model_id: str) -> ModelState:
        view = self._ex.core.model(model_id)
        return view.state if view is not None else ModelState.UNLOADED

    def pin(self, model_id: str, reason: str = "") -> Pinned:
        self._known(model_id)
        reason = _check_reason(reason, required=False)
        before = self._state(model_id)
        out = self._ex.feed(lambda c, now: c.pin(model_id, True, now=now))
        skipped = [d for d in out if isinstance(d, PreloadSkipped) and d.model_id == model_id]
        if skipped and self._ex.core.model(model_id) is None:
            # Known to the registry but not to the core (a reload in between): as unknown.
            raise AdminFailed(
                "NOT_FOUND", "UNKNOWN_MODEL", f"model_id: {skipped[0].message}", "model_id"
            )
        state = self._state(model_id)
        if skipped:
            message = f"pinned but not loaded now: {skipped[0].message}"
        elif state is ModelState.LOADING:
            message = "pinned and loading"
        elif state is ModelState.LOADED:
            message = (
                "pinned, already loaded" if before is ModelState.LOADED else "pinned and loaded"
            )
        elif state is ModelState.UNLOADING:
            message = "pinned, but it is unloading now; a request loads it again"
        else:
            message = (
                "pinned but not loaded now: it loads when it fits without evicting and "
                "without delaying a waiting request"
            )
        log.info(
            "admin.pinned", model_id=model_id, state=state.value, message=message, reason=reason
        )
        return Pinned(model_id, state, message)

    def unpin(self, model_id: str) -> Unpinned:
        self._known(model_id)
        view = self._ex.core.model(model_id)
        was = view is not None and view.keep_warm
        self._ex.feed(lambda c, now: c.pin(model_id, False, now=now))
        view = self._ex.core.model(model_id)
        state = view.state if view is not None else ModelState.UNLOADED
        at: float | None = None
        if view is not None and view.grace_until is not None:
            at = self._ex.clock.to_wall(view.grace_until)
        head = "unpinned" if was else "not pinned"
        if at is not None:
            message = f"{head}: unloads after its grace period if idle"
        elif state is ModelState.LOADED and view is not None and view.lease_count:
            message = f"{head}: leased; unloads after its grace period once idle"
        elif state in (ModelState.LOADED, ModelState.LOADING):
            message = f"{head}: unloads after its grace period if idle"
        else:
            message = f"{head}: {model_id} is {state.value}"
        log.info("admin.unpinned", model_id=model_id, was_pinned=was, state=state.value)
        return Unpinned(model_id, was, state, at, message)

    # -- the profile ---------------------------------------------------------------------------

    def switch_profile(self, name: str, reason: str = "") -> ProfileSwitched:
        check_name("profile", name)
        reason = _check_reason(reason, required=False)
        config = self._rt.config
        # The names `profile list` and `select --profile` accept (the dynamic profile derived
        # for these GPUs included): NOT_FOUND for any other.
        self._rt.profile_named(name, "profile")
        old = self._rt.active
        try:
            # As a reload resolves it: the `--set` overrides the daemon was started with apply
            # to whichever profile is active, and the same warnings (budget beyond the GPUs).
            fresh = resolve_active_profile(
                config.profiles, self._rt.poller.gpus, flag=name, overrides=old.overrides
            )
        except (ConfigError, ValueError) as e:
            if name != old.profile.name:
                raise AdminFailed(
                    "FAILED_PRECONDITION", "INVALID_PROFILE", f"profile {name}: {e}", "profile"
                ) from None
            # The active profile came from a profile file no name reaches again: it stays as
            # it runs.
            fresh = old
        why = f"switched by an administrator (was {old.profile.name})"
        active: ActiveProfile = dataclasses.replace(
            fresh, source=ProfileSource.ADMIN, reason=f"{why}: {reason}" if reason else why
        )
        # The runtime first, as a reload does: what is decided from the event on reads the new
        # profile, and `gpulet profile show` says it.
        self._rt.active = active
        self._ex.feed(
            lambda c, now: c.reconfigure(
                active.profile, config.registry.models, now=now, preload=config.preload
            )
        )
        log.info(
            "admin.profile_switched",
            profile=name,
            previous_profile=old.profile.name,
            reason=reason,
        )
        for w in active.warnings:
            log.warning("profile.warned", warning=w)
        return ProfileSwitched(old.profile.name, name)

    # -- drain ---------------------------------------------------------------------------------

    def drain(self) -> Drained:
        self._leases.set_draining(True)
        result = Drained(len(self._ex.core.leases()), self._ex.core.waiting_count())
        log.info("admin.drained", leases=result.leases_held, waiting=result.waiting)
        return result

    def undrain(self) -> bool:
        was = self._leases.set_draining(False)
        log.info("admin.undrained", was_draining=was)
        return was


def _unload_refusals(out: list[Decision], model_id: str) -> list[LeaseRefused]:
    return [
        d
        for d in out
        if isinstance(d, LeaseRefused)
        and d.model_id == model_id
        and d.reason in (RejectReason.MODEL_LEASED, RejectReason.MODEL_LOADING)
    ]
