"""Reads real NVIDIA GPUs through NVIDIA's binding (`nvidia-ml-py`, module `pynvml`).

Static facts are read once in `open`; `read` polls memory only (about 10 µs per device), and
`processes` is kept separate because a process list takes a driver lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pynvml
import structlog

from gpuletd.probe.types import GpuProcess, GpuSnapshot, GpuState, MigMode, ProbeUnavailable

__all__ = ["NvmlProbe"]

_log = structlog.get_logger(__name__)
_MIB = 1024 * 1024
_T = TypeVar("_T")


def _errors(*names: str) -> tuple[type[BaseException], ...]:
    # The NVMLError_* classes are generated from the NVML_ERROR_* constants a given binding
    # knows, and NVMLLibraryMismatchError is recent: a name an older binding lacks must not
    # turn an `except` clause into an AttributeError.
    return tuple(getattr(pynvml, name) for name in names if hasattr(pynvml, name))


_LOST = _errors("NVMLError_GpuIsLost", "NVMLError_ResetRequired")
# `_v3` of the process list raises FunctionNotFound on a driver without it; the unversioned
# wrapper turns that into NVMLLibraryMismatchError, a plain Exception that `except NVMLError`
# does not catch. Catch both so either binding style falls back to `_v2`.
_NO_V3 = _errors("NVMLError_FunctionNotFound", "NVMLLibraryMismatchError")
# Drivers before R510 have no nvmlDeviceGetMemoryInfo_v2; a driver that has it but not this
# struct version answers ArgumentVersionMismatch.
_NO_MEMORY_V2 = _errors("NVMLError_FunctionNotFound", "NVMLError_ArgumentVersionMismatch")

_INIT_HINTS = {
    "NVMLError_LibraryNotFound": "libnvidia-ml.so.1 was not found: no NVIDIA driver is "
    "installed, or it is not mounted into this container",
    "NVMLError_DriverNotLoaded": "the NVIDIA kernel driver is not loaded (does `nvidia-smi` work?)",
    "NVMLError_NoPermission": "no permission to open the GPU devices (/dev/nvidia*)",
    "NVMLError_LibRmVersionMismatch": "libnvidia-ml and the loaded kernel driver are different "
    "versions, usually a driver upgrade without a reboot",
}


def _text(value: object) -> str:
    # Current bindings decode to str; older releases return bytes.
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


@dataclass
class _Device:
    index: int
    uuid: str
    handle: Any
    name: str = ""
    pci_bus_id: str = ""
    compute_capability: tuple[int, int] | None = None
    mig_mode: MigMode = MigMode.UNKNOWN
    total_mb: int | None = None
    free_mb: int | None = None
    used_mb: int | None = None
    reserved_mb: int | None = None
    read_at: float = 0.0
    failures: int = 0
    lost: bool = False
    reacquire: bool = False

    def snapshot(self, stale_after: int) -> GpuSnapshot:
        if self.lost:
            state = GpuState.LOST
        elif self.failures >= stale_after:
            state = GpuState.STALE
        else:
            state = GpuState.OK
        return GpuSnapshot(
            index=self.index,
            uuid=self.uuid,
            name=self.name,
            pci_bus_id=self.pci_bus_id,
            total_mb=self.total_mb,
            free_mb=self.free_mb,
            used_mb=self.used_mb,
            reserved_mb=self.reserved_mb,
            compute_capability=self.compute_capability,
            mig_mode=self.mig_mode,
            state=state,
            read_at=self.read_at,
        )


class NvmlProbe:
    """`GpuProbe` over NVML. A device that errors keeps its last good numbers; after
    `stale_after` failures in a row it is STALE. GpuIsLost/ResetRequired make it LOST for
    the life of the probe: the GPU needs a reset, and it is not polled again."""

    def __init__(
        self, *, stale_after: int = 3, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if stale_after < 1:
            raise ValueError("stale_after must be at least 1")
        self._stale_after = stale_after
        self._clock = clock
        self._initialised = False
        self._devices: list[_Device] = []
        # None on bindings that predate the v2 memory struct (and the `version` argument).
        self._memory_v2_struct: int | None = getattr(pynvml, "nvmlMemory_v2", None)
        # Which API version this driver has: None until a device has answered, then fixed.
        self._memory_v2: bool | None = None if self._memory_v2_struct is not None else False
        self._processes_v3: bool | None = None
        self._warned: set[str] = set()

    @property
    def kind(self) -> str:
        return "nvml"

    def open(self) -> list[GpuSnapshot]:
        if not self._initialised:
            try:
                pynvml.nvmlInit()
            except OSError as exc:
                raise ProbeUnavailable(f"cannot load the NVML library: {exc}") from exc
            except pynvml.NVMLError as exc:
                hint = _INIT_HINTS.get(type(exc).__name__, "NVML cannot start")
                raise ProbeUnavailable(f"no GPU probing: {hint} ({exc})") from exc
            self._initialised = True
            try:
                self._devices = self._discover()
            except BaseException:
                self.close()
                raise
        return self.read()

    def _discover(self) -> list[_Device]:
        try:
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as exc:
            raise ProbeUnavailable(f"NVML cannot count the GPUs ({exc})") from exc
        devices = []
        for index in range(count):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
            except pynvml.NVMLError as exc:
                # Without a UUID a GPU can be neither keyed nor handed to CUDA_VISIBLE_DEVICES;
                # a container given some of the GPUs gets NoPermission for the others.
                _log.warning("gpu.skipped", index=index, error=str(exc))
                continue
            dev = _Device(index=index, uuid=uuid, handle=handle)
            self._read_facts(dev)
            devices.append(dev)
        if not devices:
            raise ProbeUnavailable("NVML is running but reports no usable GPU")
        return devices

    def _read_facts(self, dev: _Device) -> None:
        h = dev.handle
        dev.name = self._fact(dev, lambda: _text(pynvml.nvmlDeviceGetName(h)), "")
        dev.pci_bus_id = self._fact(dev, lambda: _text(pynvml.nvmlDeviceGetPciInfo(h).busId), "")
        dev.compute_capability = self._fact(dev, lambda: _capability(h), None)
        dev.mig_mode = self._mig_mode(dev)

    def _fact(self, dev: _Device, read: Callable[[], _T], default: _T) -> _T:
        try:
            return read()
        except pynvml.NVMLError as exc:
            self._note_error(dev, exc)
            self._warn_once("gpu.fact_read_failed", dev, exc)
            return default

    def _mig_mode(self, dev: _Device) -> MigMode:
        try:
            current = pynvml.nvmlDeviceGetMigMode(dev.handle)[0]
        except pynvml.NVMLError_NotSupported:
            # Only A100/H100-class GPUs can be partitioned and every other GPU answers
            # NotSupported: that is a definite "not partitioned". Calling it UNKNOWN would
            # make every consumer GPU look doubtful to the scheduler.
            return MigMode.DISABLED
        except pynvml.NVMLError as exc:
            # Any other failure says nothing about partitioning. Guessing DISABLED could hand
            # a whole-GPU UUID to a backend on a partitioned GPU, where CUDA sees no device.
            self._note_error(dev, exc)
            self._warn_once("gpu.mig_mode_read_failed", dev, exc)
            return MigMode.UNKNOWN
        if current == pynvml.NVML_DEVICE_MIG_ENABLE:
            return MigMode.ENABLED
        return MigMode.DISABLED if current == pynvml.NVML_DEVICE_MIG_DISABLE else MigMode.UNKNOWN

    def read(self) -> list[GpuSnapshot]:
        now = self._clock()
        for dev in self._devices:
            if not dev.lost:
                self._poll(dev, now)
        return [dev.snapshot(self._stale_after) for dev in self._devices]

    def _poll(self, dev: _Device, now: float) -> None:
        try:
            if dev.reacquire:
                # Unknown covers driver hiccups that can leave a cached handle invalid; the
                # UUID is stable, so a fresh handle costs one call.
                dev.handle = pynvml.nvmlDeviceGetHandleByUUID(dev.uuid)
                dev.reacquire = False
            reading: tuple[int | None, ...] = self._memory(dev.handle)
        except pynvml.NVMLError_NotSupported:
            # Unified-memory devices (GB10, Jetson) have no separate framebuffer to report:
            # unknown, never 0, or the scheduler would think the GPU is full or empty.
            reading = (None, None, None, None)
        except pynvml.NVMLError as exc:
            dev.failures += 1
            self._note_error(dev, exc)
            if dev.failures == self._stale_after and not dev.lost:
                _log.warning("gpu.went_stale", uuid=dev.uuid, index=dev.index, error=str(exc))
            return
        if dev.failures >= self._stale_after:
            _log.info("gpu.recovered", uuid=dev.uuid, failures=dev.failures)
        dev.failures = 0
        dev.total_mb, dev.free_mb, dev.used_mb, dev.reserved_mb = (
            None if v is None else v // _MIB for v in reading
        )
        dev.read_at = now

    def _memory(self, handle: Any) -> tuple[int, int, int, int | None]:
        if self._memory_v2 is not False:
            try:
                mem = pynvml.nvmlDeviceGetMemoryInfo(handle, version=self._memory_v2_struct)
            except _NO_MEMORY_V2:
                # Decided once per probe: the binding does not cache a symbol it failed to
                # find, so each retry would take its library lock and raise again.
                self._memory_v2 = False
            else:
                self._memory_v2 = True
                return mem.total, mem.free, mem.used, mem.reserved
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        # v1's `used` includes driver-reserved memory (300-900 MiB on an idle GPU), which
        # v1 cannot separate: reserved is unknown, not 0.
        return mem.total, mem.free, mem.used, None

    def _note_error(self, dev: _Device, exc: Exception) -> None:
        if isinstance(exc, _LOST):
            if not dev.lost:
                _log.error("gpu.lost", uuid=dev.uuid, index=dev.index, error=str(exc))
            dev.lost = True
        elif isinstance(exc, pynvml.NVMLError_Unknown):
            dev.reacquire = True

    def _warn_once(self, event: str, dev: _Device, exc: Exception) -> None:
        # NVMLError instances define __eq__ without __hash__: key on the class name.
        key = f"{event}:{dev.uuid}:{type(exc).__name__}"
        if key not in self._warned and not dev.lost:
            self._warned.add(key)
            _log.warning(event, uuid=dev.uuid, index=dev.index, error=str(exc))

    def processes(self, uuid: str) -> tuple[GpuProcess, ...]:
        """Raises KeyError for a UUID `open` did not report."""
        dev = next((d for d in self._devices if d.uuid == uuid), None)
        if dev is None:
            raise KeyError(f"no GPU with UUID {uuid!r}")
        if dev.lost:
            return ()
        try:
            infos = self._running_processes(dev.handle)
        except pynvml.NVMLError as exc:
            self._note_error(dev, exc)
            self._warn_once("gpu.processes_read_failed", dev, exc)
            return ()
        return tuple(
            GpuProcess(
                pid=int(info.pid),
                # None when the driver cannot say (WDDM, some containers): not 0.
                used_mb=None if info.usedGpuMemory is None else int(info.usedGpuMemory) // _MIB,
            )
            for info in infos
        )

    def _running_processes(self, handle: Any) -> list[Any]:
        if self._processes_v3 is not False:
            try:
                infos: list[Any] = pynvml.nvmlDeviceGetComputeRunningProcesses_v3(handle)
            except _NO_V3:
                self._processes_v3 = False
            else:
                self._processes_v3 = True
                return infos
        return list(pynvml.nvmlDeviceGetComputeRunningProcesses_v2(handle))

    def close(self) -> None:
        self._devices = []
        if not self._initialised:
            return
        self._initialised = False
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError as exc:
            _log.warning("nvml.shutdown_failed", error=str(exc))


def _capability(handle: Any) -> tuple[int, int]:
    major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
    return int(major), int(minor)
