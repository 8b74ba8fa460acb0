"""`gpulet health`: ask gpuletd's standard gRPC health service (grpc.health.v1) whether it
serves, for a Kubernetes exec probe or a shell's `until`. Exit 0 when it serves, 6 when it
does not (starting, shutting down, or not there at all), 3 for a service it does not know,
5 when it does not answer in time: a probe needs nothing but the code, a person reads the line.
"""

from __future__ import annotations

import argparse
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gpulet.cli import args
from gpulet.cli.exits import Exit
from gpulet.cli.output import err, print_json, say
from gpulet.client import Client
from gpulet.errors import from_rpc_error

__all__ = ["add_arguments", "health"]

DEFAULT_TIMEOUT = 5.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--service",
        default="",
        metavar="NAME",
        help="a service to ask about, e.g. gpulet.v1.LeaseService (default: the whole server)",
    )
    p.add_argument(
        "--timeout",
        type=args.seconds(minimum=0, inclusive=False),
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"give up after S seconds (default {DEFAULT_TIMEOUT:g}; keep it below the "
        "probe's timeoutSeconds)",
    )


def health(client: Client, ns: argparse.Namespace) -> int:
    # Its own channel: the health service is not one of the client's nouns.
    with grpc.insecure_channel(client.address) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)  # the stubs' types lack Check
        try:
            r: health_pb2.HealthCheckResponse = stub.Check(
                health_pb2.HealthCheckRequest(service=ns.service), timeout=ns.timeout
            )
        except grpc.RpcError as e:
            if e.code() is grpc.StatusCode.NOT_FOUND:
                err(f"gpuletd at {client.address} has no service named {ns.service!r}")
                return Exit.NOT_FOUND
            raise from_rpc_error(
                e,
                address=client.address,
                waited_for="gpuletd's health check",
                timeout=ns.timeout,
            ) from None
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status).lower()
    serving = r.status == health_pb2.HealthCheckResponse.SERVING
    if ns.json:
        print_json({"service": ns.service, "status": status, "serving": serving})
    elif serving:
        say("serving")
    if serving:
        return Exit.OK
    err(f"gpuletd at {client.address} is not serving ({status})")
    return Exit.UNREACHABLE
