"""A daemon you can restart: kill -9, a corrupt state file, SIGHUP, the handoff, every signal.

The real gpuletd as a subprocess, real backends (tests/model_server.py), a real SQLite file in
the daemon's state directory."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

import gpulet
from tests.helpers import GPULET, GPULETD, Daemon, clean_env
from tests.system.test_leases import (
    alive,
    daemon_for,
    pid_of,
    process_model,
    reservation_model,
    wait_until,
)

pytestmark = pytest.mark.system

ROOMY = ("--profile", "balanced_24gb", "--set", "max_concurrent_models=4")


def daemon(tmp_path: Path, config: str, *args: str) -> Daemon:
    return daemon_for(tmp_path, config, *args, gpus="24576")


def states(c: gpulet.Client) -> dict[str, str]:
    return {m.id: m.state.value for m in c.models()}


def acquire_slow_in_background(d: Daemon, piddir: Path) -> subprocess.Popen[str]:
    """`gpulet lease acquire slow` left waiting, once the slow backend's process exists."""
    loading = subprocess.Popen(
        [GPULET, "--address", d.address, "lease", "acquire", "slow", "--json"],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert wait_until(lambda: (piddir / "slow.pid").exists(), timeout=10), d.output()
    return loading


def kill9(d: Daemon) -> None:
    assert d.proc is not None
    d.proc.kill()
    d.proc.wait(10)
    d.stop(keep=True)


def test_kill9_restart_keeps_leases_and_adopts_loaded_and_loading_backends(
    tmp_path: Path, piddir: Path
) -> None:
    config = (
        process_model("fast", 3000, piddir)
        + process_model("slow", 3000, piddir, "--start-delay", "3")
        + reservation_model("res", 2000)
    )
    d = daemon(tmp_path, config, *ROOMY).start()
    loading: subprocess.Popen[str] | None = None
    pids: list[int] = []
    try:
        with gpulet.Client(address=d.address) as c:
            fast = c.acquire("fast", ttl=300)
            res = c.acquire("res", ttl=300)
            before = {x.lease_id: x.expires_at for x in c.list_leases()}
        fast_pid = pid_of(piddir, "fast")
        pids.append(fast_pid)
        # A third client asks for a model whose backend takes 3 s to become healthy.
        loading = acquire_slow_in_background(d, piddir)
        slow_pid = pid_of(piddir, "slow")
        pids.append(slow_pid)

        kill9(d)
        loading.wait(10)
        # The backends outlive their daemon, and keep serving (their output goes to a file).
        assert alive(fast_pid) and alive(slow_pid)

        d.start()
        with gpulet.Client(address=d.address) as c:
            after = {x.lease_id: x.expires_at for x in c.list_leases()}
            assert set(after) == set(before), d.output()
            for lid, exp in before.items():
                assert abs(after[lid].timestamp() - exp.timestamp()) < 1.0
            # The same tokens still work.
            c.renew(fast.lease_id, fast.token)
            c.renew(res.lease_id, res.token)
            with pytest.raises(gpulet.PermissionDenied):
                c.renew(fast.lease_id, res.token)
            # The loaded backend was adopted, not restarted: same pid, still serving.
            assert pid_of(piddir, "fast") == fast_pid and alive(fast_pid)
            assert states(c)["fast"] == "loaded"
            # The loading one was adopted too and became healthy under the new daemon.
            assert wait_until(lambda: states(c)["slow"] == "loaded", timeout=15), d.output()
            assert pid_of(piddir, "slow") == slow_pid and alive(slow_pid)
            slow = c.acquire("slow", ttl=60, timeout=10)
            assert slow.endpoint.startswith("http://127.0.0.1:")
        out = d.output()
        assert '"backend.adopted"' in out and '"state.restored"' in out, out
        assert "invariant" not in out, out
    finally:
        if loading is not None and loading.poll() is None:
            loading.kill()
        d.stop()
    # A clean stop leaves nothing of the test behind.
    assert wait_until(lambda: not any(alive(p) for p in pids), timeout=5), pids


def test_corrupt_state_file_starts_clean_says_so_and_stops_the_orphans(
    tmp_path: Path, piddir: Path
) -> None:
    d = daemon(tmp_path, process_model("fast", 3000, piddir), *ROOMY).start()
    try:
        with gpulet.Client(address=d.address) as c:
            lease = c.acquire("fast", ttl=300)
        pid = pid_of(piddir, "fast")
        kill9(d)
        assert alive(pid)
        for extra in ("-wal", "-shm"):
            (d.state_dir / f"state.db{extra}").unlink(missing_ok=True)
        (d.state_dir / "state.db").write_bytes(b"this is not a database\n" * 100)

        d.start()
        out = d.output()
        assert '"store.moved_aside"' in out, out
        assert list(d.state_dir.glob("state.db.corrupt-*")), list(d.state_dir.iterdir())
        # No record names the old backend any more; its mark does, and it is stopped.
        assert wait_until(lambda: not alive(pid), timeout=15), out
        with gpulet.Client(address=d.address) as c:
            with pytest.raises(gpulet.NotFound):
                c.renew(lease.lease_id, lease.token)
            assert states(c)["fast"] == "unloaded"
            again = c.acquire("fast", ttl=30, timeout=15)
            assert pid_of(piddir, "fast") != pid
            c.release(again.lease_id, again.token)
    finally:
        d.stop()


def test_sighup_reloads_a_good_config_and_refuses_a_broken_one(tmp_path: Path) -> None:
    cfg = tmp_path / "gpulet.toml"
    good = reservation_model("res", 2000) + reservation_model("gone", 1000)
    cfg.write_text(good)
    d = Daemon("--config", str(cfg), "--simulated-gpus", "24576").start()
    try:
        with gpulet.Client(address=d.address) as c:
            lease = c.acquire("gone", ttl=300)
            assert c.active_profile().profile.name == "balanced_24gb"

            cfg.write_text(good + "[models.res\nbroken = \n")
            assert d.proc is not None
            d.proc.send_signal(signal.SIGHUP)
            assert wait_until(lambda: '"config.reload_refused"' in d.output(), timeout=5)
            warnings = list(c.active_profile().warnings)
            assert any("reload refused" in w and "gpulet.toml:" in w for w in warnings), warnings
            assert c.active_profile().profile.name == "balanced_24gb"
            c.renew(lease.lease_id, lease.token)

            # A good config: another profile, and the leased model removed from the registry.
            cfg.write_text('profile = "constrained_16gb"\n' + reservation_model("res", 2000))
            d.proc.send_signal(signal.SIGHUP)
            assert wait_until(lambda: '"config.reloaded"' in d.output(), timeout=5)
            active = c.active_profile()
            assert active.profile.name == "constrained_16gb"
            assert not any("reload refused" in w for w in active.warnings)
            # The lease on the removed model still works for its holder...
            c.renew(lease.lease_id, lease.token)
            # ...and nobody new gets it.
            with pytest.raises(gpulet.NotFound):
                c.acquire("gone", timeout=5)
            c.release(lease.lease_id, lease.token)
        r = d.cli("profile", "show", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["name"] == "constrained_16gb", r.stdout
    finally:
        d.stop()


def test_sigusr2_hands_off_to_a_new_gpuletd_in_place(tmp_path: Path, piddir: Path) -> None:
    d = daemon(tmp_path, process_model("fast", 3000, piddir), *ROOMY).start()
    try:
        assert d.proc is not None
        with gpulet.Client(address=d.address) as c:
            lease = c.acquire("fast", ttl=300)
        pid = pid_of(piddir, "fast")
        d.proc.send_signal(signal.SIGUSR2)
        assert wait_until(lambda: d.output().count('"daemon.serving"') == 2, timeout=20), d.output()
        assert d.proc.poll() is None  # the same process, re-executed
        with gpulet.Client(address=d.address) as c:
            c.renew(lease.lease_id, lease.token)
            assert states(c)["fast"] == "loaded"
        assert pid_of(piddir, "fast") == pid and alive(pid)
    finally:
        d.stop()
    assert wait_until(lambda: not alive(pid), timeout=5)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT])
def test_stop_signals_stop_everything_and_say_so(
    tmp_path: Path, piddir: Path, sig: signal.Signals
) -> None:
    d = daemon(tmp_path, process_model("fast", 3000, piddir), *ROOMY).start()
    with gpulet.Client(address=d.address) as c:
        c.acquire("fast", ttl=300)
    pid = pid_of(piddir, "fast")
    code = d.stop(sig)
    assert code == 0, d.output()
    assert f'"signal": "{sig.name}"' in d.output()
    assert not alive(pid)


def test_usr1_logs_a_status_line_and_pipe_is_ignored(tmp_path: Path) -> None:
    d = daemon(tmp_path, reservation_model("res", 2000)).start()
    try:
        assert d.proc is not None
        with gpulet.Client(address=d.address) as c:
            c.acquire("res", ttl=60)
            d.proc.send_signal(signal.SIGUSR1)
            d.proc.send_signal(signal.SIGPIPE)
            assert wait_until(lambda: '"SIGPIPE"' in d.output(), timeout=5)
            status = [
                json.loads(line) for line in d.output().splitlines() if '"daemon.status"' in line
            ]
            assert status and status[0]["leases"] == 1 and status[0]["models"] == {"res": "loaded"}
            assert d.proc.poll() is None
            assert c.list_leases()
    finally:
        d.stop()


def test_a_second_daemon_on_the_same_state_dir_refuses(tmp_path: Path) -> None:
    d = daemon(tmp_path, reservation_model("res", 2000)).start()
    try:
        other = Daemon("--state-dir", str(d.state_dir))
        with pytest.raises(RuntimeError, match="state dir"):
            other.start(timeout=10)
    finally:
        d.stop()


def test_a_worker_that_left_its_process_group_is_stopped_with_its_backend(
    tmp_path: Path, piddir: Path
) -> None:
    """gpuletd is the subreaper of its backends: a worker that called setsid() and whose
    parent exited is still stopped when its model unloads, and when gpuletd stops."""
    config = process_model(
        "esc", 3000, piddir, "--setsid-child", "--setsid-parent-exit-after", "0.3", grace=1.0
    ) + process_model("esc2", 3000, piddir, "--setsid-child", "--setsid-parent-exit-after", "0.3")
    d = daemon(tmp_path, config, *ROOMY).start()
    try:
        with gpulet.Client(address=d.address) as c:
            lease = c.acquire("esc", ttl=60)
            worker_file = piddir / "esc.pid.setsid"
            assert wait_until(worker_file.exists, timeout=10)
            worker = int(worker_file.read_text())
            time.sleep(1.5)  # its parent has exited: it is an orphan of the backend's tree
            assert alive(worker)
            c.release(lease.lease_id, lease.token)
            # Unloaded after its 1 s grace: the escaped worker goes with it.
            assert wait_until(lambda: not alive(worker), timeout=15), d.output()

            c.acquire("esc2", ttl=60)
            worker2_file = piddir / "esc2.pid.setsid"
            assert wait_until(worker2_file.exists, timeout=10)
            worker2 = int(worker2_file.read_text())
            time.sleep(1.5)
            assert alive(worker2)
    finally:
        d.stop()
    assert wait_until(lambda: not alive(worker2), timeout=5), d.output()


def test_reload_and_status_signals_during_startup_do_not_kill_it(tmp_path: Path) -> None:
    """HUP and USR1 kill a process by default; gpuletd ignores them until its handlers run."""
    d = daemon(tmp_path, reservation_model("res", 2000))
    d._log_file = d.log.open("a")
    d.proc = subprocess.Popen(
        [GPULETD, "--address", d.address, *d.args],
        env=d.env,
        stdout=d._log_file,
        stderr=subprocess.STDOUT,
    )

    def hup_ignored() -> bool:
        # Nothing can catch a signal before the interpreter runs gpuletd's first line: the
        # window under test starts there (SigIgn in /proc shows it).
        status = Path(f"/proc/{d.proc.pid}/status").read_text()
        mask = int(next(x for x in status.splitlines() if x.startswith("SigIgn:")).split()[1], 16)
        return bool(mask & (1 << (signal.SIGHUP - 1)))

    try:
        assert wait_until(hup_ignored, timeout=10, step=0.001)
        deadline = time.monotonic() + 20
        while not d.socket.exists() and time.monotonic() < deadline:
            for sig in (signal.SIGHUP, signal.SIGUSR1):
                d.proc.send_signal(sig)
            time.sleep(0.01)
            assert d.proc.poll() is None, d.output()
        time.sleep(0.3)
        assert d.proc.poll() is None, d.output()
        assert d.cli("roles").returncode == 0
    finally:
        d.stop()


def test_a_backend_that_died_while_gpuletd_was_down_ends_its_leases(
    tmp_path: Path, piddir: Path
) -> None:
    config = process_model("fast", 3000, piddir) + reservation_model("res", 2000)
    d = daemon(tmp_path, config, *ROOMY).start()
    try:
        with gpulet.Client(address=d.address) as c:
            fast = c.acquire("fast", ttl=300)
            res = c.acquire("res", ttl=300)
        pid = pid_of(piddir, "fast")
        kill9(d)
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not alive(pid), timeout=5)

        d.start()
        with gpulet.Client(address=d.address) as c:
            with pytest.raises(gpulet.LeaseLost) as e:
                c.renew(fast.lease_id, fast.token)
            assert "exited while gpuletd was down" in e.value.message
            c.renew(res.lease_id, res.token)  # the other lease is untouched
            # The next request starts it again.
            again = c.acquire("fast", ttl=30, timeout=15)
            assert pid_of(piddir, "fast") != pid
            c.release(again.lease_id, again.token)
    finally:
        d.stop()


def test_the_handoff_tells_systemd_it_is_reloading_not_stopping(
    tmp_path: Path, piddir: Path
) -> None:
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ns:
        ns.bind(str(notify_path))
        ns.settimeout(20)
        d = daemon(tmp_path, reservation_model("res", 2000))
        d.env["NOTIFY_SOCKET"] = str(notify_path)
        d.start()
        try:
            messages = [ns.recv(4096)]
            while b"READY=1" not in messages[-1]:
                messages.append(ns.recv(4096))
            assert d.proc is not None
            d.proc.send_signal(signal.SIGUSR2)
            after: list[bytes] = []
            while not any(b"READY=1" in m for m in after):
                after.append(ns.recv(4096))
            assert any(b"RELOADING=1" in m for m in after), after
            assert not any(b"STOPPING=1" in m for m in after), after
        finally:
            d.stop()


def test_on_stop_keep_leaves_a_loading_backend_to_the_next_gpuletd(
    tmp_path: Path, piddir: Path
) -> None:
    """TERM under --on-stop=keep while a backend is still loading: it is neither killed nor
    restarted; the next gpuletd adopts it and grants it once it is healthy."""
    config = process_model("slow", 3000, piddir, "--start-delay", "4")
    d = daemon(tmp_path, config, *ROOMY, "--on-stop", "keep").start()
    loading: subprocess.Popen[str] | None = None
    pid = 0
    try:
        loading = acquire_slow_in_background(d, piddir)
        pid = pid_of(piddir, "slow")
        assert d.stop(signal.SIGTERM, keep=True) == 0, d.output()
        assert '"daemon.handed_off"' in d.output(), d.output()
        loading.wait(10)
        assert alive(pid), d.output()

        # The next one stops everything on TERM: the test leaves nothing behind.
        d.args = tuple("stop" if a == "keep" else a for a in d.args)
        d.start()
        with gpulet.Client(address=d.address) as c:
            assert wait_until(lambda: states(c)["slow"] == "loaded", timeout=15), d.output()
            assert pid_of(piddir, "slow") == pid and alive(pid)
            c.acquire("slow", ttl=60, timeout=10)
        assert '"backend.adopted"' in d.output(), d.output()
    finally:
        if loading is not None and loading.poll() is None:
            loading.kill()
        d.stop()
    assert wait_until(lambda: not alive(pid), timeout=5), pid
