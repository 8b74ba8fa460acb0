"""A fake NVML *C library* under NVIDIA's real `pynvml` binding, for tests without a GPU.

Every pynvml wrapper reaches the driver through `pynvml.nvmlLib` (normally a ctypes `CDLL`)
by looking the C symbol up with `getattr` and caching it in
`pynvml._nvmlGetFunctionPointer_cache`. `FakeNvml` stands in for that `CDLL`: its attributes
are named like the C symbols, receive the same ctypes arguments the driver would (`byref`
pointers expose their target as `._obj`, strings arrive as `create_string_buffer`s), fill the
binding's own structs and return `nvmlReturn_t` codes. The real wrapper code (string
decoding, struct versions, the `NVMLError_*` classes, the count/size dance of the process
lists) therefore runs in the tests.

    fake = FakeNvml([FakeGpu(uuid="GPU-a"), FakeGpu(uuid="GPU-b")], missing={"..._v2"})
    fake.install(monkeypatch)
    fake.fail("nvmlDeviceGetMemoryInfo_v2", pynvml.NVML_ERROR_UNKNOWN, device=1, times=3)

A symbol left out (`missing=` or `remove_symbol`) makes the wrapper raise
`NVMLError_FunctionNotFound`: that is an old driver. Written against nvidia-ml-py 13.x; it
touches private names of the binding, hence the version pin in pyproject.toml.
"""

from __future__ import annotations

import ctypes
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pynvml
import pytest

__all__ = ["FakeGpu", "FakeNvml", "FakeProcess", "MiB", "install_missing_library"]

MiB = 1024 * 1024
SUCCESS: int = pynvml.NVML_SUCCESS
# What the driver writes into `usedGpuMemory` when it cannot say (WDDM, some containers).
NOT_AVAILABLE = pynvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value


@dataclass
class FakeProcess:
    pid: int
    # None: the driver reports NVML_VALUE_NOT_AVAILABLE.
    used_bytes: int | None


@dataclass
class FakeGpu:
    """One device. Mutate fields between polls to change what the driver answers."""

    uuid: str
    name: str = "NVIDIA GeForce RTX 4090"
    pci_bus_id: str = "00000000:01:00.0"
    total_bytes: int = 24564 * MiB
    reserved_bytes: int = 428 * MiB
    # Memory held by processes; the v1 API adds `reserved_bytes` to it, like the driver does.
    used_bytes: int = 0
    compute_capability: tuple[int, int] = (8, 9)
    # None: NotSupported, as on every GPU that cannot be partitioned (all but A100/H100-class).
    mig_mode: int | None = None
    processes: list[FakeProcess] = field(default_factory=list)

    @property
    def free_bytes(self) -> int:
        return self.total_bytes - self.reserved_bytes - self.used_bytes


@dataclass
class _Fault:
    symbol: str | None
    code: int
    device: int | None
    remaining: int | None


class _Symbol:
    """What `getattr(nvmlLib, name)` returns: callable, and accepts `restype` like a ctypes
    function pointer does (`nvmlErrorString` sets it)."""

    def __init__(self, lib: FakeNvml, name: str, impl: Callable[..., Any]) -> None:
        self.lib = lib
        self.name = name
        self.impl = impl
        self.restype: Any = None

    def __call__(self, *args: Any) -> Any:
        return self.lib._dispatch(self.name, self.impl, args)


class FakeNvml:
    """The fake `libnvidia-ml.so.1`. Device index = position in `gpus`."""

    def __init__(self, gpus: Iterable[FakeGpu] = (), *, missing: Iterable[str] = ()) -> None:
        self.gpus = list(gpus)
        self.missing = set(missing)
        # Calls that reached a symbol, and every lookup (a missing symbol is looked up again
        # on each wrapper call, because the binding only caches symbols it found).
        self.calls: Counter[str] = Counter()
        self.lookups: Counter[str] = Counter()
        self.init_count = 0
        # What a handle from before `invalidate_handles` answers.
        self.stale_handle_code = pynvml.NVML_ERROR_UNKNOWN
        self._faults: list[_Fault] = []
        self._generation: dict[int, int] = {}
        self._handles: dict[int, tuple[int, int]] = {}

    # -- configuration -------------------------------------------------------------------

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
        """Make pynvml load this instead of the C library; monkeypatch undoes it."""
        monkeypatch.setattr(pynvml, "nvmlLib", self)
        monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
        monkeypatch.setattr(pynvml, "_nvmlLib_refcount", 0)
        return self

    def fail(
        self, symbol: str | None, code: int, *, device: int | None = None, times: int | None = None
    ) -> None:
        """Answer `code` from `symbol` (None: every symbol that takes a device) on `device`
        (None: all), for the next `times` calls (None: until `heal`)."""
        self._faults.append(_Fault(symbol, code, device, times))

    def heal(self) -> None:
        self._faults.clear()

    def remove_symbol(self, name: str) -> None:
        self.missing.add(name)
        pynvml._nvmlGetFunctionPointer_cache.pop(name, None)

    def invalidate_handles(self, device: int) -> None:
        """Handles handed out so far for `device` answer `stale_handle_code` from now on."""
        self._generation[device] = self._generation.get(device, 0) + 1

    # -- the symbol table ----------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("nvml"):
            raise AttributeError(name)
        self.lookups[name] += 1
        impl = getattr(self, "_c_" + name, None)
        if impl is None or name in self.missing:
            raise AttributeError(name)
        return _Symbol(self, name, impl)

    def _dispatch(self, name: str, impl: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        self.calls[name] += 1
        if self.init_count == 0 and name not in ("nvmlInitWithFlags", "nvmlErrorString"):
            return int(pynvml.NVML_ERROR_UNINITIALIZED)
        index: int | None = None
        if args and isinstance(args[0], pynvml.c_nvmlDevice_t):
            entry = self._handles.get(ctypes.cast(args[0], ctypes.c_void_p).value or 0)
            if entry is None:
                return int(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            index, generation = entry
            if generation != self._generation.get(index, 0):
                return self.stale_handle_code
        elif name == "nvmlDeviceGetHandleByIndex_v2":
            index = args[0].value
            if not 0 <= index < len(self.gpus):
                return int(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        elif name == "nvmlDeviceGetHandleByUUID":
            uuids = [gpu.uuid.encode() for gpu in self.gpus]
            if args[0].value not in uuids:
                return int(pynvml.NVML_ERROR_NOT_FOUND)
            index = uuids.index(args[0].value)
        for fault in self._faults:
            if (
                fault.remaining != 0
                and fault.symbol in (None, name)
                and (fault.symbol is not None or index is not None)
                and fault.device in (None, index)
            ):
                if fault.remaining is not None:
                    fault.remaining -= 1
                return fault.code
        if index is None:
            return impl(*args)
        return impl(index, *args[1:])

    # -- C symbols -----------------------------------------------------------------------

    def _c_nvmlInitWithFlags(self, flags: int) -> int:
        self.init_count += 1
        return SUCCESS

    def _c_nvmlShutdown(self) -> int:
        self.init_count -= 1
        return SUCCESS

    def _c_nvmlErrorString(self, code: int) -> bytes:
        return str(pynvml.NVMLError._errcode_to_string.get(code, "Unknown Error")).encode()

    def _c_nvmlDeviceGetCount_v2(self, count: Any) -> int:
        count._obj.value = len(self.gpus)
        return SUCCESS

    def _handle_out(self, index: int, out: Any) -> int:
        generation = self._generation.get(index, 0)
        token = 0x10000 * (generation + 1) + 0x100 * (index + 1)
        self._handles[token] = (index, generation)
        ctypes.c_void_p.from_buffer(out._obj).value = token
        return SUCCESS

    _c_nvmlDeviceGetHandleByIndex_v2 = _handle_out
    _c_nvmlDeviceGetHandleByUUID = _handle_out

    @staticmethod
    def _string_out(value: str, buf: Any, size: Any) -> int:
        data = value.encode()
        if len(data) + 1 > size.value:
            return int(pynvml.NVML_ERROR_INSUFFICIENT_SIZE)
        buf.value = data
        return SUCCESS

    def _c_nvmlDeviceGetName(self, index: int, buf: Any, size: Any) -> int:
        return self._string_out(self.gpus[index].name, buf, size)

    def _c_nvmlDeviceGetUUID(self, index: int, buf: Any, size: Any) -> int:
        return self._string_out(self.gpus[index].uuid, buf, size)

    def _c_nvmlDeviceGetPciInfo_v3(self, index: int, info: Any) -> int:
        bus_id = self.gpus[index].pci_bus_id.encode()
        info._obj.busId = bus_id
        info._obj.busIdLegacy = bus_id[-12:]
        return SUCCESS

    def _c_nvmlDeviceGetCudaComputeCapability(self, index: int, major: Any, minor: Any) -> int:
        major._obj.value, minor._obj.value = self.gpus[index].compute_capability
        return SUCCESS

    def _c_nvmlDeviceGetMigMode(self, index: int, current: Any, pending: Any) -> int:
        mode = self.gpus[index].mig_mode
        if mode is None:
            return int(pynvml.NVML_ERROR_NOT_SUPPORTED)
        current._obj.value = pending._obj.value = mode
        return SUCCESS

    def _c_nvmlDeviceGetMemoryInfo(self, index: int, memory: Any) -> int:
        gpu, mem = self.gpus[index], memory._obj
        mem.total, mem.free = gpu.total_bytes, gpu.free_bytes
        # v1's `used` is everything not free, driver-reserved memory included.
        mem.used = gpu.total_bytes - gpu.free_bytes
        return SUCCESS

    def _c_nvmlDeviceGetMemoryInfo_v2(self, index: int, memory: Any) -> int:
        gpu, mem = self.gpus[index], memory._obj
        if mem.version != pynvml.nvmlMemory_v2:
            return int(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        mem.total, mem.reserved = gpu.total_bytes, gpu.reserved_bytes
        mem.free, mem.used = gpu.free_bytes, gpu.used_bytes
        return SUCCESS

    def _c_nvmlDeviceGetComputeRunningProcesses_v3(self, index: int, count: Any, procs: Any) -> int:
        wanted, found = count._obj, self.gpus[index].processes
        # First call (array NULL) or an array too small: say how many, ask again.
        if procs is None or wanted.value < len(found):
            wanted.value = len(found)
            return SUCCESS if not found else int(pynvml.NVML_ERROR_INSUFFICIENT_SIZE)
        for slot, proc in zip(procs, found, strict=False):
            slot.pid = proc.pid
            slot.usedGpuMemory = NOT_AVAILABLE if proc.used_bytes is None else proc.used_bytes
            slot.gpuInstanceId = slot.computeInstanceId = 0xFFFFFFFF
        wanted.value = len(found)
        return SUCCESS

    # Same struct layout in the binding (c_nvmlProcessInfo_v3_t is c_nvmlProcessInfo_v2_t).
    _c_nvmlDeviceGetComputeRunningProcesses_v2 = _c_nvmlDeviceGetComputeRunningProcesses_v3


def install_missing_library(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without libnvidia-ml.so.1: `CDLL` raises OSError, as dlopen failing does."""

    def no_library(*args: object, **kwargs: object) -> None:
        raise OSError("libnvidia-ml.so.1: cannot open shared object file: No such file")

    monkeypatch.setattr(pynvml, "nvmlLib", None)
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    monkeypatch.setattr(pynvml, "_nvmlLib_refcount", 0)
    monkeypatch.setattr(pynvml, "CDLL", no_library)
