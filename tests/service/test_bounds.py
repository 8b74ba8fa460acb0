"""Every string a client controls is bounded at the daemon, and a refusal quotes only a short,
escaped prefix of it: never the whole string (past ~8 KB of trailers the caller would get
RESOURCE_EXHAUSTED instead of the code meant for it), never a control character."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gpulet.v1 import (
    leases_pb2,
    leases_pb2_grpc,
    profiles_pb2,
    profiles_pb2_grpc,
    selector_pb2,
    selector_pb2_grpc,
)
from gpuletd.services.errors import MAX_MESSAGE_BYTES, _bounded

HUGE = "\x1b[31m" + "x" * 100_000
# Refusals quote at most 40 characters, repr-escaped, plus the text around them.
MAX_DETAILS = 400
RenewReq = leases_pb2.RenewRequest
ReleaseReq = leases_pb2.ReleaseRequest


def refusal(e: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, str, str]:
    """(code, ErrorInfo reason, ErrorInfo field, message)"""
    status = rpc_status.from_call(e)  # type: ignore[arg-type]
    assert status is not None, f"{e.code()} without details: {e.details()!r}"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return e.code(), info.reason, info.metadata.get("field", ""), e.details() or ""


def assert_short_and_clean(message: str) -> None:
    assert len(message) <= MAX_DETAILS, message
    assert message.isprintable(), message  # no ESC, newline or other control character


async def refused(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str, str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    return refusal(e.value)


async def acquire(channel: grpc.aio.Channel, **kw: Any) -> list[leases_pb2.AcquireResponse]:
    call = leases_pb2_grpc.LeaseServiceStub(channel).Acquire(leases_pb2.AcquireRequest(**kw))
    return [r async for r in call]


async def held_lease(channel: grpc.aio.Channel) -> leases_pb2.Lease:
    return (await acquire(channel, model_id="florence-2-large", ttl_seconds=60))[-1].granted


Q = "qwen3-vl"
BAD = "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("request_", "code", "reason", "field"),
    [
        ({"model_id": Q, "client_name": "x" * 129}, BAD, "TOO_LONG", "client_name"),
        ({"model_id": Q, "client_name": HUGE}, BAD, "TOO_LONG", "client_name"),
        # C0 (newline, ESC), C1 (CSI), bidi override, line separator: refused, not stripped.
        ({"model_id": Q, "client_name": "ops\nroot"}, BAD, "CONTROL_CHARACTER", "client_name"),
        ({"model_id": Q, "client_name": "\x1b[2J"}, BAD, "CONTROL_CHARACTER", "client_name"),
        ({"model_id": Q, "client_name": "a\x9b31m"}, BAD, "CONTROL_CHARACTER", "client_name"),
        ({"model_id": Q, "client_name": "ab\u202edc"}, BAD, "CONTROL_CHARACTER", "client_name"),
        ({"model_id": Q, "client_name": "a\u2028b"}, BAD, "CONTROL_CHARACTER", "client_name"),
        ({"model_id": HUGE}, BAD, "TOO_LONG", "model_id"),
        ({"model_id": "m" * 256}, "NOT_FOUND", "UNKNOWN_MODEL", "model_id"),
        ({"model_id": "\x1bghost"}, "NOT_FOUND", "UNKNOWN_MODEL", "model_id"),
        ({"role": HUGE}, BAD, "TOO_LONG", "role"),
        ({"role": "r" * 200}, BAD, "UNKNOWN_ROLE", "role"),
        # Below the 1 s minimum; 0 still means the default.
        ({"model_id": Q, "ttl_seconds": 0.5}, BAD, "INVALID_TTL", "ttl_seconds"),
        ({"model_id": Q, "ttl_seconds": 1e-6}, BAD, "INVALID_TTL", "ttl_seconds"),
        ({"model_id": Q, "ttl_seconds": 5e-324}, BAD, "INVALID_TTL", "ttl_seconds"),
        ({"model_id": Q, "ttl_seconds": float("nan")}, BAD, "INVALID_TTL", "ttl_seconds"),
        ({"model_id": Q, "ttl_seconds": float("inf")}, BAD, "INVALID_TTL", "ttl_seconds"),
    ],
)
async def test_bad_acquire_is_refused_naming_the_field_and_quoting_short(
    channel: grpc.aio.Channel, request_: dict[str, Any], code: str, reason: str, field: str
) -> None:
    got = await refused(acquire(channel, **request_))
    assert got[:3] == (grpc.StatusCode[code], reason, field)
    assert got[3].startswith(f"{field}: ")
    assert_short_and_clean(got[3])
    s = leases_pb2_grpc.LeaseServiceStub(channel)
    assert not (await s.ListLeases(leases_pb2.ListLeasesRequest())).leases


async def test_the_ttl_bounds_admit_one_second_and_the_default(
    channel: grpc.aio.Channel,
) -> None:
    s = leases_pb2_grpc.LeaseServiceStub(channel)
    for ttl in (0.0, 1.0):
        lease = (await acquire(channel, model_id="florence-2-large", ttl_seconds=ttl))[-1].granted
        ttl_ns = lease.expires_at.ToNanoseconds() - lease.granted_at.ToNanoseconds()
        assert ttl_ns > 0.99e9
        await s.Release(leases_pb2.ReleaseRequest(lease_id=lease.lease_id, token=lease.token))


async def test_a_printable_unicode_name_of_the_limit_is_kept(channel: grpc.aio.Channel) -> None:
    name = "ünïcødé worker 😀 " + "n" * 111
    assert len(name) == 128
    lease = (await acquire(channel, model_id="florence-2-large", client_name=name))[-1].granted
    assert lease.client_name == name


async def test_bad_renew_and_release_are_refused_naming_the_field(
    channel: grpc.aio.Channel,
) -> None:
    s = leases_pb2_grpc.LeaseServiceStub(channel)
    lease = await held_lease(channel)
    lid, token = lease.lease_id, lease.token
    cases: list[tuple[Callable[[], Awaitable[Any]], str, str]] = [
        (lambda: s.Renew(RenewReq(lease_id=HUGE, token="t")), "MALFORMED_LEASE_ID", "lease_id"),
        (lambda: s.Release(ReleaseReq(lease_id=HUGE, token="t")), "MALFORMED_LEASE_ID", "lease_id"),
        (lambda: s.Renew(RenewReq(lease_id=lid, token=HUGE)), "TOO_LONG", "token"),
        (lambda: s.Release(ReleaseReq(lease_id=lid, token=HUGE)), "TOO_LONG", "token"),
        (
            lambda: s.Renew(RenewReq(lease_id=lid, token=token, ttl_seconds=0.25)),
            "INVALID_TTL",
            "ttl_seconds",
        ),
    ]
    for call, reason, field in cases:
        code, got_reason, got_field, message = await refused(call())
        assert (code, got_reason, got_field) == (grpc.StatusCode.INVALID_ARGUMENT, reason, field)
        assert_short_and_clean(message)
        assert "xxxxx" * 10 not in message and lease.token not in message
    # Nothing changed: the lease is still held, with its TTL.
    (listed,) = (await s.ListLeases(leases_pb2.ListLeasesRequest())).leases
    assert listed.lease_id == lease.lease_id
    # Shown on the wall clock, converted from the monotonic one at each read: µs of jitter.
    moved = listed.expires_at.ToNanoseconds() - lease.expires_at.ToNanoseconds()
    assert abs(moved) < 10_000_000


async def test_selector_and_profile_strings_are_bounded(channel: grpc.aio.Channel) -> None:
    sel = selector_pb2_grpc.SelectorServiceStub(channel)
    prof = profiles_pb2_grpc.ProfileServiceStub(channel)
    bad = grpc.StatusCode.INVALID_ARGUMENT
    explain = selector_pb2.ExplainSelectionRequest
    cases: list[tuple[Awaitable[Any], grpc.StatusCode, str, str]] = [
        (sel.SelectByRole(selector_pb2.SelectByRoleRequest(role=HUGE)), bad, "TOO_LONG", "role"),
        (
            sel.SelectByRole(selector_pb2.SelectByRoleRequest(role="\x1b" * 200)),
            bad,
            "UNKNOWN_ROLE",
            "role",
        ),
        (sel.ExplainSelection(explain(role=HUGE, model_id=Q)), bad, "TOO_LONG", "role"),
        (sel.ExplainSelection(explain(role="caption", model_id=HUGE)), bad, "TOO_LONG", "model_id"),
        # As SelectByRole: a role no model has is a bad request, not "no support".
        (sel.ExplainSelection(explain(role="nosuchrole", model_id=Q)), bad, "UNKNOWN_ROLE", "role"),
        (prof.GetProfile(profiles_pb2.GetProfileRequest(name=HUGE)), bad, "TOO_LONG", "name"),
        (
            prof.GetProfile(profiles_pb2.GetProfileRequest(name="p\n" * 100)),
            grpc.StatusCode.NOT_FOUND,
            "UNKNOWN_PROFILE",
            "name",
        ),
    ]
    for call, code, reason, field in cases:
        got = await refused(call)
        assert got[:3] == (code, reason, field), got
        assert_short_and_clean(got[3])


async def test_explain_not_found_quotes_the_model_id_short(channel: grpc.aio.Channel) -> None:
    r = await selector_pb2_grpc.SelectorServiceStub(channel).ExplainSelection(
        selector_pb2.ExplainSelectionRequest(role="caption", model_id="\x1b" + "m" * 250)
    )
    assert r.status == selector_pb2.EXPLAIN_STATUS_NOT_FOUND
    assert_short_and_clean(r.reason)


def test_a_long_message_keeps_its_head_and_its_tail() -> None:
    """A backend's failure ends with its last log lines and how to run it by hand: what a
    bounded message must keep."""
    text = "model m failed to load: " + "".join(f"line {i}\n" for i in range(500)) + "CUDA OOM"
    cut = _bounded(text, MAX_MESSAGE_BYTES)
    assert cut.startswith("model m failed to load: ")
    assert cut.endswith("line 499\nCUDA OOM")
    assert "bytes cut" in cut and len(cut.encode()) <= MAX_MESSAGE_BYTES + 40
