"""Readiness signals of process backends, against real processes (tests/readiness_backend.py).

Order and causality only, no timings: a backend whose health URL cannot answer yet is ready
because of its log line or its pipe message, and nothing else could have made it so.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gpuletd.backends import BackendStartTimeout, ProcessBackend, RunningBackend, check_health
from gpuletd.backends.placeholders import Launch
from gpuletd.backends.ready_signals import LineMatcher, ReadyPipe
from gpuletd.config import load_config
from gpuletd.config_errors import ConfigError
from gpuletd.registry import Backend, Model

BACKEND = Path(__file__).resolve().parents[1] / "readiness_backend.py"
GPUS = ("GPU-11111111-2222-3333-4444-555555555555",)
VLLM_READY = "INFO:     Application startup complete."


class Starter:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.backend = ProcessBackend(failure_grace_s=1.0, orphan_grace_s=1.0, kill_wait_s=3.0)
        self.started: list[RunningBackend] = []

    def model(self, *args: str, **fields: Any) -> Model:
        command = (sys.executable, str(BACKEND), "--port", "{port}", *args)
        return Model(
            id="reader",
            name="reader",
            backend=Backend.PROCESS,
            quantization="fp16",
            vram_estimate_mb=1000,
            role_priority={},
            command=command,
            **fields,
        )

    async def start(self, model: Model, timeout_s: float = 20.0) -> RunningBackend:
        backend = await self.backend.start(
            model, GPUS, timeout_s=timeout_s, log_dir=self.tmp_path / "logs"
        )
        self.started.append(backend)
        return backend

    async def close(self) -> None:
        for backend in self.started:
            await backend.stop(1.0)


@pytest.fixture
async def starter(tmp_path: Path) -> AsyncIterator[Starter]:
    s = Starter(tmp_path)
    try:
        yield s
    finally:
        await s.close()


# -- the log line --------------------------------------------------------------------------


async def test_a_matching_log_line_makes_a_backend_without_health_endpoint_ready(
    starter: Starter, tmp_path: Path
) -> None:
    after = tmp_path / "after-ready"
    model = starter.model(
        "--health", "none", "--delay", "0.3", "--say", VLLM_READY, "--after-ready", str(after)
    )
    model = replace(model, ready_log_pattern=r"Application startup complete")

    backend = await starter.start(model)

    assert backend.healthy
    assert VLLM_READY in backend.log_tail()
    # Nothing listens on its health URL: only the line can have made it ready.
    assert not await check_health(backend.health_url, 1.0)


async def test_a_line_written_in_pieces_is_matched_once_whole_before_health_answers(
    starter: Starter, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    model = starter.model(
        "--health", "gated", "--gate", str(gate), "--say", "server ready on 8000", "--split"
    )
    model = replace(model, ready_log_pattern=r"ready on \d+")

    backend = await starter.start(model)

    assert backend.healthy
    # Its health URL says 503 until the test opens the gate, which it has not done.
    assert not await check_health(backend.health_url, 1.0)
    gate.touch()
    assert await check_health(backend.health_url, 2.0)


async def test_output_that_never_matches_times_out_and_says_so(starter: Starter) -> None:
    model = starter.model("--health", "none", "--say", "Application startup failed")
    model = replace(model, ready_log_pattern=r"startup complete")

    # Long enough for the backend's Python to start and print on a loaded machine.
    with pytest.raises(BackendStartTimeout) as caught:
        await starter.start(model, timeout_s=3.0)

    message = str(caught.value)
    assert "no line of its output matched ready_log_pattern 'startup complete'" in message
    assert "Application startup failed" in message  # its output, to compare with the pattern


async def test_health_still_counts_when_a_pattern_is_set(starter: Starter) -> None:
    model = starter.model("--health", "always", "--say", "nothing to see")
    model = replace(model, ready_log_pattern=r"never printed")

    backend = await starter.start(model)

    assert backend.healthy


async def test_earlier_starts_in_the_same_log_do_not_count(starter: Starter) -> None:
    # The first start prints the line; the second does not and must not be ready from the
    # first one's output, which is still in the same log file.
    first = starter.model("--health", "always", "--say", VLLM_READY)
    first = replace(first, ready_log_pattern="startup complete")
    backend = await starter.start(first)
    await backend.stop(1.0)
    second = starter.model("--health", "none", "--say", "loading again")
    second = replace(second, ready_log_pattern="startup complete")

    with pytest.raises(BackendStartTimeout):
        await starter.start(second, timeout_s=1.0)


# -- the ready descriptor ------------------------------------------------------------------


async def test_a_backend_writing_ready_to_its_fd_is_ready_without_health(
    starter: Starter,
) -> None:
    model = starter.model("--health", "none", "--delay", "0.3", "--ready-fd")

    backend = await starter.start(model)

    assert backend.healthy
    # Nothing listens on its health URL and it printed nothing: only the write can have
    # made it ready.
    assert not await check_health(backend.health_url, 1.0)


async def test_a_closed_ready_fd_is_not_readiness_and_health_still_decides(
    starter: Starter, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    after = tmp_path / "after-ready"
    model = starter.model(
        "--health", "gated", "--gate", str(gate), "--close-fd", "--after-ready", str(after)
    )
    with capture_logs() as logs:
        start = asyncio.ensure_future(starter.start(model))
        for _ in range(500):
            if after.exists():
                break
            await asyncio.sleep(0.02)
        assert after.exists()  # it closed its descriptor, and only then...
        gate.touch()  # ...may its health URL answer
        backend = await start  # the closed descriptor did not fail the start

    assert backend.healthy
    healthy = [e for e in logs if e["event"] == "backend.healthy"]
    assert [e["by"] for e in healthy] == ["health_url"]  # not the closed descriptor


async def test_a_late_ready_write_does_not_fail_the_backend(
    starter: Starter, tmp_path: Path
) -> None:
    late_gate = tmp_path / "late"
    result = tmp_path / "late-result"
    model = starter.model(
        "--health",
        "always",
        "--late-ready-gate",
        str(late_gate),
        "--late-ready-result",
        str(result),
    )
    backend = await starter.start(model)  # ready by its health URL

    late_gate.touch()
    for _ in range(500):
        if result.exists() and result.read_text():
            break
        await asyncio.sleep(0.02)

    assert result.read_text() == "ok"  # not BrokenPipeError
    assert backend.exit_status is None


async def test_the_ready_fd_is_named_in_the_environment_and_not_inherited_elsewhere() -> None:
    before = open_fds()
    pipe = ReadyPipe()
    try:
        ends = open_fds() - before
        assert len(ends) == 2 and pipe.child_fd in ends
        # A child spawned meanwhile without pass_fds (another backend) gets neither end,
        # even with every inheritable descriptor kept.
        probe = subprocess.run(
            [sys.executable, "-c", FD_OPEN, *map(str, sorted(ends))], close_fds=False, check=False
        )
        assert probe.returncode == 0
        model = Model(
            id="m",
            name="m",
            backend=Backend.PROCESS,
            quantization="fp16",
            vram_estimate_mb=1,
            role_priority={},
            command=("true",),
        )
        launch = Launch(command=("true",), env={}, endpoint="", health_url="")
        env = ProcessBackend(base_env={"GPULET_READY_FD": "99"}).environment(
            model, launch, GPUS, 1234, ready_fd=pipe.child_fd
        )
        assert env["GPULET_READY_FD"] == str(pipe.child_fd)
        without = ProcessBackend(base_env={"GPULET_READY_FD": "99"}).environment(
            model, launch, GPUS, 1234
        )
        assert "GPULET_READY_FD" not in without  # the daemon's own names nothing here
    finally:
        pipe.close()


async def test_a_backend_that_cannot_be_spawned_leaves_no_pipe_open(starter: Starter) -> None:
    model = starter.model("--health", "always")
    model = replace(model, command=(*model.command, "bad\0argument"))
    before = open_fds()

    with pytest.raises(ValueError, match="null byte"):
        await starter.start(model)

    assert open_fds() == before


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


# Exits 1 if any of the descriptors in argv is open in the process.
FD_OPEN = """
import os, sys
for fd in map(int, sys.argv[1:]):
    try:
        os.fstat(fd)
    except OSError:
        continue
    sys.exit(1)
"""


# -- line matching -------------------------------------------------------------------------


def test_line_matcher_matches_whole_lines_only() -> None:
    matcher = LineMatcher(re.compile(r"^ready$"))

    assert matcher.feed(b"not ready\nrea") is None
    assert matcher.feed(b"dy") is None  # not ended yet
    assert matcher.feed(b"\r\n") == "ready"


def test_line_matcher_sees_progress_bar_lines_and_bad_utf8() -> None:
    matcher = LineMatcher(re.compile(r"100%"))

    assert matcher.feed(b"Loading \xff 10%\rLoading 50%\r") is None
    assert matcher.feed(b"Loading 100%\r") == "Loading 100%"


def test_line_matcher_bounds_a_runaway_line() -> None:
    matcher = LineMatcher(re.compile(r"tail"))

    assert matcher.feed(b"x" * 100_000 + b"tail\n") is None  # past the first 8 KiB
    assert matcher.feed(b"tail\n") == "tail"


def test_line_matcher_matches_the_first_8_kib_of_a_line_split_over_reads() -> None:
    matcher = LineMatcher(re.compile(r"^x{8192}$"))

    assert matcher.feed(b"x" * 5000) is None
    assert matcher.feed(b"x" * 5000 + b"tail") is None  # its first 8 KiB are all x
    assert matcher.feed(b"\r") == "x" * 8192


def test_line_matcher_ends_lines_at_lf_cr_and_crlf_even_across_reads() -> None:
    # Every kind of line end, in one big read: each line is found, and only whole lines.
    chatty = b"".join(b"shard %d of 9000\n" % i for i in range(9000))
    ends = (b"\n", b"\r", b"\r\n")
    for i, end in enumerate(ends):
        matcher = LineMatcher(re.compile(r"^step \d$"))
        assert matcher.feed(chatty + b"step %d" % i + b"x" + end) is None
        assert matcher.feed(chatty + b"step %d" % i + end) == f"step {i}"
    # A CRLF split over two reads ends one line; the LF starts no line of its own.
    matcher = LineMatcher(re.compile(r"^start 1$"))
    assert matcher.feed(b"start 1x\r") is None
    assert matcher.feed(b"\nstart 1") is None
    assert matcher.feed(b"\r\n") == "start 1"


# -- config --------------------------------------------------------------------------------


def test_a_bad_pattern_is_refused_at_config_load_with_file_and_line() -> None:
    text = """
[models.llm]
vram_estimate_mb = 1000
backend = "process"
command = ["serve", "--port", "{port}"]
ready_log_pattern = "Application (startup complete"
"""
    with pytest.raises(ConfigError) as caught:
        load_config([], texts=[("models.toml", text)])

    message = str(caught.value)
    assert message.startswith("models.toml:6:")
    assert "ready_log_pattern" in message
    assert "missing )" in message


def test_a_good_pattern_is_kept() -> None:
    text = """
[models.llm]
vram_estimate_mb = 1000
backend = "process"
command = ["serve", "--port", "{port}"]
ready_log_pattern = 'Application startup complete\\.'
"""
    model = load_config([], texts=[("models.toml", text)]).registry.models["llm"]

    assert model.ready_log_pattern == r"Application startup complete\."
