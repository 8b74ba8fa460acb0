"""A real gpuletd subprocess for daemon-side tests, ready when its Health service says so.

`tests.helpers.Daemon` waits for `gpulet roles` to succeed; tests of the daemon alone (the
fuzz suite, shutdown timing) should not fail because of a CLI change, so readiness here is
a plain gRPC health check.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import Daemon

__all__ = ["LiveDaemon", "serving"]


def serving(address: str, timeout: float = 1.0) -> bool:
    """Health says SERVING for the whole server."""
    with grpc.insecure_channel(address) as ch:
        stub: Any = health_pb2_grpc.HealthStub(ch)  # the stubs' types lack Check
        try:
            r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(r.status == health_pb2.HealthCheckResponse.SERVING)


class LiveDaemon(Daemon):
    def ready(self) -> bool:
        # A plain health check: tests of the daemon alone must not fail for a CLI change.
        return serving(self.address)

    def start(self, timeout: float = 20.0) -> LiveDaemon:
        super().start(timeout)
        return self

    def __enter__(self) -> LiveDaemon:
        return self.start()
