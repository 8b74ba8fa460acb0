"""The background renewal: a lease is declared lost when it cannot be renewed before it
expires, even if the daemon never answers that it is gone (it is down)."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

from gpulet.errors import DaemonUnavailable
from gpulet.lease import renew_in_task, renew_in_thread
from gpulet.types import Lease


def _lease(expires_in: float) -> Lease:
    return Lease(
        lease_id="l-0000000000000001",
        token="gpl_x",
        model_id="m",
        gpu_uuids=(),
        cuda_visible_devices="",
        endpoint="",
        expires_at=datetime.now(UTC) + timedelta(seconds=expires_in),
    )


def _down() -> object:
    raise DaemonUnavailable("gpuletd is not reachable at unix:///x: connection refused")


def test_a_lease_that_cannot_be_renewed_before_it_expires_is_lost() -> None:
    lease = _lease(0.3)
    stop = threading.Event()
    t = renew_in_thread(lease, 0.05, _down, stop)
    try:
        assert lease.lost.wait(5)
        assert "could not renew it before it expired" in lease.lost_reason
        assert "connection refused" in lease.lost_reason
    finally:
        stop.set()
        t.join(5)


def test_a_daemon_briefly_away_does_not_lose_the_lease() -> None:
    lease = _lease(60)
    stop = threading.Event()
    t = renew_in_thread(lease, 0.02, _down, stop)
    stop.wait(0.2)
    stop.set()
    t.join(5)
    assert not lease.lost.is_set()


def test_the_async_renewal_declares_it_lost_too() -> None:
    async def down() -> object:
        return _down()

    async def run() -> Lease:
        lease = _lease(0.3)
        await asyncio.wait_for(renew_in_task(lease, 0.05, down), 5)
        return lease

    lease = asyncio.run(run())
    assert lease.lost.is_set() and "expired" in lease.lost_reason
