"""The gRPC server: the Unix socket (made carefully), health, reflection, the servicers."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import ipaddress
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gpulet.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    leases_pb2,
    leases_pb2_grpc,
    profiles_pb2,
    profiles_pb2_grpc,
    selector_pb2,
    selector_pb2_grpc,
)
from gpuletd.admin import Admin
from gpuletd.config_errors import ConfigError
from gpuletd.daemon import Daemon
from gpuletd.runtime import Runtime
from gpuletd.services.admin_service import AdminService
from gpuletd.services.decoding import DecodeGuard
from gpuletd.services.lease_service import LeaseService
from gpuletd.services.profile_service import ProfileService
from gpuletd.services.selector_service import SelectorService
from gpuletd.services.wrapping import composed

__all__ = [
    "ADMIN_SERVICE_NAME",
    "ADMIN_SOCKET",
    "AlreadyRunning",
    "LockFile",
    "Server",
    "admin_socket",
    "bind_admin",
    "build_admin_server",
    "build_server",
    "held",
    "is_loopback",
    "listen_credentials",
    "prepare_socket",
    "secure_socket_dir",
    "unix_socket",
]

log = structlog.get_logger("gpuletd")

SERVICE_NAMES = (
    profiles_pb2.DESCRIPTOR.services_by_name["ProfileService"].full_name,
    selector_pb2.DESCRIPTOR.services_by_name["SelectorService"].full_name,
    leases_pb2.DESCRIPTOR.services_by_name["LeaseService"].full_name,
)

# The admin socket's default name, beside the user socket (main.py).
ADMIN_SOCKET = "admin.sock"
# Not in SERVICE_NAMES: nothing that builds the user server may name it.
ADMIN_SERVICE_NAME = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name


class AlreadyRunning(Exception):
    pass


class LockFile:
    """An exclusive lock beside a file only one daemon may use: a second server on the same
    Unix socket would silently steal it from the first, and two daemons on one state file
    would adopt each other's backends; the second daemon must refuse instead.

    The file is opened without following a symlink and checked (a regular file of ours with
    one link) before it is truncated: a root daemon that followed a planted
    `gpulet.sock.lock -> /etc/shadow`, or a hard link to it, would overwrite the target."""

    def __init__(self, path: Path, what: str = "socket") -> None:
        self.path = path.with_name(path.name + ".lock")
        self._guarded = path
        self._what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise AlreadyRunning(
                    f"{self.path} is a symbolic link; refusing to follow it (remove it if "
                    "you made it, else find out who did)"
                ) from None
            raise
        try:
            self._check(fd)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            hint = "--state-dir" if self._what == "state dir" else "--address"
            raise AlreadyRunning(
                f"another gpuletd (pid {holder}) is using the {self._what} {self._guarded}; "
                f"stop it first or pass a different {hint}"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # Only the owner writes the pid; the lock's readers are this user or root.
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def _check(self, fd: int) -> None:
        # fstat, not stat: what is checked is what was opened, with no window to swap it.
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise AlreadyRunning(f"{self.path} is not a regular file; refusing to use it")
        if st.st_uid != os.geteuid():
            raise AlreadyRunning(
                f"{self.path} belongs to uid {st.st_uid}, not to this user; refusing to use it "
                "(remove it if it is stale)"
            )
        if st.st_nlink != 1:
            raise AlreadyRunning(
                f"{self.path} has {st.st_nlink} hard links; refusing to write to it"
            )

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _others_can_write(mode: int) -> bool:
    return bool(mode & (stat.S_IWGRP | stat.S_IWOTH))


def _check_ancestors(directory: Path) -> None:
    """Every directory above the socket's must be safe from other users too: whoever can write
    one can rename the socket's directory away and put their own in its place. Root's and
    ours are trusted; a sticky world-writable one (/tmp) is fine, since it only lets others
    remove their own entries. Both the path as given and the resolved path are walked, so a
    symlinked component (/var/run -> /run) cannot be retargeted either."""
    seen: set[Path] = set()
    for chain in (directory, Path(os.path.realpath(directory))):
        for d in chain.parents:
            if d in seen:
                continue
            seen.add(d)
            try:
                st = os.stat(d)
            except FileNotFoundError:  # to be created by us, below a checked one
                continue
            if st.st_uid not in (os.geteuid(), 0):
                raise AlreadyRunning(
                    f"{d} (above the socket) belongs to uid {st.st_uid}, not to this user or "
                    "root; refusing to serve a socket under it (choose another --address)"
                )
            if _others_can_write(st.st_mode) and not st.st_mode & stat.S_ISVTX:
                raise AlreadyRunning(
                    f"{d} (above the socket) is writable by other users and not sticky; "
                    "refusing to serve a socket under it (choose another --address)"
                )


def _make_dirs(directory: Path) -> bool:
    """Create the socket's directory (and missing parents, 0755 at most whatever the umask).
    True if the socket's directory itself was created."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            # 0700 until its mode and group are set: never briefly open to others.
            os.mkdir(d, 0o700 if d == directory else 0o755)
    return directory in missing


def secure_socket_dir(path: Path, group: str | None) -> None:
    """Make (or check) the socket's directory so that only its owner can write it: a group
    member who could write it could move the live socket aside and put their own in its place
    (and read other clients' lease tokens), or plant `gpulet.sock.lock` as a symlink.

    Created here: 0750, owned by us, its group the `--socket-group` (which needs x to reach
    the socket, r to list it, not w). An existing one must belong to us or root and not be
    writable by others; sticky does not excuse it here (the lock file and socket live in it,
    and a group member could pre-create them). One exception: a group-writable (not
    world-writable) directory of ours is tightened to drop g+w rather than refused, since
    gpuletd before this change, and systemd's RuntimeDirectoryMode=0770, made it so (a
    handoff re-exec would otherwise refuse to start); what a group member may have left in it
    is then caught by the lock file's checks and the socket's replacement."""
    directory = path.parent
    _check_ancestors(directory)
    created = _make_dirs(directory)
    st = os.stat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise AlreadyRunning(f"{directory} is not a directory; choose another --address")
    if st.st_uid not in (os.geteuid(), 0):
        raise AlreadyRunning(
            f"{directory} belongs to uid {st.st_uid}, not to this user or root; refusing to "
            "serve a socket there (choose another --address)"
        )
    if created:
        if group:
            os.chown(directory, -1, grp.getgrnam(group).gr_gid)
        os.chmod(directory, 0o750)
        return
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IWOTH or (_others_can_write(mode) and st.st_uid != os.geteuid()):
        raise AlreadyRunning(
            f"{directory} is writable by other users (mode {mode:04o}); refusing to serve a "
            f"socket there: make it 0750 (chmod 0750 {directory}) or choose another --address"
        )
    if mode & stat.S_IWGRP:
        os.chmod(directory, mode & ~stat.S_IWGRP)
        log.warning(
            "socket.directory_tightened",
            directory=str(directory),
            mode=f"{mode:04o}",
            now=f"{mode & ~stat.S_IWGRP:04o}",
        )


def prepare_socket(path: Path) -> None:
    """Remove a stale socket: call with the lock held, only then is an existing socket known
    to be stale."""
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


def is_loopback(listen: str) -> bool:
    """Whether HOST:PORT ([V6]:PORT) binds only to loopback: an IP literal in 127/8 or ::1,
    or `localhost`. Any other name could resolve to (and bind) a reachable address."""
    host, sep, _port = listen.rpartition(":")
    if not sep:
        return False
    host = host.removeprefix("[").removesuffix("]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read(flag: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(flag, f"cannot read {path}: {e.strerror or e}") from None


def listen_credentials(
    listen: str | None,
    *,
    cert: Path | None,
    key: Path | None,
    client_ca: Path | None,
    insecure_loopback: bool,
) -> grpc.ServerCredentials | None:
    """The TLS credentials for the `--listen` port, or None to serve it plain. grpc gives no
    peer identity over plain TCP, so anyone who can reach the port could take leases and see
    tokens in flight: plain TCP is only for loopback, and only when asked for by name."""
    if listen is None:
        if cert or key or client_ca or insecure_loopback:
            raise ConfigError(
                "--listen",
                "--tls-cert, --tls-key, --tls-client-ca and --insecure-loopback apply to a "
                "TCP listener; pass --listen HOST:PORT too",
            )
        return None
    if cert is None and key is None and client_ca is None:
        if insecure_loopback and is_loopback(listen):
            return None
        if insecure_loopback:
            raise ConfigError(
                "--listen",
                f"--insecure-loopback serves plain TCP on loopback only, not on {listen}: "
                "listen on 127.0.0.1, or pass --tls-cert FILE --tls-key FILE",
            )
        plain = (
            "add --insecure-loopback to serve it plain"
            if is_loopback(listen)
            else "listen on 127.0.0.1 with --insecure-loopback"
        )
        raise ConfigError(
            "--listen",
            f"a TCP listener on {listen} needs TLS: pass --tls-cert FILE --tls-key FILE "
            f"(and --tls-client-ca FILE to require client certificates), or {plain}",
        )
    if cert is None or key is None:
        raise ConfigError("--listen", "TLS needs both --tls-cert and --tls-key")
    ca = _read("--tls-client-ca", client_ca) if client_ca else None
    return grpc.ssl_server_credentials(
        [(_read("--tls-key", key), _read("--tls-cert", cert))],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


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
    # Metrics outermost, so that it also counts what DecodeGuard answers by itself; both in
    # one interceptor, so a call awaits one interceptor rather than two.
    server = grpc.aio.server(interceptors=[composed(daemon.metrics.interceptor, DecodeGuard())])
    profiles_pb2_grpc.add_ProfileServiceServicer_to_server(
        ProfileService(runtime, daemon.core, daemon.supervisor), server
    )
    selector_pb2_grpc.add_SelectorServiceServicer_to_server(
        SelectorService(runtime, daemon.executor, daemon.measurements), server
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


def build_admin_server(runtime: Runtime, daemon: Daemon) -> grpc.aio.Server:
    """A server of its own for AdminService, bound only to the admin socket (`admin_socket`):
    grpc serves every registered service on every port of a server, so sharing the user
    server would expose it on the user socket and on TCP."""
    # The metrics interceptor is shared with the user server; each server's composed
    # interceptor keys what it wraps by that server's own handler, so neither server ever
    # answers the other's methods (tests/system/test_admin.py calls the admin socket, then
    # checks the user socket).
    server = grpc.aio.server(interceptors=[composed(daemon.metrics.interceptor, DecodeGuard())])
    admin_pb2_grpc.add_AdminServiceServicer_to_server(
        AdminService(Admin(runtime, daemon.executor, daemon.leases)), server
    )
    # Reflection lists only what this server serves, so grpcurl works on the admin socket too.
    reflection.enable_server_reflection((ADMIN_SERVICE_NAME, reflection.SERVICE_NAME), server)
    return server


def bind_admin(server: grpc.aio.Server, path: Path) -> None:
    """Bind the admin socket 0600 from its creation: grpc creates it when the port is added,
    with the process umask, and a group member must never find it connectable, not even
    between the bind and a chmod. The umask is process-wide, but nothing else runs on this
    thread meanwhile (add_insecure_port does not yield to the event loop)."""
    old = os.umask(0o177)
    try:
        port = server.add_insecure_port(f"unix:{path}")
    finally:
        os.umask(old)
    if port == 0:  # pragma: no cover - the path was checked, locked and cleared before
        raise AlreadyRunning(f"cannot bind the admin socket {path}")
    # And again, should grpc ever create it some other way: only the service user connects.
    os.chmod(path, 0o600)


@contextlib.contextmanager
def admin_socket(path: Path) -> Iterator[LockFile]:
    """As `unix_socket`, for the admin socket: its own lock (admin.sock.lock), no group."""
    with unix_socket(path, None) as lock:
        yield lock


@contextlib.contextmanager
def held(lock: LockFile) -> Iterator[LockFile]:
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


@contextlib.contextmanager
def unix_socket(path: Path, group: str | None) -> Iterator[LockFile]:
    # Checked before anything is written there: not even a lock file in an unsafe directory.
    secure_socket_dir(path, group)
    lock = LockFile(path)
    lock.acquire()
    try:
        prepare_socket(path)
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        lock.release()
