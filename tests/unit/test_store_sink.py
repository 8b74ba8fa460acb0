"""The group commit (store_sink.py): lease changes share one commit, yet each answer of the
lease API comes only once what it acknowledges is on disk, where a restarted daemon reads it."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gpuletd.active_profile import resolve_active_profile
from gpuletd.config import load_config
from gpuletd.daemon import Daemon
from gpuletd.leases import LeaseInfo
from gpuletd.probe.poller import ProbePoller
from gpuletd.probe.simulated import SimulatedProbe, parse_simulated_gpus
from gpuletd.runtime import Runtime
from gpuletd.state_dir import STATE_FILE
from gpuletd.watch import LeaseEvent
from tests.helpers import short_tmpdir, snapshot_json, stored_snapshot

# A reservation backend of the example registry: granted at once, no process.
MODEL = "siglip-large-patch16-384"


@pytest.fixture
async def daemon() -> AsyncIterator[Daemon]:
    config = load_config([], texts=[])
    poller = ProbePoller(SimulatedProbe(parse_simulated_gpus("16384")))
    await poller.open()
    runtime = Runtime(config, resolve_active_profile(config.profiles, poller.gpus), poller)
    tmp = short_tmpdir()
    d = Daemon(runtime, state_dir=tmp / "state", log_dir=tmp / "logs")
    await d.open()
    d.start()
    yield d
    await d.stop()
    await poller.close()
    shutil.rmtree(tmp, ignore_errors=True)


def on_disk(d: Daemon) -> dict[str, Any]:
    """The snapshot a restarted daemon would read."""
    assert d.store is not None
    return stored_snapshot(d.store.path.parent / STATE_FILE)


def in_memory(d: Daemon) -> dict[str, Any]:
    return snapshot_json(d.core)


async def granted(d: Daemon, client: str = "c") -> LeaseInfo:
    async for update in d.leases.acquire(model_id=MODEL, client=client, ttl_s=600):
        if isinstance(update, LeaseInfo):
            return update
    raise AssertionError("no grant")


async def test_each_answer_comes_once_what_it_acknowledges_is_on_disk(daemon: Daemon) -> None:
    lease = await granted(daemon)
    assert on_disk(daemon) == in_memory(daemon)
    await daemon.leases.renew(lease.lease_id, lease.token, ttl_s=300)
    assert on_disk(daemon) == in_memory(daemon)
    await daemon.leases.release(lease.lease_id, lease.token)
    assert on_disk(daemon) == in_memory(daemon)
    assert not on_disk(daemon)["leases"]


async def test_calls_in_flight_together_are_all_on_disk_when_answered(daemon: Daemon) -> None:
    leases = await asyncio.gather(*(granted(daemon, f"c{i}") for i in range(8)))
    assert len(on_disk(daemon)["leases"]) == 8
    await asyncio.gather(*(daemon.leases.renew(x.lease_id, x.token, 100) for x in leases))
    assert on_disk(daemon) == in_memory(daemon)
    await asyncio.gather(*(daemon.leases.release(x.lease_id, x.token) for x in leases))
    assert not on_disk(daemon)["leases"]


async def test_a_grant_cancelled_while_it_is_saved_is_not_left_held(daemon: Daemon) -> None:
    async def acquire() -> None:
        await granted(daemon)

    warm = await granted(daemon)  # the model loaded: the next grant is made at once
    await daemon.leases.release(warm.lease_id, warm.token)
    task = asyncio.create_task(acquire())
    await asyncio.sleep(0)  # the grant is made, and waits for its commit
    assert daemon.core.leases()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Nobody received it: it ends at once rather than pinning its model for its TTL.
    assert not daemon.core.leases()
    await daemon.leases.durable()
    assert not on_disk(daemon)["leases"]


async def test_a_watcher_keeps_up_with_a_stream_of_renewals(daemon: Daemon) -> None:
    # Under steady Renews a newer commit is almost always pending: each event waits only for
    # the commit that holds it, not for the next one, so a watcher is not cut off for falling
    # more than its buffer behind.
    lease = await granted(daemon)
    heard: list[str] = []

    async def watch() -> None:
        async for ev in daemon.watch.subscribe():
            if isinstance(ev, LeaseEvent):
                heard.append(ev.kind)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0)
    each = daemon.watch.hub.buffer // 2

    async def renewing() -> None:
        for _ in range(each):
            await daemon.leases.renew(lease.lease_id, lease.token)

    # Eight clients renewing at once: a commit is pending nearly all the time.
    await asyncio.gather(*(renewing() for _ in range(8)))

    async def all_heard() -> None:
        while len(heard) < 8 * each and not watcher.done():
            await asyncio.sleep(0.01)

    # (A bound only against hanging: a watcher cut off ends `watch` at once.)
    await asyncio.wait_for(all_heard(), 120)
    assert not watcher.done(), watcher.exception()
    watcher.cancel()
    assert heard.count("renewed") == 8 * each
