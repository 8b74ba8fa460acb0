"""Every RPC a server offers, found by its reflection service: the fuzz suite knows nothing of
the API but what the daemon itself serves, so a new RPC is fuzzed the day it appears."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

__all__ = ["Rpc", "discover"]


@dataclass(frozen=True)
class Rpc:
    path: str  # /package.Service/Method
    request: Descriptor
    response: type[Message]
    client_streaming: bool
    server_streaming: bool

    @property
    def streaming(self) -> bool:
        return self.client_streaming or self.server_streaming


def _ask(stub: Any, request: reflection_pb2.ServerReflectionRequest) -> Any:
    (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    return response


def discover(channel: grpc.Channel) -> list[Rpc]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    listed = _ask(stub, reflection_pb2.ServerReflectionRequest(list_services=""))
    services = [s.name for s in listed.list_services_response.service]
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for name in services:
        r = _ask(stub, reflection_pb2.ServerReflectionRequest(file_containing_symbol=name))
        for raw in r.file_descriptor_response.file_descriptor_proto:
            fdp = descriptor_pb2.FileDescriptorProto.FromString(raw)
            files[fdp.name] = fdp
    # A fresh pool, filled dependencies first: nothing borrowed from the stubs we import.
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()
    while len(added) < len(files):
        ready = [
            f
            for n, f in files.items()
            if n not in added and all(d in added or d not in files for d in f.dependency)
        ]
        assert ready, f"reflection gave files with unresolvable imports: {sorted(files)}"
        for f in ready:
            pool.Add(f)
            added.add(f.name)
    rpcs = []
    for name in services:
        service = pool.FindServiceByName(name)
        for m in service.methods:
            rpcs.append(
                Rpc(
                    path=f"/{service.full_name}/{m.name}",
                    request=m.input_type,
                    response=message_factory.GetMessageClass(m.output_type),
                    client_streaming=m.client_streaming,
                    server_streaming=m.server_streaming,
                )
            )
    return rpcs
