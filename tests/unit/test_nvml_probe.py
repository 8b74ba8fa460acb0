"""NvmlProbe on top of NVIDIA's real pynvml wrappers, with a fake C library underneath."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pynvml
import pytest
from structlog.testing import capture_logs

from gpuletd.probe.nvml import NvmlProbe
from gpuletd.probe.types import GpuProcess, GpuState, MigMode, ProbeUnavailable
from tests.fakes.fake_nvml import FakeGpu, FakeNvml, FakeProcess, MiB, install_missing_library

UUID0 = "GPU-11111111-2222-3333-4444-555555555555"
UUID1 = "GPU-66666666-7777-8888-9999-000000000000"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def two_gpus() -> list[FakeGpu]:
    return [
        FakeGpu(
            uuid=UUID0,
            name="NVIDIA GeForce RTX 4090",
            pci_bus_id="00000000:01:00.0",
            total_bytes=24564 * MiB,
            reserved_bytes=428 * MiB,
            used_bytes=1000 * MiB,
            compute_capability=(8, 9),
        ),
        FakeGpu(
            uuid=UUID1,
            name="NVIDIA A100-SXM4-80GB",
            pci_bus_id="00000000:41:00.0",
            total_bytes=81920 * MiB,
            reserved_bytes=600 * MiB,
            used_bytes=0,
            compute_capability=(8, 0),
            mig_mode=pynvml.NVML_DEVICE_MIG_ENABLE,
        ),
    ]


@pytest.fixture
def make_fake(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeNvml]:
    def make(gpus: list[FakeGpu] | None = None, **kwargs: Any) -> FakeNvml:
        return FakeNvml(two_gpus() if gpus is None else gpus, **kwargs).install(monkeypatch)

    return make


@pytest.fixture
def fake(make_fake: Callable[..., FakeNvml]) -> FakeNvml:
    return make_fake()


@pytest.fixture
def probe() -> Iterator[NvmlProbe]:
    p = NvmlProbe(clock=Clock())
    yield p
    p.close()


def test_two_healthy_gpus_report_static_facts_and_memory_in_mib(
    fake: FakeNvml, probe: NvmlProbe
) -> None:
    gpu0, gpu1 = probe.open()

    assert probe.kind == "nvml"
    assert (gpu0.index, gpu0.uuid, gpu0.name) == (0, UUID0, "NVIDIA GeForce RTX 4090")
    assert gpu0.pci_bus_id == "00000000:01:00.0"
    assert (gpu0.total_mb, gpu0.free_mb, gpu0.used_mb, gpu0.reserved_mb) == (
        24564,
        24564 - 428 - 1000,
        1000,
        428,
    )
    assert gpu0.compute_capability == (8, 9)
    assert gpu0.mig_mode is MigMode.DISABLED  # consumer GPU: NotSupported
    assert gpu0.state is GpuState.OK
    assert (gpu1.index, gpu1.uuid, gpu1.name) == (1, UUID1, "NVIDIA A100-SXM4-80GB")
    assert gpu1.pci_bus_id == "00000000:41:00.0"
    assert (gpu1.total_mb, gpu1.free_mb, gpu1.used_mb, gpu1.reserved_mb) == (
        81920,
        81920 - 600,
        0,
        600,
    )
    assert gpu1.compute_capability == (8, 0)
    assert gpu1.mig_mode is MigMode.ENABLED
    assert all(isinstance(s.uuid, str) and isinstance(s.name, str) for s in (gpu0, gpu1))


def test_read_follows_live_memory_with_clock_and_without_rereading_static_facts(
    fake: FakeNvml,
) -> None:
    probe = NvmlProbe(clock=iter([5.0, 6.0]).__next__)
    first = probe.open()
    fake.gpus[0].used_bytes = 9000 * MiB + 123  # partial MiB: floored

    second = probe.read()

    assert [s.read_at for s in first] == [5.0, 5.0]
    assert [s.read_at for s in second] == [6.0, 6.0]
    assert (second[0].used_mb, second[0].free_mb) == (9000, 24564 - 428 - 9001)
    assert fake.calls["nvmlDeviceGetName"] == 2  # once per GPU, at open
    probe.close()


def test_bytes_from_an_old_binding_are_normalised_to_str(
    fake: FakeNvml, probe: NvmlProbe, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Old bindings hand back the raw char buffers; emulate that on top of the real wrappers.
    for name in ("nvmlDeviceGetName", "nvmlDeviceGetUUID"):
        real = getattr(pynvml, name)
        monkeypatch.setattr(pynvml, name, lambda h, real=real: real(h).encode())

    class OldPciInfo:
        def __init__(self, info: Any) -> None:
            self.busId = info.busId.encode()

    real_pci = pynvml.nvmlDeviceGetPciInfo
    monkeypatch.setattr(pynvml, "nvmlDeviceGetPciInfo", lambda h: OldPciInfo(real_pci(h)))

    gpu0 = probe.open()[0]

    assert (gpu0.uuid, gpu0.name, gpu0.pci_bus_id) == (
        UUID0,
        "NVIDIA GeForce RTX 4090",
        "00000000:01:00.0",
    )
    assert probe.processes(UUID0) == ()  # the str UUID still finds the device


def test_driver_without_memory_v2_falls_back_to_v1_once(
    make_fake: Callable[..., FakeNvml], probe: NvmlProbe
) -> None:
    fake = make_fake(missing={"nvmlDeviceGetMemoryInfo_v2"})

    probe.open()
    for _ in range(3):
        gpu0 = probe.read()[0]

    # v1 cannot separate driver-reserved memory: it is counted as used, reserved is unknown.
    assert (gpu0.total_mb, gpu0.free_mb, gpu0.used_mb) == (24564, 24564 - 1428, 1428)
    assert gpu0.reserved_mb is None
    assert gpu0.state is GpuState.OK
    assert fake.lookups["nvmlDeviceGetMemoryInfo_v2"] == 1
    assert fake.calls["nvmlDeviceGetMemoryInfo"] == 2 * 4


def test_binding_without_the_v2_struct_uses_v1(
    fake: FakeNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(pynvml, "nvmlMemory_v2")
    probe = NvmlProbe()

    gpu0 = probe.open()[0]

    assert (gpu0.used_mb, gpu0.reserved_mb) == (1428, None)
    assert fake.lookups["nvmlDeviceGetMemoryInfo_v2"] == 0
    probe.close()


def test_unified_memory_not_supported_is_unknown_never_zero(
    fake: FakeNvml, probe: NvmlProbe
) -> None:
    for symbol in ("nvmlDeviceGetMemoryInfo_v2", "nvmlDeviceGetMemoryInfo"):
        fake.fail(symbol, pynvml.NVML_ERROR_NOT_SUPPORTED, device=0)

    gpu0, gpu1 = probe.open()

    assert (gpu0.total_mb, gpu0.free_mb, gpu0.used_mb, gpu0.reserved_mb) == (None,) * 4
    assert gpu0.state is GpuState.OK  # a valid answer, not a failure
    assert gpu1.free_mb == 81920 - 600


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_GPU_IS_LOST, pynvml.NVML_ERROR_RESET_REQUIRED])
def test_a_lost_gpu_is_lost_for_good_and_the_other_keeps_reading(
    fake: FakeNvml, probe: NvmlProbe, code: int
) -> None:
    probe.open()
    fake.fail(None, code, device=1)  # every call on GPU 1
    fake.gpus[0].used_bytes = 5000 * MiB

    gpu0, gpu1 = probe.read()

    assert gpu1.state is GpuState.LOST
    assert gpu1.uuid == UUID1
    assert (gpu0.state, gpu0.used_mb) == (GpuState.OK, 5000)

    fake.heal()
    fake.gpus[0].used_bytes = 6000 * MiB
    memory_calls = fake.calls["nvmlDeviceGetMemoryInfo_v2"]
    gpu0, gpu1 = probe.read()
    # A lost GPU is not polled again.
    assert fake.calls["nvmlDeviceGetMemoryInfo_v2"] == memory_calls + 1
    assert gpu1.state is GpuState.LOST  # sticky: only a restart may trust it again
    assert (gpu0.state, gpu0.used_mb) == (GpuState.OK, 6000)
    assert probe.processes(UUID1) == ()


def test_gpu_lost_while_listing_processes_is_reported_lost(
    fake: FakeNvml, probe: NvmlProbe
) -> None:
    probe.open()
    fake.fail("nvmlDeviceGetComputeRunningProcesses_v3", pynvml.NVML_ERROR_GPU_IS_LOST, device=0)

    assert probe.processes(UUID0) == ()
    assert [s.state for s in probe.read()] == [GpuState.LOST, GpuState.OK]


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_UNKNOWN, pynvml.NVML_ERROR_TIMEOUT])
def test_repeated_failures_keep_last_numbers_turn_stale_then_recover(
    fake: FakeNvml, code: int
) -> None:
    probe = NvmlProbe(clock=Clock())
    first = probe.open()[0]
    fake.fail("nvmlDeviceGetMemoryInfo_v2", code, device=0, times=3)
    fake.gpus[0].used_bytes = 2000 * MiB

    failing = [probe.read()[0] for _ in range(3)]

    assert [s.state for s in failing] == [GpuState.OK, GpuState.OK, GpuState.STALE]
    assert all((s.used_mb, s.read_at) == (1000, first.read_at) for s in failing)
    recovered = probe.read()[0]
    assert (recovered.state, recovered.used_mb) == (GpuState.OK, 2000)
    assert recovered.read_at > first.read_at
    probe.close()


def test_stale_after_is_configurable(fake: FakeNvml) -> None:
    probe = NvmlProbe(stale_after=1)
    probe.open()
    fake.fail("nvmlDeviceGetMemoryInfo_v2", pynvml.NVML_ERROR_TIMEOUT, device=1, times=1)

    assert [s.state for s in probe.read()] == [GpuState.OK, GpuState.STALE]
    probe.close()


def test_unknown_reacquires_the_handle_by_uuid(fake: FakeNvml, probe: NvmlProbe) -> None:
    probe.open()
    fake.invalidate_handles(0)  # the cached handle now answers Unknown
    fake.gpus[0].used_bytes = 3000 * MiB

    failed = probe.read()[0]
    recovered = probe.read()[0]

    assert (failed.state, failed.used_mb) == (GpuState.OK, 1000)
    assert (recovered.state, recovered.used_mb) == (GpuState.OK, 3000)
    assert fake.calls["nvmlDeviceGetHandleByUUID"] == 1
    assert probe.processes(UUID0) == ()  # the new handle is used for process lists too
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses_v3"] == 1


def test_timeout_does_not_reacquire_the_handle(fake: FakeNvml, probe: NvmlProbe) -> None:
    probe.open()
    fake.fail("nvmlDeviceGetMemoryInfo_v2", pynvml.NVML_ERROR_TIMEOUT, device=0, times=1)

    probe.read()
    probe.read()

    assert fake.calls["nvmlDeviceGetHandleByUUID"] == 0


def test_missing_library_means_no_gpu_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    install_missing_library(monkeypatch)

    with pytest.raises(ProbeUnavailable, match=r"libnvidia-ml\.so\.1 was not found"):
        NvmlProbe().open()


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "kernel driver is not loaded"),
        (pynvml.NVML_ERROR_NO_PERMISSION, "no permission"),
        (pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, "without a reboot"),
        (pynvml.NVML_ERROR_UNKNOWN, "NVML cannot start"),
    ],
)
def test_init_failure_means_no_gpu_mode(fake: FakeNvml, code: int, hint: str) -> None:
    fake.fail("nvmlInitWithFlags", code)
    probe = NvmlProbe()

    with pytest.raises(ProbeUnavailable, match=hint):
        probe.open()
    probe.close()
    assert fake.calls["nvmlShutdown"] == 0  # nothing was initialised


def test_no_gpu_at_all_is_unavailable_and_shuts_nvml_down(
    make_fake: Callable[..., FakeNvml],
) -> None:
    fake = make_fake([])

    with pytest.raises(ProbeUnavailable, match="no usable GPU"):
        NvmlProbe().open()
    assert fake.init_count == 0


def test_gpu_whose_uuid_cannot_be_read_is_skipped(fake: FakeNvml, probe: NvmlProbe) -> None:
    fake.fail("nvmlDeviceGetHandleByIndex_v2", pynvml.NVML_ERROR_NO_PERMISSION, device=0)

    assert [s.uuid for s in probe.open()] == [UUID1]
    with pytest.raises(KeyError):
        probe.processes(UUID0)


def test_processes_v3(fake: FakeNvml, probe: NvmlProbe) -> None:
    fake.gpus[0].processes = [FakeProcess(4242, 2048 * MiB + 5), FakeProcess(4343, 0)]
    probe.open()

    assert probe.processes(UUID0) == (GpuProcess(4242, 2048), GpuProcess(4343, 0))
    assert probe.processes(UUID1) == ()
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses_v2"] == 0


def test_driver_without_processes_v3_uses_v2_and_remembers(
    make_fake: Callable[..., FakeNvml], probe: NvmlProbe
) -> None:
    fake = make_fake(missing={"nvmlDeviceGetComputeRunningProcesses_v3"})
    fake.gpus[1].processes = [FakeProcess(7, 512 * MiB)]
    probe.open()

    assert probe.processes(UUID1) == (GpuProcess(7, 512),)
    assert probe.processes(UUID1) == (GpuProcess(7, 512),)
    assert fake.lookups["nvmlDeviceGetComputeRunningProcesses_v3"] == 1


def test_library_mismatch_error_from_v3_falls_back_to_v2(
    fake: FakeNvml, probe: NvmlProbe, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the binding raises instead of an NVMLError when its v3 call has no driver symbol.
    def mismatch(handle: object) -> None:
        raise pynvml.NVMLLibraryMismatchError("Unversioned function called ...")

    monkeypatch.setattr(pynvml, "nvmlDeviceGetComputeRunningProcesses_v3", mismatch)
    fake.gpus[0].processes = [FakeProcess(99, 100 * MiB)]
    probe.open()

    assert probe.processes(UUID0) == (GpuProcess(99, 100),)


def test_process_memory_the_driver_cannot_report_is_none(fake: FakeNvml, probe: NvmlProbe) -> None:
    fake.gpus[0].processes = [FakeProcess(31, None)]
    probe.open()

    assert probe.processes(UUID0) == (GpuProcess(31, None),)


def test_process_list_error_is_empty_and_warned_once(fake: FakeNvml, probe: NvmlProbe) -> None:
    fake.gpus[0].processes = [FakeProcess(31, MiB)]
    probe.open()
    fake.fail("nvmlDeviceGetComputeRunningProcesses_v3", pynvml.NVML_ERROR_NO_PERMISSION, times=2)

    with capture_logs() as logs:
        assert probe.processes(UUID0) == ()
        assert probe.processes(UUID0) == ()
    assert [e["event"] for e in logs] == ["gpu.processes_read_failed"]
    assert probe.processes(UUID0) == (GpuProcess(31, 1),)
    assert [s.state for s in probe.read()] == [GpuState.OK, GpuState.OK]


@pytest.mark.parametrize(
    ("mig", "code", "expected"),
    [
        (None, None, MigMode.DISABLED),  # NotSupported: a GPU that cannot be partitioned
        (pynvml.NVML_DEVICE_MIG_DISABLE, None, MigMode.DISABLED),
        (pynvml.NVML_DEVICE_MIG_ENABLE, None, MigMode.ENABLED),
        (pynvml.NVML_DEVICE_MIG_ENABLE, pynvml.NVML_ERROR_UNKNOWN, MigMode.UNKNOWN),
        (pynvml.NVML_DEVICE_MIG_ENABLE, pynvml.NVML_ERROR_NO_PERMISSION, MigMode.UNKNOWN),
    ],
)
def test_mig_mode(
    make_fake: Callable[..., FakeNvml],
    probe: NvmlProbe,
    mig: int | None,
    code: int | None,
    expected: MigMode,
) -> None:
    fake = make_fake([FakeGpu(uuid=UUID0, mig_mode=mig)])
    if code is not None:
        fake.fail("nvmlDeviceGetMigMode", code)

    gpu0 = probe.open()[0]

    assert gpu0.mig_mode is expected
    assert gpu0.state is GpuState.OK


def test_close_is_idempotent_and_releases_nvml(fake: FakeNvml) -> None:
    probe = NvmlProbe()
    probe.open()
    assert fake.init_count == 1

    probe.close()
    probe.close()

    assert fake.calls["nvmlShutdown"] == 1
    assert fake.init_count == 0
    assert probe.read() == []


def test_open_twice_initialises_once(fake: FakeNvml, probe: NvmlProbe) -> None:
    probe.open()
    assert len(probe.open()) == 2
    assert fake.calls["nvmlInitWithFlags"] == 1
