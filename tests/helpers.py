"""Starting a real gpuletd subprocess and running the real `gpulet` CLI against it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gpuletd.scheduler import Scheduler
from gpuletd.store import StateStore

BIN = Path(sys.executable).parent
GPULETD = str(BIN / "gpuletd")
GPULET = str(BIN / "gpulet")


def short_tmpdir() -> Path:
    # Unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer.
    return Path(tempfile.mkdtemp(prefix="gpl-", dir="/tmp"))


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPULET_")}
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    env.update(extra or {})
    return env


class Daemon:
    """gpuletd as a subprocess on a socket in its own temporary directory."""

    def __init__(
        self, *args: str, env: Mapping[str, str] | None = None, socket: Path | None = None
    ) -> None:
        self.dir = short_tmpdir()
        self.socket = socket or self.dir / "run" / "gpulet.sock"
        self.address = f"unix://{self.socket}"
        # Its own state dir: a daemon must never restore (or adopt) another test's state.
        self.state_dir = self.dir / "state"
        self.args = args if "--state-dir" in args else (*args, "--state-dir", str(self.state_dir))
        self.env = clean_env(env)
        self.proc: subprocess.Popen[str] | None = None
        self.log = self.dir / "gpuletd.log"
        self._final_output: str | None = None

    def start(self, timeout: float = 20.0) -> Daemon:
        self._final_output = None
        self._log_file = self.log.open("a")
        self.proc = subprocess.Popen(
            [GPULETD, "--address", self.address, *self.args],
            env=self.env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gpuletd exited with {self.proc.returncode}:\n{self.output()}")
            if self.socket.exists() and self.ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gpuletd did not become ready:\n{self.output()}")

    def ready(self) -> bool:
        """Serving, as a user would see it: the CLI gets an answer."""
        return self.cli("roles").returncode == 0

    def output(self) -> str:
        if self._final_output is not None:
            return self._final_output
        return self.log.read_text() if self.log.exists() else ""

    def cli(
        self, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, address=self.address, env=env)

    def cli_json(self, *args: str) -> Any:
        r = self.cli(*args, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0, *, keep: bool = False) -> int:
        """Signal it and wait for it to exit; `keep` leaves its directory (state, logs,
        socket dir) for a restart of the same daemon."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        # Keep what it said, then leave nothing behind in /tmp.
        self._final_output = self.output()
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        return self.proc.returncode

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def run_cli(
    *args: str,
    address: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    argv: Sequence[str] = [GPULET, *(["--address", address] if address else []), *args]
    return subprocess.run(
        argv,
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def run_daemon_once(
    *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """gpuletd run to completion (check-config, or a start that must fail)."""
    return subprocess.run(
        [GPULETD, *args],
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def constrained_daemon(tmp_path: Path, config: str) -> Daemon:
    """A started daemon with `config` under constrained_16gb on one simulated 16 GiB GPU (one
    model at a time), checking the core's invariants after every event."""
    cfg = tmp_path / "gpulet.toml"
    cfg.write_text(config)
    return Daemon(
        "--config",
        str(cfg),
        "--simulated-gpus",
        "16384",
        "--profile",
        "constrained_16gb",
        env={"GPULET_CHECK_INVARIANTS": "1"},
    ).start()


def stored_snapshot(path: Path) -> dict[str, Any]:
    """The core's snapshot in the state file at `path`, read through a store of its own, as a
    restarted daemon reads it."""
    store = StateStore.open(path)
    try:
        saved = store.load_core()
    finally:
        store.close()
    assert saved is not None
    return saved.snapshot


def snapshot_json(core: Scheduler) -> dict[str, Any]:
    """`core`'s snapshot as it would be saved (through JSON)."""
    loaded: dict[str, Any] = json.loads(json.dumps(core.snapshot(), allow_nan=False))
    return loaded
