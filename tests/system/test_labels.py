"""Node labels for node-feature-discovery from a real gpuletd on simulated GPUs: `gpulet
labels` writes NFD's local feature file (format, expiry, atomic replacement), and
`gpuletd --labels-file` rewrites it after an admin profile switch and a SIGHUP reload, and
removes it at a clean stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gpulet.admin import AdminClient
from gpulet.nfd import MAX_FILE_BYTES, NAMESPACE
from tests.helpers import GPULET, Daemon, clean_env, run_daemon_once
from tests.system.test_leases import reservation_model, wait_until

pytestmark = pytest.mark.system

GPUS = "NVIDIA L4:23034,NVIDIA L4:23034"
CONFIG = reservation_model(
    "florence-2-large", 3500, "caption = 70, keywords = 95"
) + reservation_model("qwen3-vl", 18000, "caption = 90")
# A label line as NFD and Kubernetes accept it: DNS-subdomain prefix, a name of at most 63
# characters, a value of at most 63, both alphanumeric at the ends.
LINE = re.compile(
    r"(?P<key>[a-z0-9]([a-z0-9.-]*[a-z0-9])?/[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)"
    r"=(?P<value>([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?)"
)


def labels_of(text: str) -> dict[str, str]:
    """The labels of a feature file, each line checked against NFD's format."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = LINE.fullmatch(line)
        assert m is not None, f"not a valid label line: {line!r}"
        out[m["key"].removeprefix(f"{NAMESPACE}/")] = m["value"]
    return out


def expiry_of(text: str) -> datetime:
    found = re.findall(r"^# \+expiry-time=(\S+)$", text, re.M)
    assert len(found) == 1, text
    return datetime.strptime(found[0], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def start(tmp: Path, *args: str) -> Daemon:
    cfg = tmp / "gpulet.toml"
    cfg.write_text(CONFIG)
    return Daemon(
        "--config", str(cfg), "--simulated-gpus", GPUS, "--profile", "balanced_24gb", *args
    ).start()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start(tmp_path_factory.mktemp("labels"))
    try:
        yield d
    finally:
        d.stop()


def test_gpulet_labels_writes_the_node_facts(served: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "gpulet"
    r = served.cli("labels", "--output", str(out), "--ttl", "900")
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    usable = served.cli_json("profile", "show")["usable_vram_mb"]
    assert labels_of(text) == {
        "profile": "balanced_24gb",
        "gpu.count": "2",
        "gpu.model": "NVIDIA-L4",
        "vram.total-mib": str(2 * 23034),
        "vram.usable-mib": str(usable),
        # Each role's favourite, then every model offering it with its priority.
        "role.caption": "qwen3-vl",
        "role.caption.qwen3-vl": "90",
        "role.caption.florence-2-large": "70",
        "role.keywords": "florence-2-large",
        "role.keywords.florence-2-large": "95",
    }
    # No live free memory: it changes by the second and belongs in the metrics.
    assert "free" not in text
    left = expiry_of(text) - datetime.now(UTC)
    assert timedelta(minutes=13) < left <= timedelta(minutes=15)
    assert os.stat(out).st_mode & 0o777 == 0o644
    assert len(text.encode()) <= MAX_FILE_BYTES


def test_the_file_is_replaced_atomically(served: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "gpulet"
    assert served.cli("labels", "--output", str(out), "--ttl", "600").returncode == 0
    before = out.stat().st_ino
    with out.open() as reader:  # as NFD would hold it mid-read
        old = out.read_text()
        r = served.cli("labels", "--output", str(out), "--ttl", "3600")
        assert r.returncode == 0, r.stderr
        # Renamed over, not rewritten in place: the open file is still the whole old one.
        assert reader.read() == old
    assert out.stat().st_ino != before
    assert expiry_of(out.read_text()) > expiry_of(old)
    # Nothing left beside it: no dot-file NFD would have to skip.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpulet"]


def test_printed_labels_are_the_written_ones(served: Daemon, tmp_path: Path) -> None:
    printed = served.cli("labels")
    assert printed.returncode == 0, printed.stderr
    as_json = served.cli_json("labels")
    out = tmp_path / "gpulet"
    assert served.cli("labels", "-o", str(out)).returncode == 0
    written = labels_of(out.read_text())
    assert labels_of(printed.stdout) == written
    assert {k.removeprefix(f"{NAMESPACE}/"): v for k, v in as_json["labels"].items()} == written


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--every", "30"], "--every needs --output"),
        (["--output", "/nonexistent-h8/x"], "directory /nonexistent-h8 does not exist"),
        (["--ttl", "10"], "--ttl"),
    ],
)
def test_bad_labels_options_are_usage_errors(served: Daemon, args: list[str], message: str) -> None:
    r = served.cli("labels", *args)
    assert r.returncode == 2
    assert message in r.stderr


def test_the_daemon_rewrites_its_labels_file_on_change(tmp_path: Path) -> None:
    features = tmp_path / "features.d"
    features.mkdir()
    out = features / "gpulet"
    d = start(tmp_path, "--labels-file", str(out))
    # And `gpulet labels --every`, as the DaemonSet's sidecar runs it, beside it.
    sidecar_out = tmp_path / "sidecar"
    sidecar = subprocess.Popen(
        [GPULET, "--address", d.address, "labels", "-o", str(sidecar_out), "--every", "1"],
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(out.exists), d.output()
        first = labels_of(out.read_text())
        assert first["profile"] == "balanced_24gb"
        # The same labels `gpulet labels` makes.
        assert labels_of(d.cli("labels").stdout) == first
        assert wait_until(sidecar_out.exists)

        with AdminClient(address=str(d.socket.with_name("admin.sock"))) as admin:
            admin.switch_profile("development", "labels test")
        assert wait_until(lambda: labels_of(out.read_text())["profile"] == "development")
        assert wait_until(lambda: labels_of(sidecar_out.read_text())["profile"] == "development")

        # A reload that adds a model: its role appears.
        cfg = tmp_path / "gpulet.toml"
        cfg.write_text(CONFIG + reservation_model("siglip", 1200, "embedding = 95"))
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: labels_of(out.read_text()).get("role.embedding") == "siglip"), (
            d.output()
        )
        assert [p.name for p in features.iterdir()] == ["gpulet"]
    finally:
        sidecar.terminate()
        sidecar.wait(10)
        d.stop()
    # A clean stop: the node no longer offers anything, and says so at once.
    assert not out.exists()
    assert '"event": "labels.written"' in d.output()


def test_a_labels_file_in_a_missing_directory_is_refused(tmp_path: Path) -> None:
    r = run_daemon_once(
        "--simulated-gpus",
        GPUS,
        "--address",
        f"unix://{tmp_path}/g.sock",
        "--state-dir",
        str(tmp_path / "state"),
        "--labels-file",
        str(tmp_path / "no" / "gpulet"),
    )
    assert r.returncode == 2
    assert f"--labels-file: directory {tmp_path}/no does not exist" in r.stderr
