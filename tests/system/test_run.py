"""`gpulet run` as a wrapper: terminal signals, forwarded signals, a lost lease, a command that
cannot run, and the command dying with gpulet. Real daemon, real `gpulet` processes."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.helpers import GPULET, Daemon, clean_env
from tests.system.test_leases import (
    alive,
    pid_of,
    process_model,
    reservation_model,
    start_daemon,
    wait_until,
)

pytestmark = pytest.mark.system

PY = sys.executable
# A child that says it is ready, then exits 9 on SIGTERM (or HUP, USR1, INT, QUIT), writing which
# signal it got to the file named by its first argument.
TRAPPING = (
    "import signal, sys, time\n"
    "def got(sig, frame):\n"
    "    open(sys.argv[1], 'w').write(signal.Signals(sig).name)\n"
    "    sys.exit(9)\n"
    "for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGINT, signal.SIGQUIT):\n"
    "    signal.signal(s, got)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def gpulet(d: Daemon, *args: str, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [GPULET, "--address", d.address, *args], env=clean_env(), text=True, **kw
    )


def leases(d: Daemon) -> list[object]:
    return d.cli_json("lease", "list")["leases"]  # type: ignore[no-any-return]


def read_until(fd: int, needle: bytes, timeout: float = 20.0) -> bytes:
    """Read a pty master until `needle` shows up (or the far side is closed)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {needle!r} in {seen!r}"
        if select.select([fd], [], [], left)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: every slave fd is closed
                break
            if not chunk:
                break
            seen += chunk
    return seen


def in_pty(d: Daemon, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    """`gpulet ARGS` as a shell would run it in a terminal: a session whose controlling
    terminal is a pty, with gpulet's process group in the foreground."""
    master, slave = os.openpty()

    def take_terminal() -> None:
        # After setsid (start_new_session): the pty becomes the controlling terminal, and
        # its foreground group is this new session's group, which gpulet leads.
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [GPULET, "--address", d.address, *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=take_terminal,
        env=clean_env(),
    )
    os.close(slave)
    return proc, master


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        # The case: a shell trap for INT runs.
        (["sh", "-c", 'trap "exit 7" INT; echo ready; sleep 30'], 7),
        # A Python child gets KeyboardInterrupt and dies of SIGINT: 128 + 2.
        ([PY, "-c", "import time; print('ready', flush=True); time.sleep(30)"], 130),
    ],
)
def test_ctrl_c_in_a_terminal_reaches_the_command_once(
    tmp_path: Path, command: list[str], expected: int
) -> None:
    d = start_daemon(tmp_path, reservation_model("r", 2000))
    try:
        proc, master = in_pty(d, "run", "r", "--", *command)
        try:
            read_until(master, b"ready")
            assert len(leases(d)) == 1
            os.write(master, b"\x03")  # the terminal's INTR character: SIGINT to the group
            sent = time.monotonic()
            assert proc.wait(timeout=5) == expected, read_until(master, b"\0", 1)
            # The child's exit wakes gpulet at once; the release is one short RPC.
            assert time.monotonic() - sent < 2.0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            os.close(master)
        assert leases(d) == []
    finally:
        d.stop()


def test_killed_backend_makes_the_command_get_sigterm(tmp_path: Path, piddir: Path) -> None:
    d = start_daemon(tmp_path, process_model("m", 3000, piddir))
    marker = tmp_path / "got"
    try:
        # TTL 3: renewed every second, so the loss is seen within about a second.
        proc = gpulet(
            d,
            *("run", "m", "--ttl", "3", "--", PY, "-c", TRAPPING, str(marker)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        os.kill(pid_of(piddir, "m"), signal.SIGKILL)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 75, err
        assert marker.read_text() == "SIGTERM"
        [line] = err.splitlines()
        assert line.startswith("gpulet run: lease ") and "lost" in line and "SIGTERM" in line
        assert leases(d) == []
    finally:
        d.stop()


def test_a_command_that_cannot_run_acquires_nothing(tmp_path: Path, piddir: Path) -> None:
    d = start_daemon(tmp_path, process_model("m", 3000, piddir))
    plain = tmp_path / "plain.txt"
    plain.write_text("not a program\n")
    try:
        before = {m["id"]: m["state"] for m in d.cli_json("models")["models"]}
        for command, code, says in [
            ("/nonexistent/cmd", 127, "/nonexistent/cmd: no such file or directory"),
            ("no-such-command-gpulet", 127, "no-such-command-gpulet: command not found"),
            (str(plain), 126, f"{plain}: permission denied"),
            (str(tmp_path), 126, f"{tmp_path}: is a directory"),
        ]:
            r = d.cli("run", "m", "--", command, "arg")
            assert (r.returncode, r.stderr) == (code, f"gpulet run: {says}\n")
        bad = d.cli("run", "m", "--on-lost", "SIGNOPE", "--", "true")
        if "unrecognized arguments" not in bad.stderr:  # before main.py has --on-lost
            assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
        after = {m["id"]: m["state"] for m in d.cli_json("models")["models"]}
        assert after == before
        assert leases(d) == []
        assert not (piddir / "m.pid").exists()  # the backend was never started
    finally:
        d.stop()


def test_a_command_the_kernel_refuses_still_releases_the_lease(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, reservation_model("r", 2000))
    script = tmp_path / "script"
    script.write_text("#!/nonexistent/interpreter\n")
    script.chmod(0o755)
    try:
        r = d.cli("run", "r", "--", str(script))
        # Executable, so only exec can tell: the lease was taken, and is given back.
        assert r.returncode == 127 and r.stderr.startswith(f"gpulet run: {script}: "), r.stderr
        assert leases(d) == []
    finally:
        d.stop()


def test_the_command_dies_with_gpulet(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, reservation_model("r", 2000))
    try:
        proc = gpulet(
            d, "run", "r", "--", "sh", "-c", "echo $$; exec sleep 60", stdout=subprocess.PIPE
        )
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        assert alive(child)
        proc.kill()  # SIGKILL: no handler of gpulet's runs
        proc.wait()
        assert wait_until(lambda: not alive(child), timeout=5)
        proc.stdout.close()
    finally:
        d.stop()


def test_signals_to_gpulet_alone_are_forwarded(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, reservation_model("r", 2000))
    try:
        # Not on a terminal: SIGINT and SIGQUIT too were sent to gpulet alone (a CI runner's
        # interrupt), so the command must get them.
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGINT, signal.SIGQUIT):
            marker = tmp_path / f"got-{sig.name}"
            proc = gpulet(
                d,
                *("run", "r", "--", PY, "-c", TRAPPING, str(marker)),
                stdout=subprocess.PIPE,
            )
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n"
            proc.send_signal(sig)
            # 9 is the child's: had gpulet died of the signal itself, it would be 128 + sig.
            assert proc.wait(timeout=10) == 9
            proc.stdout.close()
            assert marker.read_text() == sig.name
            assert leases(d) == []
        # Without a handler, the child dies of SIGTERM: 128 + 15, as a shell reports it.
        proc = gpulet(d, "run", "r", "--", "sh", "-c", "echo ready; exec sleep 60", stdout=-1)
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.terminate()
        assert proc.wait(timeout=10) == 128 + signal.SIGTERM
        proc.stdout.close()
        assert leases(d) == []
    finally:
        d.stop()


def test_the_command_gets_sigint_and_sigquit_at_their_defaults(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, reservation_model("r", 2000))

    def ignoring() -> None:
        # gpulet started the way `cmd &` in a script or nohup would start it.
        for s in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)

    try:
        proc = gpulet(
            d,
            *("run", "r", "--", "grep", "^SigIgn:", "/proc/self/status"),
            stdout=subprocess.PIPE,
            preexec_fn=ignoring,
        )
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0
        ignored = int(out.split()[1], 16)
        bit = {s: 1 << (s - 1) for s in signal.Signals}
        # Neither the terminal's signals nor those Python itself ignores (SIGPIPE, SIGXFSZ).
        for s in (signal.SIGINT, signal.SIGQUIT, signal.SIGPIPE, signal.SIGXFSZ):
            assert not ignored & bit[s], s.name
        # SIGHUP ignored by the caller (nohup) stays ignored, as for a command run directly.
        assert ignored & bit[signal.SIGHUP]
    finally:
        d.stop()
