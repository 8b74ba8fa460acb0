"""Memory leases end to end (constrained_16gb on one simulated 16 GiB GPU): raw VRAM reserved
for a holder that loads something not in the registry, blocking a model that no longer fits
beside it until it is released."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import gpulet
from tests.helpers import Daemon, constrained_daemon
from tests.system.test_leases import reservation_model

pytestmark = pytest.mark.system


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = constrained_daemon(tmp_path, reservation_model("model-a", 6000))
    try:
        yield d
    finally:
        d.stop()


def test_memory_lease_blocks_a_model_until_released(daemon: Daemon) -> None:
    r = daemon.cli("lease", "acquire", "--vram", "12000", "--client-name", "raw", "--json")
    assert r.returncode == 0, r.stderr
    granted = json.loads(r.stdout.splitlines()[-1])
    assert granted["state"] == "granted"
    lid, token = granted["lease_id"], granted["token"]
    assert granted["model_id"] == f"vram:{lid}" and len(granted["gpu_uuids"]) == 1
    listed = daemon.cli_json("lease", "list")["leases"]
    assert [(x["lease_id"], x["model_id"], x["client_name"]) for x in listed] == [
        (lid, f"vram:{lid}", "raw")
    ]
    got: list[gpulet.Lease] = []
    with gpulet.Client(address=daemon.address) as c:
        t = threading.Thread(target=lambda: got.append(c.acquire("model-a", ttl=60)))
        t.start()
        deadline = time.monotonic() + 10
        while not c.queue() and time.monotonic() < deadline:
            time.sleep(0.05)
        [waiting] = c.queue()
        assert waiting.model_id == "model-a"
        time.sleep(0.5)
        assert not got and t.is_alive()
        r = daemon.cli("lease", "release", lid, env={"GPULET_LEASE_TOKEN": token})
        assert r.returncode == 0, r.stderr
        t.join(15)
        assert not t.is_alive() and got and got[0].model_id == "model-a"
        assert [x.model_id for x in c.list_leases()] == ["model-a"]
        assert not [m for m in c.models() if m.id.startswith("vram:")]
        c.release(got[0])


def test_memory_lease_bounds(daemon: Daemon) -> None:
    with gpulet.Client(address=daemon.address) as c:
        with pytest.raises(gpulet.InvalidArgument) as e:
            c.acquire(vram_mb=20000)
        assert "vram_mb" in str(e.value)
        with pytest.raises(ValueError):
            c.acquire("model-a", vram_mb=100)
        # Larger than the profile allows (14,000 MiB) but within the GPU: refused at once.
        with pytest.raises(gpulet.ModelTooLarge) as too_large:
            c.acquire(vram_mb=15000)
        assert "14000" in str(too_large.value)
        with c.lease(vram_mb=4000) as lease:
            assert lease.model_id == f"vram:{lease.lease_id}"
        assert c.list_leases() == []


def test_a_memory_lease_survives_a_crash_of_gpuletd(daemon: Daemon) -> None:
    with gpulet.Client(address=daemon.address) as c:
        lease = c.acquire(vram_mb=4000, ttl=300)
    assert daemon.proc is not None
    daemon.proc.kill()
    daemon.proc.wait(10)
    daemon.stop(keep=True)
    daemon.start()
    with gpulet.Client(address=daemon.address) as c:
        # Raw VRAM has no process to adopt: it is still held, with the same token.
        c.renew(lease)
        assert [x.lease_id for x in c.list_leases()] == [lease.lease_id]
        c.release(lease)
        assert not c.list_leases()


def test_plan_says_what_a_memory_lease_would_meet_and_changes_nothing(daemon: Daemon) -> None:
    with gpulet.Client(address=daemon.address) as c:
        held = c.acquire("model-a", ttl=60)  # the one model slot of constrained_16gb is taken
        before = [(x.lease_id, x.model_id) for x in c.list_leases()]
        p = c.plan(vram_mb=4000)
        assert p.outcome is gpulet.PlanOutcome.WAIT and p.position == 1, p
        assert "model-a" in p.waiting_for
        too_big = c.plan(vram_mb=16000)
        assert too_big.outcome is gpulet.PlanOutcome.REFUSED, too_big
        assert [(x.lease_id, x.model_id) for x in c.list_leases()] == before
        assert c.queue() == []
        c.release(held)
        assert c.plan(vram_mb=4000).outcome is gpulet.PlanOutcome.LOAD
    r = daemon.cli("plan", "--vram", "4000", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["outcome"] == "load", r.stdout + r.stderr
