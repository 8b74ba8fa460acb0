"""One log line for each decision that changes something a person would look for later."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, assert_never

import structlog

from gpuletd.scheduler import (
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
)

__all__ = ["LogSink"]

log = structlog.get_logger("gpuletd.scheduler")

# How loud each end of a lease is: a release or a cancel is its holder's own doing; an expiry
# means a holder stopped renewing (it died or hung), a backend death took the lease away.
_END_LEVEL = {
    LeaseEndReason.RELEASED: logging.INFO,
    LeaseEndReason.CANCELLED: logging.INFO,
    LeaseEndReason.EXPIRED: logging.WARNING,
    LeaseEndReason.BACKEND_DIED: logging.WARNING,
    LeaseEndReason.REVOKED: logging.WARNING,
}


def _lease_log(lease_id: str, model_id: str, client: str) -> Any:
    # One set of keys on every lease line, so `lease=l-...` finds a lease's whole life.
    return log.bind(lease=lease_id, model=model_id, client=client or None)


class LogSink:
    """One canonical line per lease lifecycle event (`lease.granted`, `lease.renewed` at debug,
    `lease.released`, `lease.expired`, `lease.cancelled`, `lease.backend_died`) and per model
    change worth finding later. `client_of` names a live lease's holder (a Renewed decision
    does not carry it)."""

    def __init__(self, client_of: Callable[[str], str] = lambda _: "") -> None:
        self._client_of = client_of

    def apply(self, decisions: Sequence[Decision]) -> None:
        for d in decisions:
            match d:
                case Granted():
                    _lease_log(d.lease_id, d.model_id, d.client).info(
                        "lease.granted", gpus=d.gpu_uuids, ttl_s=d.ttl_s, exclusive=d.exclusive
                    )
                case Renewed():
                    _lease_log(d.lease_id, d.model_id, self._client_of(d.lease_id)).debug(
                        "lease.renewed", ttl_s=d.ttl_s
                    )
                case LeaseEnded():
                    _lease_log(d.lease_id, d.model_id, d.client).log(
                        _END_LEVEL.get(d.reason, logging.INFO),
                        f"lease.{d.reason.value}",
                        detail=d.message,
                    )
                case StopBackend():
                    log.info(
                        "model.stopping", model=d.model_id, reason=d.reason.value, detail=d.message
                    )
                case ModelStateChanged():
                    log.info(
                        "model.state_changed",
                        model=d.model_id,
                        state=d.state.value,
                        gpus=d.gpu_uuids,
                        detail=d.message or None,
                    )
                case PreloadSkipped():
                    log.warning("preload.skipped", model=d.model_id, reason=d.message)
                case Rejected():
                    log.debug("request.rejected", request=d.request_id, reason=d.reason.value)
                case Queued() | Loading() | LeaseRefused() | StartBackend():
                    pass
                case _:
                    assert_never(d)
