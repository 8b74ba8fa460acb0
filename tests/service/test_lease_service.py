from __future__ import annotations

import asyncio
import random

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gpulet.v1 import leases_pb2 as pb
from gpulet.v1 import leases_pb2_grpc, types_pb2


def stub(channel: grpc.aio.Channel) -> leases_pb2_grpc.LeaseServiceStub:
    return leases_pb2_grpc.LeaseServiceStub(channel)


def field_of(e: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(e)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    return info.metadata.get("field", "")


async def acquire(channel: grpc.aio.Channel, **kw: object) -> list[pb.AcquireResponse]:
    return [r async for r in stub(channel).Acquire(pb.AcquireRequest(**kw))]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("request_", "code", "field"),
    [
        ({}, grpc.StatusCode.INVALID_ARGUMENT, "model_id"),
        (
            {"model_id": "qwen3-vl", "ttl_seconds": -1},
            grpc.StatusCode.INVALID_ARGUMENT,
            "ttl_seconds",
        ),
        ({"role": "poetry"}, grpc.StatusCode.INVALID_ARGUMENT, "role"),
        ({"model_id": "ghost"}, grpc.StatusCode.NOT_FOUND, "model_id"),
        # A TTL of years would pin the model for good (and overflow a Timestamp).
        (
            {"model_id": "qwen3-vl", "ttl_seconds": 1e12},
            grpc.StatusCode.INVALID_ARGUMENT,
            "ttl_seconds",
        ),
        # Past the default maximum of one hour (max_lease_ttl_seconds): renew instead.
        (
            {"model_id": "qwen3-vl", "ttl_seconds": 3601},
            grpc.StatusCode.INVALID_ARGUMENT,
            "ttl_seconds",
        ),
        (
            {"model_id": "qwen3-vl", "claim_within_seconds": 301},
            grpc.StatusCode.INVALID_ARGUMENT,
            "claim_within_seconds",
        ),
        (
            {"model_id": "qwen3-vl", "client_name": "x" * 129},
            grpc.StatusCode.INVALID_ARGUMENT,
            "client_name",
        ),
        (
            {"model_id": "qwen3-vl", "priority": 2**31 - 1},
            grpc.StatusCode.INVALID_ARGUMENT,
            "priority",
        ),
    ],
)
async def test_bad_acquire_gets_the_right_code_naming_the_field(
    channel: grpc.aio.Channel, request_: dict[str, object], code: grpc.StatusCode, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await acquire(channel, **request_)
    assert e.value.code() == code
    assert field_of(e.value) == field
    # Nothing was granted or queued by a bad request.
    assert not (await stub(channel).ListLeases(pb.ListLeasesRequest())).leases


async def test_granted_lease_renew_release_and_token_checks(channel: grpc.aio.Channel) -> None:
    stream = await acquire(channel, model_id="florence-2-large", ttl_seconds=30)
    # A cold model: loading first, then the grant.
    assert [r.WhichOneof("state") for r in stream] == ["loading", "granted"]
    lease = stream[-1].granted
    assert lease.lease_id.startswith("l-") and lease.token
    assert lease.cuda_visible_devices == ",".join(lease.gpu_uuids)
    s = stub(channel)
    listed = (await s.ListLeases(pb.ListLeasesRequest())).leases
    assert [x.lease_id for x in listed] == [lease.lease_id] and listed[0].token == ""
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await s.Renew(pb.RenewRequest(lease_id=lease.lease_id, token="wrong"))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await s.Release(pb.ReleaseRequest(lease_id="../etc", token=lease.token))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field_of(e.value) == "lease_id"
    renewed = (
        await s.Renew(pb.RenewRequest(lease_id=lease.lease_id, token=lease.token, ttl_seconds=120))
    ).lease
    assert renewed.expires_at.ToSeconds() > lease.expires_at.ToSeconds()
    await s.Release(pb.ReleaseRequest(lease_id=lease.lease_id, token=lease.token))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await s.Release(pb.ReleaseRequest(lease_id=lease.lease_id, token=lease.token))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert "released" in (e.value.details() or "")


async def test_waiting_request_streams_position_and_leaves_the_queue_when_cancelled(
    channel: grpc.aio.Channel,
) -> None:
    s = stub(channel)
    first = (await acquire(channel, model_id="qwen3-vl"))[-1]  # constrained_16gb: one model
    second = s.Acquire(pb.AcquireRequest(model_id="qwen25vl"))
    r = await second.read()
    assert r.WhichOneof("state") == "queued" and r.queued.position == 1
    third = s.Acquire(pb.AcquireRequest(model_id="florence-2-large"))
    r3 = await third.read()
    assert r3.queued.position == 2
    second.cancel()
    # The third moves up once the second is gone.
    r3 = await asyncio.wait_for(third.read(), 5)
    assert r3.WhichOneof("state") == "queued" and r3.queued.position == 1
    await s.Release(pb.ReleaseRequest(lease_id=first.granted.lease_id, token=first.granted.token))
    states = []
    while not states or states[-1] != "granted":
        states.append((await asyncio.wait_for(third.read(), 5)).WhichOneof("state"))
    assert states == ["loading", "granted"]


async def test_deadline_in_the_queue_is_deadline_exceeded(channel: grpc.aio.Channel) -> None:
    await acquire(channel, model_id="qwen3-vl")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        async for _ in stub(channel).Acquire(pb.AcquireRequest(model_id="qwen25vl"), timeout=0.5):
            pass
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_watch_sees_model_and_lease_changes(channel: grpc.aio.Channel) -> None:
    s = stub(channel)
    watch = s.Watch(pb.WatchRequest())
    models = ["siglip-large-patch16-384", "florence-2-large"]
    held: list[pb.Lease] = []

    async def switch(i: int) -> None:
        # One model at a time on constrained_16gb: each switch unloads one, loads the other.
        if held:
            g = held.pop()
            await s.Release(pb.ReleaseRequest(lease_id=g.lease_id, token=g.token))
        held.append((await acquire(channel, model_id=models[i % 2]))[-1].granted)

    # Watch has no "subscribed" message: switch until the stream shows something, so a slow
    # subscription cannot make the test miss the events it looks for.
    # One read stays pending throughout: cancelling a read would cancel the whole call.
    read = asyncio.ensure_future(watch.read())
    for i in range(50):
        await switch(i)
        done, _ = await asyncio.wait([read], timeout=0.2)
        if done:
            break
    else:
        raise AssertionError("no Watch event at all")
    await switch(i + 1)
    seen: set[tuple[str, int]] = set()
    while (
        not {("model", types_pb2.MODEL_STATE_LOADED), ("lease", pb.LEASE_EVENT_KIND_GRANTED)}
        <= seen
    ):
        ev = await asyncio.wait_for(watch.read(), 5)
        kind = ev.WhichOneof("event")
        seen.add((kind, ev.model.state if kind == "model" else ev.lease.kind))
        if kind == "lease":
            assert ev.lease.lease.token == ""  # never leaked to watchers
    watch.cancel()


async def test_a_grant_its_caller_never_received_ends_at_the_claim_deadline(
    channel: grpc.aio.Channel,
) -> None:
    """Cancelling an Acquire 0-20 ms after sending it must not leave a lease nobody holds
    (it would pin its model until the TTL of 600 s). The server cannot see whether a grant it
    wrote was read; a caller that promised to claim it and did not, never received it."""
    s = stub(channel)
    rng = random.Random(7)
    for _ in range(40):
        call = s.Acquire(
            pb.AcquireRequest(
                model_id="florence-2-large", ttl_seconds=600, claim_within_seconds=0.5
            )
        )
        await asyncio.sleep(rng.uniform(0, 0.02))
        call.cancel()
        assert await call.code() == grpc.StatusCode.CANCELLED
    # Once the claim window has passed, none is held (it would take 600 s without a claim).
    for _ in range(100):
        if not (await s.ListLeases(pb.ListLeasesRequest())).leases:
            break
        await asyncio.sleep(0.05)
    assert not (await s.ListLeases(pb.ListLeasesRequest())).leases


async def test_a_claimed_grant_is_kept(channel: grpc.aio.Channel) -> None:
    s = stub(channel)
    stream = await acquire(
        channel, model_id="florence-2-large", ttl_seconds=60, claim_within_seconds=0.3
    )
    lease = stream[-1].granted
    await s.Renew(pb.RenewRequest(lease_id=lease.lease_id, token=lease.token))
    await asyncio.sleep(0.6)  # twice the claim window: an unclaimed grant would be gone
    held = (await s.ListLeases(pb.ListLeasesRequest())).leases
    assert [x.lease_id for x in held] == [lease.lease_id]
