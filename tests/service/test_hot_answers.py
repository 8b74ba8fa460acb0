"""The answers clients ask for in a loop (SelectByRole, GetActiveProfile) are kept between calls
(services/memo.py), yet always say what the daemon sees now: a new GPU reading shows in the
very next answer. The real server and daemon in-process over a real socket, on the NVML probe
with a fake driver; the test polls the probe itself, so each reading lands when it says."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from gpulet.v1 import profiles_pb2, profiles_pb2_grpc, selector_pb2, selector_pb2_grpc
from gpuletd.active_profile import resolve_active_profile
from gpuletd.config import load_config
from gpuletd.daemon import Daemon
from gpuletd.probe.nvml import NvmlProbe
from gpuletd.probe.poller import ProbePoller
from gpuletd.runtime import Runtime
from gpuletd.server import build_server
from tests.fakes.fake_nvml import FakeGpu, FakeNvml, MiB
from tests.helpers import short_tmpdir

NVML_ERROR_GPU_IS_LOST = 15


@dataclass
class Served:
    channel: grpc.aio.Channel
    poller: ProbePoller
    nvml: FakeNvml
    gpu: FakeGpu


@pytest.fixture
async def served(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    gpu = FakeGpu(uuid="GPU-16g", total_bytes=16384 * MiB, reserved_bytes=0, used_bytes=0)
    nvml = FakeNvml([gpu]).install(monkeypatch)
    config = load_config([])
    poller = ProbePoller(NvmlProbe())
    await poller.open()
    runtime = Runtime(config, resolve_active_profile(config.profiles, poller.gpus), poller)
    tmp = short_tmpdir()
    daemon = Daemon(runtime, state_dir=None, log_dir=tmp / "logs")
    server = build_server(runtime, daemon)
    address = f"unix:{tmp / 's.sock'}"
    server.grpc_server.add_insecure_port(address)
    await server.grpc_server.start()
    daemon.start()
    async with grpc.aio.insecure_channel(address) as ch:
        yield Served(ch, poller, nvml, gpu)
    await server.grpc_server.stop(None)
    await daemon.stop()
    await poller.close()
    shutil.rmtree(tmp, ignore_errors=True)


async def test_get_active_profile_shows_each_new_reading(served: Served) -> None:
    stub = profiles_pb2_grpc.ProfileServiceStub(served.channel)
    before = await stub.GetActiveProfile(profiles_pb2.GetActiveProfileRequest())
    again = await stub.GetActiveProfile(profiles_pb2.GetActiveProfileRequest())
    # The reading's age is of the moment of asking, never of a kept answer.
    assert again.gpus[0].reading_age_seconds > before.gpus[0].reading_age_seconds
    served.gpu.used_bytes = 3000 * MiB  # another program takes memory
    await served.poller.poll_once()
    after = await stub.GetActiveProfile(profiles_pb2.GetActiveProfileRequest())
    assert after.gpus[0].used_mb == before.gpus[0].used_mb + 3000
    assert after.profile == before.profile


async def test_select_by_role_follows_a_gpu_that_is_lost(served: Served) -> None:
    stub = selector_pb2_grpc.SelectorServiceStub(served.channel)
    request = selector_pb2.SelectByRoleRequest(role="caption")
    before = await stub.SelectByRole(request)
    assert before.candidates
    served.nvml.fail(None, NVML_ERROR_GPU_IS_LOST)
    await served.poller.poll_once()
    after = await stub.SelectByRole(request)
    # Nothing can be placed on a lost GPU: every candidate is now excluded, and says why.
    assert not after.candidates
    excluded = {x.model_id for x in after.excluded}
    assert {c.model.id for c in before.candidates} <= excluded
    assert all(x.reason for x in after.excluded)
