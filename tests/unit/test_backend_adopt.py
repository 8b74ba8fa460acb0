"""Backends that outlive the process that started them, adopted again by another one.

Every backend here is started by a process other than pytest (a short-lived parent that exits,
or a spawner that is SIGKILLed), so that pytest is not its parent: exactly what a restarted
daemon finds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from gpuletd.backends import (
    BackendCrashedDuringStart,
    BackendRecord,
    BackendStartTimeout,
    ExitStatus,
    ProcessBackend,
    adopt,
    boot_id,
    check_health,
    pick_free_port,
    reap_leftovers,
)
from tests.unit.test_process_backend import (
    GPUS,
    SERVER,
    Harness,
    get_json,
    live_group_members,
    running,
    stat_starttime,
)

OTHER_BOOT = "00000000-0000-0000-0000-000000000000"

# A parent that starts the server in its own session, writing to its log file, and exits at
# once: the server is reparented (to PID 1 or a subreaper), as after its daemon died.
DETACH = """
import subprocess, sys
log = open(sys.argv[1], "ab")
server = subprocess.Popen(
    sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
)
print(server.pid)
"""

# A daemon stand-in that starts a backend the real way and is then SIGKILLed, as by the OOM
# killer or `kill -9`: nothing of it runs any cleanup.
SPAWN_AND_DIE = """
import asyncio, json, os, signal, sys
from pathlib import Path
from gpuletd.backends import ProcessBackend
from gpuletd.registry import Backend, Model

async def main() -> None:
    args = json.loads(sys.argv[1])
    model = Model(
        id=args["model_id"], name=args["model_id"], backend=Backend.PROCESS,
        quantization="fp16", vram_estimate_mb=1000, role_priority={"caption": 50},
        command=tuple(args["command"]),
    )

    def on_spawn(record):
        print("RECORD " + json.dumps(record.to_dict()), flush=True)

    await ProcessBackend().start(
        model, args["gpus"], timeout_s=10.0, log_dir=Path(args["log_dir"]), on_spawn=on_spawn
    )
    print("HEALTHY", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout_s} s: {condition}")
        await asyncio.sleep(0.02)


def ppid_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


class Detached:
    """Starts model servers that pytest is not the parent of, and kills them all at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self._pid_files: list[Path] = []

    async def start(self, *server_args: str, model_id: str = "adoptee") -> BackendRecord:
        port = pick_free_port()
        log = self.tmp_path / f"{model_id}.log"
        # An earlier start's output: a tail of this start must not show it.
        log.write_bytes(b"=== gpulet: an earlier start\nearlier output\n")
        offset = log.stat().st_size
        pid_file = self.tmp_path / f"{model_id}.pid"
        self._pid_files.append(pid_file)
        command = (sys.executable, str(SERVER), "--port", str(port), "--model", model_id)
        command += ("--pid-file", str(pid_file), *server_args)
        # Before the spawn, as the daemon records it: the server's start delay runs from its
        # own start, so a later stamp would make a prompt readiness look shorter than it was.
        spawned_at = time.time()
        out = subprocess.run(
            [sys.executable, "-c", DETACH, str(log), *command],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        pid = int(out.stdout)
        await self.pids(pid_file)
        return BackendRecord(
            model_id=model_id,
            pid=pid,
            start_time=stat_starttime(pid),
            pgid=pid,
            boot_id=boot_id(),
            port=port,
            gpu_uuids=GPUS,
            endpoint=f"http://127.0.0.1:{port}/v1",
            health_url=f"http://127.0.0.1:{port}/health",
            command=command,
            log_path=log,
            log_offset=offset,
            spawned_at=spawned_at,
            healthy=False,
            members=(),
        )

    async def pids(self, pid_file: Path) -> list[int]:
        await wait_until(pid_file.exists)
        return [int(p) for p in pid_file.read_text().split()]

    def pid_file(self, record: BackendRecord) -> Path:
        return self.tmp_path / f"{record.model_id}.pid"

    def track(self, pid_file: Path) -> None:
        self._pid_files.append(pid_file)

    def close(self) -> None:
        # Safety net: SIGKILL every group and setsid worker a test may have left behind.
        for pid_file in self._pid_files:
            for path in (pid_file, pid_file.with_name(pid_file.name + ".setsid")):
                if path.exists():
                    pid = int(path.read_text().split()[0])
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGKILL)


@pytest.fixture
async def detached(tmp_path: Path) -> AsyncIterator[Detached]:
    d = Detached(tmp_path)
    try:
        yield d
    finally:
        d.close()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        await h.close()


async def test_a_detached_backend_runs_on_and_is_adopted_again(harness: Harness) -> None:
    model = harness.model("--fork-child")
    first = await harness.start(model)
    leader, worker = await harness.server_pids(model)
    exits: list[ExitStatus] = []
    first.add_exit_callback(lambda b, status: exits.append(status))

    first.detach()  # a daemon that exits and leaves its backends for the next one
    harness.started.remove(first)

    assert running(leader) and running(worker)
    again = adopt(first.record)
    assert again is not None
    harness.started.append(again)
    await again.stop()
    await asyncio.sleep(0.1)  # time for a (wrong) callback of the detached one to run
    assert exits == []
    assert not running(leader) and not running(worker)


async def test_adopts_a_running_backend_that_another_process_started(detached: Detached) -> None:
    record = await detached.start("--fork-child")
    leader, worker = await detached.pids(detached.pid_file(record))
    assert ppid_of(leader) != os.getpid()

    backend = adopt(record, orphan_grace_s=1.0, kill_wait_s=3.0)

    assert backend is not None
    assert backend.adopted
    await ProcessBackend().wait_healthy(backend, 10.0)
    assert backend.healthy and backend.record.healthy
    assert await check_health(record.health_url, 2.0)
    assert (await get_json(record.endpoint + "/models"))["data"][0]["id"] == record.model_id
    tail = backend.log_tail(100)
    assert f"ready on port {record.port}" in tail
    assert "earlier output" not in tail
    assert backend.pids() == sorted([leader, worker])
    assert dict(backend.record.members) == {
        leader: stat_starttime(leader),
        worker: stat_starttime(worker),
    }

    # Killed behind our back: the exit is seen at once, though its code cannot be.
    exits: list[ExitStatus] = []
    exited = asyncio.Event()

    def on_exit(b: object, status: ExitStatus) -> None:
        exits.append(status)
        exited.set()

    backend.add_exit_callback(on_exit)
    os.kill(leader, signal.SIGKILL)
    await asyncio.wait_for(exited.wait(), 1.5)

    assert exits == [ExitStatus(None, expected=False)]
    assert exits[0].describe() == "exited (not our child: status unknown)"
    # Its orphaned worker is cleared out, as for a backend we spawned.
    await wait_until(lambda: not running(worker))
    assert live_group_members(leader) == []


async def test_stopping_an_adopted_backend_stops_all_of_it(detached: Detached) -> None:
    record = await detached.start("--fork-child")
    leader, worker = await detached.pids(detached.pid_file(record))
    backend = adopt(record)
    assert backend is not None

    await backend.stop(5.0)

    assert backend.exit_status == ExitStatus(None, expected=True)
    assert not running(leader)
    assert not running(worker)
    assert live_group_members(leader) == []
    assert "SIGTERM received, shutting down" in backend.log_tail()
    assert backend.pids() == []


async def test_adopt_refuses_what_is_not_that_process(detached: Detached) -> None:
    record = await detached.start()
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    gone = int(finished.stdout)

    assert adopt(replace(record, start_time=record.start_time + 1)) is None  # a reused pid
    assert adopt(replace(record, pid=gone, pgid=gone)) is None  # a dead one
    assert adopt(replace(record, boot_id=OTHER_BOOT)) is None  # from another boot
    assert running(record.pid)  # refusing touched nothing

    backend = adopt(record)
    assert backend is not None
    await backend.stop()
    assert adopt(record) is None  # stopped: nothing to adopt any more


async def test_an_adopted_backend_still_loading_is_waited_for(detached: Detached) -> None:
    record = await detached.start("--start-delay", "0.8")
    backend = adopt(record)
    assert backend is not None
    assert not backend.healthy

    await ProcessBackend().wait_healthy(backend, 10.0)

    assert backend.healthy
    assert backend.record.healthy
    assert backend.load_seconds is not None and backend.load_seconds >= 0.8
    await backend.stop()


async def test_an_adopted_backend_that_crashes_while_loading_fails_with_its_log(
    detached: Detached,
) -> None:
    record = await detached.start("--start-delay", "60", "--crash-after", "0.5")
    backend = adopt(record)
    assert backend is not None

    with pytest.raises(BackendCrashedDuringStart) as caught:
        await ProcessBackend().wait_healthy(backend, 20.0)

    message = str(caught.value)
    assert "exited (not our child: status unknown)" in message
    assert "fatal: simulated crash" in message  # read from its log file
    assert "earlier output" not in message
    assert caught.value.exit_code is None
    assert live_group_members(record.pid) == []


async def test_an_adopted_loading_backend_is_ready_by_a_line_it_wrote_while_no_daemon_ran(
    detached: Detached,
) -> None:
    # Never healthy, so only its log can make it ready: the line was written before it was
    # adopted, into the log its record names.
    record = await detached.start("--never-healthy")
    backend = adopt(record)
    assert backend is not None

    await ProcessBackend().wait_healthy(backend, 10.0, ready_log_pattern=r"^warming up$")

    assert backend.healthy and backend.record.healthy
    await backend.stop()


async def test_an_adopted_backend_is_not_ready_by_an_earlier_start_in_its_log(
    detached: Detached,
) -> None:
    record = await detached.start("--never-healthy")
    backend = adopt(record)
    assert backend is not None

    with pytest.raises(BackendStartTimeout) as caught:
        await ProcessBackend().wait_healthy(backend, 1.0, ready_log_pattern="earlier output")

    assert "no line of its output matched ready_log_pattern 'earlier output'" in str(caught.value)


async def test_reap_leftovers_kills_what_is_left_of_a_dead_leader(detached: Detached) -> None:
    record = await detached.start(
        "--fork-child", "--setsid-child", "--setsid-parent-exit-after", "0.3"
    )
    pid_file = detached.pid_file(record)
    leader, worker = await detached.pids(pid_file)
    [escaped] = await detached.pids(pid_file.with_name(pid_file.name + ".setsid"))
    # Out of the group and, once its parent exits, nobody's descendant: only the record's
    # members name it.
    parent = ppid_of(escaped)
    await wait_until(lambda: ppid_of(escaped) != parent)
    # A recorded member whose pid now names another process must be left alone.
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        record = replace(
            record,
            members=(
                (leader, record.start_time),
                (escaped, stat_starttime(escaped)),
                (bystander.pid, stat_starttime(bystander.pid) + 1),
            ),
        )
        os.kill(leader, signal.SIGKILL)
        await wait_until(lambda: not running(leader))
        assert running(worker) and running(escaped)

        signalled = await reap_leftovers(record, grace_s=1.0, kill_wait_s=3.0)

        assert {worker, escaped} <= set(signalled)
        assert leader not in signalled
        assert bystander.pid not in signalled
        assert not running(worker)
        assert not running(escaped)
        assert live_group_members(leader) == []
        assert bystander.poll() is None  # the stranger still runs
        assert await reap_leftovers(record, grace_s=1.0, kill_wait_s=1.0) == []
    finally:
        bystander.kill()
        bystander.wait()


async def test_reap_leftovers_ignores_a_record_from_another_boot(detached: Detached) -> None:
    record = await detached.start()

    assert await reap_leftovers(replace(record, boot_id=OTHER_BOOT)) == []
    assert running(record.pid)


async def test_a_backend_outlives_its_killed_spawner_and_is_adopted(
    detached: Detached, tmp_path: Path
) -> None:
    pid_file = tmp_path / "spawned.pid"
    detached.track(pid_file)
    command = [sys.executable, str(SERVER), "--port", "{port}", "--model", "{model}"]
    command += ["--pid-file", str(pid_file), "--fork-child"]
    args = {"model_id": "orphan", "command": command, "gpus": list(GPUS)}
    args["log_dir"] = str(tmp_path / "logs")
    spawner = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SPAWN_AND_DIE, json.dumps(args), stdout=subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(spawner.communicate(), 30.0)

    assert spawner.returncode == -signal.SIGKILL
    lines = out.decode().splitlines()
    assert "HEALTHY" in lines
    [raw] = [line.removeprefix("RECORD ") for line in lines if line.startswith("RECORD ")]
    record = BackendRecord.from_dict(json.loads(raw))
    leader, worker = [int(p) for p in pid_file.read_text().split()]
    assert record.pid == leader

    # It serves on, and keeps logging, with nobody reading its output.
    for _ in range(3):
        models = await get_json(record.endpoint + "/models")
        assert models["data"][0]["id"] == "orphan"
    assert record.log_path is not None
    log_path = record.log_path
    await wait_until(lambda: log_path.read_text().count("GET /v1/models") == 3)

    backend = adopt(record)
    assert backend is not None
    assert await check_health(backend.health_url, 2.0)
    assert "GET /v1/models" in backend.log_tail()
    await backend.stop()
    assert not running(leader)
    assert not running(worker)
