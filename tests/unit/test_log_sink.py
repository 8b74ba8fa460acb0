"""The log sink: one canonical line per lease lifecycle event, `lease.<what happened>`, each
carrying the same bound keys (lease, model, client) so one lease's life is one grep."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from gpuletd.log_sink import LogSink
from gpuletd.scheduler import (
    Granted,
    LeaseEnded,
    LeaseEndReason,
    ModelState,
    ModelStateChanged,
    Renewed,
)

LEASE = "l-0123456789abcdef"


def lines(*decisions: object) -> list[dict[str, object]]:
    sink = LogSink(client_of=lambda lid: "worker@host" if lid == LEASE else "")
    with capture_logs() as logs:
        sink.apply(decisions)  # type: ignore[arg-type]
    return [dict(x) for x in logs]


def test_a_grant_is_one_info_line_with_the_lease_context() -> None:
    (line,) = lines(
        Granted(LEASE, "qwen3-vl", ("GPU-0",), 160.0, False, client="worker@host", ttl_s=60.0)
    )
    assert line["event"] == "lease.granted" and line["log_level"] == "info"
    assert (line["lease"], line["model"], line["client"]) == (LEASE, "qwen3-vl", "worker@host")
    assert line["gpus"] == ("GPU-0",) and line["ttl_s"] == 60.0


def test_a_renewal_is_logged_at_debug_only_with_its_holder() -> None:
    (line,) = lines(Renewed(LEASE, "qwen3-vl", 200.0, ttl_s=30.0))
    assert line["event"] == "lease.renewed" and line["log_level"] == "debug"
    assert (line["lease"], line["model"], line["client"]) == (LEASE, "qwen3-vl", "worker@host")


@pytest.mark.parametrize(
    ("reason", "level"),
    [
        (LeaseEndReason.RELEASED, "info"),
        (LeaseEndReason.CANCELLED, "info"),
        (LeaseEndReason.EXPIRED, "warning"),
        (LeaseEndReason.BACKEND_DIED, "warning"),
    ],
)
def test_every_end_of_a_lease_is_one_line_named_for_it(reason: LeaseEndReason, level: str) -> None:
    (line,) = lines(LeaseEnded(LEASE, "qwen3-vl", reason, "why", client="worker@host"))
    assert line["event"] == f"lease.{reason.value}" and line["log_level"] == level
    assert (line["lease"], line["model"], line["client"]) == (LEASE, "qwen3-vl", "worker@host")
    assert line["detail"] == "why"


def test_every_lease_end_reason_has_a_line() -> None:
    # A new reason must be named here (and get a level) rather than fall through silently.
    for reason in LeaseEndReason:
        (line,) = lines(LeaseEnded(LEASE, "m", reason, ""))
        assert line["event"] == f"lease.{reason.value}"


def test_model_changes_use_noun_verb_names() -> None:
    (line,) = lines(ModelStateChanged("qwen3-vl", ModelState.LOADED, ("GPU-0",)))
    assert line["event"] == "model.state_changed" and line["state"] == "loaded"
