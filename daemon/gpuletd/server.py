"""The gRPC server: the Unix socket (made carefully), health, reflection, the servicers."""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gpulet.v1 import (
    leases_pb2,
    leases_pb2_grpc,
    profiles_pb2,
    profiles_pb2_grpc,
    selector_pb2,
    selector_pb2_grpc,
)
from gpuletd.daemon import Daemon
from gpuletd.runtime import Runtime
from gpuletd.services.decoding import DecodeGuard
from gpuletd.services.lease_service import LeaseService
from gpuletd.services.profile_service import ProfileService
from gpuletd.services.selector_service import SelectorService

__all__ = [
    "AlreadyRunning",
    "LockFile",
    "Server",
    "build_server",
    "held",
    "prepare_socket",
    "unix_socket",
]

SERVICE_NAMES = (
    profiles_pb2.DESCRIPTOR.services_by_name["ProfileService"].full_name,
    selector_pb2.DESCRIPTOR.services_by_name["SelectorService"].full_name,
    leases_pb2.DESCRIPTOR.services_by_name["LeaseService"].full_name,
)


class AlreadyRunning(Exception):
    pass


class LockFile:
    """An exclusive lock beside a file only one daemon may use: a second server on the same
    Unix socket would silently steal it from the first, and two daemons on one state file
    would adopt each other's backends; the second daemon must refuse instead."""

    def __init__(self, path: Path, what: str = "socket") -> None:
        self.path = path.with_name(path.name + ".lock")
        self._guarded = path
        self._what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o660)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            hint = "--state-dir" if self._what == "state dir" else "--address"
            raise AlreadyRunning(
                f"another gpuletd (pid {holder}) is using the {self._what} {self._guarded}; "
                f"stop it first or pass a different {hint}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def prepare_socket(path: Path, group: str | None, *, created_dir: bool) -> None:
    """A directory we created is made 0770 (group-owned when a group is given); one that
    existed (say /tmp) is left as it is. The stale socket is removed: call with the lock
    held, only then is an existing socket known to be stale."""
    if created_dir:
        if group:
            os.chown(path.parent, -1, grp.getgrnam(group).gr_gid)
        os.chmod(path.parent, 0o770)

    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            path.unlink()
        else:
            raise AlreadyRunning(f"{path} exists and is not a socket; refusing to replace it")


def finish_socket(path: Path, group: str | None) -> None:
    # grpc exposes no peer uid on Unix sockets: access control is the socket's mode and group.
    if group:
        os.chown(path, -1, grp.getgrnam(group).gr_gid)
    os.chmod(path, 0o660)


@dataclass
class Server:
    grpc_server: grpc.aio.Server
    health: health.aio.HealthServicer

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)


def build_server(runtime: Runtime, daemon: Daemon) -> Server:
    # Requests that do not parse (non-UTF-8 strings) get INVALID_ARGUMENT, not UNKNOWN.
    server = grpc.aio.server(interceptors=[DecodeGuard()])
    profiles_pb2_grpc.add_ProfileServiceServicer_to_server(
        ProfileService(runtime, daemon.core, daemon.supervisor), server
    )
    selector_pb2_grpc.add_SelectorServiceServicer_to_server(
        SelectorService(runtime, daemon.core), server
    )
    leases_pb2_grpc.add_LeaseServiceServicer_to_server(
        LeaseService(daemon.leases, daemon.watch), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    return Server(server, health_servicer)


@contextlib.contextmanager
def held(lock: LockFile) -> Iterator[LockFile]:
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


@contextlib.contextmanager
def unix_socket(path: Path, group: str | None) -> Iterator[LockFile]:
    lock = LockFile(path)
    created_dir = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    # A directory another user made first (say a predictable /tmp/gpulet-UID) could let them
    # swap the socket for their own: only ours or root's is trusted, checked before we write.
    owner = os.stat(path.parent).st_uid
    if owner not in (os.geteuid(), 0):
        raise AlreadyRunning(
            f"{path.parent} belongs to uid {owner}, not to this user or root; refusing to "
            "serve a socket there (choose another --address)"
        )
    lock.acquire()
    try:
        prepare_socket(path, group, created_dir=created_dir)
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        lock.release()
