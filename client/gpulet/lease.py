"""The background renewal that keeps a lease held by `Client.lease()` / `AsyncClient.lease()`.

`Lease` and `Progress` live in `gpulet.types`; they are re-exported here for callers that
imported them from this module.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from gpulet.errors import GpuletError, LeaseError, NotFound
from gpulet.types import Lease, Progress

__all__ = ["Lease", "Progress", "renew_in_task", "renew_in_thread", "renew_interval"]

# What gpuletd uses when a request leaves the TTL to it (`ttl_seconds = 0`).
DAEMON_DEFAULT_TTL = 60.0


def renew_interval(lease: Lease, requested_ttl: float | None) -> float:
    """A third of the lease's TTL leaves two more tries before expiry if one renewal is lost.

    The TTL is read off the grant (expiry − grant time), so it is the one the daemon chose,
    whether the caller asked for one or left it to the daemon's default."""
    ttl = requested_ttl or DAEMON_DEFAULT_TTL
    if lease.granted_at is not None:
        granted = (lease.expires_at - lease.granted_at).total_seconds()
        if granted > 0:
            ttl = granted
    return max(0.2, ttl / 3)


def renew_in_thread(
    lease: Lease, interval: float, renew: Callable[[], object], stop: threading.Event
) -> threading.Thread:
    def loop() -> None:
        expires = lease.expires_at
        while not stop.wait(interval):
            try:
                expires = _expiry(renew(), expires)
            except (NotFound, LeaseError) as e:
                lease.mark_lost(e.message)
                return
            except GpuletError as e:
                # Transient (a daemon restarting keeps its leases): try again, until the
                # lease has expired by its own clock; then it is gone whatever comes back.
                if _past(expires):
                    lease.mark_lost(_unrenewed(expires, e))
                    return

    t = threading.Thread(target=loop, name=f"gpulet-renew-{lease.lease_id}", daemon=True)
    t.start()
    return t


async def renew_in_task(
    lease: Lease, interval: float, renew: Callable[[], Awaitable[object]]
) -> None:
    expires = lease.expires_at
    while True:
        await asyncio.sleep(interval)
        try:
            expires = _expiry(await renew(), expires)
        except (NotFound, LeaseError) as e:
            lease.mark_lost(e.message)
            return
        except GpuletError as e:
            if _past(expires):
                lease.mark_lost(_unrenewed(expires, e))
                return


def _expiry(renewed: object, previous: datetime) -> datetime:
    return renewed.expires_at if isinstance(renewed, Lease) else previous


def _past(expires: datetime) -> bool:
    return datetime.now(UTC) >= expires


def _unrenewed(expires: datetime, e: GpuletError) -> str:
    return f"could not renew it before it expired at {expires:%H:%M:%S} UTC: {e.message}"
