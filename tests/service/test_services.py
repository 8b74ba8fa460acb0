from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from gpulet.v1 import (
    profiles_pb2,
    profiles_pb2_grpc,
    selector_pb2,
    selector_pb2_grpc,
    types_pb2,
)


def error_info(e: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(e)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


async def test_active_profile_is_auto_detected(channel: grpc.aio.Channel) -> None:
    r = await profiles_pb2_grpc.ProfileServiceStub(channel).GetActiveProfile(
        profiles_pb2.GetActiveProfileRequest()
    )
    assert r.profile.name == "constrained_16gb"
    assert r.source == profiles_pb2.PROFILE_SOURCE_AUTO
    assert r.usable_vram_mb == 14336
    assert r.gpus[0].total_mb == 16384 and r.gpus[0].HasField("free_mb")
    assert set(r.available_profiles) >= {"development", "generous_96gb"}
    assert r.probe == "simulated"


async def test_get_profile_not_found_names_known(channel: grpc.aio.Channel) -> None:
    stub = profiles_pb2_grpc.ProfileServiceStub(channel)
    assert (
        await stub.GetProfile(profiles_pb2.GetProfileRequest(name="generous_96gb"))
    ).profile.max_vram_mb == 90000
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.GetProfile(profiles_pb2.GetProfileRequest(name="big"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert "unknown profile 'big'" in (e.value.details() or "")
    assert "balanced_24gb" in (e.value.details() or "")
    assert error_info(e.value).metadata["field"] == "name"


async def test_select_by_role_sorted_and_limited(channel: grpc.aio.Channel) -> None:
    stub = selector_pb2_grpc.SelectorServiceStub(channel)
    r = await stub.SelectByRole(selector_pb2.SelectByRoleRequest(role="keywords", top_n=2))
    assert [c.model.id for c in r.candidates] == ["florence-2-large", "qwen3-vl"]
    assert r.candidates[0].role_priority == 95
    default = await stub.SelectByRole(selector_pb2.SelectByRoleRequest(role="keywords"))
    assert len(default.candidates) == 3


@pytest.mark.parametrize(
    ("request_", "field", "reason"),
    [
        (selector_pb2.SelectByRoleRequest(role="poetry"), "role", "UNKNOWN_ROLE"),
        (selector_pb2.SelectByRoleRequest(role=""), "role", "MISSING_FIELD"),
        (selector_pb2.SelectByRoleRequest(role="caption", top_n=0), "top_n", "INVALID_TOP_N"),
        (selector_pb2.SelectByRoleRequest(role="caption", top_n=-2), "top_n", "INVALID_TOP_N"),
    ],
)
async def test_bad_select_is_invalid_argument_naming_the_field(
    channel: grpc.aio.Channel, request_: selector_pb2.SelectByRoleRequest, field: str, reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await selector_pb2_grpc.SelectorServiceStub(channel).SelectByRole(request_)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (e.value.details() or "").startswith(f"{field}: ")
    info = error_info(e.value)
    assert info.reason == reason and info.metadata["field"] == field


async def test_explain_statuses(channel: grpc.aio.Channel) -> None:
    stub = selector_pb2_grpc.SelectorServiceStub(channel)
    r = await stub.ExplainSelection(
        selector_pb2.ExplainSelectionRequest(role="caption", model_id="qwen3-vl")
    )
    assert r.status == selector_pb2.EXPLAIN_STATUS_ELIGIBLE and r.rank == 1
    r = await stub.ExplainSelection(
        selector_pb2.ExplainSelectionRequest(role="caption", model_id="nope")
    )
    assert r.status == selector_pb2.EXPLAIN_STATUS_NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.ExplainSelection(selector_pb2.ExplainSelectionRequest(role="caption"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model_id" in (e.value.details() or "")


async def test_list_models_and_roles(channel: grpc.aio.Channel) -> None:
    stub = selector_pb2_grpc.SelectorServiceStub(channel)
    models = (await stub.ListModels(selector_pb2.ListModelsRequest())).models
    by_id = {m.id: m for m in models}
    assert by_id["gpt-oss-20b"].vram_estimate_mb == 13800
    assert by_id["gpt-oss-20b"].backend == types_pb2.BACKEND_KIND_RESERVATION
    roles = (await stub.ListRoles(selector_pb2.ListRolesRequest())).roles
    assert {
        "keywords",
        "caption",
        "description",
        "narration",
        "object_detection",
        "vision_general",
    } <= set(roles)


async def test_health_and_reflection_list_the_services(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "gpulet.v1.ProfileService", "gpulet.v1.LeaseService"):
        r = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert r.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = refl.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    response = await call.read()
    await call.done_writing()
    names = {s.name for s in response.list_services_response.service}
    assert {
        "gpulet.v1.ProfileService",
        "gpulet.v1.SelectorService",
        "gpulet.v1.LeaseService",
        "grpc.health.v1.Health",
    } <= names
