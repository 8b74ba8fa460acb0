"""Process backends against real processes (tests/model_server.py) on real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gpuletd.backends import (
    PLACEHOLDERS,
    BackendConfigError,
    BackendCrashedDuringStart,
    BackendRecord,
    BackendStartError,
    BackendStartTimeout,
    ExitStatus,
    PlaceholderValues,
    ProcessBackend,
    RunningBackend,
    expand_launch,
    pick_free_port,
    validate_placeholders,
    validate_process_model,
)
from gpuletd.backends.engines import DERIVED_PLACEHOLDERS
from gpuletd.backends.logs import LogRing
from gpuletd.registry import Backend, Model

SERVER = Path(__file__).resolve().parents[1] / "model_server.py"
GPUS = ("GPU-11111111-2222-3333-4444-555555555555", "GPU-66666666-7777-8888-9999-000000000000")


# -- helpers -------------------------------------------------------------------------------


def make_model(model_id: str = "test-model", **fields: Any) -> Model:
    base: dict[str, Any] = {
        "id": model_id,
        "name": model_id,
        "backend": Backend.PROCESS,
        "quantization": "fp16",
        "vram_estimate_mb": 1000,
        "role_priority": {"caption": 50},
    }
    base.update(fields)
    return Model(**base)


def live_group_members(pgid: int) -> list[int]:
    """Processes of group `pgid` that still run (read from /proc, independently of the code)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    # PID 1 of some containers never reaps orphans, so a killed worker may stay a zombie: it
    # runs nothing and holds no memory, so it does not count.
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stat_starttime(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def open_files() -> list[str]:
    """What this process's file descriptors point at."""
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the descriptor listdir itself used is gone
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
    return targets


async def get_json(url: str) -> Any:
    def fetch() -> Any:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)

    return await asyncio.to_thread(fetch)


class Harness:
    """Starts model_server backends and makes sure none outlives its test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        # Short graces keep the failure tests quick; the model server stops in milliseconds.
        self.backend = ProcessBackend(failure_grace_s=2.0, orphan_grace_s=1.0, kill_wait_s=3.0)
        self.started: list[RunningBackend] = []
        self._pid_files: dict[str, Path] = {}

    def model(self, *server_args: str, model_id: str | None = None, **fields: Any) -> Model:
        model_id = model_id or f"test-model-{len(self._pid_files)}"
        pid_file = self.tmp_path / f"server-{len(self._pid_files)}.pid"
        self._pid_files[model_id] = pid_file
        command: tuple[str, ...] = (sys.executable, str(SERVER), "--port", "{port}")
        command += ("--model", "{model}")
        command += ("--pid-file", str(pid_file), *server_args)
        return make_model(model_id, command=command, **fields)

    async def start(
        self, model: Model, *, timeout_s: float = 10.0, log_dir: Path | None = None
    ) -> RunningBackend:
        backend = await self.backend.start(
            model, GPUS, timeout_s=timeout_s, log_dir=log_dir or self.tmp_path / "logs"
        )
        self.started.append(backend)
        return backend

    async def server_pids(self, model: Model, suffix: str = "") -> list[int]:
        """The model server's pid (and its forked worker's), once it has written them; with
        suffix ".setsid", the pid of its worker that left the group (--setsid-child)."""
        pid_file = self._pid_files[model.id].with_suffix(".pid" + suffix)
        for _ in range(250):
            if pid_file.exists():
                return [int(p) for p in pid_file.read_text().split()]
            await asyncio.sleep(0.02)
        raise AssertionError(f"{pid_file} never appeared")

    async def close(self) -> None:
        for backend in self.started:
            await backend.stop(1.0)
        # Safety net, so a failing test cannot leave servers behind for the next ones.
        for pid_file in self._pid_files.values():
            for path in (pid_file, pid_file.with_suffix(".pid.setsid")):
                if path.exists():
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(int(path.read_text().split()[0]), signal.SIGKILL)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        await h.close()


# -- starting ------------------------------------------------------------------------------


async def test_healthy_start_serves_its_endpoint_on_the_placed_gpus(harness: Harness) -> None:
    harness.backend = ProcessBackend(
        base_env={**os.environ, "NOTIFY_SOCKET": "/run/systemd/notify", "CUDA_VISIBLE_DEVICES": "0"}
    )
    model = harness.model(env={"SERVER_PORT": "{port}", "SERVER_GPUS": "{gpu_count}"})

    backend = await harness.start(model)

    assert backend.endpoint == f"http://127.0.0.1:{backend.port}/v1"
    models = await get_json(backend.endpoint + "/models")
    assert [m["id"] for m in models["data"]] == [model.id]  # {model} reached the command line
    env = await get_json(f"http://127.0.0.1:{backend.port}/env")
    assert env["CUDA_VISIBLE_DEVICES"] == ",".join(GPUS)  # the daemon's placement, not "0"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["GPULET_MODEL_ID"] == model.id
    assert env["GPULET_PORT"] == env["SERVER_PORT"] == str(backend.port)
    assert env["SERVER_GPUS"] == "2"
    assert "NOTIFY_SOCKET" not in env  # a backend must not speak to systemd for the daemon
    assert backend.gpu_uuids == GPUS
    assert backend.pid == backend.pgid == (await harness.server_pids(model))[0]
    assert backend.process_start_time == stat_starttime(backend.pid)
    assert backend.load_seconds is not None and backend.load_seconds > 0
    assert any("loading weights" in line for line in backend.log_tail())
    assert f"ready on port {backend.port}" in backend.log_tail()

    await backend.stop()
    assert backend.exit_status == ExitStatus(0, expected=True)  # it shut down cleanly on SIGTERM
    assert live_group_members(backend.pgid) == []


async def test_slow_start_within_the_timeout_succeeds(harness: Harness) -> None:
    # Not even listening for the first 0.6 s, like vLLM while it loads weights.
    model = harness.model("--start-delay", "0.6", "--bind-late")

    backend = await harness.start(model, timeout_s=10.0)

    assert backend.load_seconds is not None and backend.load_seconds >= 0.6
    assert (await get_json(backend.endpoint + "/models"))["object"] == "list"


async def test_never_healthy_fails_after_the_timeout_and_leaves_nothing(
    harness: Harness,
) -> None:
    model = harness.model("--never-healthy", "--fork-child")
    started = time.monotonic()

    with pytest.raises(BackendStartTimeout) as caught:
        await harness.start(model, timeout_s=1.0)

    assert time.monotonic() - started >= 1.0
    error = caught.value
    message = str(error)
    assert f"model {model.id!r} failed to start" in message
    assert "did not answer 2xx within 1 s" in message
    assert "HTTP 503" in message  # what the health URL last said
    assert "autostart_timeout_seconds" in message  # what to do about it
    assert "loading weights" in message  # the backend's own output
    leader, worker = await harness.server_pids(model)
    assert error.pid == leader
    assert live_group_members(leader) == []
    assert not running(worker)


async def test_nothing_listening_says_so(harness: Harness) -> None:
    model = harness.model("--never-healthy", "--bind-late")

    with pytest.raises(BackendStartTimeout) as caught:
        await harness.start(model, timeout_s=0.5)

    assert "connection refused" in str(caught.value)
    assert "{port}" in str(caught.value)  # the usual mistake: the command ignores the port


async def test_crash_during_start_fails_at_once_with_exit_code_and_log(harness: Harness) -> None:
    model = harness.model("--start-delay", "60", "--crash-after", "0.3", "--exit-code", "3")
    started = time.monotonic()

    with pytest.raises(BackendCrashedDuringStart) as caught:
        await harness.start(model, timeout_s=20.0)

    # Reported when it died, not when the 20 s start timeout ran out.
    assert time.monotonic() - started < 10.0
    error = caught.value
    assert error.exit_code == 3
    assert "exited with code 3" in str(error)
    assert "fatal: simulated crash" in str(error)  # its stderr
    assert any("loading weights" in line for line in error.log_tail)  # its stdout
    # The last line is a command line that reproduces the failure on the same GPUs.
    reproduce = str(error).splitlines()[-1].strip()
    assert reproduce.startswith(f"CUDA_VISIBLE_DEVICES={','.join(GPUS)} {sys.executable} ")
    assert reproduce.endswith("--exit-code 3")
    assert live_group_members((await harness.server_pids(model))[0]) == []


async def test_a_command_that_does_not_exist_is_reported(harness: Harness) -> None:
    model = make_model(command=("/nonexistent/bin/model-server", "--port", "{port}"))

    with pytest.raises(BackendStartError) as caught:
        await harness.start(model)

    assert "could not run '/nonexistent/bin/model-server'" in str(caught.value)
    assert "No such file" in str(caught.value)


async def test_cancelling_a_start_leaves_nothing_running(harness: Harness) -> None:
    model = harness.model("--never-healthy", "--fork-child")
    task = asyncio.create_task(harness.start(model, timeout_s=30.0))
    leader, worker = await harness.server_pids(model)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert live_group_members(leader) == []
    assert not running(worker)


async def test_log_dir_keeps_the_full_output(harness: Harness, tmp_path: Path) -> None:
    model = harness.model(model_id="org/model:7b")
    backend = await harness.start(model, log_dir=tmp_path / "logs")
    await backend.stop()

    assert backend.log_path == tmp_path / "logs" / "org_model_7b.log"
    text = backend.log_path.read_text()
    assert text.startswith("=== gpulet: starting org/model:7b at ")
    assert "loading weights" in text
    assert "SIGTERM received, shutting down" in text


async def test_output_goes_to_the_log_file_and_a_tail_shows_only_this_start(
    harness: Harness,
) -> None:
    model = harness.model("--fork-child", model_id="chatty")
    first = await harness.start(model)
    await first.stop()

    second = await harness.start(model)

    assert second.log_path == first.log_path
    assert second.log_path is not None
    for fd in (1, 2):  # its stdout and stderr are the file itself: no pipe to the daemon
        assert os.readlink(f"/proc/{second.pid}/fd/{fd}") == str(second.log_path)
    assert str(second.log_path) not in open_files()  # the daemon keeps no descriptor on it
    text = second.log_path.read_text()
    assert text.count("=== gpulet: starting chatty at ") == 2
    assert "bye" in text  # the first start's last words are in the file...
    tail = second.log_tail(200)
    assert "bye" not in tail  # ...but not in the second start's tail
    assert not any(line.startswith("=== gpulet") for line in tail)
    assert f"ready on port {second.port}" in tail


async def test_on_spawn_gets_the_record_while_the_backend_is_still_loading(
    harness: Harness,
) -> None:
    model = harness.model("--start-delay", "0.5")
    seen: list[tuple[BackendRecord, bool]] = []

    def on_spawn(record: BackendRecord) -> None:
        seen.append((record, running(record.pid)))

    backend = await harness.backend.start(
        model, GPUS, timeout_s=10.0, log_dir=harness.tmp_path / "logs", on_spawn=on_spawn
    )
    harness.started.append(backend)

    [(record, was_running)] = seen
    assert was_running
    assert not record.healthy
    assert record.pid == record.pgid == backend.pid
    assert record.start_time == stat_starttime(backend.pid)
    assert record.boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert record.members == ((backend.pid, record.start_time),)
    assert (record.port, record.endpoint, record.health_url) == (
        backend.port,
        backend.endpoint,
        backend.health_url,
    )
    assert record.gpu_uuids == GPUS
    assert record.log_path == backend.log_path
    assert record.log_path is not None and record.log_offset > 0  # after the header line
    assert abs(record.spawned_at - time.time()) < 60
    assert backend.healthy
    assert backend.record.healthy
    assert replace(backend.record, healthy=False) == record


async def test_a_failing_on_spawn_leaves_nothing_running(harness: Harness) -> None:
    model = harness.model("--fork-child")
    spawned: list[int] = []

    def on_spawn(record: BackendRecord) -> None:
        spawned.append(record.pid)
        raise RuntimeError("store is down")

    with pytest.raises(RuntimeError, match="store is down"):
        await harness.backend.start(
            model, GPUS, timeout_s=10.0, log_dir=harness.tmp_path / "logs", on_spawn=on_spawn
        )

    [leader] = spawned
    assert not running(leader)
    assert live_group_members(leader) == []


async def test_members_are_tracked_and_kept_in_the_record(harness: Harness) -> None:
    harness.backend = ProcessBackend(member_refresh_s=0.05)
    model = harness.model("--fork-child")
    backend = await harness.start(model)
    leader, worker = await harness.server_pids(model)
    changes: list[BackendRecord] = []
    backend.add_record_callback(changes.append)

    for _ in range(250):
        if worker in dict(backend.record.members):
            break
        await asyncio.sleep(0.02)

    assert dict(backend.record.members) == {
        leader: stat_starttime(leader),
        worker: stat_starttime(worker),
    }
    await backend.stop()
    # The members that went away are forgotten; the record keeps naming its leader.
    assert backend.record.members == ((leader, backend.process_start_time),)
    assert changes and changes[-1] == backend.record


# -- after start ---------------------------------------------------------------------------


async def test_a_crash_after_start_is_noticed_at_once(harness: Harness) -> None:
    # The forked worker shares its output: noticing the exit must not wait for that to close.
    model = harness.model("--crash-after", "0.5", "--exit-code", "7", "--fork-child")
    backend = await harness.start(model)
    _, worker = await harness.server_pids(model)
    seen: list[ExitStatus] = []
    backend.add_exit_callback(lambda b, status: seen.append(status))

    assert await asyncio.wait_for(backend.wait_exit(), 5.0) == 7
    await asyncio.sleep(0)  # callbacks run on the loop right after the exit

    assert seen == [ExitStatus(7, expected=False)]
    assert backend.exit_status == ExitStatus(7, expected=False)
    # The dead leader's worker is cleared out without anyone calling stop().
    for _ in range(150):
        if not running(worker):
            break
        await asyncio.sleep(0.02)
    assert not running(worker)
    late: list[ExitStatus] = []
    backend.add_exit_callback(lambda b, status: late.append(status))
    await asyncio.sleep(0)
    assert late == [ExitStatus(7, expected=False)]  # subscribing late still hears about it


async def test_stop_kills_the_whole_process_group(harness: Harness) -> None:
    model = harness.model("--fork-child")
    backend = await harness.start(model)
    leader, worker = await harness.server_pids(model)
    assert backend.pids() == sorted([leader, worker])  # what the GPU accounting will sum
    seen: list[ExitStatus] = []
    backend.add_exit_callback(lambda b, status: seen.append(status))

    await backend.stop(grace_s=5.0)

    assert seen == [ExitStatus(0, expected=True)]
    assert live_group_members(backend.pgid) == []
    assert not running(worker)
    assert backend.pids() == []


async def test_stop_escalates_to_sigkill_after_the_grace(harness: Harness) -> None:
    model = harness.model("--ignore-sigterm", "--fork-child")
    backend = await harness.start(model)
    _, worker = await harness.server_pids(model)
    started = time.monotonic()

    await backend.stop(grace_s=0.5)

    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 5.0
    assert backend.returncode == -signal.SIGKILL
    assert live_group_members(backend.pgid) == []
    assert not running(worker)
    assert "SIGTERM received and ignored" in backend.log_tail()


async def test_stop_is_idempotent_and_survives_a_cancelled_caller(harness: Harness) -> None:
    model = harness.model("--ignore-sigterm")
    backend = await harness.start(model)

    first = asyncio.create_task(backend.stop(grace_s=0.3))
    await asyncio.sleep(0.05)
    first.cancel()  # e.g. the request that asked for the stop went away
    # The stop goes on; a second call joins it, a third returns at once.
    await asyncio.gather(backend.stop(), backend.stop())
    await backend.stop()

    assert backend.returncode == -signal.SIGKILL
    assert live_group_members(backend.pgid) == []


# -- placeholders, validation, ports, log ring ---------------------------------------------


def test_placeholders_are_expanded_everywhere() -> None:
    model = make_model(
        "qwen",
        command=("serve", "{model}", "--port", "{port}", "--host", "{host}", "-n", "{gpu_count}"),
        health_url="http://{host}:{port}/ready",
        env={"DEVICES": "{cuda_visible_devices}", "UUIDS": "{gpu_uuids}"},
    )

    launch = expand_launch(model, PlaceholderValues(port=8123, model="qwen", gpu_uuids=GPUS))

    assert launch.command == ("serve", "qwen", "--port", "8123", "--host", "127.0.0.1", "-n", "2")
    assert launch.health_url == "http://127.0.0.1:8123/ready"
    assert launch.endpoint == "http://127.0.0.1:8123/v1"  # the default
    assert launch.env == {"DEVICES": ",".join(GPUS), "UUIDS": ",".join(GPUS)}
    # The engine placeholders (docs/engines.md) come on top of the placement's own.
    assert set(PLACEHOLDERS) == {"port", "model", "gpu_uuids", "cuda_visible_devices"} | {
        "gpu_count",
        "host",
    } | set(DERIVED_PLACEHOLDERS)


def test_json_arguments_need_no_escaping_and_double_braces_are_literal() -> None:
    model = make_model(command=("serve", '{"max_model_len": {"n": 8192}}', "{{port}}", "{port}"))

    launch = expand_launch(model, PlaceholderValues(port=9000, model="m", gpu_uuids=()))

    assert launch.command[1:] == ('{"max_model_len": {"n": 8192}}', "{port}", "9000")


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"command": ("serve", "--port", "{prot}")}, "command[2] '{prot}'"),
        ({"command": ("serve",), "health_url": "http://{hots}:{port}/health"}, "health_url"),
        ({"command": ("serve",), "endpoint": "http://{host}:{prot}/v1"}, "endpoint"),
        ({"command": ("serve",), "env": {"X": "{gpus}"}}, "env['X']"),
    ],
)
def test_an_unknown_placeholder_is_named(fields: dict[str, Any], where: str) -> None:
    model = make_model(**fields)

    with pytest.raises(ValueError) as caught:
        validate_placeholders(model)

    message = str(caught.value)
    assert where in message
    assert "unknown placeholder {" in message
    assert "{port}" in message and "{gpu_uuids}" in message  # the ones that exist


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (make_model(command=()), "no command"),
        (make_model(backend=Backend.RESERVATION, command=("x",)), "not 'process'"),
        (make_model(command=("x",), env={"CUDA_VISIBLE_DEVICES": "0"}), "CUDA_VISIBLE_DEVICES"),
        (make_model(command=("x",), health_url="tcp://{host}:{port}"), "http:// or https://"),
        (make_model(command=("x",), endpoint="/v1"), "scheme and a host"),
    ],
)
async def test_a_bad_process_entry_is_refused_before_spawning(model: Model, expected: str) -> None:
    with pytest.raises(BackendConfigError, match=expected.replace("'", ".")):
        validate_process_model(model)
    with pytest.raises(BackendConfigError):
        await ProcessBackend().start(model, GPUS, timeout_s=1.0, log_dir=Path("/nonexistent"))


async def test_gpu_uuids_as_one_string_is_refused() -> None:
    model = make_model(command=("x",))
    bad: Sequence[str] = GPUS[0]
    with pytest.raises(TypeError, match="not one string"):
        await ProcessBackend().start(model, bad, timeout_s=1.0, log_dir=Path("/nonexistent"))


def test_pick_free_port_gives_distinct_bindable_loopback_ports() -> None:
    ports = [pick_free_port() for _ in range(20)]

    assert len(set(ports)) == len(ports)
    for port in ports[:3]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # raises if it was not free


def test_log_ring_keeps_recent_lines_and_the_last_state_of_a_progress_bar() -> None:
    ring = LogRing(max_lines=3)
    ring.feed(b"one\r\ntwo\nLoading: 10%\r")
    ring.feed(b"Loading: 55%\rLoad")
    ring.feed(b"ing: 100%\nthree\nunfinished")

    assert ring.tail(10) == ["Loading: 100%", "three", "unfinished"]
    assert ring.tail(2) == ["three", "unfinished"]
    ring.feed(b"x" * 100_000 + b"\n")
    assert len(ring.tail(1)[0]) < 10_000  # one runaway line cannot hold megabytes


def test_a_start_error_without_output_says_so() -> None:
    error = BackendStartError("m", "it exploded", exit_code=1)

    assert str(error) == "backend for model 'm' failed to start: it exploded. It printed nothing."
