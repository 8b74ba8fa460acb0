"""`gpulet queue` and `gpulet status` against a real daemon: a lease held on one model and a
request for another waiting behind it (constrained_16gb on one simulated 16 GiB GPU holds one
of these models at a time)."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import gpulet
from tests import helpers
from tests.helpers import Daemon, constrained_daemon
from tests.system.test_leases import reservation_model, wait_until

pytestmark = pytest.mark.system


@pytest.fixture
def busy(tmp_path: Path) -> Iterator[tuple[Daemon, gpulet.Lease]]:
    """A daemon with a lease on `model-a` held and a request for `model-b` waiting."""
    d = constrained_daemon(
        tmp_path, reservation_model("model-a", 9000) + reservation_model("model-b", 9000)
    )
    done = threading.Event()
    try:
        with gpulet.Client(address=d.address) as c:
            a = c.acquire("model-a", client_name="holder@test", ttl=120)

            def wait_for_b() -> None:
                # A client of its own: it waits in the queue until the test ends.
                with gpulet.Client(address=d.address) as w, contextlib.suppress(gpulet.GpuletError):
                    w.acquire("model-b", client_name="waiter@test", priority=3, timeout=60)
                done.set()

            threading.Thread(target=wait_for_b, daemon=True).start()
            assert wait_until(lambda: len(c.queue()) == 1)
            yield d, a
    finally:
        d.stop()
        done.wait(10)


def test_queue_shows_the_waiting_request_with_position_and_reason(
    busy: tuple[Daemon, gpulet.Lease],
) -> None:
    d, _ = busy
    data = d.cli_json("queue")
    [q] = data["queue"]
    assert q["position"] == 1
    assert q["model_id"] == "model-b"
    assert q["client_name"] == "waiter@test"
    assert q["priority"] == 3 and q["effective_priority"] >= 3
    assert q["waited_seconds"] >= 0
    assert "model-a's lease ending" in q["waiting_for"], q
    # The table, piped: one line per request under the headers.
    r = d.cli("queue")
    assert r.returncode == 0, r.stderr
    header, line = r.stdout.splitlines()
    assert header.split()[:4] == ["POS", "MODEL", "CLIENT", "PRIO"]
    assert line.split()[:3] == ["1", "model-b", "waiter@test"]
    assert "model-a's lease ending" in line


def test_client_queue_matches(busy: tuple[Daemon, gpulet.Lease]) -> None:
    d, _ = busy
    with gpulet.Client(address=d.address) as c:
        [q] = c.queue()
    assert (q.position, q.model_id, q.exclusive) == (1, "model-b", False)
    assert q.arrived_at is not None and q.deadline is not None  # its timeout=60
    assert "model-a" in q.waiting_for


def test_status_json_shows_everything(busy: tuple[Daemon, gpulet.Lease]) -> None:
    d, a = busy
    data = d.cli_json("status")
    assert data["profile"]["name"] == "constrained_16gb"
    assert data["probe"] == "simulated"
    [gpu] = data["gpus"]
    assert gpu["total_mb"] == 16384
    assert gpu["placed"] == [{"model_id": "model-a", "reservation_mb": 9000}]
    states = {m["id"]: m["state"] for m in data["models"]}
    assert states == {"model-a": "loaded", "model-b": "unloaded"}
    [lease] = data["leases"]
    assert lease["lease_id"] == a.lease_id and "token" not in lease
    [q] = data["queue"]
    assert q["model_id"] == "model-b" and q["position"] == 1
    # `top` is the same command.
    assert d.cli_json("top")["profile"]["name"] == "constrained_16gb"


@pytest.mark.parametrize("argv", [["status", "--once"], ["status"], ["top", "--once"]])
def test_status_printed_once_when_piped(busy: tuple[Daemon, gpulet.Lease], argv: list[str]) -> None:
    d, a = busy
    r = d.cli(*argv)  # stdout is a pipe: one screen, then exit 0
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "constrained_16gb" in out
    for title in ("GPUs", "Models", "Leases", "Queue"):
        assert any(line.startswith(title) for line in out.splitlines()), (title, out)
    assert a.lease_id in out and "holder@test" in out
    assert "waiter@test" in out and "model-a's lease ending" in out
    assert "\x1b" not in out  # no escape sequences in a pipe
    assert all(line == line.rstrip() for line in out.splitlines())


def test_queue_empty(tmp_path: Path) -> None:
    cfg = tmp_path / "gpulet.toml"
    cfg.write_text(reservation_model("model-a", 9000))
    with Daemon("--config", str(cfg), "--simulated-gpus", "16384") as d:
        assert d.cli_json("queue") == {"queue": []}
        r = d.cli("queue")
        assert r.returncode == 0 and r.stdout.strip() == "no request is waiting"
        data = json.loads(d.cli("status", "--json").stdout)
        assert data["leases"] == [] and data["queue"] == []


def test_status_live_on_a_terminal_ends_cleanly_on_ctrl_c(
    busy: tuple[Daemon, gpulet.Lease],
) -> None:
    d, _ = busy
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [helpers.GPULET, "--address", d.address, "top", "--interval", "0.3"],
        stdin=child,
        stdout=child,
        stderr=child,
        env=helpers.clean_env({"TERM": "xterm", "COLUMNS": "120", "LINES": "40"}),
    )
    os.close(child)
    seen = b""
    deadline = time.monotonic() + 15
    try:
        while b"waiter@test" not in seen and time.monotonic() < deadline:
            if select.select([main], [], [], 0.2)[0]:
                seen += os.read(main, 65536)
        assert b"waiter@test" in seen and b"Queue" in seen
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(OSError):
            while os.read(main, 65536):
                pass
        os.close(main)
    assert b"Traceback" not in seen
