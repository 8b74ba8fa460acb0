"""One live gpuletd for the fuzz suite, its RPCs found by reflection.

A real `gpuletd` subprocess rather than the in-process server of tests/service: what is
fuzzed is the program that ships (main.py's server, interceptors, socket, signal handling),
a crash or a wedged event loop shows as a dead or silent process instead of taking the test
runner down with it, and whatever it writes to stderr (a traceback from a servicer) can be
checked after. Starting it costs about a second, once per session.

The daemon runs on one simulated 96 GB GPU (generous_96gb: the five example models fit side
by side, so no request evicts another model) with a grace period of an hour: nothing in its
state changes unless a request changes it, which is what lets a test compare the state
before and after a refused request.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from gpulet.v1 import (
    leases_pb2,
    leases_pb2_grpc,
    profiles_pb2,
    profiles_pb2_grpc,
    selector_pb2,
    selector_pb2_grpc,
)
from tests.fuzz.reflect import Rpc, discover
from tests.service.live import LiveDaemon


@dataclass(frozen=True)
class Live:
    daemon: LiveDaemon
    channel: grpc.Channel
    rpcs: list[Rpc]
    # Strings the daemon knows (model ids, roles, profiles, a live and an ended lease id),
    # so that some fuzzed requests get past validation.
    known: list[str]


@pytest.fixture(scope="session")
def live() -> Iterator[Live]:
    d = LiveDaemon(
        "--simulated-gpus", "98304", "--set", "grace_period_seconds=3600", "--log-level", "debug"
    ).start()
    try:
        with grpc.insecure_channel(d.address) as ch:
            leases = leases_pb2_grpc.LeaseServiceStub(ch)
            selector = selector_pb2_grpc.SelectorServiceStub(ch)
            profiles = profiles_pb2_grpc.ProfileServiceStub(ch)
            # A lease held for the whole session (its token never given to the fuzzer) and
            # one already ended: Renew/Release reach PERMISSION_DENIED and NOT_FOUND.
            held = list(
                leases.Acquire(
                    leases_pb2.AcquireRequest(
                        model_id="siglip-large-patch16-384", ttl_seconds=3600, client_name="fuzz"
                    )
                )
            )[-1].granted
            ended = list(leases.Acquire(leases_pb2.AcquireRequest(model_id="florence-2-large")))
            gone = ended[-1].granted
            leases.Release(leases_pb2.ReleaseRequest(lease_id=gone.lease_id, token=gone.token))
            known = [
                *(m.id for m in selector.ListModels(selector_pb2.ListModelsRequest()).models),
                *selector.ListRoles(selector_pb2.ListRolesRequest()).roles,
                *(
                    p.name
                    for p in profiles.ListProfiles(profiles_pb2.ListProfilesRequest()).profiles
                ),
                held.lease_id,
                gone.lease_id,
                "gpl_" + "A" * 32,
                "gpulet.v1.LeaseService",
                "gpulet/v1/leases.proto",
            ]
            yield Live(d, ch, discover(ch), known)
    finally:
        d.stop()
