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
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

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
    expand_launch,
    validate_process_model,
)
from gpuletd.backends.ports import pick_free_port
from gpuletd.backends.procfs import boot_id, process_start_time
from gpuletd.backends.record import BackendRecord
from gpuletd.backends.running import RunningBackend
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
    healthy: bool
    last_probe: HealthProbe


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
        health_first_interval_s: float = 0.02,
        health_max_interval_s: float = 1.0,
    ) -> None:
        """`base_env` defaults to the daemon's environment at each start.

        `failure_grace_s`: SIGTERM grace for a backend stopped because its start failed.
        `orphan_grace_s`: SIGTERM grace for the workers left behind by a leader that died.
        `kill_wait_s`: how long to wait for the group to vanish after SIGKILL.
        `member_refresh_s`: how often a running backend's process tree is scanned for new
        members (workers that leave its group are found only while their parent lives).
        """
        self._host = host
        self._base_env = base_env
        self._failure_grace_s = failure_grace_s
        self._orphan_grace_s = orphan_grace_s
        self._kill_wait_s = kill_wait_s
        self._member_refresh_s = member_refresh_s
        self._health_first_s = health_first_interval_s
        self._health_max_s = health_max_interval_s

    def environment(
        self, model: Model, launch: Launch, gpu_uuids: Sequence[str], port: int
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
        return env

    async def start(
        self,
        model: Model,
        gpu_uuids: Sequence[str],
        *,
        timeout_s: float,
        log_dir: Path,
        on_spawn: Callable[[BackendRecord], None] | None = None,
    ) -> RunningBackend:
        """Spawn `model`'s command on `gpu_uuids` and return once its health URL answers 2xx.

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
        launch = expand_launch(model, PlaceholderValues(port, model.id, uuids, self._host))
        env = self.environment(model, launch, uuids, port)
        log_file = open_log_file(log_dir, model.id, launch.command)
        output: int = log_file.fd if log_file is not None else subprocess.DEVNULL
        try:
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
        _log.info(
            "backend.spawned",
            model=model.id,
            pid=backend.pid,
            port=port,
            gpus=list(uuids),
            command=shlex.join(launch.command),
            log=str(record.log_path),
        )
        if on_spawn is not None:
            try:
                on_spawn(backend.record)
            except BaseException:
                backend.kill()
                await backend.stop(0.0)
                raise
        await self.wait_healthy(backend, timeout_s)
        return backend

    def adopt(self, record: BackendRecord) -> RunningBackend | None:
        """`adopt(record)` with this ProcessBackend's stop and tracking settings."""
        return adopt(
            record,
            orphan_grace_s=self._orphan_grace_s,
            kill_wait_s=self._kill_wait_s,
            member_refresh_s=self._member_refresh_s,
        )

    async def wait_healthy(self, backend: RunningBackend, timeout_s: float) -> None:
        """Return once `backend`'s health URL answers 2xx, waiting at most `timeout_s` more.

        For a fresh start (`start` uses it) and for an adopted backend that was still loading
        when the previous daemon died. Raises `BackendCrashedDuringStart` as soon as it exits,
        or `BackendStartTimeout` after stopping it; if the calling task is cancelled, every
        member is killed before the cancellation propagates.
        """
        try:
            outcome = await self._wait_until_healthy(backend, timeout_s)
        except BaseException:
            # Cancelled (or a bug): kill at once, before anything else can be awaited, so that
            # even a second cancellation during the wait below leaves nothing running.
            backend.kill()
            await backend.stop(0.0)
            raise
        if outcome.healthy:
            backend.mark_healthy()
            _log.info(
                "backend.healthy",
                model=backend.model_id,
                pid=backend.pid,
                load_s=backend.load_seconds,
                adopted=backend.adopted,
            )
            return
        await backend.stop(self._failure_grace_s)
        raise self._start_error(backend, timeout_s, outcome.last_probe)

    async def _wait_until_healthy(self, backend: RunningBackend, timeout_s: float) -> _Outcome:
        last = HealthProbe(False, "no answer yet")

        def seen(probe: HealthProbe) -> None:
            nonlocal last
            last = probe

        health = asyncio.ensure_future(
            wait_healthy(
                backend.health_url,
                first_interval_s=self._health_first_s,
                max_interval_s=self._health_max_s,
                on_probe=seen,
            )
        )
        exited = asyncio.ensure_future(backend.wait_exit())
        try:
            # Race health against exit: a crash fails the start now, not at the timeout.
            await asyncio.wait(
                (health, exited), timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (health, exited):
                task.cancel()
        if backend.exit_status is not None:
            return _Outcome(False, last)
        return _Outcome(health.done() and not health.cancelled() and health.result().ok, last)

    def _start_error(
        self, backend: RunningBackend, timeout_s: float, last: HealthProbe
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
        return BackendStartTimeout(
            backend.model_id,
            f"{backend.health_url} did not answer 2xx within {timeout_s:g} s "
            f"(last attempt: {last.detail}), so it was stopped",
            tail,
            exit_code=backend.returncode,
            pid=backend.pid,
            log_path=backend.log_path,
            hint=hint,
        )
