"""The socket, attacked by an unprivileged member of the socket group (issue 7, item 5).

A throwaway user and group are made for the module (we are root in CI). Each attack runs in a
child that drops to that user: the venv's interpreter lives under /root (0700), so it cannot be
exec'd as another uid (`subprocess.run(user=...)` fails with EACCES before the attack runs);
the child starts as root, imports what it needs, then sets its groups, gid and uid (which clears
every capability; asserted) and only then attacks."""

from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import Daemon, run_daemon_once, short_tmpdir

pytestmark = pytest.mark.system

GPUS = {"GPULET_SIMULATED_GPUS": "16384"}


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int  # the socket group, also the user's primary group
    group: str


@pytest.fixture(scope="module")
def member() -> Iterator[User]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create a throwaway user and group")
    if not (shutil.which("useradd") and shutil.which("groupadd")):
        pytest.skip("needs useradd and groupadd")
    tag = secrets.token_hex(3)
    group, name = f"gplsock{tag}", f"gplatk{tag}"
    subprocess.run(["groupadd", group], check=True)
    try:
        subprocess.run(
            ["useradd", "-M", "-N", "-g", group, "-s", "/usr/sbin/nologin", name], check=True
        )
        try:
            yield User(name, pwd.getpwnam(name).pw_uid, grp.getgrnam(group).gr_gid, group)
        finally:
            subprocess.run(["userdel", name], check=False)
    finally:
        subprocess.run(["groupdel", group], check=False)


_PRELUDE = """
import errno, json, os, sys
from gpulet.cli.main import main as gpulet_main  # imported as root: /root is 0700
os.setgroups({groups!r})
os.setgid({gid})
os.setuid({uid})
caps = next(l for l in open("/proc/self/status") if l.startswith("CapEff:"))
assert int(caps.split()[1], 16) == 0, caps
assert (os.getuid(), os.geteuid(), os.getegid()) == ({uid}, {uid}, {gid})

def attempt(f, *args):
    try:
        f(*args)
    except OSError as e:
        return errno.errorcode[e.errno]
    return "ok"
"""


def as_user(user: User, code: str, *, in_group: bool = True) -> subprocess.CompletedProcess[str]:
    gid = user.gid if in_group else 65534
    prelude = _PRELUDE.format(groups=[gid], gid=gid, uid=user.uid)
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={"PATH": os.environ.get("PATH", ""), "NO_COLOR": "1"},
    )


def attacks(user: User, code: str) -> dict[str, str]:
    r = as_user(user, code)
    assert r.returncode == 0, r.stderr
    result: dict[str, str] = json.loads(r.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def served(member: User) -> Iterator[Daemon]:
    d = Daemon("--socket-group", member.group, env=GPUS)
    os.chmod(d.dir, 0o755)  # mkdtemp's 0700 would keep the group from the socket entirely
    with d:
        yield d


def test_the_directory_is_0750_and_the_socket_0660_in_the_socket_group(
    served: Daemon, member: User
) -> None:
    d, s, lock = (os.stat(p) for p in (served.socket.parent, served.socket, _lock(served)))
    assert (stat.S_IMODE(d.st_mode), d.st_uid, d.st_gid) == (0o750, 0, member.gid)
    assert (stat.S_IMODE(s.st_mode), s.st_gid) == (0o660, member.gid)
    assert (stat.S_IMODE(lock.st_mode), lock.st_uid) == (0o600, 0)


def test_a_group_member_can_connect_and_an_outsider_cannot(served: Daemon, member: User) -> None:
    code = f"sys.exit(gpulet_main(['--address', {served.address!r}, 'roles']))"
    r = as_user(member, code)
    assert r.returncode == 0, r.stderr
    outsider = as_user(member, code, in_group=False)
    assert outsider.returncode != 0


def test_a_group_member_cannot_move_or_remove_the_live_socket(served: Daemon, member: User) -> None:
    sock, run = str(served.socket), str(served.socket.parent)
    got = attacks(
        member,
        f"""
        print(json.dumps({{
            "rename": attempt(os.rename, {sock!r}, {run!r} + "/moved"),
            "unlink": attempt(os.unlink, {sock!r}),
            "create": attempt(os.mkfifo, {run!r} + "/planted"),
        }}))
        """,
    )
    assert got == {"rename": "EACCES", "unlink": "EACCES", "create": "EACCES"}
    assert stat.S_ISSOCK(os.lstat(served.socket).st_mode)
    assert served.cli("roles").returncode == 0


def test_a_group_member_cannot_plant_a_symlink_as_the_lock_file(
    served: Daemon, member: User
) -> None:
    lock, run = str(_lock(served)), str(served.socket.parent)
    staged = str(served.dir / "staged")  # where the member could make the link: not in run/
    os.chmod(served.dir, 0o1777)
    try:
        got = attacks(
            member,
            f"""
            os.symlink("/etc/passwd", {staged!r})
            print(json.dumps({{
                "unlink": attempt(os.unlink, {lock!r}),
                "replace": attempt(os.rename, {staged!r}, {lock!r}),
                "symlink": attempt(os.symlink, "/etc/passwd", {run!r} + "/new.lock"),
            }}))
            """,
        )
    finally:
        os.chmod(served.dir, 0o755)
        Path(staged).unlink(missing_ok=True)
    assert got == {"unlink": "EACCES", "replace": "EACCES", "symlink": "EACCES"}
    assert stat.S_ISREG(os.lstat(lock).st_mode)


def _lock(d: Daemon) -> Path:
    return d.socket.with_name(d.socket.name + ".lock")


@pytest.mark.parametrize("what", ["socket", "state dir"])
@pytest.mark.parametrize("plant", ["symlink", "hard link", "other owner", "fifo"])
def test_a_planted_lock_file_is_refused_not_followed(member: User, what: str, plant: str) -> None:
    """As if an attacker (simulated by root) had made the lock file before the daemon's start:
    it must refuse, and the file the link points at must be untouched."""
    base = short_tmpdir()
    try:
        victim = base / "victim"
        victim.write_text("precious\n")
        run, state = base / "run", base / "state"
        for d in (run, state):
            d.mkdir(mode=0o750)
        lock = run / "gpulet.sock.lock" if what == "socket" else state / "state.db.lock"
        if plant == "symlink":
            lock.symlink_to(victim)
        elif plant == "hard link":
            os.link(victim, lock)
        elif plant == "fifo":
            os.mkfifo(lock)
        else:
            lock.write_text("")
            os.chown(lock, member.uid, member.gid)
        r = run_daemon_once(
            "--address", f"unix://{run}/gpulet.sock", "--state-dir", str(state), env=GPUS
        )
        assert r.returncode == 2, r.stderr
        assert str(lock) in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert victim.read_text() == "precious\n"
        assert not (run / "gpulet.sock").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize(
    ("mode", "owner", "needle"),
    [
        (0o777, "root", "writable by other users"),
        (0o1777, "root", "writable by other users"),  # sticky is no excuse for its own dir
        (0o770, "member", "belongs to uid"),
        (0o750, "member", "belongs to uid"),
    ],
)
def test_a_socket_directory_others_can_write_is_refused(
    member: User, mode: int, owner: str, needle: str
) -> None:
    base = short_tmpdir()
    try:
        run = base / "run"
        run.mkdir()
        if owner == "member":
            os.chown(run, member.uid, member.gid)
        os.chmod(run, mode)
        r = run_daemon_once("--address", f"unix://{run}/gpulet.sock", env=GPUS)
        assert r.returncode == 2
        assert str(run) in r.stderr and needle in r.stderr, r.stderr
        assert list(run.iterdir()) == []  # not even a lock file written there
        assert stat.S_IMODE(os.stat(run).st_mode) == mode
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_directory_above_the_socket_others_can_write_is_refused() -> None:
    base = short_tmpdir()
    try:
        os.chmod(base, 0o777)  # not sticky: anyone could rename run/ away and replace it
        r = run_daemon_once("--address", f"unix://{base}/run/gpulet.sock", env=GPUS)
        assert r.returncode == 2
        assert f"{base} (above the socket)" in r.stderr, r.stderr
        assert not (base / "run").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_group_writable_directory_of_ours_is_tightened(member: User) -> None:
    """As gpuletd made it before, or systemd's RuntimeDirectoryMode=0770: a handoff into this
    version must still start."""
    run = short_tmpdir() / "run"
    run.mkdir()
    os.chown(run, 0, member.gid)
    os.chmod(run, 0o770)
    with Daemon(env=GPUS, socket=run / "gpulet.sock") as d:
        assert stat.S_IMODE(os.stat(run).st_mode) == 0o750
        assert '"socket.directory_tightened"' in d.output()
    shutil.rmtree(run.parent, ignore_errors=True)


def test_the_attack_helper_really_drops_privileges(member: User) -> None:
    r = as_user(member, "print(attempt(os.listdir, '/root'))")
    assert r.stdout.strip() == "EACCES", r.stderr
