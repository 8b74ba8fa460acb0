"""Answers kept between calls (ListLeases, SelectByRole) until an event reaches the core: the
very next call after an Acquire, a Renew or a Release says what it changed."""

from __future__ import annotations

import grpc

from gpulet.v1 import leases_pb2, leases_pb2_grpc, selector_pb2, selector_pb2_grpc

# A reservation backend of the example registry that serves `embedding`.
MODEL = "siglip-large-patch16-384"


async def grant(leases: leases_pb2_grpc.LeaseServiceStub) -> leases_pb2.Lease:
    request = leases_pb2.AcquireRequest(model_id=MODEL, client_name="kept", ttl_seconds=600)
    answers = [r async for r in leases.Acquire(request)]  # type: ignore[attr-defined]
    granted: leases_pb2.Lease = answers[-1].granted
    return granted


async def test_list_leases_says_each_change_at_once(channel: grpc.aio.Channel) -> None:
    leases = leases_pb2_grpc.LeaseServiceStub(channel)
    assert not (await leases.ListLeases(leases_pb2.ListLeasesRequest())).leases
    lease = await grant(leases)
    listed = await leases.ListLeases(leases_pb2.ListLeasesRequest())
    assert [x.lease_id for x in listed.leases] == [lease.lease_id]
    renewed = await leases.Renew(
        leases_pb2.RenewRequest(lease_id=lease.lease_id, token=lease.token, ttl_seconds=30)
    )
    again = await leases.ListLeases(leases_pb2.ListLeasesRequest())
    # The same expiry (each answer turns the monotonic clock into wall time on its own, a
    # few microseconds apart), 570 s sooner than the first answer's.
    shown, said = (
        again.leases[0].expires_at.ToNanoseconds(),
        renewed.lease.expires_at.ToNanoseconds(),
    )
    assert abs(shown - said) < 1_000_000
    assert again.leases[0].expires_at.seconds < listed.leases[0].expires_at.seconds
    await leases.Release(leases_pb2.ReleaseRequest(lease_id=lease.lease_id, token=lease.token))
    assert not (await leases.ListLeases(leases_pb2.ListLeasesRequest())).leases


async def test_select_by_role_shows_a_new_lease_at_once(channel: grpc.aio.Channel) -> None:
    selector = selector_pb2_grpc.SelectorServiceStub(channel)
    request = selector_pb2.SelectByRoleRequest(role="embedding", top_n=10)

    async def leases_on_model() -> int:
        answer = await selector.SelectByRole(request)
        return next(c.model.lease_count for c in answer.candidates if c.model.id == MODEL)

    assert await leases_on_model() == 0
    await grant(leases_pb2_grpc.LeaseServiceStub(channel))
    assert await leases_on_model() == 1
