"""Requests protobuf cannot parse get INVALID_ARGUMENT naming the field, not UNKNOWN: the
bytes are sent raw, as a client in another language (or a hostile one) could send them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from gpulet.v1 import leases_pb2, leases_pb2_grpc
from tests.service.test_bounds import refusal

BAD_UTF8 = [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"ok\x80", b"\xf4\x90\x80\x80"]


def ld(number: int, payload: bytes) -> bytes:
    """A length-delimited field (short payloads: a one-byte length)."""
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


@pytest.mark.parametrize("bad", BAD_UTF8)
@pytest.mark.parametrize(
    ("method", "number", "field", "streaming"),
    [
        ("/gpulet.v1.LeaseService/Acquire", 1, "model_id", True),
        ("/gpulet.v1.LeaseService/Acquire", 3, "client_name", True),
        ("/gpulet.v1.LeaseService/Renew", 1, "lease_id", False),
        ("/gpulet.v1.LeaseService/Release", 2, "token", False),
        ("/gpulet.v1.SelectorService/SelectByRole", 1, "role", False),
        ("/gpulet.v1.SelectorService/ExplainSelection", 2, "model_id", False),
        ("/gpulet.v1.ProfileService/GetProfile", 1, "name", False),
        ("/grpc.health.v1.Health/Check", 1, "service", False),
    ],
)
async def test_non_utf8_string_is_invalid_argument_naming_the_field(
    channel: grpc.aio.Channel, method: str, number: int, field: str, streaming: bool, bad: bytes
) -> None:
    payload = ld(number, bad)
    # No serializers: the bytes go as they are (the stubs type that as taking nothing).
    raw: Any = channel.unary_stream(method) if streaming else channel.unary_unary(method)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        if streaming:
            async for _ in raw(payload, timeout=5):
                pass
        else:
            await raw(payload, timeout=5)
    code, reason, got_field, message = refusal(e.value)
    assert (code, reason, got_field) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_UTF8", field)
    assert message.startswith(f"{field}: not valid UTF-8")


async def test_nested_field_is_named_by_its_path(channel: grpc.aio.Channel) -> None:
    # ServerReflectionRequest.file_containing_extension (5) . containing_type (1), on the
    # bidirectional reflection stream.
    payload = ld(5, ld(1, b"\xff"))

    async def requests() -> AsyncIterator[bytes]:
        yield payload

    method = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    raw: Any = channel.stream_stream(method)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        async for _ in raw(requests(), timeout=5):
            pass
    code, _, field, _ = refusal(e.value)
    assert (code, field) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "file_containing_extension.containing_type",
    )


@pytest.mark.parametrize("garbage", [b"\x0a\x05ab", b"\xff\xff\xff", b"\x0b", b"\x0f\x00"])
async def test_bytes_that_are_no_message_are_invalid_argument(
    channel: grpc.aio.Channel, garbage: bytes
) -> None:
    raw: Any = channel.unary_unary("/gpulet.v1.LeaseService/Renew")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await raw(garbage, timeout=5)
    code, reason, field, message = refusal(e.value)
    assert (code, reason, field) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST", "")
    assert message == "request: not a valid gpulet.v1.RenewRequest message"


async def test_a_refused_acquire_stream_leaves_nothing(channel: grpc.aio.Channel) -> None:
    raw: Any = channel.unary_stream("/gpulet.v1.LeaseService/Acquire")
    with pytest.raises(grpc.aio.AioRpcError):
        async for _ in raw(ld(1, b"florence-2-large") + ld(3, b"\xff"), timeout=5):
            pass
    s = leases_pb2_grpc.LeaseServiceStub(channel)
    assert not (await s.ListLeases(leases_pb2.ListLeasesRequest())).leases
