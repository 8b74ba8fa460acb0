"""A granted lease as Python callers see it, and the background renewal that keeps it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gpulet.errors import GpuletError, LeaseError, NotFound
from gpulet.v1 import leases_pb2

__all__ = ["Lease", "Progress", "lease_from_pb", "renew_interval"]

DAEMON_DEFAULT_TTL = 60.0


@dataclass(frozen=True)
class Progress:
    """Where an Acquire stands: `queued` (with position) or `loading`."""

    state: str
    position: int = 0
    queue_length: int = 0
    model_id: str = ""


@dataclass
class Lease:
    lease_id: str
    token: str
    model_id: str
    gpu_uuids: tuple[str, ...]
    cuda_visible_devices: str
    endpoint: str
    expires_at: datetime
    client_name: str = ""
    exclusive: bool = False
    # Set when a renewal found the lease gone (expired, or its backend died).
    lost: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)
    lost_reason: str = ""

    def env(self) -> dict[str, str]:
        """What a program using this lease needs in its environment."""
        return {
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "CUDA_VISIBLE_DEVICES": self.cuda_visible_devices,
            "GPULET_LEASE_ID": self.lease_id,
            "GPULET_MODEL_ID": self.model_id,
            "GPULET_ENDPOINT": self.endpoint,
        }

    def as_dict(self, *, token: bool = True) -> dict[str, object]:
        d: dict[str, object] = {
            "lease_id": self.lease_id,
            "model_id": self.model_id,
            "gpu_uuids": list(self.gpu_uuids),
            "cuda_visible_devices": self.cuda_visible_devices,
            "endpoint": self.endpoint,
            "expires_at": self.expires_at.isoformat(),
            "client_name": self.client_name,
            "exclusive": self.exclusive,
        }
        if token:
            d["token"] = self.token
        return d


def lease_from_pb(m: leases_pb2.Lease) -> Lease:
    return Lease(
        lease_id=m.lease_id,
        token=m.token,
        model_id=m.model_id,
        gpu_uuids=tuple(m.gpu_uuids),
        cuda_visible_devices=m.cuda_visible_devices,
        endpoint=m.endpoint,
        expires_at=m.expires_at.ToDatetime(tzinfo=UTC),
        client_name=m.client_name,
        exclusive=m.exclusive,
    )


def renew_interval(ttl: float) -> float:
    # A third of the TTL leaves two more tries before expiry if one renewal is lost. TTL 0
    # means the daemon's default (60 s).
    return max(0.2, (ttl or DAEMON_DEFAULT_TTL) / 3)


def renew_in_thread(
    lease: Lease, ttl: float, renew: Callable[[], object], stop: threading.Event
) -> threading.Thread:
    def loop() -> None:
        while not stop.wait(renew_interval(ttl)):
            try:
                renew()
            except (NotFound, LeaseError) as e:
                lease.lost_reason = e.message
                lease.lost.set()
                return
            except GpuletError:
                continue  # transient (daemon restarting): try again before the TTL runs out

    t = threading.Thread(target=loop, name=f"gpulet-renew-{lease.lease_id}", daemon=True)
    t.start()
    return t


async def renew_in_task(lease: Lease, ttl: float, renew: Callable[[], Awaitable[object]]) -> None:
    while True:
        await asyncio.sleep(renew_interval(ttl))
        try:
            await renew()
        except (NotFound, LeaseError) as e:
            lease.lost_reason = e.message
            lease.lost.set()
            return
        except GpuletError:
            continue
