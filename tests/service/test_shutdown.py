"""A connected Watch does not hold gpuletd's shutdown for the server's grace (5 s): the watch
hub is closed, and its subscribers told UNAVAILABLE, before the graceful stop."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from gpulet.v1 import leases_pb2, leases_pb2_grpc
from tests.service.live import LiveDaemon

pytestmark = pytest.mark.system


def test_sigterm_with_a_connected_watch_exits_well_within_the_grace() -> None:
    d = LiveDaemon("--simulated-gpus", "16384").start()
    ended: list[grpc.StatusCode] = []
    seen = threading.Event()
    try:
        with grpc.insecure_channel(d.address) as ch:
            stub = leases_pb2_grpc.LeaseServiceStub(ch)
            watch = stub.Watch(leases_pb2.WatchRequest())

            def read() -> None:
                try:
                    for _ in watch:
                        seen.set()
                except grpc.RpcError as e:
                    ended.append(e.code())

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            # Watch has no "subscribed" message: make events until the stream shows one.
            for _ in range(50):
                grant = list(stub.Acquire(leases_pb2.AcquireRequest(model_id="florence-2-large")))
                lease = grant[-1].granted
                stub.Release(leases_pb2.ReleaseRequest(lease_id=lease.lease_id, token=lease.token))
                if seen.wait(0.2):
                    break
            assert seen.is_set(), "the Watch stream never showed an event"
            start = time.monotonic()
            code = d.stop(timeout=10)
            elapsed = time.monotonic() - start
            reader.join(5)
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()
    assert code == 0, d.output()
    assert elapsed < 4, f"shutdown took {elapsed:.1f} s with a Watch connected"
    assert ended == [grpc.StatusCode.UNAVAILABLE]
