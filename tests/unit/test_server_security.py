"""The socket directory's checks, the lock file's, and when a TCP listener may be plain."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gpuletd.config_errors import ConfigError
from gpuletd.server import (
    AlreadyRunning,
    LockFile,
    is_loopback,
    listen_credentials,
    secure_socket_dir,
)


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:1", True),
        ("127.8.9.10:1", True),
        ("[::1]:1", True),
        ("localhost:1", True),
        ("0.0.0.0:1", False),
        ("[::]:1", False),
        ("10.0.0.1:1", False),
        ("example.com:1", False),
        ("localhost.example.com:1", False),
        ("no-port", False),
    ],
)
def test_is_loopback(listen: str, loopback: bool) -> None:
    assert is_loopback(listen) is loopback


def test_listen_credentials_plain_only_on_loopback_when_asked() -> None:
    none = {"cert": None, "key": None, "client_ca": None}
    assert listen_credentials(None, **none, insecure_loopback=False) is None
    assert listen_credentials("127.0.0.1:1", **none, insecure_loopback=True) is None
    for listen, insecure in (("127.0.0.1:1", False), ("0.0.0.0:1", True), ("[::]:1", False)):
        with pytest.raises(ConfigError, match="--listen"):
            listen_credentials(listen, **none, insecure_loopback=insecure)
    with pytest.raises(ConfigError, match="pass --listen"):
        listen_credentials(None, **none, insecure_loopback=True)


def _sock(tmp_path: Path) -> Path:
    os.chmod(tmp_path, 0o700)
    return tmp_path / "run" / "gpulet.sock"


def test_a_created_directory_is_0750(tmp_path: Path) -> None:
    path = _sock(tmp_path)
    secure_socket_dir(path, None)
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o750


def test_a_group_writable_directory_of_ours_is_tightened(tmp_path: Path) -> None:
    path = _sock(tmp_path)
    path.parent.mkdir()
    os.chmod(path.parent, 0o770)
    secure_socket_dir(path, None)
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o750


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o703])
def test_a_directory_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    path = _sock(tmp_path)
    path.parent.mkdir()
    os.chmod(path.parent, mode)
    with pytest.raises(AlreadyRunning, match="writable by other users"):
        secure_socket_dir(path, None)
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == mode


def test_an_ancestor_others_can_write_is_refused_unless_sticky(tmp_path: Path) -> None:
    path = _sock(tmp_path)
    os.chmod(tmp_path, 0o777)
    with pytest.raises(AlreadyRunning, match="above the socket"):
        secure_socket_dir(path, None)
    assert not path.parent.exists()
    os.chmod(tmp_path, 0o1777)
    secure_socket_dir(path, None)


def test_the_lock_file_is_0600_and_a_second_holder_refused(tmp_path: Path) -> None:
    first, second = LockFile(tmp_path / "s"), LockFile(tmp_path / "s")
    first.acquire()
    try:
        assert stat.S_IMODE(os.stat(first.path).st_mode) == 0o600
        with pytest.raises(AlreadyRunning, match=f"pid {os.getpid()}"):
            second.acquire()
    finally:
        first.release()


@pytest.mark.parametrize(
    ("plant", "needle"),
    [("symlink", "symbolic link"), ("hard link", "hard links"), ("fifo", "not a regular")],
)
def test_a_planted_lock_file_is_refused(tmp_path: Path, plant: str, needle: str) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    lock = LockFile(tmp_path / "s", "state dir")
    if plant == "symlink":
        lock.path.symlink_to(victim)
    elif plant == "hard link":
        os.link(victim, lock.path)
    else:
        os.mkfifo(lock.path)
    with pytest.raises(AlreadyRunning, match=needle):
        lock.acquire()
    assert victim.read_text() == "precious\n"
