"""Operator actions (the admin socket): each one a scheduler core event, fed through the executor
like any other, so it is ordered with every grant, reaches the store and the Watch streams, and
cannot leave the core and the shell disagreeing. No I/O here beyond the executor and the lease
API; services/admin_service.py turns the wire into these calls.

What the core offers, and so what these operations can honestly do:
- ending a lease: the `cancel` event (reason `cancelled`); the operator's reason is told to the
  holder by the lease API (`LeaseManager.note_admin_end`), since the core event carries none;
- unloading: the core has no event that stops an idle loaded model at once, so an unload ends
  the model's leases (with `force`) and leaves it to unload at the end of its grace period;
- switching the profile: the `reconfigure` event, as a reload (SIGHUP) sends;
- draining: a flag of the lease API, not of the core (the core queues what it is given).
"""

from __future__ import annotations

import dataclasses
import unicodedata
from dataclasses import dataclass

import structlog

from gpuletd.active_profile import ActiveProfile, ProfileSource, resolve_active_profile
from gpuletd.bounds import Refused, check_name, listing, quote
from gpuletd.config_errors import ConfigError
from gpuletd.executor import Executor
from gpuletd.leases import LEASE_ID, LeaseManager
from gpuletd.runtime import Runtime
from gpuletd.scheduler import LeaseEnded, ModelState

__all__ = ["Admin", "AdminFailed", "Drained", "EndedLease", "ProfileSwitched", "Unloaded"]

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
    # Wall-clock time at which it unloads, unleased, for idleness (None: not loaded, or kept
    # warm, or already unloading).
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
            # Checked first: `cancel` on a pending request id would refuse that request, and
            # an admin ends leases, not requests.
            return None
        # Noted before the event: the holder may renew in the same loop iteration as the
        # decision reaches the sinks.
        self._leases.note_admin_end(lease_id, reason)
        out = self._ex.feed(lambda c, now: c.cancel(lease_id, now=now))
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
        self._leases.forget_admin_end(lease_id)
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
        held = [v for v in self._ex.core.leases() if v.model_id == model_id]
        if held and not force:
            holders = ", ".join(f"{v.lease_id} ({v.client or 'unnamed client'})" for v in held)
            raise AdminFailed(
                "FAILED_PRECONDITION",
                "MODEL_LEASED",
                f"model {model_id} is leased by {holders}; pass force (with a reason) to end "
                "those leases",
                "model_id",
            )
        ended = tuple(e for v in held if (e := self._end(v.lease_id, reason)) is not None)
        result = self._after_unload(model_id, ended)
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
        unloads_at: float | None = None
        if view is None or state in (ModelState.UNLOADED, ModelState.FAILED):
            message = f"{model_id} is not loaded"
        elif state is ModelState.UNLOADING:
            message = f"{model_id} is unloading"
        elif view.lease_count:
            # Only reachable if a lease could not be ended (it was granted in between).
            message = f"{model_id} is still leased ({view.lease_count} lease(s))"
        elif view.keep_warm:
            message = (
                f"{model_id} is kept warm (preload list) and stays loaded: gpuletd has no event "
                "to unload it at once"
            )
        elif view.grace_until is not None:
            unloads_at = self._ex.clock.to_wall(view.grace_until)
            left = max(0.0, view.grace_until - self._ex.clock.mono())
            message = (
                f"{model_id} is {state.value} and unleased: it unloads at the end of its grace "
                f"period, in {left:.0f} s (gpuletd has no event to unload an idle model at once)"
            )
        else:
            message = f"{model_id} is {state.value}; it unloads once loaded and idle past its grace"
        return Unloaded(model_id, ended, state, unloads_at, message)

    # -- the profile ---------------------------------------------------------------------------

    def switch_profile(self, name: str, reason: str = "") -> ProfileSwitched:
        check_name("profile", name)
        reason = _check_reason(reason, required=False)
        config = self._rt.config
        if name not in config.profiles:
            raise AdminFailed(
                "NOT_FOUND",
                "UNKNOWN_PROFILE",
                f"profile: unknown profile {quote(name)}; known profiles: "
                f"{listing(config.profiles)}",
                "profile",
            )
        old = self._rt.active
        try:
            # As a reload resolves it: the `--set` overrides the daemon was started with apply
            # to whichever profile is active, and the same warnings (budget beyond the GPUs).
            fresh = resolve_active_profile(
                config.profiles, self._rt.poller.gpus, flag=name, overrides=old.overrides
            )
        except (ConfigError, ValueError) as e:
            raise AdminFailed(
                "FAILED_PRECONDITION", "INVALID_PROFILE", f"profile {name}: {e}", "profile"
            ) from None
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
