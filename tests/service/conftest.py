from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import grpc
import pytest

from gpuletd.active_profile import resolve_active_profile
from gpuletd.config import load_config
from gpuletd.daemon import Daemon
from gpuletd.probe.poller import ProbePoller
from gpuletd.probe.simulated import SimulatedProbe, parse_simulated_gpus
from gpuletd.probe.types import GpuProbe
from gpuletd.runtime import Runtime
from gpuletd.server import build_server
from tests.helpers import short_tmpdir


@pytest.fixture
def service_config() -> str | None:
    """The config text the service runs with; None: no config (the example registry). A test
    module overrides this fixture (and `service_probe`) to serve its own setup."""
    return None


@pytest.fixture
def service_probe() -> GpuProbe:
    """The GPU probe the service polls: one simulated 16 GB GPU unless a module overrides it
    (e.g. NvmlProbe over tests/fakes/fake_nvml.py)."""
    return SimulatedProbe(parse_simulated_gpus("16384"))


@pytest.fixture
async def channel(
    service_config: str | None, service_probe: GpuProbe
) -> AsyncIterator[grpc.aio.Channel]:
    """A real grpc.aio server on a temporary Unix socket: grpcio-testing cannot exercise
    async servicers (they silently pass), so the services are tested over the wire."""
    texts = [("gpulet.toml", service_config)] if service_config is not None else []
    config = load_config([], texts=texts)
    poller = ProbePoller(service_probe)
    await poller.open()
    active = resolve_active_profile(config.profiles, poller.gpus, config=config.profile)
    runtime = Runtime(config, active, poller)
    tmp = short_tmpdir()
    daemon = Daemon(runtime, state_dir=None, log_dir=tmp / "logs")
    server = build_server(runtime, daemon)
    address = f"unix:{tmp / 's.sock'}"
    server.grpc_server.add_insecure_port(address)
    await server.grpc_server.start()
    await server.set_serving(True)
    daemon.start()
    async with grpc.aio.insecure_channel(address) as ch:
        yield ch
    await server.grpc_server.stop(None)
    await daemon.stop()
    await poller.close()
    shutil.rmtree(tmp, ignore_errors=True)
