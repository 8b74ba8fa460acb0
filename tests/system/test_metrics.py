"""`gpuletd --metrics`: a real daemon scraped over HTTP while a lease is held and a request
waits, and the exposition checked by `promtool check metrics` (the issue's "done" bar)."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

import gpulet
from tests.helpers import Daemon
from tests.system.test_leases import reservation_model, wait_until

pytestmark = pytest.mark.system


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return str(r.read().decode())


def sample(text: str, metric: str, /, **labels: str) -> float | None:
    """The value of one series in an exposition (labels matched exactly, in any order)."""
    for line in text.splitlines():
        m = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if m is None or m.group(1) != metric:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if got == labels:
            return float(m.group(3))
    return None


@dataclass
class Scrapes:
    busy: str  # a lease held on a, a request for b waiting behind it
    after: str  # a released, b granted
    progress: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def scrapes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scrapes]:
    cfg = tmp_path_factory.mktemp("metrics") / "gpulet.toml"
    cfg.write_text(reservation_model("model-a", 10000) + reservation_model("model-b", 9000))
    port = free_port()
    d = Daemon(
        "--config",
        str(cfg),
        "--simulated-gpus",
        "16384",
        "--profile",
        "constrained_16gb",
        "--metrics",
        f"127.0.0.1:{port}",
        env={"GPULET_CHECK_INVARIANTS": "1"},
    ).start()
    try:
        with gpulet.Client(address=d.address) as c:
            a = c.acquire("model-a", ttl=60)
            got: dict[str, gpulet.lease.Lease] = {}
            progress: list[str] = []

            def take_b() -> None:
                with gpulet.Client(address=d.address) as c2:
                    got["b"] = c2.acquire(
                        "model-b", on_progress=lambda p: progress.append(p.state), timeout=30
                    )

            # One model at a time on constrained_16gb: b waits until a's lease ends.
            t = threading.Thread(target=take_b)
            t.start()
            assert wait_until(lambda: "queued" in progress), d.output()
            busy = scrape(port)
            c.release(a.lease_id, a.token)
            t.join(20)
            assert "b" in got, d.output()
            after = scrape(port)
            c.release(got["b"].lease_id, got["b"].token)
        yield Scrapes(busy, after, progress)
    finally:
        d.stop()
    assert "invariant" not in d.output(), d.output()


def test_the_scrape_shows_the_held_lease_and_the_waiting_request(scrapes: Scrapes) -> None:
    busy = scrapes.busy
    uuids = re.findall(r'gpulet_gpu_memory_total_bytes\{UUID="([^"]+)",gpu="0"\}', busy)
    assert len(uuids) == 1, busy
    gpu = {"UUID": uuids[0], "gpu": "0"}
    assert sample(busy, "gpulet_gpu_memory_total_bytes", **gpu) == 16384 * 2**20
    assert sample(busy, "gpulet_gpu_memory_reserved_bytes", **gpu) == 10000 * 2**20
    assert sample(busy, "gpulet_leases_held", model="model-a") == 1
    assert sample(busy, "gpulet_queue_depth") == 1
    assert sample(busy, "gpulet_models", state="loaded") == 1
    assert sample(busy, "gpulet_leases_granted_total", model="model-a") == 1
    assert sample(busy, "gpulet_profile_info", name="constrained_16gb", source="flag") == 1
    assert re.search(r'^gpulet_build_info\{.*version="[^"]+".*\} 1\.0$', busy, re.M), busy
    # The Acquire of a is a finished stream; b's is still open (started, not handled).
    lease = {"grpc_type": "server_stream", "grpc_service": "gpulet.v1.LeaseService"}
    assert sample(busy, "gpulet_grpc_server_started_total", **lease, grpc_method="Acquire") == 2
    assert (
        sample(
            busy, "gpulet_grpc_server_handled_total", **lease, grpc_method="Acquire", grpc_code="OK"
        )
        == 1
    )


def test_after_the_release_the_wait_eviction_and_loads_are_counted(scrapes: Scrapes) -> None:
    after = scrapes.after
    assert sample(after, "gpulet_queue_depth") == 0
    assert sample(after, "gpulet_leases_ended_total", model="model-a", reason="released") == 1
    assert sample(after, "gpulet_model_evictions_total", model="model-a", reason="evicted") == 1
    assert sample(after, "gpulet_model_unloads_total", model="model-a") == 1
    assert sample(after, "gpulet_model_loads_total", model="model-b") == 1
    assert sample(after, "gpulet_request_wait_seconds_count", model="model-b") == 1
    waited = sample(after, "gpulet_request_wait_seconds_sum", model="model-b")
    assert waited is not None and waited > 0
    unary = {"grpc_type": "unary", "grpc_service": "gpulet.v1.LeaseService"}
    assert (
        sample(
            after,
            "gpulet_grpc_server_handled_total",
            **unary,
            grpc_method="Release",
            grpc_code="OK",
        )
        == 1
    )


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (Debian package `prometheus`, which .ci/run installs)",
)
@pytest.mark.parametrize("which", ["busy", "after"])
def test_promtool_accepts_the_scrape(scrapes: Scrapes, which: str) -> None:
    text = getattr(scrapes, which)
    r = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    # promtool also prints lint problems (names, units, help) with exit 0 in some versions:
    # any output is a failure here.
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr
