"""`gpulet.Client` through its `channel=` seam: a grpc_testing channel, with the test playing
gpuletd (taking each request, answering it or ending it with a status + ErrorInfo)."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import grpc_testing  # type: ignore[import-untyped]
import pytest
from google.protobuf import any_pb2, message, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

import gpulet
from gpulet.v1 import leases_pb2, profiles_pb2, selector_pb2, types_pb2

# A client that never calls would leave the fake server waiting for ever.
pytestmark = pytest.mark.timeout(20)

SERVICES = {
    "ProfileService": profiles_pb2.DESCRIPTOR.services_by_name["ProfileService"],
    "SelectorService": selector_pb2.DESCRIPTOR.services_by_name["SelectorService"],
    "LeaseService": leases_pb2.DESCRIPTOR.services_by_name["LeaseService"],
}
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def ts(when: datetime) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromDatetime(when)
    return t


def error_metadata(
    code: grpc.StatusCode, message: str, reason: str, **metadata: str
) -> tuple[tuple[str, str | bytes], ...]:
    """The trailing metadata gpuletd sends with a refusal: a google.rpc.Status holding an
    ErrorInfo, as `gpuletd.services.errors.abort` builds it."""
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="gpulet.dev", metadata=metadata))
    status = rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=message, details=[detail])
    )
    return tuple(status.trailing_metadata)


class FakeDaemon:
    """The server side of a grpc_testing channel, one RPC at a time, in the test's thread."""

    def __init__(self, channel: grpc_testing.Channel) -> None:
        self.channel = channel

    def _method(self, name: str) -> Any:
        service, method = name.split(".")
        return SERVICES[service].methods_by_name[method]

    def unary(
        self,
        name: str,
        response: message.Message | None = None,
        *,
        code: grpc.StatusCode = grpc.StatusCode.OK,
        details: str = "",
        reason: str = "",
        **metadata: str,
    ) -> Any:
        """Take the next call of `name` ("Service.Method"), answer it; return its request."""
        _, request, rpc = self.channel.take_unary_unary(self._method(name))
        trailing = error_metadata(code, details, reason, **metadata) if reason else ()
        rpc.terminate(response, trailing, code, details)
        return request

    def stream(
        self,
        name: str,
        responses: Sequence[message.Message],
        *,
        code: grpc.StatusCode = grpc.StatusCode.OK,
        details: str = "",
        reason: str = "",
        read: threading.Event | None = None,
    ) -> Any:
        """Like `unary`, for a server stream. `read`: wait for it (set by the client's side)
        before ending the stream; grpc_testing, unlike gRPC, lets a status overtake the
        messages sent before it."""
        _, request, rpc = self.channel.take_unary_stream(self._method(name))
        for r in responses:
            rpc.send_response(r)
        if read is not None:
            assert read.wait(5)
        trailing = error_metadata(code, details, reason) if reason else ()
        rpc.terminate(trailing, code, details)
        return request


class Harness:
    """A client on a grpc_testing channel, the fake daemon on its other end, and a thread to
    run the client's (blocking) calls in while the test plays the daemon."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self.channel = grpc_testing.channel(SERVICES.values(), grpc_testing.strict_real_time())
        self.client = gpulet.Client(channel=self.channel, address="unix:///run/test.sock")
        self.daemon = FakeDaemon(self.channel)
        self._pool = pool

    def call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Future[Any]:
        return self._pool.submit(fn, *args, **kw)


@contextlib.contextmanager
def harness() -> Iterator[Harness]:
    with ThreadPoolExecutor(max_workers=1) as pool:
        h = Harness(pool)
        with h.client:
            yield h


@pytest.fixture
def h() -> Iterator[Harness]:
    with harness() as h:
        yield h


def lease_pb(**kw: Any) -> leases_pb2.Lease:
    fields: dict[str, Any] = {
        "lease_id": "l-0123456789abcdef",
        "model_id": "m",
        "gpu_uuids": ["GPU-1"],
        "cuda_visible_devices": "GPU-1",
        "endpoint": "http://127.0.0.1:9/v1",
        "expires_at": ts(NOW + timedelta(seconds=60)),
        "granted_at": ts(NOW),
        "client_name": "me",
    }
    fields.update(kw)
    return leases_pb2.Lease(**fields)


def model_pb(mid: str = "m", **kw: Any) -> types_pb2.Model:
    fields: dict[str, Any] = {
        "id": mid,
        "name": mid.upper(),
        "backend": types_pb2.BACKEND_KIND_PROCESS,
        "quantization": "fp8",
        "vram_estimate_mb": 1000,
        "role_priority": {"caption": 90, "keywords": 10},
        "state": types_pb2.MODEL_STATE_LOADED,
        "gpu_uuids": ["GPU-1"],
        "lease_count": 1,
        "reservation_mb": 1200,
    }
    fields.update(kw)
    return types_pb2.Model(**fields)


def profile_pb(name: str = "p") -> types_pb2.Profile:
    return types_pb2.Profile(
        name=name,
        max_vram_mb=14000,
        max_concurrent_models=1,
        preferred_quantizations=["fp8"],
        strategy=types_pb2.STRATEGY_LOAD_UNLOAD,
        model_selection_bias=types_pb2.SELECTION_BIAS_QUALITY,
    )


def gpu_pb() -> types_pb2.Gpu:
    return types_pb2.Gpu(
        index=0,
        uuid="GPU-1",
        name="Simulated",
        total_mb=16384,
        free_mb=16000,
        compute_capability_major=8,
        compute_capability_minor=9,
        state=types_pb2.GPU_STATE_OK,
        placed=[types_pb2.PlacedModel(model_id="m", reservation_mb=1200)],
        processes=[types_pb2.GpuProcess(pid=42, managed=True, model_id="m")],
    )


def assert_plain_values(value: object) -> None:
    """A frozen dataclass all the way down: no protobuf message anywhere inside."""
    assert not isinstance(value, message.Message)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        assert type(value).__dataclass_params__.frozen, type(value)  # type: ignore[attr-defined]
        for f in dataclasses.fields(value):
            assert_plain_values(getattr(value, f.name))
    elif isinstance(value, list | tuple):
        for item in value:
            assert_plain_values(item)


# -- acquire, renew, release --------------------------------------------------------------


def test_acquire_reports_progress_then_claims_the_grant(h: Harness) -> None:
    seen: list[gpulet.Progress] = []
    call = h.call(h.client.acquire, "m", client_name="me", on_progress=seen.append)
    request = h.daemon.stream(
        "LeaseService.Acquire",
        [
            leases_pb2.AcquireResponse(queued=leases_pb2.Queued(position=2, queue_length=3)),
            leases_pb2.AcquireResponse(queued=leases_pb2.Queued(position=1, queue_length=2)),
            leases_pb2.AcquireResponse(loading=leases_pb2.Loading(model_id="m")),
            leases_pb2.AcquireResponse(granted=lease_pb(token="gpl_secret")),
        ],
    )
    claim = h.daemon.unary(
        "LeaseService.Renew",
        leases_pb2.RenewResponse(lease=lease_pb(expires_at=ts(NOW + timedelta(seconds=61)))),
    )
    lease = call.result(timeout=5)

    assert request.model_id == "m" and request.client_name == "me"
    # No TTL given: 0 on the wire, so the daemon's default (60 s) is the only default.
    assert request.ttl_seconds == 0 and request.claim_within_seconds > 0
    assert seen == [
        gpulet.Progress("queued", 2, 3),
        gpulet.Progress("queued", 1, 2),
        gpulet.Progress("loading", model_id="m"),
    ]
    # The claim renews the lease it was just given, with its token.
    assert (claim.lease_id, claim.token, claim.ttl_seconds) == (lease.lease_id, "gpl_secret", 0)
    assert isinstance(lease, gpulet.Lease)
    assert lease.token == "gpl_secret"  # kept, although the Renew answer carries none
    assert lease.expires_at == NOW + timedelta(seconds=61)  # the claim's expiry
    assert lease.granted_at == NOW and lease.gpu_uuids == ("GPU-1",)
    assert not lease.lost.is_set()
    assert lease.env()["CUDA_VISIBLE_DEVICES"] == "GPU-1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        lease.token = "x"  # type: ignore[misc]


def test_acquire_by_role_with_options(h: Harness) -> None:
    call = h.call(h.client.acquire, role="caption", ttl=30, priority=5, exclusive=True, timeout=60)
    request = h.daemon.stream(
        "LeaseService.Acquire", [leases_pb2.AcquireResponse(granted=lease_pb(token="t"))]
    )
    h.daemon.unary("LeaseService.Renew", leases_pb2.RenewResponse(lease=lease_pb()))
    call.result(timeout=5)
    assert request.WhichOneof("target") == "role" and request.role == "caption"
    assert (request.ttl_seconds, request.priority, request.exclusive) == (30, 5, True)


def test_acquire_argument_mistakes_are_caught_before_sending(h: Harness) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        h.client.acquire()
    with pytest.raises(ValueError, match="exactly one"):
        h.client.acquire("m", role="caption")
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="timeout"):
            h.client.acquire("m", timeout=bad)


def test_a_stream_that_ends_without_a_grant_is_an_error(h: Harness) -> None:
    call = h.call(h.client.acquire, "m")
    h.daemon.stream("LeaseService.Acquire", [])
    with pytest.raises(gpulet.DaemonUnavailable, match="without a grant"):
        call.result(timeout=5)


def test_renew_and_release_take_the_lease_acquire_returned(h: Harness) -> None:
    lease = gpulet.Lease(
        lease_id="l-0123456789abcdef",
        token="gpl_tok",
        model_id="m",
        gpu_uuids=(),
        cuda_visible_devices="",
        endpoint="",
        expires_at=NOW,
    )
    call = h.call(h.client.renew, lease, ttl=90)
    request = h.daemon.unary(
        "LeaseService.Renew",
        leases_pb2.RenewResponse(lease=lease_pb(expires_at=ts(NOW + timedelta(seconds=90)))),
    )
    renewed = call.result(timeout=5)
    assert (request.lease_id, request.token, request.ttl_seconds) == (
        lease.lease_id,
        "gpl_tok",
        90,
    )
    assert renewed.expires_at == NOW + timedelta(seconds=90) and renewed.token == "gpl_tok"
    # The same lease: a loss seen through one copy is seen through the other.
    renewed.mark_lost("gone")
    assert lease.lost.is_set() and lease.lost_reason == "gone"

    call = h.call(h.client.release, lease)
    request = h.daemon.unary("LeaseService.Release", leases_pb2.ReleaseResponse())
    assert call.result(timeout=5) is None
    assert (request.lease_id, request.token) == (lease.lease_id, "gpl_tok")


def test_renew_and_release_by_id_and_token(h: Harness) -> None:
    call = h.call(h.client.renew, "l-0123456789abcdef", "-starts-with-dash")
    request = h.daemon.unary("LeaseService.Renew", leases_pb2.RenewResponse(lease=lease_pb()))
    assert call.result(timeout=5).token == "-starts-with-dash"
    assert request.token == "-starts-with-dash" and request.ttl_seconds == 0

    call = h.call(h.client.release, "l-0123456789abcdef", "tok")
    request = h.daemon.unary("LeaseService.Release", leases_pb2.ReleaseResponse())
    call.result(timeout=5)
    assert (request.lease_id, request.token) == ("l-0123456789abcdef", "tok")
    with pytest.raises(TypeError, match="token"):
        h.client.release("l-0123456789abcdef")


def test_lease_block_releases_at_its_end(h: Harness) -> None:
    inside = threading.Event()
    leave = threading.Event()

    def hold() -> str:
        with h.client.lease("m") as lease:
            inside.set()
            leave.wait(5)
            return lease.lease_id

    call = h.call(hold)
    h.daemon.stream(
        "LeaseService.Acquire", [leases_pb2.AcquireResponse(granted=lease_pb(token="t"))]
    )
    h.daemon.unary("LeaseService.Renew", leases_pb2.RenewResponse(lease=lease_pb()))
    assert inside.wait(5)
    leave.set()
    request = h.daemon.unary("LeaseService.Release", leases_pb2.ReleaseResponse())
    assert call.result(timeout=5) == request.lease_id
    assert request.token == "t"


def test_lease_block_marks_the_lease_lost_when_a_renewal_finds_it_gone(h: Harness) -> None:
    lost = threading.Event()
    short = {"expires_at": ts(NOW + timedelta(seconds=0.6))}  # renewed every 0.2 s

    def hold() -> tuple[bool, str]:
        with h.client.lease("m") as lease:
            lease.lost.wait(5)
            lost.set()
            return lease.lost.is_set(), lease.lost_reason

    call = h.call(hold)
    h.daemon.stream(
        "LeaseService.Acquire",
        [leases_pb2.AcquireResponse(granted=lease_pb(token="t", **short))],
    )
    h.daemon.unary("LeaseService.Renew", leases_pb2.RenewResponse(lease=lease_pb(**short)))
    h.daemon.unary(
        "LeaseService.Renew",
        code=grpc.StatusCode.NOT_FOUND,
        details="lease_id: l-0123456789abcdef has ended (backend_died)",
        reason="LEASE_ENDED",
    )
    # Lost: not released (there is nothing left to release), and the block learns why.
    assert call.result(timeout=5) == (True, "lease_id: l-0123456789abcdef has ended (backend_died)")


def test_list_leases_gives_leases_without_tokens(h: Harness) -> None:
    call = h.call(h.client.list_leases)
    h.daemon.unary(
        "LeaseService.ListLeases",
        leases_pb2.ListLeasesResponse(
            leases=[lease_pb(), lease_pb(lease_id="l-1", exclusive=True)]
        ),
    )
    leases = call.result(timeout=5)
    assert [x.lease_id for x in leases] == ["l-0123456789abcdef", "l-1"]
    assert [x.exclusive for x in leases] == [False, True]
    assert all(x.token == "" for x in leases)
    assert_plain_values(leases)


def test_queue_gives_waiting_requests_with_what_they_wait_for(h: Harness) -> None:
    call = h.call(h.client.queue)
    waiting = leases_pb2.QueuedRequest(
        position=1,
        model_id="b",
        client_name="w@host",
        priority=2,
        effective_priority=4,
        waited_seconds=12.5,
        waiting_for="9,000 MiB: a's lease ending",
        arrived_at=ts(NOW),
        deadline=ts(NOW + timedelta(seconds=60)),
    )
    # Riding on a load under way: no position, no deadline.
    riding = leases_pb2.QueuedRequest(model_id="c", waiting_for="its model's load under way")
    h.daemon.unary(
        "LeaseService.ListQueue", leases_pb2.ListQueueResponse(requests=[waiting, riding])
    )
    first, second = call.result(timeout=5)
    assert first == gpulet.types.QueueItem(
        position=1,
        model_id="b",
        client_name="w@host",
        priority=2,
        effective_priority=4,
        exclusive=False,
        waited_seconds=12.5,
        waiting_for="9,000 MiB: a's lease ending",
        arrived_at=NOW,
        deadline=NOW + timedelta(seconds=60),
    )
    assert second.position is None and second.deadline is None and second.arrived_at is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.position = 2
    assert_plain_values([first, second])


def test_watch_yields_typed_events_and_skips_unknown_ones(h: Harness) -> None:
    call = h.call(lambda: list(h.client.watch()))
    h.daemon.stream(
        "LeaseService.Watch",
        [
            leases_pb2.WatchResponse(
                time=ts(NOW),
                model=leases_pb2.ModelEvent(
                    model_id="m", state=types_pb2.MODEL_STATE_LOADING, reason="r"
                ),
            ),
            leases_pb2.WatchResponse(
                time=ts(NOW),
                lease=leases_pb2.LeaseEvent(
                    kind=leases_pb2.LEASE_EVENT_KIND_BACKEND_DIED, lease=lease_pb(), reason="x"
                ),
            ),
            leases_pb2.WatchResponse(time=ts(NOW)),  # an event kind from a newer gpuletd
        ],
    )
    model_event, lease_event = call.result(timeout=5)
    assert model_event == gpulet.ModelEvent(NOW, "m", gpulet.ModelState.LOADING, (), "r")
    assert isinstance(lease_event, gpulet.LeaseEvent)
    assert lease_event.kind is gpulet.LeaseEventKind.BACKEND_DIED
    assert lease_event.lease.lease_id == "l-0123456789abcdef" and lease_event.reason == "x"
    assert_plain_values([model_event, lease_event])


# -- profiles, GPUs, models, selection ------------------------------------------------------


def test_profile_and_gpu_calls_give_frozen_values(h: Harness) -> None:
    call = h.call(h.client.active_profile)
    h.daemon.unary(
        "ProfileService.GetActiveProfile",
        profiles_pb2.GetActiveProfileResponse(
            profile=profile_pb("constrained_16gb"),
            source=profiles_pb2.PROFILE_SOURCE_AUTO,
            reason="1 GPU",
            gpus=[gpu_pb()],
            usable_vram_mb=14336,
            warnings=["w"],
            probe="simulated",
        ),
    )
    active = call.result(timeout=5)
    assert isinstance(active, gpulet.ActiveProfile)
    assert active.profile.name == "constrained_16gb"
    assert active.profile.strategy is gpulet.Strategy.LOAD_UNLOAD
    assert active.profile.model_selection_bias == "quality"  # StrEnum: compares as its name
    assert active.profile.tensor_parallel_threshold_mb is None  # unset, not 0
    assert active.source is gpulet.ProfileSource.AUTO and active.warnings == ("w",)
    (g,) = active.gpus
    assert (g.total_mb, g.free_mb, g.used_mb) == (16384, 16000, None)  # unknown is None
    assert g.compute_capability == (8, 9) and g.state is gpulet.GpuState.OK
    assert g.placed == (gpulet.PlacedModel("m", 1200),)
    assert g.processes == (gpulet.GpuProcess(42, None, True, "m"),)
    assert_plain_values(active)

    call = h.call(h.client.gpu_status, include_processes=True)
    request = h.daemon.unary(
        "ProfileService.GetGpuStatus",
        profiles_pb2.GetGpuStatusResponse(gpus=[gpu_pb()], probe="nvml"),
    )
    status = call.result(timeout=5)
    assert request.include_processes
    assert status.probe == "nvml" and status.gpus[0].uuid == "GPU-1"
    assert_plain_values(status)

    call = h.call(h.client.list_profiles)
    h.daemon.unary(
        "ProfileService.ListProfiles",
        profiles_pb2.ListProfilesResponse(profiles=[profile_pb("a"), profile_pb("b")], active="b"),
    )
    listed = call.result(timeout=5)
    assert [p.name for p in listed.profiles] == ["a", "b"] and listed.active == "b"
    assert_plain_values(listed)

    call = h.call(h.client.get_profile, "a")
    request = h.daemon.unary(
        "ProfileService.GetProfile", profiles_pb2.GetProfileResponse(profile=profile_pb("a"))
    )
    assert request.name == "a" and call.result(timeout=5) == listed.profiles[0]


def test_selector_calls_give_frozen_values(h: Harness) -> None:
    call = h.call(h.client.models)
    h.daemon.unary(
        "SelectorService.ListModels",
        selector_pb2.ListModelsResponse(models=[model_pb("a"), model_pb("b", idle_seconds=3.5)]),
    )
    models = call.result(timeout=5)
    assert [m.id for m in models] == ["a", "b"]
    assert models[0].state is gpulet.ModelState.LOADED
    assert models[0].backend is gpulet.BackendKind.PROCESS
    assert models[0].role_priority == {"caption": 90, "keywords": 10}
    assert (models[0].idle_seconds, models[1].idle_seconds) == (None, 3.5)
    assert_plain_values(models)

    call = h.call(h.client.roles)
    h.daemon.unary("SelectorService.ListRoles", selector_pb2.ListRolesResponse(roles=["a", "b"]))
    assert call.result(timeout=5) == ["a", "b"]

    call = h.call(h.client.select, "caption", top_n=2)
    request = h.daemon.unary(
        "SelectorService.SelectByRole",
        selector_pb2.SelectByRoleResponse(
            role="caption",
            profile="p",
            candidates=[selector_pb2.Candidate(model=model_pb("a"), role_priority=90)],
            max_vram_mb=14000,
        ),
    )
    selection = call.result(timeout=5)
    assert (request.role, request.top_n) == ("caption", 2)
    assert isinstance(selection, gpulet.Selection)
    assert selection.candidates == (gpulet.Candidate(models[0], 90),)
    assert_plain_values(selection)

    call = h.call(h.client.select, "caption")
    request = h.daemon.unary("SelectorService.SelectByRole", selector_pb2.SelectByRoleResponse())
    call.result(timeout=5)
    assert not request.HasField("top_n")  # unset: the daemon's default

    call = h.call(h.client.explain, "caption", "ghost")
    h.daemon.unary(
        "SelectorService.ExplainSelection",
        selector_pb2.ExplainSelectionResponse(
            status=selector_pb2.EXPLAIN_STATUS_NOT_FOUND, reason="no model 'ghost'", profile="p"
        ),
    )
    explanation = call.result(timeout=5)
    assert explanation == gpulet.Explanation(
        "caption", "ghost", gpulet.ExplainStatus.NOT_FOUND, "no model 'ghost'", None, "p"
    )


def test_an_enum_value_from_a_newer_daemon_reads_as_unspecified(h: Harness) -> None:
    call = h.call(h.client.models)
    h.daemon.unary(
        "SelectorService.ListModels",
        selector_pb2.ListModelsResponse(models=[model_pb(state=99)]),
    )
    (m,) = call.result(timeout=5)
    assert m.state is gpulet.ModelState.UNSPECIFIED


def test_a_channel_given_is_left_open(h: Harness) -> None:
    h.client.close()
    call = h.call(h.client.roles)  # still usable
    h.daemon.unary("SelectorService.ListRoles", selector_pb2.ListRolesResponse(roles=["a"]))
    assert call.result(timeout=5) == ["a"]


def test_the_twins_have_the_same_methods_in_the_same_order() -> None:
    def methods(cls: type, enter: str, exit_: str) -> list[str]:
        names = [n for n in vars(cls) if not n.startswith("_") or n in (enter, exit_)]
        return [{enter: "enter", exit_: "exit"}.get(n, n) for n in names]

    names = methods(gpulet.Client, "__enter__", "__exit__")
    assert names == methods(gpulet.AsyncClient, "__aenter__", "__aexit__")
    for name in set(names) - {"enter", "exit"}:
        sync = inspect.signature(getattr(gpulet.Client, name)).parameters
        asyncio = inspect.signature(getattr(gpulet.AsyncClient, name)).parameters
        assert list(sync.items()) == list(asyncio.items()), name
