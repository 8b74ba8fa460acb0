"""`gpulet plan` against a real daemon (constrained_16gb on one simulated 16 GiB GPU, which
holds one of these 9,000 MiB models at a time): it names the idle model a load would evict,
says where a request would wait, and changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import gpulet
from gpulet.async_client import AsyncClient
from gpulet.types import Plan, PlanOutcome
from tests.helpers import Daemon, constrained_daemon
from tests.system.test_leases import reservation_model

pytestmark = pytest.mark.system


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = constrained_daemon(
        tmp_path, reservation_model("model-a", 9000) + reservation_model("model-b", 9000)
    )
    try:
        yield d
    finally:
        d.stop()


def _state(c: gpulet.Client) -> Any:
    models = sorted((m.id, m.state, m.gpu_uuids) for m in c.models())
    # Expiries to the second: each listing converts the daemon's monotonic clock to wall time
    # anew, which moves the microseconds (a renew would move the seconds).
    leases = sorted(
        (x.lease_id, x.model_id, round(x.expires_at.timestamp())) for x in c.list_leases()
    )
    return models, leases, c.queue()


def test_plan_names_the_idle_victim_and_changes_nothing(daemon: Daemon) -> None:
    with gpulet.Client(address=daemon.address) as c:
        c.release(c.acquire("model-a", client_name="t", ttl=60))  # loaded, idle, in its grace
        before = _state(c)
        data = daemon.cli_json("plan", "model-b")
        assert data["outcome"] == "load", data
        assert data["model_id"] == "model-b" and data["gpu_uuids"]
        [v] = data["victims"]
        assert v["model_id"] == "model-a" and v["reserved_mb"] == 9000
        # A reservation model: no measured load time counts, 2 s per GiB of its reservation.
        assert v["reload_measured"] is False
        assert v["reload_seconds"] == pytest.approx(9000 / 1024 * 2, abs=1e-3)
        # The text answer, and the client twins, say the same.
        r = daemon.cli("plan", "model-b")
        assert r.returncode == 0, r.stderr
        assert "would load now" in r.stdout and "model-a" in r.stdout
        p = c.plan("model-b")
        assert p.outcome is PlanOutcome.LOAD and [x.model_id for x in p.victims] == ["model-a"]
        ap = asyncio.run(_async_plan(daemon.address))
        assert ap == p
        # The same model asked for by role: model-a is loaded, so the role prefers it.
        assert daemon.cli_json("plan", "--role", "caption")["outcome"] == "granted"
        assert _state(c) == before
        assert [m.state for m in c.models() if m.id == "model-a"] == ["loaded"]


async def _async_plan(address: str) -> Plan:
    async with AsyncClient(address=address) as ac:
        return await ac.plan("model-b")


def test_plan_behind_a_lease_waits_at_position_1(daemon: Daemon) -> None:
    with gpulet.Client(address=daemon.address) as c:
        lease = c.acquire("model-a", client_name="holder", ttl=120)
        before = _state(c)
        data = daemon.cli_json("plan", "model-b")
        assert data["outcome"] == "wait" and data["position"] == 1, data
        assert data["victims"] == []
        assert "model-a's lease ending" in data["waiting_for"], data
        assert _state(c) == before and c.queue() == []
        c.release(lease)


def test_plan_unknown_model_or_role_exits_3(daemon: Daemon) -> None:
    assert daemon.cli("plan", "no-such-model").returncode == 3
    assert daemon.cli("plan", "--role", "no-such-role").returncode == 3
    assert daemon.cli("plan").returncode == 2
