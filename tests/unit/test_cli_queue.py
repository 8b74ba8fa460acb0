"""`gpulet queue` / `gpulet status` output, and the daemon's "what it waits for" sentences
(`gpuletd.leases.waiting_for`) from hand-made core views."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gpulet.cli import queue as queue_cli
from gpulet.cli import status as status_cli
from gpulet.types import (
    ActiveProfile,
    BackendKind,
    Gpu,
    GpuState,
    GpuStatus,
    Lease,
    MigMode,
    Model,
    ModelState,
    PlacedModel,
    Profile,
    ProfileSource,
    QueueItem,
    SelectionBias,
    Strategy,
)
from gpuletd.leases import waiting_for
from gpuletd.probe.types import GpuState as CoreGpuState
from gpuletd.scheduler import GpuView, ModelView, QueueEntry
from gpuletd.scheduler import ModelState as CoreState

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
GPU0 = "GPU-0000"

# -- the sentences ------------------------------------------------------------------------


def mv(mid: str, state: CoreState = CoreState.UNLOADED, mb: int = 9000, **kw: Any) -> ModelView:
    placed = state in (CoreState.LOADING, CoreState.LOADED, CoreState.UNLOADING)
    base: dict[str, Any] = dict(
        model_id=mid,
        state=state,
        gpu_uuids=(GPU0,) if placed else (),
        gpu_reservations_mb=(mb,) if placed else (),
        reserved_mb=mb if placed else 0,
        reservation_mb=mb,
        measured_mb=None,
        lease_count=0,
        waiters=(),
        idle_since=None,
        grace_until=None,
        keep_warm=False,
        load_seconds=None,
        consecutive_failures=0,
        backoff_until=None,
        last_error="",
    )
    base.update(kw)
    return ModelView(**base)


def gpu(available: int, loading: str | None = None, pending: int = 0) -> GpuView:
    return GpuView(
        uuid=GPU0,
        index=0,
        name="sim",
        total_mb=16384,
        headroom_mb=0,
        state=CoreGpuState.OK,
        lost=False,
        reserved_mb=16384 - available,
        pending_free_mb=pending,
        foreign_mb=0,
        available_mb=available,
        live_free_mb=available,
        loading_model=loading,
        models=(),
    )


def entry(mid: str = "b", position: int | None = 1, exclusive: bool = False) -> QueueEntry:
    return QueueEntry(
        request_id="l-0",
        model_id=mid,
        client="w",
        priority=0,
        effective_priority=0,
        exclusive=exclusive,
        arrived_at=0.0,
        deadline=None,
        position=position,
        seq=0,
        bypassed=0,
    )


def reason(
    e: QueueEntry, models: list[ModelView], gpus: list[GpuView], slots: int = 4, mb: int = 16384
) -> str:
    return waiting_for(
        e,
        {m.model_id: m for m in models},
        gpus,
        max_concurrent_models=slots,
        max_vram_mb=mb,
        wall=lambda t: 1_767_323_045.0 + t,
    )


def test_memory_held_by_a_leased_model() -> None:
    models = [mv("a", CoreState.LOADED, lease_count=1), mv("b")]
    assert reason(entry(), models, [gpu(7384)]) == "9,000 MiB: a's lease ending"


def test_the_slot_limit_names_what_holds_the_slot() -> None:
    models = [mv("a", CoreState.LOADED, lease_count=2), mv("b", mb=100)]
    assert (
        reason(entry(), models, [gpu(7384)], slots=1)
        == "the slot limit (1 of 1 models): a's leases ending"
    )


def test_the_vram_budget() -> None:
    models = [mv("a", CoreState.LOADED, mb=6000, lease_count=1), mv("b", mb=6000)]
    assert reason(entry(), models, [gpu(10384)], mb=10000) == (
        "the VRAM budget (6,000 of 10,000 MiB): a's lease ending"
    )


def test_a_load_under_way_on_its_gpu() -> None:
    models = [mv("a", CoreState.LOADING, mb=2000), mv("b", mb=2000)]
    assert reason(entry(), models, [gpu(14384, loading="a")]) == "a load on GPU 0 finishing"


def test_a_load_of_its_own_model() -> None:
    models = [mv("b", CoreState.LOADING)]
    assert (
        reason(entry(position=None), models, [gpu(7384, loading="b")])
        == "its model's load under way on GPU 0"
    )


def test_its_turn_when_it_fits() -> None:
    assert reason(entry(position=2), [mv("b", mb=1000)], [gpu(16384)]) == "its turn (position 2)"


def test_backoff_after_failures() -> None:
    models = [mv("b", CoreState.FAILED, backoff_until=10.0, consecutive_failures=2)]
    assert reason(entry(), models, [gpu(16384)]).startswith("backoff after failures until ")


def test_an_exclusive_request_waits_for_the_leases_on_its_model() -> None:
    models = [mv("b", CoreState.LOADED, lease_count=1)]
    got = reason(entry(exclusive=True), models, [gpu(7384)])
    assert got == "b's lease ending (it asked for the model to itself)"


def test_an_unload_under_way_gives_the_memory_back() -> None:
    models = [mv("a", CoreState.UNLOADING), mv("b")]
    assert reason(entry(), models, [gpu(7384)]) == "9,000 MiB: the unload on GPU 0 finishing"


# -- the CLI -------------------------------------------------------------------------------


def item(**kw: Any) -> QueueItem:
    base: dict[str, Any] = dict(
        position=1,
        model_id="b",
        client_name="w@host\x1b[2J",
        priority=1,
        effective_priority=3,
        exclusive=False,
        waited_seconds=125.4,
        waiting_for="9,000 MiB: a's lease ending",
        arrived_at=NOW,
        deadline=None,
    )
    base.update(kw)
    return QueueItem(**base)


def profile() -> ActiveProfile:
    p = Profile(
        name="constrained_16gb",
        description="",
        max_vram_mb=16000,
        max_concurrent_models=1,
        preferred_quantizations=(),
        strategy=Strategy.LOAD_UNLOAD,
        autostart_timeout_seconds=60,
        grace_period_seconds=30,
        model_selection_bias=SelectionBias.BALANCED,
        gpu_count=1,
        tensor_parallel_threshold_mb=None,
        headroom_mb=384,
        builtin=True,
    )
    g = Gpu(
        index=0,
        uuid=GPU0,
        name="Simulated GPU",
        pci_bus_id="",
        total_mb=16384,
        free_mb=7384,
        used_mb=9000,
        reserved_mb=9000,
        compute_capability=None,
        mig_mode=MigMode.DISABLED,
        state=GpuState.OK,
        reading_age_seconds=0.1,
        placed=(PlacedModel("a", 9000),),
        processes=(),
    )
    return ActiveProfile(p, ProfileSource.FLAG, "--profile", (g,), 16000, (), (), "simulated", ())


def model(mid: str, state: ModelState, leases: int = 0, idle: float | None = None) -> Model:
    return Model(
        id=mid,
        name=mid,
        backend=BackendKind.RESERVATION,
        quantization="fp16",
        vram_estimate_mb=9000,
        role_priority={},
        group="",
        state=state,
        gpu_uuids=(GPU0,) if state is ModelState.LOADED else (),
        lease_count=leases,
        idle_seconds=idle,
        reservation_mb=9000,
        endpoint="",
    )


class FakeClient:
    def __init__(self, queue: list[QueueItem]) -> None:
        self._queue = queue

    def queue(self) -> list[QueueItem]:
        return self._queue

    def active_profile(self) -> ActiveProfile:
        return profile()

    def gpu_status(self) -> GpuStatus:
        return GpuStatus(profile().gpus, "simulated")

    def models(self) -> list[Model]:
        return [model("a", ModelState.LOADED, leases=1), model("b", ModelState.UNLOADED)]

    def list_leases(self) -> list[Lease]:
        return [
            Lease(
                "l-0123456789abcdef",
                "secret",
                "a",
                (GPU0,),
                GPU0,
                "",
                NOW + timedelta(seconds=50),
                NOW - timedelta(seconds=10),
                "holder",
            )
        ]


def run(handler: Any, client: FakeClient, **kw: Any) -> int:
    ns = argparse.Namespace(json=False, once=False, interval=2.0)
    for k, v in kw.items():
        setattr(ns, k, v)
    code: int = handler(client, ns)
    return code


def test_queue_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(queue_cli.queue, FakeClient([item()]), json=True) == 0
    [q] = json.loads(capsys.readouterr().out)["queue"]
    assert q["position"] == 1 and q["effective_priority"] == 3
    assert q["waiting_for"] == "9,000 MiB: a's lease ending"
    assert q["arrived_at"] == NOW.isoformat() and q["deadline"] is None


def test_queue_table_is_safe_and_plain(capsys: pytest.CaptureFixture[str]) -> None:
    riding = item(position=None, waiting_for="its model's load under way", effective_priority=1)
    assert run(queue_cli.queue, FakeClient([item(), riding])) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == queue_cli.HEADERS
    assert lines[1].split()[:5] == ["1", "b", "w@host\\x1b[2J", "1→3", "2m05s"]
    assert lines[2].split()[:5] == ["-", "b", "w@host\\x1b[2J", "1", "2m05s"]
    assert "\x1b" not in out


def test_queue_empty(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(queue_cli.queue, FakeClient([])) == 0
    assert capsys.readouterr().out == "no request is waiting\n"


def test_status_once_when_piped(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(status_cli.status, FakeClient([item()])) == 0
    out = capsys.readouterr().out
    assert "constrained_16gb" in out and "l-0123456789abcdef" in out
    assert "9,000 MiB: a's lease ending" in out and "\x1b" not in out
    assert "█" in out and "░" in out  # the memory bar


def test_status_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(status_cli.status, FakeClient([item()]), json=True) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) >= {"profile", "gpus", "models", "leases", "queue"}
    assert data["leases"][0]["lease_id"] == "l-0123456789abcdef"
    assert "token" not in data["leases"][0]


def test_bar_shows_reserved_other_and_free() -> None:
    g = profile().gpus[0]
    text = status_cli.bar(g, width=16).plain
    assert len(text) == 16 and text.count("█") == 9 and text.count("░") == 7
