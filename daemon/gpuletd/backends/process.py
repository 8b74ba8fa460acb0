"""Process backends: start a model's serving process, wait until it is healthy.

The daemon's async shell calls `ProcessBackend.start` when the scheduler core decides "start
backend" (persisting the record `on_spawn` hands it), feeds the outcome back as "healthy" or
"failed", registers an exit callback that feeds "died", and calls `RunningBackend.stop` on
"stop backend". After a restart it `adopt`s the recorded backends and, for one that was still
loading, `wait_healthy`s it. Nothing here decides policy.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from gpuletd.backends import reaper
from gpuletd.backends.adopt import adopt
from gpuletd.backends.errors import (
    TAIL_IN_MESSAGE,
    BackendCrashedDuringStart,
    BackendStartError,
    BackendStartTimeout,
)
from gpuletd.backends.handles import ChildHandle
from gpuletd.backends.health import HealthProbe, wait_healthy
from gpuletd.backends.logs import open_log_file
from gpuletd.backends.placeholders import (
    LOOPBACK_HOST,
    Launch,
    PlaceholderValues,
    Placement,
    expand_launch,
    validate_process_model,
)
from gpuletd.backends.ports import pick_free_port
from gpuletd.backends.procfs import boot_id, process_start_time
from gpuletd.backends.ready_signals import READY_FD_ENV, ReadyPipe, wait_for_log_line
from gpuletd.backends.record import BackendRecord
from gpuletd.backends.running import RunningBackend
from gpuletd.backends.schedule import PollSchedule
from gpuletd.registry import Model

__all__ = ["ProcessBackend"]

_log = structlog.get_logger("gpuletd.backends")

# Never passed on to a backend: they describe the daemon's own systemd service. A backend that
# inherited NOTIFY_SOCKET could tell systemd "READY" or "STOPPING" in the daemon's name.
_DAEMON_ONLY_ENV = frozenset(
    {"NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"}
)


@dataclass(frozen=True)
class _Outcome:
    # What showed it ready: "health_url", "log_line" or "ready_fd"; None: it never was.
    ready_by: str | None
    last_probe: HealthProbe


def _said_ready(task: asyncio.Future[bool], model_id: str) -> bool:
    if task.cancelled():
        return False
    if (exc := task.exception()) is not None:
        # A bug in one signal must not fail the start: the health checks still decide.
        _log.error("backend.ready_signal_failed", model=model_id, error=repr(exc), exc_info=exc)
        return False
    return task.result()


class ProcessBackend:
    """Starts process backends; stateless between starts (the daemon owns what is running)."""

    def __init__(
        self,
        *,
        host: str = LOOPBACK_HOST,
        base_env: Mapping[str, str] | None = None,
        failure_grace_s: float = 5.0,
        orphan_grace_s: float = 2.0,
        kill_wait_s: float = 5.0,
        member_refresh_s: float = 1.0,
        poll: PollSchedule | None = None,
        log_poll_s: float = 0.02,
    ) -> None:
        """`base_env` defaults to the daemon's environment at each start.

        `failure_grace_s`: SIGTERM grace for a backend stopped because its start failed.
        `orphan_grace_s`: SIGTERM grace for the workers left behind by a leader that died.
        `kill_wait_s`: how long to wait for the group to vanish after SIGKILL.
        `member_refresh_s`: how often a running backend's process tree is scanned for new
        members (workers that leave its group are found only while their parent lives).
        `poll`: when the health URL of a starting backend is asked (see `schedule`), around
        the expected load time of each start. `log_poll_s`: how often its log is read for its
        `ready_log_pattern`.
        """
        self._host = host
        self._base_env = base_env
        self._failure_grace_s = failure_grace_s
        self._orphan_grace_s = orphan_grace_s
        self._kill_wait_s = kill_wait_s
        self._member_refresh_s = member_refresh_s
        self._poll = poll or PollSchedule()
        self._log_poll_s = log_poll_s

    def environment(
        self,
        model: Model,
        launch: Launch,
        gpu_uuids: Sequence[str],
        port: int,
        *,
        ready_fd: int | None = None,
    ) -> dict[str, str]:
        base = os.environ if self._base_env is None else self._base_env
        env = {key: value for key, value in base.items() if key not in _DAEMON_ONLY_ENV}
        # Python backends (vLLM, SGLang) would hold their log lines in a block buffer when
        # writing to a pipe, and a crash log tail would then miss the lines that explain it.
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(launch.env)
        env.update(
            {
                # NVML numbers GPUs by PCI bus, CUDA by speed by default: without this, index 0
                # may be two different GPUs. UUIDs make it unambiguous either way.
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                "CUDA_VISIBLE_DEVICES": ",".join(gpu_uuids),
                "GPULET_MODEL_ID": model.id,
                "GPULET_PORT": str(port),
            }
        )
        if ready_fd is not None:
            env[READY_FD_ENV] = str(ready_fd)
        else:
            env.pop(READY_FD_ENV, None)  # the daemon's own, if any, names nothing here
        return env

    async def start(
        self,
        model: Model,
        gpu_uuids: Sequence[str],
        *,
        timeout_s: float,
        log_dir: Path,
        on_spawn: Callable[[BackendRecord], None] | None = None,
        expected_load_s: float | None = None,
        placement: Placement | None = None,
    ) -> RunningBackend:
        """Spawn `model`'s command on `gpu_uuids` and return once it is ready: its health URL
        answered 2xx, a line of its output matched its `ready_log_pattern`, or it wrote
        `READY` to the pipe named by `GPULET_READY_FD`, whichever came first. The health URL
        is asked most often around `expected_load_s` (the load time learnt for the model).

        Its stdout and stderr are `<log_dir>/<model>.log`, written by the backend itself, so
        that it keeps running and logging whatever happens to the daemon. `on_spawn(record)`
        is called synchronously as soon as the process exists, before any waiting, so that
        the caller can persist the record first; if it raises, the backend is killed and the
        error propagates.

        Raises `BackendConfigError` (before spawning) for a bad registry entry, and a
        `BackendStartError` when it cannot be spawned, exits during start (raised as soon as it
        exits) or is not healthy within `timeout_s` (it is stopped first). If the calling task
        is cancelled, every member is killed before the cancellation propagates. Whatever
        fails, nothing of the backend is left running.
        """
        validate_process_model(model)
        if isinstance(gpu_uuids, str):
            # A bare string is a Sequence[str] too: "GPU-1a2b" would become "G,P,U,-,...".
            raise TypeError("gpu_uuids must be a sequence of GPU UUIDs, not one string")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        uuids = tuple(gpu_uuids)
        port = pick_free_port(self._host)
        # `placement` (reservations, GPU sizes, the profile's engine table) feeds engine presets.
        values = PlaceholderValues(port, model.id, uuids, self._host, placement or Placement())
        launch = expand_launch(model, values)
        log_file = open_log_file(log_dir, model.id, launch.command)
        output: int = log_file.fd if log_file is not None else subprocess.DEVNULL
        ready_pipe = ReadyPipe()
        process: asyncio.subprocess.Process | None = None
        try:
            env = self.environment(model, launch, uuids, port, ready_fd=ready_pipe.child_fd)
            # Until the handle claims the new pid, the orphan reaper must not reap anything:
            # it could take the exit status asyncio is about to wait for.
            with reaper.spawning():
                process = await asyncio.create_subprocess_exec(
                    *launch.command,
                    stdin=subprocess.DEVNULL,
                    # The file itself, not a pipe: a pipe dies with the daemon, and then every
                    # write of the backend fails (EPIPE) and many servers fail the request.
                    stdout=output,
                    stderr=output,
                    env=env,
                    # Own session and process group: one killpg reaches every worker it forks,
                    # and a Ctrl-C on the daemon's terminal does not reach it.
                    start_new_session=True,
                    # Keep SIGPIPE ignored (Python's setting) instead of the default "die": a
                    # server writing to a client that hung up should see EPIPE, not be killed.
                    restore_signals=False,
                    pass_fds=(ready_pipe.child_fd,),
                )
                handle = ChildHandle(process)
        except OSError as exc:
            raise BackendStartError(
                model.id,
                f"could not run {launch.command[0]!r}: {exc.strerror or exc}",
                hint="Check the command in its registry entry and that the program is "
                "installed and on the daemon's PATH.",
                log_path=log_file.path if log_file is not None else None,
            ) from exc
        finally:
            if log_file is not None:
                os.close(log_file.fd)  # the child has its copies
            if process is None:
                # Not spawned (an OSError, a bad argument, a cancel): no backend will ever
                # close the read end for us.
                ready_pipe.close()
            else:
                ready_pipe.spawned()

        record = BackendRecord(
            model_id=model.id,
            pid=process.pid,
            # 0 if it is gone already (asyncio reaped it): then no member check ever matches,
            # which is right, since there is nothing left to signal.
            start_time=process_start_time(process.pid) or 0,
            pgid=process.pid,
            boot_id=boot_id(),
            port=port,
            gpu_uuids=uuids,
            endpoint=launch.endpoint,
            health_url=launch.health_url,
            command=launch.command,
            log_path=log_file.path if log_file is not None else None,
            log_offset=log_file.offset if log_file is not None else 0,
            spawned_at=time.time(),
            healthy=False,
            members=(),
        )
        backend = RunningBackend(
            record,
            handle,
            orphan_grace_s=self._orphan_grace_s,
            kill_wait_s=self._kill_wait_s,
            member_refresh_s=self._member_refresh_s,
            log_inode=log_file.inode if log_file is not None else None,
        )
        # Open for as long as the backend runs: a READY written after it was found ready by
        # other means must not fail with EPIPE.
        backend.add_exit_callback(lambda _backend, _status: ready_pipe.close())
        _log.info(
            "backend.spawned",
            model=model.id,
            pid=backend.pid,
            port=port,
            gpus=list(uuids),
            command=shlex.join(launch.command),
            log=str(record.log_path),
            expected_load_s=expected_load_s,
        )
        if on_spawn is not None:
            try:
                on_spawn(backend.record)
            except BaseException:
                backend.kill()
                await backend.stop(0.0)
                raise
        await self.wait_healthy(
            backend,
            timeout_s,
            expected_load_s=expected_load_s,
            ready_log_pattern=model.ready_log_pattern,
            ready_pipe=ready_pipe,
            log_inode=log_file.inode if log_file is not None else None,
        )
        return backend

    def adopt(self, record: BackendRecord) -> RunningBackend | None:
        """`adopt(record)` with this ProcessBackend's stop and tracking settings."""
        return adopt(
            record,
            orphan_grace_s=self._orphan_grace_s,
            kill_wait_s=self._kill_wait_s,
            member_refresh_s=self._member_refresh_s,
        )

    async def wait_healthy(
        self,
        backend: RunningBackend,
        timeout_s: float,
        *,
        expected_load_s: float | None = None,
        ready_log_pattern: str | None = None,
        ready_pipe: ReadyPipe | None = None,
        log_inode: int | None = None,
    ) -> None:
        """Return once `backend` is ready, waiting at most `timeout_s` more: its health URL
        answers 2xx, a line of its output since it was started matches `ready_log_pattern`,
        or `READY` arrives on `ready_pipe`.

        For a fresh start (`start` uses it) and for an adopted backend that was still loading
        when the previous daemon died (its pipe died with that daemon; its log is read from
        where its start began, so a line written while no daemon ran still counts). Raises
        `BackendCrashedDuringStart` as soon as it exits, or `BackendStartTimeout` after
        stopping it; if the calling task is cancelled, every member is killed before the
        cancellation propagates.
        """
        try:
            outcome = await self._wait_until_ready(
                backend,
                timeout_s,
                self._poll.with_expected(expected_load_s),
                re.compile(ready_log_pattern) if ready_log_pattern else None,
                ready_pipe,
                log_inode,
            )
        except BaseException:
            # Cancelled (or a bug): kill at once, before anything else can be awaited, so that
            # even a second cancellation during the wait below leaves nothing running.
            backend.kill()
            await backend.stop(0.0)
            raise
        if outcome.ready_by is not None:
            backend.mark_healthy()
            _log.info(
                "backend.healthy",
                model=backend.model_id,
                pid=backend.pid,
                load_s=backend.load_seconds,
                adopted=backend.adopted,
                by=outcome.ready_by,
            )
            return
        await backend.stop(self._failure_grace_s)
        raise self._start_error(backend, timeout_s, outcome.last_probe, ready_log_pattern)

    async def _wait_until_ready(
        self,
        backend: RunningBackend,
        timeout_s: float,
        schedule: PollSchedule,
        pattern: re.Pattern[str] | None,
        ready_pipe: ReadyPipe | None,
        log_inode: int | None,
    ) -> _Outcome:
        last = HealthProbe(False, "no answer yet")

        def seen(probe: HealthProbe) -> None:
            nonlocal last
            last = probe

        # Each signal is a task whose result is True for "ready" and False for "this signal
        # will say nothing" (a pipe closed unwritten, an unreadable log); the others go on.
        async def health() -> bool:
            await wait_healthy(
                backend.health_url, schedule=schedule, started_at=backend.started_at, on_probe=seen
            )
            return True

        async def log_line(path: Path) -> bool:
            assert pattern is not None
            line = await wait_for_log_line(
                path, backend.log_offset, pattern, inode=log_inode, poll_s=self._log_poll_s
            )
            if line is not None:
                _log.debug("backend.ready_line_seen", model=backend.model_id, line=line[:200])
            return line is not None

        signals: dict[asyncio.Future[bool], str] = {asyncio.ensure_future(health()): "health_url"}
        if pattern is not None:
            if backend.log_path is None:
                _log.warning(
                    "backend.ready_pattern_unwatched",
                    model=backend.model_id,
                    reason="its output has no log file",
                )
            else:
                signals[asyncio.ensure_future(log_line(backend.log_path))] = "log_line"
        if ready_pipe is not None:
            signals[asyncio.ensure_future(ready_pipe.wait())] = "ready_fd"
        exited = asyncio.ensure_future(backend.wait_exit())
        deadline = time.monotonic() + timeout_s
        pending: set[asyncio.Future[Any]] = {exited, *signals}
        ready_by: str | None = None
        try:
            # Race readiness against exit: a crash fails the start now, not at the timeout.
            while ready_by is None and not exited.done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                done, pending = await asyncio.wait(
                    pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    if task in signals and _said_ready(task, backend.model_id):
                        ready_by = signals[task]
                        break
        finally:
            exited.cancel()
            for signal_task in signals:
                signal_task.cancel()
        if backend.exit_status is not None:
            return _Outcome(None, last)
        return _Outcome(ready_by, last)

    def _start_error(
        self,
        backend: RunningBackend,
        timeout_s: float,
        last: HealthProbe,
        ready_log_pattern: str | None = None,
    ) -> BackendStartError:
        tail = backend.log_tail(TAIL_IN_MESSAGE)
        status = backend.exit_status
        if status is not None and not status.expected:
            after = (backend.exited_at or time.monotonic()) - backend.started_at
            by_hand = shlex.join(
                (f"CUDA_VISIBLE_DEVICES={','.join(backend.gpu_uuids)}", *backend.command)
            )
            return BackendCrashedDuringStart(
                backend.model_id,
                f"its process {status.describe()}, {after:.1f} s after it was started, "
                f"before {backend.health_url} answered",
                tail,
                exit_code=status.returncode,
                pid=backend.pid,
                log_path=backend.log_path,
                reproduce=by_hand,
            )
        if last.detail.startswith("connection refused"):
            hint = (
                f"Nothing listened on port {backend.port}: check that its command passes "
                "{port} (or reads GPULET_PORT) and that health_url points at it; if it is "
                "only slow to load, raise autostart_timeout_seconds for this model."
            )
        else:
            hint = "If it is only slow to load, raise autostart_timeout_seconds for this model."
        unmatched = (
            f" and no line of its output matched ready_log_pattern {ready_log_pattern!r}"
            if ready_log_pattern
            else ""
        )
        return BackendStartTimeout(
            backend.model_id,
            f"{backend.health_url} did not answer 2xx within {timeout_s:g} s "
            f"(last attempt: {last.detail}){unmatched}, so it was stopped",
            tail,
            exit_code=backend.returncode,
            pid=backend.pid,
            log_path=backend.log_path,
            hint=hint,
        )
