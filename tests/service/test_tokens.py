"""Lease tokens survive a shell: `gpl_` then url-safe characters, so never a leading `-`
(which a command line takes for an option), and greppable by secret scanners."""

from __future__ import annotations

import asyncio
import re

import grpc

from gpulet.v1 import leases_pb2, leases_pb2_grpc
from tests.service.test_bounds import acquire

TOKEN = re.compile(r"^gpl_[A-Za-z0-9_-]{32}$")


async def test_thousand_tokens_have_the_prefix_and_each_renews(
    channel: grpc.aio.Channel,
) -> None:
    """`gpl_` then url-safe characters: never a leading `-` (a shell option), and greppable."""
    s = leases_pb2_grpc.LeaseServiceStub(channel)
    leases: list[leases_pb2.Lease] = []
    for _ in range(10):
        batch = await asyncio.gather(
            *(acquire(channel, model_id="florence-2-large", ttl_seconds=120) for _ in range(100))
        )
        leases.extend(stream[-1].granted for stream in batch)
    assert len({x.token for x in leases}) == 1000
    assert all(TOKEN.match(x.token) for x in leases)
    assert not [x.token for x in leases if x.token.startswith("-")]
    for i in range(0, 1000, 100):
        renewed = await asyncio.gather(
            *(
                s.Renew(leases_pb2.RenewRequest(lease_id=x.lease_id, token=x.token))
                for x in leases[i : i + 100]
            )
        )
        assert [r.lease.lease_id for r in renewed] == [x.lease_id for x in leases[i : i + 100]]
