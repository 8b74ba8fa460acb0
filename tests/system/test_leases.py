"""Leases end to end: the real daemon, real backend processes (tests/model_server.py), the CLI
and the Python client."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

import gpulet
from tests.helpers import Daemon

pytestmark = pytest.mark.system

SERVER = Path(__file__).resolve().parents[1] / "model_server.py"


def process_model(
    mid: str,
    vram: int,
    piddir: Path,
    *extra: str,
    roles: str = "caption = 50",
    timeout: float | None = None,
    grace: float | None = None,
) -> str:
    cmd = [
        sys.executable,
        str(SERVER),
        "--port",
        "{port}",
        "--model",
        "{model}",
        "--pid-file",
        str(piddir / f"{mid}.pid"),
        *extra,
    ]
    lines = [
        f"[models.{mid}]",
        'backend = "process"',
        'quantization = "q4_k_m"',
        f"vram_estimate_mb = {vram}",
        f"role_priority = {{ {roles} }}",
        f"command = {json.dumps(cmd)}",
        'health_url = "http://127.0.0.1:{port}/health"',
        'endpoint = "http://127.0.0.1:{port}/v1"',
    ]
    if timeout is not None:
        lines.append(f"autostart_timeout_seconds = {timeout}")
    if grace is not None:
        lines.append(f"grace_period_seconds = {grace}")
    return "\n".join(lines) + "\n"


def reservation_model(mid: str, vram: int, roles: str = "caption = 50") -> str:
    return (
        f'[models.{mid}]\nbackend = "reservation"\nquantization = "fp16"\n'
        f"vram_estimate_mb = {vram}\nrole_priority = {{ {roles} }}\n"
    )


def pid_of(piddir: Path, mid: str) -> int:
    return int((piddir / f"{mid}.pid").read_text().split()[0])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose (it holds no GPU memory): look at its state.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def wait_until(cond: object, timeout: float = 10.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(step)
    return bool(cond())  # type: ignore[operator]


def daemon_for(tmp_path: Path, config: str, *args: str, gpus: str = "16384") -> Daemon:
    """gpuletd on `config` (written to tmp_path), checking its invariants after every event."""
    cfg = tmp_path / "gpulet.toml"
    cfg.write_text(config)
    return Daemon(
        "--config", str(cfg), "--simulated-gpus", gpus, *args, env={"GPULET_CHECK_INVARIANTS": "1"}
    )


def start_daemon(tmp_path: Path, config: str, *args: str, gpus: str = "16384") -> Daemon:
    return daemon_for(tmp_path, config, *args, gpus=gpus).start()


def test_queued_request_is_granted_when_the_holder_releases(tmp_path: Path, piddir: Path) -> None:
    config = process_model("model-a", 10000, piddir) + process_model("model-b", 9000, piddir)
    d = start_daemon(tmp_path, config, "--profile", "constrained_16gb")
    try:
        with gpulet.Client(address=d.address) as c:
            a = c.acquire("model-a", ttl=30)
            assert a.endpoint.startswith("http://127.0.0.1:") and a.gpu_uuids
            a_pid = pid_of(piddir, "model-a")
            assert alive(a_pid)
            progress: list[gpulet.lease.Progress] = []
            got: dict[str, gpulet.lease.Lease] = {}

            def take_b() -> None:
                with gpulet.Client(address=d.address) as c2:
                    got["b"] = c2.acquire("model-b", on_progress=progress.append, timeout=30)

            import threading

            t = threading.Thread(target=take_b)
            t.start()
            assert wait_until(lambda: any(p.state == "queued" for p in progress))
            assert progress[0].position == 1
            time.sleep(0.3)
            assert "b" not in got  # still waiting while A is held
            c.release(a.lease_id, a.token)
            t.join(20)
            assert "b" in got, "B was not granted after A was released"
            # One model at a time on constrained_16gb: A's process is gone by the time B runs.
            assert not alive(a_pid)
            assert alive(pid_of(piddir, "model-b"))
            models = {m.id: m for m in c.models()}
            assert models["model-b"].lease_count == 1, d.output()
            c.release(got["b"].lease_id, got["b"].token)
    finally:
        d.stop()
    assert "invariant" not in d.output(), d.output()


def test_released_model_unloads_right_after_its_grace_period(tmp_path: Path, piddir: Path) -> None:
    grace = 3.0
    d = start_daemon(tmp_path, process_model("m", 4000, piddir, grace=grace))
    try:
        with gpulet.Client(address=d.address) as c:
            lease = c.acquire("m")
            pid = pid_of(piddir, "m")
            c.release(lease.lease_id, lease.token)
            released = time.monotonic()
            # Warm through the grace period (a new request would reuse it)...
            time.sleep(grace * 0.3)
            assert alive(pid)
            # ...and gone less than a second after it.
            assert wait_until(
                lambda: not alive(pid), timeout=grace + 1.0 - (time.monotonic() - released)
            )
            state = {m.id: m.state for m in c.models()}["m"]
            assert state in (gpulet.ModelState.UNLOADED, gpulet.ModelState.UNLOADING)
    finally:
        d.stop()


def test_unrenewed_lease_expires_and_renew_then_fails(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, reservation_model("r", 2000))
    try:
        with gpulet.Client(address=d.address) as c:
            lease = c.acquire("r", ttl=2.0)
            assert [x.lease_id for x in c.list_leases()] == [lease.lease_id]
            assert wait_until(lambda: not c.list_leases(), timeout=4)
            with pytest.raises(gpulet.NotFound) as e:
                c.renew(lease.lease_id, lease.token)
            assert "expired" in e.value.message
    finally:
        d.stop()


def test_model_larger_than_the_budget_is_refused_at_once(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, reservation_model("huge", 20000) + reservation_model("ok", 1000))
    try:
        r = d.cli("lease", "acquire", "huge", "--timeout", "30")
        assert r.returncode != 0
        assert "20000" in r.stderr and "14000" in r.stderr  # the numbers
        with gpulet.Client(address=d.address) as c, pytest.raises(gpulet.ModelTooLarge):
            c.acquire("huge")
        with gpulet.Client(address=d.address) as c, pytest.raises(gpulet.NotFound):
            c.acquire("ghost")
    finally:
        d.stop()


def test_never_healthy_backend_fails_and_leaves_nothing_behind(
    tmp_path: Path, piddir: Path
) -> None:
    config = process_model("sick", 6000, piddir, "--never-healthy", timeout=1.5)
    d = start_daemon(tmp_path, config)
    try:
        with gpulet.Client(address=d.address) as c:
            with pytest.raises(gpulet.BackendFailed) as e:
                c.acquire("sick", timeout=30)
            assert "sick" in e.value.message
            # The backend's own verdict, with its last log lines, reaches the client.
            assert "loading weights" in e.value.message
            pid = pid_of(piddir, "sick")
            # The waiter is told at the timeout; the group is killed and only then is the
            # reservation given back (its memory is in use until the process is gone).
            assert wait_until(lambda: not alive(pid), timeout=5)

            def released() -> bool:
                gpu = c.gpu_status().gpus[0]
                return gpu.used_mb == 0 and not gpu.placed

            assert wait_until(released, timeout=5)
            assert {m.id: m for m in c.models()}["sick"].lease_count == 0
    finally:
        d.stop()


def test_backend_crash_is_noticed_and_the_next_request_restarts_it(
    tmp_path: Path, piddir: Path
) -> None:
    config = process_model("flaky", 3000, piddir, "--crash-after", "3.0")
    d = start_daemon(tmp_path, config)
    try:
        # Subscribed before the model starts, so the crash (3 s after its start) is seen.
        events = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "gpulet"),
                "--address",
                d.address,
                "watch",
                "--json",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        with gpulet.Client(address=d.address) as c:
            lease = c.acquire("flaky", ttl=30)
            try:
                assert wait_until(lambda: not c.list_leases(), timeout=10)
                with pytest.raises(gpulet.LeaseError):
                    c.renew(lease.lease_id, lease.token)
                again = c.acquire("flaky", timeout=30)  # restarted (after a short backoff)
                assert again.lease_id != lease.lease_id
            finally:
                events.terminate()
                out, _ = events.communicate(timeout=10)
            seen = [json.loads(line) for line in out.splitlines() if line.strip()]
            died = [e for e in seen if e.get("kind") == "backend_died"]
            assert [e["lease_id"] for e in died] == [lease.lease_id]
            # Who lost it and where, although the lease itself is gone.
            assert died[0]["client_name"] == lease.client_name and died[0]["gpu_uuids"]
    finally:
        d.stop()


def test_gpulet_run_holds_a_lease_and_passes_the_exit_code(tmp_path: Path, piddir: Path) -> None:
    d = start_daemon(tmp_path, process_model("m", 3000, piddir))
    try:
        script = (
            "import os, sys; "
            "print(os.environ['CUDA_VISIBLE_DEVICES'], os.environ['GPULET_ENDPOINT'], "
            "os.environ['GPULET_LEASE_ID']); sys.exit(7)"
        )
        r = d.cli("run", "m", "--", sys.executable, "-c", script)
        assert r.returncode == 7, r.stderr
        uuids, endpoint, lease_id = r.stdout.split()
        with gpulet.Client(address=d.address) as c, c.lease("m"):
            gpus = d.cli_json("gpus", "--processes")["gpus"]
            procs = [p for g in gpus for p in g["processes"]]
            # The backend is listed as gpuletd's own, with the model it serves.
            assert [(p["pid"], p["model_id"], p["managed"]) for p in procs] == [
                (pid_of(piddir, "m"), "m", True)
            ]
            assert gpus[0]["placed"] == [{"model_id": "m", "reservation_mb": 3000}]
        assert uuids.startswith("GPU-") and endpoint.startswith("http://127.0.0.1:")
        assert lease_id.startswith("l-")
        with gpulet.Client(address=d.address) as c:
            assert not c.list_leases()  # released when the command ended
        ok = d.cli("run", "--role", "caption", "--", sys.executable, "-c", "pass")
        assert ok.returncode == 0, ok.stderr
    finally:
        d.stop()


def test_lease_cli_json_and_token_checks(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, reservation_model("r", 2000))
    try:
        acquired = d.cli("lease", "acquire", "--role", "caption", "--json")
        assert acquired.returncode == 0, acquired.stderr
        # JSON lines: each step (loading), then the grant.
        *steps, lease = [json.loads(line) for line in acquired.stdout.splitlines()]
        assert lease["state"] == "granted" and all(s["state"] != "granted" for s in steps)
        assert {
            "lease_id",
            "token",
            "model_id",
            "gpu_uuids",
            "cuda_visible_devices",
            "endpoint",
            "expires_at",
        } <= set(lease)
        listed = d.cli_json("lease", "list")["leases"]
        assert [x["lease_id"] for x in listed] == [lease["lease_id"]]
        assert "token" not in listed[0]
        models = {m["id"]: m for m in d.cli_json("models")["models"]}
        assert models["r"]["state"] == "loaded" and models["r"]["lease_count"] == 1
        bad = d.cli("lease", "release", lease["lease_id"], "--token", "nope")
        assert bad.returncode != 0 and "not your lease" in bad.stderr
        malformed = d.cli("lease", "release", "xyz", "--token", "t")
        assert malformed.returncode != 0 and "lease_id" in malformed.stderr
        assert d.cli("lease", "renew", lease["lease_id"], "--token", lease["token"]).returncode == 0
        assert (
            d.cli("lease", "release", lease["lease_id"], "--token", lease["token"]).returncode == 0
        )
        assert d.cli_json("lease", "list")["leases"] == []
    finally:
        d.stop()


def test_200_concurrent_clients_on_two_16gb_gpus(tmp_path: Path) -> None:
    sizes = {"a": 10600, "b": 6400, "c": 3500, "d": 2600, "e": 13800, "f": 1000}
    config = "".join(reservation_model(k, v) for k, v in sizes.items())
    d = start_daemon(tmp_path, config, "--set", "grace_period_seconds=0.2", gpus="16384,16384")
    outcomes: list[str] = []

    async def one(i: int, rng: random.Random) -> None:
        async with gpulet.AsyncClient(address=d.address, timeout=60) as c:
            try:
                async with c.lease(
                    rng.choice(list(sizes)), ttl=20, priority=rng.randint(0, 2), timeout=90
                ):
                    await asyncio.sleep(rng.uniform(0, 0.05))
                outcomes.append("ok")
            except gpulet.GpuletError as e:
                outcomes.append(type(e).__name__)

    async def main() -> None:
        rng = random.Random(1234)
        await asyncio.gather(*(one(i, rng) for i in range(200)))

    try:
        asyncio.run(main())
        with gpulet.Client(address=d.address) as c:
            assert not c.list_leases()
            for g in c.gpu_status().gpus:
                assert sum(p.reservation_mb for p in g.placed) <= g.total_mb - 2048
    finally:
        d.stop()
    assert outcomes.count("ok") == 200, outcomes
    # The daemon checked the scheduler's invariants after every event (GPULET_CHECK_INVARIANTS).
    assert "invariant violated" not in d.output()


def test_shutdown_kills_a_sigterm_proof_backend_caught_mid_unload(
    tmp_path: Path, piddir: Path
) -> None:
    config = process_model("stubborn", 4000, piddir, "--ignore-sigterm", grace=0.2)
    d = start_daemon(tmp_path, config, "--stop-grace", "1.0")
    with gpulet.Client(address=d.address) as c:
        lease = c.acquire("stubborn")
        pid = pid_of(piddir, "stubborn")
        c.release(lease.lease_id, lease.token)
        time.sleep(0.5)  # grace over: its unload has begun and SIGTERM was ignored
        assert alive(pid)
    assert d.stop() == 0
    # Once the daemon has exited, the backend is gone too: the stop ran to its SIGKILL.
    assert not alive(pid)


def test_shutdown_tells_queued_requests_it_is_shutting_down(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, reservation_model("a", 9000) + reservation_model("b", 9000))
    with gpulet.Client(address=d.address) as c:
        c.acquire("a")
        waiter = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "gpulet"),
                "--address",
                d.address,
                "lease",
                "acquire",
                "b",
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)  # queued behind a (one model at a time)
        assert waiter.poll() is None
    assert d.stop() == 0
    _, err = waiter.communicate(timeout=10)
    assert waiter.returncode == 6  # unreachable: gpuletd is shutting down
    assert "shutting down" in err
