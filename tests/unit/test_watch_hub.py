"""The Watch fan-out: each subscriber's backlog is bounded in events and in bytes, a cut-off
frees it at once, and closing the hub ends every subscriber ahead of its backlog."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from gpuletd.leases import LeaseInfo
from gpuletd.scheduler import ModelState, ModelStateChanged
from gpuletd.watch import LeaseEvent, event_size
from gpuletd.watch_hub import MAX_BACKLOG_BYTES, WatchClosed, WatchHub, WatchOverflow


async def started(hub: WatchHub[str]) -> tuple[AsyncGenerator[str, None], asyncio.Task[str]]:
    """A subscriber with one read pending (so it is registered), then never reading again."""
    sub = hub.subscribe()
    first = asyncio.ensure_future(anext(sub))
    await asyncio.sleep(0)
    return sub, first


async def test_a_subscriber_that_stops_reading_is_cut_off_within_the_byte_budget() -> None:
    hub: WatchHub[str] = WatchHub(buffer=1_000_000, size=len)
    sub, first = await started(hub)
    hub.publish("hello")
    assert await first == "hello"
    big = "x" * 10_000
    peak = 0
    for _ in range(10_000):  # 100 MB offered; the subscriber reads none of it
        hub.publish(big)
        peak = max([peak, *(b for _, b in hub.backlogs())])
    assert peak <= MAX_BACKLOG_BYTES
    # Cut off: no longer subscribed, its backlog dropped at once (not when it reads).
    assert hub.backlogs() == []
    with pytest.raises(WatchOverflow, match="fell more than 1024 KiB behind"):
        await anext(sub)


async def test_the_event_count_is_still_bounded() -> None:
    hub: WatchHub[str] = WatchHub(buffer=8, size=len)
    _, pending = await started(hub)
    for i in range(8):
        hub.publish(str(i))
    assert hub.backlogs() == [(8, 8)]
    hub.publish("x")
    assert hub.backlogs() == []
    with pytest.raises(WatchOverflow, match="8 events"):
        await pending


async def test_a_reader_gets_every_event_in_order_and_the_accounting_returns_to_zero() -> None:
    hub: WatchHub[str] = WatchHub(size=len)
    sub, first = await started(hub)
    for word in ("a", "bb", "ccc"):
        hub.publish(word)
    assert hub.backlogs() == [(3, 6)]
    assert [await first, await anext(sub), await anext(sub)] == ["a", "bb", "ccc"]
    assert hub.backlogs() == [(0, 0)]
    await sub.aclose()
    assert hub.backlogs() == []


async def test_close_ends_subscribers_at_once_ahead_of_their_backlog() -> None:
    hub: WatchHub[str] = WatchHub(size=len)
    idle, pending = await started(hub)
    behind, first = await started(hub)
    hub.publish("one")
    hub.publish("two")
    assert await pending == "one" and await first == "one"
    hub.close()
    # "two" is still in `behind`'s backlog, but the daemon is going: it ends now.
    for sub in (idle, behind):
        with pytest.raises(WatchClosed):
            await anext(sub)
    assert hub.backlogs() == []
    with pytest.raises(WatchClosed):
        await anext(hub.subscribe())  # a Watch arriving during shutdown ends at once too
    hub.close()  # twice is harmless (stop and handoff call it again)


async def test_a_waiting_read_is_woken_by_close() -> None:
    hub: WatchHub[str] = WatchHub()
    _, pending = await started(hub)
    hub.close()
    with pytest.raises(WatchClosed):
        await asyncio.wait_for(pending, 1)


def test_event_size_grows_with_the_strings_an_event_holds() -> None:
    def lease(client: str) -> LeaseEvent:
        info = LeaseInfo("l-0123456789abcdef", "qwen3-vl", ("GPU-0",), "", client, False, 1, 2)
        return LeaseEvent("granted", info)

    assert event_size(lease("x" * 100_000)) - event_size(lease("")) == 100_000
    model = ModelStateChanged("qwen3-vl", ModelState.FAILED, (), "e" * 5000)
    assert event_size(model) >= 5000
