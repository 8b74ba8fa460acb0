"""The RPC interceptor against a real grpc.aio server (grpcio-testing cannot run async
servicers), and the /metrics HTTP endpoint on a real socket."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc

from gpulet.v1 import leases_pb2, leases_pb2_grpc
from gpuletd.active_profile import resolve_active_profile
from gpuletd.config import load_config
from gpuletd.config_errors import ConfigError
from gpuletd.daemon import Daemon
from gpuletd.metrics_http import parse_listen, start_metrics
from gpuletd.probe.poller import ProbePoller
from gpuletd.probe.simulated import SimulatedProbe, parse_simulated_gpus
from gpuletd.runtime import Runtime
from gpuletd.services.decoding import DecodeGuard
from gpuletd.services.lease_service import LeaseService
from gpuletd.services.wrapping import composed
from tests.helpers import short_tmpdir

LEASES = "gpulet.v1.LeaseService"


@dataclass
class Served:
    daemon: Daemon
    channel: grpc.aio.Channel

    def value(self, metric: str, /, **labels: str) -> float:
        v = self.daemon.metrics.registry.get_sample_value(metric, labels)
        return 0.0 if v is None else v


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    config = load_config([])
    poller = ProbePoller(SimulatedProbe(parse_simulated_gpus("16384")))
    await poller.open()
    runtime = Runtime(config, resolve_active_profile(config.profiles, poller.gpus), poller)
    tmp = short_tmpdir()
    daemon = Daemon(runtime, state_dir=None, log_dir=tmp / "logs")
    # What build_server does, with the metrics interceptor first (the line server.py gets).
    server = grpc.aio.server(interceptors=[composed(daemon.metrics.interceptor, DecodeGuard())])
    leases_pb2_grpc.add_LeaseServiceServicer_to_server(
        LeaseService(daemon.leases, daemon.watch), server
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    address = f"unix:{tmp / 's.sock'}"
    server.add_insecure_port(address)
    await server.start()
    daemon.start()
    async with grpc.aio.insecure_channel(address) as ch:
        yield Served(daemon, ch)
    await server.stop(None)
    await daemon.stop()
    await poller.close()
    shutil.rmtree(tmp, ignore_errors=True)


async def test_rpcs_are_counted_by_method_and_code_and_unary_ones_timed(served: Served) -> None:
    stub = leases_pb2_grpc.LeaseServiceStub(served.channel)
    await stub.ListLeases(leases_pb2.ListLeasesRequest())
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Release(leases_pb2.ReleaseRequest(lease_id="nope", token="x"))
    # Bytes that are not UTF-8: DecodeGuard answers, and the interceptor before it counts.
    raw = served.channel.unary_unary(f"/{LEASES}/Release", lambda b: b, lambda b: b)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await raw(b"\x0a\x02\xff\xfe")
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    # Unknown methods are the client's words: not a series.
    unknown = served.channel.unary_unary(f"/{LEASES}/Nope", lambda b: b, lambda b: b)
    with pytest.raises(grpc.aio.AioRpcError):
        await unknown(b"")

    unary = {"grpc_type": "unary", "grpc_service": LEASES}
    assert served.value("gpulet_grpc_server_started_total", **unary, grpc_method="Release") == 2
    assert (
        served.value(
            "gpulet_grpc_server_handled_total", **unary, grpc_method="Release", grpc_code="OK"
        )
        == 0
    )
    assert (
        served.value(
            "gpulet_grpc_server_handled_total",
            **unary,
            grpc_method="Release",
            grpc_code="INVALID_ARGUMENT",
        )
        == 2
    )
    assert (
        served.value(
            "gpulet_grpc_server_handled_total", **unary, grpc_method="ListLeases", grpc_code="OK"
        )
        == 1
    )
    timed = {"grpc_service": LEASES, "grpc_method": "ListLeases"}
    assert served.value("gpulet_grpc_server_handling_seconds_count", **timed) == 1
    assert served.value("gpulet_grpc_server_handling_seconds_sum", **timed) > 0
    # Cumulative buckets, as Prometheus reads them: never fewer calls under a larger bound.
    le = ["0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5"]
    le += ["1.0", "2.5", "5.0", "+Inf"]
    buckets = [
        served.value("gpulet_grpc_server_handling_seconds_bucket", **timed, le=b) for b in le
    ]
    assert buckets == sorted(buckets) and buckets[-1] == 1
    text = {s.name for m in served.daemon.metrics.registry.collect() for s in m.samples}
    assert text  # sanity
    methods = {
        s.labels.get("grpc_method")
        for m in served.daemon.metrics.registry.collect()
        for s in m.samples
        if s.name == "gpulet_grpc_server_started_total"
    }
    assert "Nope" not in methods


async def test_streams_are_counted_at_start_and_end_but_not_timed(served: Served) -> None:
    stub = leases_pb2_grpc.LeaseServiceStub(served.channel)
    updates = [
        u
        async for u in stub.Acquire(leases_pb2.AcquireRequest(model_id="siglip-large-patch16-384"))
    ]
    assert updates and updates[-1].HasField("granted")
    watch = stub.Watch(leases_pb2.WatchRequest())
    await asyncio.sleep(0.1)
    stream = {"grpc_type": "server_stream", "grpc_service": LEASES}
    assert served.value("gpulet_grpc_server_started_total", **stream, grpc_method="Watch") == 1
    watch.cancel()
    for _ in range(100):  # the server hears of the cancel asynchronously
        handled = served.value(
            "gpulet_grpc_server_handled_total", **stream, grpc_method="Watch", grpc_code="CANCELLED"
        )
        if handled:
            break
        await asyncio.sleep(0.02)
    assert handled == 1
    assert (
        served.value(
            "gpulet_grpc_server_handled_total", **stream, grpc_method="Acquire", grpc_code="OK"
        )
        == 1
    )
    timed = {"grpc_service": LEASES, "grpc_method": "Acquire"}
    assert served.value("gpulet_grpc_server_handling_seconds_count", **timed) == 0


async def http(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


async def test_the_endpoint_serves_metrics_and_little_else(served: Served) -> None:
    endpoint = await start_metrics(served.daemon, "127.0.0.1:0")
    try:
        [(host, port)] = endpoint.addresses
        assert host == "127.0.0.1"
        ok = await http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = ok.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert b"text/plain; version=0.0.4" in head
        assert b'gpulet_gpu_memory_total_bytes{UUID="GPU-' in body
        assert b"gpulet_build_info{" in body
        assert (await http(port, b"POST /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405")
        assert (await http(port, b"GET /x HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
        assert (await http(port, b"junk\r\n\r\n")).startswith(b"HTTP/1.1 400")
        huge = b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"y" * 20000 + b"\r\n\r\n"
        assert (await http(port, huge)).startswith(b"HTTP/1.1 431")
    finally:
        endpoint.close()
    with pytest.raises(OSError):
        await http(port, b"GET /metrics HTTP/1.1\r\n\r\n")


@pytest.mark.parametrize("bad", ["9400", ":9400", "localhost:", "h:99999", "h:x"])
def test_a_listen_address_needs_a_host_and_a_port(bad: str) -> None:
    with pytest.raises(ConfigError, match="--metrics"):
        parse_listen(bad)


def test_ipv6_and_names_parse() -> None:
    assert parse_listen("[::1]:9400") == ("::1", 9400)
    assert parse_listen("localhost:0") == ("localhost", 0)


async def test_an_address_in_use_is_a_config_error(served: Served) -> None:
    first = await start_metrics(served.daemon, "127.0.0.1:0")
    try:
        [(_, port)] = first.addresses
        with pytest.raises(ConfigError, match="cannot listen"):
            await start_metrics(served.daemon, f"127.0.0.1:{port}")
    finally:
        first.close()
