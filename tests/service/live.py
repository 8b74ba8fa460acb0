"""A real gpuletd subprocess for daemon-side tests, ready when its Health service says so.

`tests.helpers.Daemon` waits for `gpulet roles` to succeed; tests of the daemon alone (the
fuzz suite, shutdown timing) should not fail because of a CLI change, so readiness here is
a plain gRPC health check.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import GPULETD, Daemon

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
    def start(self, timeout: float = 20.0) -> LiveDaemon:
        self._final_output = None
        self._log_file = self.log.open("a")
        self.proc = subprocess.Popen(
            [GPULETD, "--address", self.address, *self.args],
            env=self.env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gpuletd exited with {self.proc.returncode}:\n{self.output()}")
            if self.socket.exists() and serving(self.address):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gpuletd did not become ready:\n{self.output()}")

    def __enter__(self) -> LiveDaemon:
        return self.start()
