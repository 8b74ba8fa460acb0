"""Stopping all of a backend: workers that leave its group, orphans, and reaping them.

The case: a launcher forks a worker that calls setsid() (out of the backend's process group),
and the worker's parent then exits (so it is nobody's descendant either). killpg misses it,
a walk down from the leader misses it; only having seen it earlier finds it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gpuletd.backends import ProcessBackend, reap_orphans, reaper
from gpuletd.backends.procfs import read_proc_stat
from tests.unit.test_backend_adopt import ppid_of, wait_until
from tests.unit.test_process_backend import (
    GPUS,
    SERVER,
    Harness,
    live_group_members,
    running,
)

# A daemon stand-in that is a child subreaper, as gpuletd makes itself: it starts a backend
# whose setsid'd worker is orphaned, stops the backend, and reaps what comes back to it.
SUBREAPER = """
import asyncio, json, os, sys, time
from pathlib import Path
from gpuletd.backends import ProcessBackend, become_subreaper, reap_orphans
from gpuletd.backends.procfs import children_of, read_proc_stat
from gpuletd.backends.reaper import is_subreaper
from gpuletd.registry import Backend, Model

async def main() -> None:
    args = json.loads(sys.argv[1])
    result = {"subreaper": become_subreaper() and is_subreaper()}
    model = Model(
        id="m", name="m", backend=Backend.PROCESS, quantization="fp16",
        vram_estimate_mb=1000, role_priority={"caption": 50}, command=tuple(args["command"]),
    )
    backend = await ProcessBackend(member_refresh_s=0.05).start(
        model, args["gpus"], timeout_s=10.0, log_dir=Path(args["log_dir"])
    )
    setsid_file = Path(args["pid_file"] + ".setsid")
    while not setsid_file.exists():
        await asyncio.sleep(0.02)
    escaped = int(setsid_file.read_text())
    deadline = time.monotonic() + 10.0
    while read_proc_stat(escaped).ppid != os.getpid() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    result["escaped"] = escaped
    result["inherited"] = read_proc_stat(escaped).ppid == os.getpid()
    result["leader"] = backend.pid
    # Reap all along, while the leader is being stopped: its status must stay asyncio's.
    reaped = []
    stop = asyncio.ensure_future(backend.stop(5.0))
    def zombies():
        return [s.pid for s in children_of(os.getpid()) if s.zombie]

    # The middle process, a zombie of the leader, comes to us too once the leader is gone.
    while not stop.done() or read_proc_stat(escaped) is not None or zombies():
        reaped += reap_orphans()
        await asyncio.sleep(0.005)
        if time.monotonic() > deadline + 10.0:
            break
    result["reaped"] = reaped
    result["returncode"] = backend.returncode
    result["zombies_left"] = zombies()
    print("RESULT " + json.dumps(result), flush=True)

asyncio.run(main())
"""


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path)
    h.backend = ProcessBackend(member_refresh_s=0.05, failure_grace_s=2.0, kill_wait_s=3.0)
    try:
        yield h
    finally:
        await h.close()


def pgid_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[2])


async def test_stop_reaches_a_worker_that_left_the_group_and_lost_its_parent(
    harness: Harness,
) -> None:
    model = harness.model("--setsid-child", "--setsid-parent-exit-after", "0.5")
    backend = await harness.start(model)
    [escaped] = await harness.server_pids(model, ".setsid")
    parent = ppid_of(escaped)
    await wait_until(lambda: ppid_of(escaped) != parent)
    # Neither killpg nor a walk down from the leader reaches it any more.
    assert pgid_of(escaped) != backend.pgid
    assert ppid_of(escaped) != backend.pid

    assert escaped in backend.pids()
    assert escaped in dict(backend.record.members)
    await backend.stop(5.0)

    assert not running(escaped)
    assert live_group_members(backend.pgid) == []


async def test_a_dead_leader_takes_its_escaped_worker_with_it(harness: Harness) -> None:
    model = harness.model(
        "--setsid-child", "--setsid-parent-exit-after", "0.3", "--crash-after", "1.0"
    )
    backend = await harness.start(model)
    [escaped] = await harness.server_pids(model, ".setsid")

    assert await asyncio.wait_for(backend.wait_exit(), 10.0) == 1

    await wait_until(lambda: not running(escaped))
    assert live_group_members(backend.pgid) == []


async def test_a_subreaper_inherits_an_orphaned_worker_and_reaps_it(tmp_path: Path) -> None:
    pid_file = tmp_path / "server.pid"
    command = [sys.executable, str(SERVER), "--port", "{port}", "--pid-file", str(pid_file)]
    command += ["--setsid-child", "--setsid-parent-exit-after", "0.3"]
    args = {"command": command, "gpus": list(GPUS), "log_dir": str(tmp_path / "logs")}
    args["pid_file"] = str(pid_file)
    helper = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SUBREAPER, json.dumps(args), stdout=subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(helper.communicate(), 60.0)

    assert helper.returncode == 0
    [raw] = [line[7:] for line in out.decode().splitlines() if line.startswith("RESULT ")]
    result = json.loads(raw)
    assert result["subreaper"]
    assert result["inherited"]  # orphaned, it came to the subreaper, not to PID 1
    reaped = dict(result["reaped"])
    assert reaped[result["escaped"]] == -15  # stopped by our SIGTERM, then reaped by us
    # And the middle process, which exited on its own: a zombie of the leader, then ours.
    assert sorted(reaped.values()) == [-15, 0]
    assert result["leader"] not in reaped  # never taken from asyncio's child watcher...
    assert result["returncode"] == 0  # ...which got the leader's real exit code
    assert result["zombies_left"] == []
    assert not running(result["escaped"])
    assert not running(result["leader"])


def test_reap_orphans_reaps_only_zombie_children_that_nobody_waits_for() -> None:
    pid = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 3"], dict(os.environ))
    try:
        for _ in range(500):
            stat = read_proc_stat(pid)
            if stat is not None and stat.zombie:
                break
            time.sleep(0.01)
        reaper.claim(pid)
        try:
            assert pid not in dict(reap_orphans())  # claimed: asyncio waits for it
        finally:
            reaper.release(pid)
        assert pid not in dict(reap_orphans(skip={pid}))  # the caller waits for it
        with reaper.spawning():
            assert reap_orphans() == []  # a new child's pid is not known yet

        assert dict(reap_orphans())[pid] == 3
        assert read_proc_stat(pid) is None
    finally:
        if read_proc_stat(pid) is not None:
            os.waitpid(pid, 0)
