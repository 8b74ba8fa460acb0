"""The client's error mapping: each status code and ErrorInfo reason gpuletd sends becomes its
exception type, and what the gRPC library says by itself becomes a sentence."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import gpulet
from gpulet.v1 import leases_pb2
from tests.unit.test_client import Harness, harness

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def h() -> Iterator[Harness]:
    with harness() as h:
        yield h


C = grpc.StatusCode


@pytest.mark.parametrize(
    ("code", "reason", "expected"),
    [
        # Refusals gpuletd sends, with their ErrorInfo.reason.
        (C.NOT_FOUND, "UNKNOWN_MODEL", gpulet.NotFound),
        (C.NOT_FOUND, "UNKNOWN_PROFILE", gpulet.NotFound),
        (C.NOT_FOUND, "LEASE_ENDED", gpulet.LeaseLost),
        (C.INVALID_ARGUMENT, "UNKNOWN_ROLE", gpulet.UnknownRole),
        (C.INVALID_ARGUMENT, "INVALID_TTL", gpulet.InvalidArgument),
        (C.INVALID_ARGUMENT, "MALFORMED_LEASE_ID", gpulet.InvalidArgument),
        (C.RESOURCE_EXHAUSTED, "QUEUE_FULL", gpulet.QueueFull),
        (C.RESOURCE_EXHAUSTED, "MODEL_TOO_LARGE", gpulet.ModelTooLarge),
        (C.FAILED_PRECONDITION, "BACKEND_FAILED", gpulet.BackendFailed),
        (C.PERMISSION_DENIED, "WRONG_TOKEN", gpulet.PermissionDenied),
        (C.UNAVAILABLE, "SHUTTING_DOWN", gpulet.DaemonUnavailable),
        (C.DEADLINE_EXCEEDED, "DEADLINE", gpulet.DeadlineExceeded),
        # A reason this client does not know: the code decides.
        (C.RESOURCE_EXHAUSTED, "SOMETHING_NEW", gpulet.ResourceExhausted),
        (C.NOT_FOUND, "SOMETHING_NEW", gpulet.NotFound),
        # Bugs in gpuletd.
        (C.INTERNAL, "", gpulet.InternalError),
        (C.UNKNOWN, "", gpulet.InternalError),
        # No finer class: the base.
        (C.ABORTED, "", gpulet.GpuletError),
    ],
)
def test_each_status_becomes_its_exception(
    h: Harness, code: grpc.StatusCode, reason: str, expected: type[gpulet.GpuletError]
) -> None:
    call = h.call(h.client.renew, "l-0123456789abcdef", "tok")
    h.daemon.unary(
        "LeaseService.Renew",
        code=code,
        details="what gpuletd said",
        reason=reason,
        field="lease_id",
    )
    with pytest.raises(gpulet.GpuletError) as raised:
        call.result(timeout=5)
    e = raised.value
    assert type(e) is expected
    assert e.code is code and e.reason == reason
    if reason:  # the daemon's own words, and the field it named
        assert e.message == "what gpuletd said" and e.metadata == {"field": "lease_id"}


def test_lease_lost_is_both_a_lease_error_and_not_found() -> None:
    # `except NotFound` and `except LeaseError` both catch an ended lease.
    assert issubclass(gpulet.LeaseLost, gpulet.NotFound)
    assert issubclass(gpulet.LeaseLost, gpulet.LeaseError)
    assert issubclass(gpulet.UnknownRole, gpulet.InvalidArgument)


def test_every_exception_says_when_it_is_raised() -> None:
    classes = [getattr(gpulet, name) for name in gpulet.errors.__all__ if name[0].isupper()]
    for cls in classes:
        assert cls.__doc__ and "raised" in cls.__doc__.lower(), cls
        assert cls.__name__ in (gpulet.errors.__doc__ or ""), f"{cls.__name__} not in the tree"


def test_the_libraries_deadline_says_what_was_waited_for_and_how_long(h: Harness) -> None:
    queued = threading.Event()
    call = h.call(h.client.acquire, "qwen3-vl", timeout=2, on_progress=lambda p: queued.set())
    h.daemon.stream(
        "LeaseService.Acquire",
        [leases_pb2.AcquireResponse(queued=leases_pb2.Queued(position=3, queue_length=4))],
        code=C.DEADLINE_EXCEEDED,
        details="Deadline Exceeded",
        read=queued,
    )
    with pytest.raises(gpulet.DeadlineExceeded) as raised:
        call.result(timeout=5)
    message = raised.value.message
    assert message == (
        "gave up after 2 s waiting for a lease on model 'qwen3-vl' (still queued, position 3 of 4)"
    )


def test_a_unary_deadline_names_the_call_and_the_clients_timeout(h: Harness) -> None:
    call = h.call(h.client.models)
    h.daemon.unary(
        "SelectorService.ListModels", code=C.DEADLINE_EXCEEDED, details="Deadline Exceeded"
    )
    with pytest.raises(
        gpulet.DeadlineExceeded,
        match=r"^gave up after 10 s waiting for gpuletd to answer ListModels$",
    ):
        call.result(timeout=5)


def test_a_connection_failure_reads_as_unreachable_with_the_os_words(h: Harness) -> None:
    call = h.call(h.client.roles)
    h.daemon.unary(
        "SelectorService.ListRoles",
        code=C.UNAVAILABLE,
        details="failed to connect to all addresses; last error: UNKNOWN: "
        "unix:/run/test.sock: Connection refused",
    )
    with pytest.raises(gpulet.DaemonUnavailable) as raised:
        call.result(timeout=5)
    assert raised.value.message == (
        "gpuletd is not reachable at unix:///run/test.sock: connection refused"
    )


def test_a_missing_socket_is_reported_before_dialing(tmp_path: Any) -> None:
    with pytest.raises(gpulet.DaemonUnavailable, match="gpuletd is not running: no socket at"):
        gpulet.Client(address=str(tmp_path / "none.sock"))  # a bare path is a unix socket
