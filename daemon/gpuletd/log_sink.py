"""One log line for each decision that changes something a person would look for later."""

from __future__ import annotations

from collections.abc import Sequence
from typing import assert_never

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


class LogSink:
    def apply(self, decisions: Sequence[Decision]) -> None:
        for d in decisions:
            match d:
                case Granted():
                    log.info(
                        "lease.granted",
                        lease=d.lease_id,
                        model=d.model_id,
                        client=d.client or None,
                        gpus=d.gpu_uuids,
                    )
                case LeaseEnded():
                    # A release is the normal end and is the holder's own doing: not logged.
                    if d.reason is not LeaseEndReason.RELEASED:
                        log.info(
                            "lease.ended",
                            lease=d.lease_id,
                            model=d.model_id,
                            reason=d.reason.value,
                            detail=d.message,
                        )
                case StopBackend():
                    log.info(
                        "model.stopping", model=d.model_id, reason=d.reason.value, detail=d.message
                    )
                case ModelStateChanged():
                    log.info(
                        "model.state",
                        model=d.model_id,
                        state=d.state.value,
                        gpus=d.gpu_uuids,
                        detail=d.message or None,
                    )
                case PreloadSkipped():
                    log.warning("preload.skipped", model=d.model_id, reason=d.message)
                case Rejected():
                    log.debug("request.rejected", request=d.request_id, reason=d.reason.value)
                case Queued() | Loading() | Renewed() | LeaseRefused() | StartBackend():
                    pass
                case _:
                    assert_never(d)
