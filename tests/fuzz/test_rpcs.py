"""Every RPC the daemon serves, found by reflection, driven with random and hostile requests.

For each request: never UNKNOWN or INTERNAL (the API's "this is a bug"); a refusal of ours
carries its ErrorInfo and a message small enough for the trailers; a refused request changes
nothing (ListLeases and ListModels read the same before and after); a unary call answers
within its deadline; and after each test the daemon is alive, SERVING, and has logged no
traceback. Bounded: each RPC gets a fixed number of examples and streams a short deadline.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpulet.v1 import leases_pb2, leases_pb2_grpc, selector_pb2, selector_pb2_grpc
from tests.fuzz.conftest import Live
from tests.fuzz.reflect import Rpc
from tests.fuzz.wire import BAD_UTF8, DOUBLE_EXTREMES, VARINT_EXTREMES, key, ld, message, varint
from tests.service.live import serving

pytestmark = pytest.mark.system

# The server's default receive limit: a larger request is refused by grpc itself.
MAX_RECEIVE = 4 * 1024 * 1024
UNARY_DEADLINE = 5.0
STREAM_DEADLINE = 0.25
# grpc-level and domain-level refusals after which nothing may have changed.
REFUSED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# Examples per RPC: streams that only end at their deadline (Watch) cost 0.25 s each.
# GPULET_FUZZ_SCALE=10 runs ten times as many (a longer hunt, outside the time bound).
SCALE = float(os.environ.get("GPULET_FUZZ_SCALE", "1"))
EXAMPLES = {"unary": 60, "acquire": 40, "endless": 5, "bidi": 25}


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str = ""
    info: error_details_pb2.ErrorInfo | None = None
    responses: list[bytes] = field(default_factory=list)


def invoke(ch: grpc.Channel, rpc: Rpc, payload: bytes) -> Outcome:
    """Send raw bytes (no client-side serializer: the bytes are what is fuzzed)."""
    got: list[bytes] = []
    # No serializers: bytes in, bytes out (the stubs type that as taking nothing).
    raw: Any
    try:
        if rpc.client_streaming:
            raw = ch.stream_stream(rpc.path)
            got.extend(raw(iter([payload]), timeout=STREAM_DEADLINE * 4))
        elif rpc.server_streaming:
            raw = ch.unary_stream(rpc.path)
            got.extend(raw(payload, timeout=STREAM_DEADLINE))
        else:
            raw = ch.unary_unary(rpc.path)
            got.append(raw(payload, timeout=UNARY_DEADLINE))
    except grpc.RpcError as e:
        status = rpc_status.from_call(e)  # type: ignore[arg-type]
        info = None
        if status is not None and status.details:
            info = error_details_pb2.ErrorInfo()
            status.details[0].Unpack(info)
        return Outcome(e.code(), e.details() or "", info, got)
    return Outcome(grpc.StatusCode.OK, responses=got)


@dataclass(frozen=True)
class State:
    leases: list[leases_pb2.Lease]
    expiries: dict[str, float]
    models: list[object]

    def same_as(self, other: State) -> bool:
        # Times are shown on the wall clock, converted from the monotonic one at each read:
        # they jitter by microseconds from one read to the next.
        return (
            self.leases == other.leases
            and self.models == other.models
            and self.expiries.keys() == other.expiries.keys()
            and all(abs(self.expiries[k] - other.expiries[k]) < 0.05 for k in self.expiries)
        )


def state(ch: grpc.Channel) -> State:
    """What a refused request must leave as it was (idle times are the clock's, not ours)."""
    listed = leases_pb2_grpc.LeaseServiceStub(ch).ListLeases(leases_pb2.ListLeasesRequest())
    models = selector_pb2_grpc.SelectorServiceStub(ch).ListModels(selector_pb2.ListModelsRequest())
    expiries = {}
    for x in listed.leases:
        expiries[x.lease_id] = x.expires_at.ToNanoseconds() / 1e9
        x.ClearField("expires_at")
        x.ClearField("granted_at")
    for m in models.models:
        m.ClearField("idle_seconds")
    return State(list(listed.leases), expiries, list(models.models))


def release_grants(ch: grpc.Channel, rpc: Rpc, out: Outcome) -> None:
    """A fuzzed Acquire that was granted is released at once, so the state stays still."""
    if not rpc.path.endswith("LeaseService/Acquire"):
        return
    stub = leases_pb2_grpc.LeaseServiceStub(ch)
    for raw in out.responses:
        r = leases_pb2.AcquireResponse.FromString(raw)
        if r.WhichOneof("state") == "granted":
            try:
                stub.Release(
                    leases_pb2.ReleaseRequest(lease_id=r.granted.lease_id, token=r.granted.token)
                )
            except grpc.RpcError as e:
                # Already ended: its claim window passed, or the call was cut as it came.
                assert e.code() == grpc.StatusCode.NOT_FOUND, e


def check(live: Live, rpc: Rpc, payload: bytes) -> Outcome:
    ch = live.channel
    before = state(ch)
    out = invoke(ch, rpc, payload)
    release_grants(ch, rpc, out)
    what = f"{rpc.path} with {len(payload)} bytes {payload[:80]!r}: {out.code} {out.details!r}"
    assert out.code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), what
    if len(payload) > MAX_RECEIVE:
        assert out.code == grpc.StatusCode.RESOURCE_EXHAUSTED, what
        return out
    if not rpc.streaming:
        assert out.code != grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer in time: {what}"
    if out.code in REFUSED:
        if rpc.path.startswith("/gpulet."):
            # Ours: always with an ErrorInfo, so a RESOURCE_EXHAUSTED without one would be a
            # trailer overflow, not a refusal.
            assert out.info is not None and out.info.domain == "gpulet.dev", what
            assert len(out.details.encode()) <= 1200, what
        assert state(ch).same_as(before), f"a refused request changed the state: {what}"
    return out


def assert_still_serving(live: Live) -> None:
    assert live.daemon.proc is not None and live.daemon.proc.poll() is None, "gpuletd died"
    assert serving(live.daemon.address), "gpuletd no longer SERVING"
    assert "Traceback" not in live.daemon.output(), live.daemon.output()[-3000:]


def fuzz(
    rpc: Rpc, examples: int, body: Callable[[bytes], None], strategy: st.SearchStrategy[bytes]
) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )
    @given(payload=strategy)
    def run(payload: bytes) -> None:
        body(payload)

    run()


def kind(rpc: Rpc) -> str:
    if rpc.client_streaming:
        return "bidi"
    if rpc.path.endswith("LeaseService/Acquire"):
        return "acquire"
    return "endless" if rpc.server_streaming else "unary"


def test_reflection_finds_every_rpc(live: Live) -> None:
    paths = {r.path for r in live.rpcs}
    for service, methods in {
        "gpulet.v1.LeaseService": ["Acquire", "Renew", "Release", "ListLeases", "Watch"],
        "gpulet.v1.SelectorService": [
            "SelectByRole",
            "ExplainSelection",
            "ListModels",
            "ListRoles",
        ],
        "gpulet.v1.ProfileService": [
            "GetActiveProfile",
            "ListProfiles",
            "GetProfile",
            "GetGpuStatus",
        ],
        "grpc.health.v1.Health": ["Check", "Watch"],
    }.items():
        assert {f"/{service}/{m}" for m in methods} <= paths


def test_random_and_hostile_requests_to_every_rpc(live: Live) -> None:
    start = time.monotonic()
    counts: dict[str, int] = {}
    for rpc in live.rpcs:

        def body(payload: bytes, rpc: Rpc = rpc) -> None:
            check(live, rpc, payload)
            counts[rpc.path] = counts.get(rpc.path, 0) + 1

        fuzz(rpc, int(EXAMPLES[kind(rpc)] * SCALE), body, message(rpc.request, live.known))
        assert_still_serving(live)
    assert set(counts) == {r.path for r in live.rpcs}
    # Bounded by the example counts, not by a clock (machines here are shared and noisy).
    print(
        f"fuzzed {sum(counts.values())} requests over {len(counts)} RPCs "
        f"in {time.monotonic() - start:.1f} s"
    )


def _string_fields(d: Descriptor, depth: int = 0) -> list[tuple[str, tuple[int, ...]]]:
    """(dotted path, field numbers down to it) of every string field, nested ones included."""
    out: list[tuple[str, tuple[int, ...]]] = []
    for f in d.fields:
        if f.type == FieldDescriptor.TYPE_STRING:
            out.append((f.name, (f.number,)))
        elif f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type is not None and depth < 2:
            for path, numbers in _string_fields(f.message_type, depth + 1):
                out.append((f"{f.name}.{path}", (f.number, *numbers)))
    return out


def _nested(numbers: tuple[int, ...], value: bytes) -> bytes:
    for n in reversed(numbers):
        value = ld(n, value)
    return value


def test_a_string_that_is_not_utf8_is_invalid_argument_naming_its_field(live: Live) -> None:
    tried = 0
    for rpc in live.rpcs:
        for path, numbers in _string_fields(rpc.request):
            for bad in BAD_UTF8:
                out = check(live, rpc, _nested(numbers, bad))
                assert out.code == grpc.StatusCode.INVALID_ARGUMENT, (rpc.path, path, out)
                assert out.info is not None and out.info.reason == "INVALID_UTF8"
                assert out.info.metadata["field"] == path
                tried += 1
    assert tried >= 10 * len(BAD_UTF8)
    assert_still_serving(live)


@pytest.mark.parametrize("unit", ["x", "😀", "\x1b[2J\n"])
def test_a_huge_string_in_any_field_gets_its_own_answer(live: Live, unit: str) -> None:
    """1 MB in each top-level string field in turn: refused (or answered) with the right
    code, never a RESOURCE_EXHAUSTED that is really the message overflowing the trailers."""
    huge = (unit * (1_000_000 // len(unit.encode()))).encode()
    for rpc in live.rpcs:
        for f in rpc.request.fields:
            if f.type != FieldDescriptor.TYPE_STRING:
                continue
            out = check(live, rpc, ld(f.number, huge))
            if rpc.path.startswith("/gpulet.") and out.code != grpc.StatusCode.OK:
                assert out.info is not None, (rpc.path, f.name, out.code, out.details[:200])
    assert_still_serving(live)


_VARINT_FIELDS = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_BOOL,
    FieldDescriptor.TYPE_ENUM,
}


def test_extreme_numbers_in_every_numeric_field(live: Live) -> None:
    """Each numeric field at each of its extremes, beside a valid target: a deterministic
    floor under the random test (NaN, infinities, 5e-324, the int64 and uint64 limits)."""
    targets = {
        "/gpulet.v1.LeaseService/Acquire": ld(1, b"florence-2-large"),
        "/gpulet.v1.SelectorService/SelectByRole": ld(1, b"caption"),
    }
    tried = 0
    for rpc in live.rpcs:
        for f in rpc.request.fields:
            if f.type == FieldDescriptor.TYPE_DOUBLE:
                values = [key(f.number, 1) + struct.pack("<d", v) for v in DOUBLE_EXTREMES]
            elif f.type in _VARINT_FIELDS:
                values = [key(f.number, 0) + varint(v) for v in VARINT_EXTREMES]
            else:
                continue
            for v in values:
                check(live, rpc, targets.get(rpc.path, b"") + v)
                tried += 1
    assert tried >= 50
    assert_still_serving(live)


def test_unknown_fields_and_repeats_are_ignored_as_protobuf_says(live: Live) -> None:
    rpc = next(r for r in live.rpcs if r.path.endswith("SelectorService/ListRoles"))
    out = check(live, rpc, ld(99, b"from a newer client") + key(98, 0) + varint(1) * 1000)
    assert out.code == grpc.StatusCode.OK
