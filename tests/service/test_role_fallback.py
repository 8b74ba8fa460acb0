"""An Acquire by role tries the next candidate when the best one can never fit now (issue 9,
item 2). The real server and daemon in-process, over a real socket, on the NVML probe with a
fake driver: the GPU is 8 GB and another program holds 4 GB of it, so the best model for the
role (5000 MiB) fits the card but not what is left; the core refuses it as too large, and the
lease is granted on the next candidate."""

from __future__ import annotations

import grpc
import pytest

from gpulet.v1 import leases_pb2, leases_pb2_grpc, selector_pb2, selector_pb2_grpc
from gpuletd.probe.nvml import NvmlProbe
from tests.fakes.fake_nvml import FakeGpu, FakeNvml, MiB

CONFIG = """
profile = "development"

[models.best]
quantization = "q4_k_m"
vram_estimate_mb = 5000
role_priority = { description = 90 }

[models.next]
quantization = "q4_k_m"
vram_estimate_mb = 1000
role_priority = { description = 50 }
"""


@pytest.fixture
def service_config() -> str:
    return CONFIG


@pytest.fixture
def service_probe(monkeypatch: pytest.MonkeyPatch) -> NvmlProbe:
    # `channel` (tests/service/conftest.py) serves CONFIG on this probe.
    gpu = FakeGpu(uuid="GPU-8g", total_bytes=8192 * MiB, reserved_bytes=0, used_bytes=4096 * MiB)
    FakeNvml([gpu]).install(monkeypatch)
    return NvmlProbe()


async def _acquire(ch: grpc.aio.Channel, **fields: str) -> leases_pb2.AcquireResponse:
    stub = leases_pb2_grpc.LeaseServiceStub(ch)
    last = None
    async for r in stub.Acquire(leases_pb2.AcquireRequest(**fields)):
        last = r
    assert last is not None
    return last


async def test_acquire_by_role_falls_back_when_the_best_cannot_fit_now(
    channel: grpc.aio.Channel,
) -> None:
    sel = selector_pb2_grpc.SelectorServiceStub(channel)
    s = await sel.SelectByRole(selector_pb2.SelectByRoleRequest(role="description"))
    # The card could hold it: memory another program holds may be freed, so it is a candidate.
    assert [c.model.id for c in s.candidates] == ["best", "next"]
    # Asked by name, it is refused with the numbers...
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await _acquire(channel, model_id="best")
    assert e.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "processes gpulet did not start" in (e.value.details() or "")
    # ...asked by role, the next candidate is granted.
    r = await _acquire(channel, role="description")
    assert r.WhichOneof("state") == "granted"
    assert r.granted.model_id == "next"


async def test_plan_by_role_names_the_model_an_acquire_would_be_granted(
    channel: grpc.aio.Channel,
) -> None:
    stub = leases_pb2_grpc.LeaseServiceStub(channel)
    # Asked by name, the best one is refused with the numbers, as its Acquire would be...
    best = await stub.Plan(leases_pb2.PlanRequest(model_id="best"))
    assert best.outcome == leases_pb2.PLAN_OUTCOME_REFUSED
    assert best.reason == "MODEL_TOO_LARGE"
    # ...by role, the plan walks on to the candidate the Acquire is granted.
    plan = await stub.Plan(leases_pb2.PlanRequest(role="description"))
    assert plan.outcome == leases_pb2.PLAN_OUTCOME_LOAD, plan
    assert plan.model_id == "next"
    r = await _acquire(channel, role="description")
    assert r.granted.model_id == plan.model_id
