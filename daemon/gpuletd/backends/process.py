"""Process backends: start a model's serving process, notice its death, stop its whole group.

The daemon's async shell calls `ProcessBackend.start` when the scheduler core decides "start
backend", feeds the outcome back as "healthy" or "failed", registers an exit callback that feeds
"died", and calls `RunningBackend.stop` on "stop backend". Nothing here decides policy.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from gpuletd.backends.errors import (
    TAIL_IN_MESSAGE,
    BackendCrashedDuringStart,
    BackendStartError,
    BackendStartTimeout,
)
from gpuletd.backends.health import HealthProbe, wait_healthy
from gpuletd.backends.logs import LogRing, open_log_file
from gpuletd.backends.placeholders import (
    LOOPBACK_HOST,
    Launch,
    PlaceholderValues,
    expand_launch,
    validate_process_model,
)
from gpuletd.backends.ports import pick_free_port
from gpuletd.backends.running import OutputPump, RunningBackend
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
        log_lines: int = 200,
        failure_grace_s: float = 5.0,
        orphan_grace_s: float = 2.0,
        kill_wait_s: float = 5.0,
        health_first_interval_s: float = 0.02,
        health_max_interval_s: float = 1.0,
    ) -> None:
        """`base_env` defaults to the daemon's environment at each start.

        `failure_grace_s`: SIGTERM grace for a backend stopped because its start failed.
        `orphan_grace_s`: SIGTERM grace for the workers left behind by a leader that died.
        `kill_wait_s`: how long to wait for the group to vanish after SIGKILL.
        """
        self._host = host
        self._base_env = base_env
        self._log_lines = log_lines
        self._failure_grace_s = failure_grace_s
        self._orphan_grace_s = orphan_grace_s
        self._kill_wait_s = kill_wait_s
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
        log_dir: Path | None = None,
    ) -> RunningBackend:
        """Spawn `model`'s command on `gpu_uuids` and return once its health URL answers 2xx.

        Raises `BackendConfigError` (before spawning) for a bad registry entry, and a
        `BackendStartError` when it cannot be spawned, exits during start (raised as soon as it
        exits) or is not healthy within `timeout_s` (it is stopped first). If the calling task
        is cancelled, the group is killed before the cancellation propagates. Whatever fails,
        nothing of the backend is left running.
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
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        log_file = open_log_file(log_dir, model.id, launch.command) if log_dir else None
        log_path = Path(log_file.name) if log_file is not None else None
        ring = LogRing(self._log_lines)
        try:
            output, pump = await loop.connect_read_pipe(
                lambda: OutputPump(ring, log_file), os.fdopen(read_fd, "rb", buffering=0)
            )
        except BaseException:
            os.close(write_fd)
            if log_file is not None:
                log_file.close()
            raise
        try:
            process = await asyncio.create_subprocess_exec(
                *launch.command,
                stdin=subprocess.DEVNULL,
                stdout=write_fd,
                stderr=write_fd,
                env=env,
                # Own session and process group: one killpg reaches every worker it forks,
                # and a Ctrl-C on the daemon's terminal does not reach it.
                start_new_session=True,
                # Keep SIGPIPE ignored (Python's setting) instead of the default "die": a
                # backend must outlive the daemon (restart without loss) even though its
                # output pipe then has no reader.
                restore_signals=False,
            )
        except OSError as exc:
            output.close()
            raise BackendStartError(
                model.id,
                f"could not run {launch.command[0]!r}: {exc.strerror or exc}",
                hint="Check the command in its registry entry and that the program is "
                "installed and on the daemon's PATH.",
                log_path=log_path,
            ) from exc
        except BaseException:
            output.close()
            raise
        finally:
            os.close(write_fd)  # the child has its copy; ours would keep EOF from ever coming

        backend = RunningBackend(
            model_id=model.id,
            process=process,
            launch=launch,
            port=port,
            gpu_uuids=uuids,
            ring=ring,
            output=output,
            pump=pump,
            log_path=log_path,
            orphan_grace_s=self._orphan_grace_s,
            kill_wait_s=self._kill_wait_s,
        )
        _log.info(
            "backend.spawned",
            model=model.id,
            pid=backend.pid,
            port=port,
            gpus=list(uuids),
            command=shlex.join(launch.command),
        )
        try:
            outcome = await self._wait_until_healthy(backend, timeout_s)
        except BaseException:
            # Cancelled (or a bug): kill at once, before anything else can be awaited, so that
            # even a second cancellation during the wait below leaves nothing running.
            backend.kill()
            await backend.stop(0.0)
            raise
        if outcome.healthy:
            backend.healthy_at = time.monotonic()
            _log.info(
                "backend.healthy", model=model.id, pid=backend.pid, load_s=backend.load_seconds
            )
            return backend
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
