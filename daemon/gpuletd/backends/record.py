"""What a restarted daemon needs to find a backend again, as plain data it can persist."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = ["BackendRecord"]


@dataclass(frozen=True)
class BackendRecord:
    """One started backend, independent of any OS handle on it.

    (pid, start_time) names the leader for good within one boot (`boot_id`); `pgid` and
    `members` name everything else of it, so that all of it can be stopped even by a daemon
    that did not spawn it.
    """

    model_id: str
    pid: int
    # /proc/<pid>/stat field 22, clock ticks after boot; 0 when it was gone before it was read.
    start_time: int
    pgid: int
    # /proc/sys/kernel/random/boot_id: start times and pids mean nothing in another boot.
    boot_id: str
    port: int
    gpu_uuids: tuple[str, ...]
    endpoint: str
    health_url: str
    command: tuple[str, ...]
    # None when the log file could not be opened (the backend then runs without output).
    log_path: Path | None
    # Where this start's output begins in the log file.
    log_offset: int
    # Wall clock (time.time()) at spawn: monotonic clocks do not survive the daemon.
    spawned_at: float
    # Its health URL answered 2xx once: an adopted backend that was still loading is not.
    healthy: bool
    # (pid, start_time) of every live process of its tree seen so far, the leader included,
    # also those that left its process group.
    members: tuple[tuple[int, int], ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: strings, numbers, booleans, None and lists only."""
        return {
            "model_id": self.model_id,
            "pid": self.pid,
            "start_time": self.start_time,
            "pgid": self.pgid,
            "boot_id": self.boot_id,
            "port": self.port,
            "gpu_uuids": list(self.gpu_uuids),
            "endpoint": self.endpoint,
            "health_url": self.health_url,
            "command": list(self.command),
            "log_path": None if self.log_path is None else str(self.log_path),
            "log_offset": self.log_offset,
            "spawned_at": self.spawned_at,
            "healthy": self.healthy,
            "members": [[pid, start] for pid, start in self.members],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BackendRecord:
        """The inverse of `to_dict`; raises ValueError naming the first bad or missing field.

        Unknown keys are ignored, so a record written by a newer daemon still loads.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"backend record must be a mapping, got {type(data).__name__}")
        missing = [f.name for f in fields(cls) if f.name not in data]
        if missing:
            raise ValueError(f"backend record: field {missing[0]!r} is missing")
        log_path = data["log_path"]
        if log_path is not None:
            log_path = Path(_str(data, "log_path", allow_empty=False))
        return cls(
            model_id=_str(data, "model_id", allow_empty=False),
            pid=_int(data, "pid", minimum=1),
            start_time=_int(data, "start_time", minimum=0),
            pgid=_int(data, "pgid", minimum=1),
            boot_id=_str(data, "boot_id", allow_empty=False),
            port=_int(data, "port", minimum=1, maximum=65535),
            gpu_uuids=_strs(data, "gpu_uuids"),
            endpoint=_str(data, "endpoint", allow_empty=False),
            health_url=_str(data, "health_url", allow_empty=False),
            command=_strs(data, "command"),
            log_path=log_path,
            log_offset=_int(data, "log_offset", minimum=0),
            spawned_at=_float(data, "spawned_at"),
            healthy=_bool(data, "healthy"),
            members=_members(data, "members"),
        )


def _bad(name: str, expected: str, value: object) -> ValueError:
    return ValueError(f"backend record: field {name!r} must be {expected}, got {value!r}")


def _str(data: Mapping[str, Any], name: str, *, allow_empty: bool = True) -> str:
    value = data[name]
    if not isinstance(value, str) or (not allow_empty and not value):
        raise _bad(name, "a string" if allow_empty else "a non-empty string", value)
    return value


def _int(data: Mapping[str, Any], name: str, *, minimum: int, maximum: int | None = None) -> int:
    value = data[name]
    # bool is an int to Python, never to a record.
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        bounds = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise _bad(name, f"an integer {bounds}", value)
    return value


def _float(data: Mapping[str, Any], name: str) -> float:
    value = data[name]
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise _bad(name, "a finite number", value)
    return float(value)


def _bool(data: Mapping[str, Any], name: str) -> bool:
    value = data[name]
    if not isinstance(value, bool):
        raise _bad(name, "true or false", value)
    return value


def _strs(data: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = data[name]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise _bad(name, "a list of strings", value)
    return tuple(value)


def _members(data: Mapping[str, Any], name: str) -> tuple[tuple[int, int], ...]:
    value = data[name]
    expected = "a list of [pid, start_time] pairs of non-negative integers"
    if not isinstance(value, list | tuple):
        raise _bad(name, expected, value)
    pairs = []
    for item in value:
        if (
            not isinstance(item, list | tuple)
            or len(item) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in item)
            or item[0] < 1
        ):
            raise _bad(name, expected, item)
        pairs.append((item[0], item[1]))
    return tuple(pairs)
