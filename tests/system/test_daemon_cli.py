"""gpuletd as a real subprocess on a real Unix socket, driven through the `gpulet` CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
from pathlib import Path

import pytest

from tests.helpers import Daemon, run_cli, run_daemon_once, short_tmpdir

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def d16() -> Daemon:
    with Daemon(env={"GPULET_SIMULATED_GPUS": "NVIDIA GeForce RTX 4080:16384"}) as d:
        yield d  # type: ignore[misc]


def test_profile_show_json_on_a_16gb_gpu(d16: Daemon) -> None:
    data = d16.cli_json("profile", "show")
    assert data["name"] == "constrained_16gb"
    assert data["source"] == "auto"
    assert data["usable_vram_mb"] == 14336
    assert data["max_vram_mb"] == 14000 and data["max_concurrent_models"] == 1
    assert data["strategy"] == "load_unload"
    assert data["warnings"] == []
    (gpu,) = data["gpus"]
    assert gpu["name"] == "NVIDIA GeForce RTX 4080" and gpu["total_mb"] == 16384
    assert gpu["free_mb"] == 16384 and gpu["uuid"].startswith("GPU-") and gpu["index"] == 0


def test_select_keywords_puts_florence_first(d16: Daemon) -> None:
    data = d16.cli_json("select", "keywords")
    assert data["role"] == "keywords" and data["profile"] == "constrained_16gb"
    assert [m["id"] for m in data["models"]] == ["florence-2-large", "qwen3-vl", "qwen25vl"]
    first = data["models"][0]
    assert (first["quantization"], first["vram_estimate_mb"], first["role_priority"]) == (
        "fp16",
        3500,
        95,
    )
    assert len(d16.cli_json("select", "keywords", "--top", "1")["models"]) == 1


def test_unknown_role_exits_nonzero_naming_role_and_known_roles(d16: Daemon) -> None:
    r = d16.cli("select", "poetry")
    assert r.returncode != 0
    assert "poetry" in r.stderr and "keywords" in r.stderr and "caption" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1  # one line, no traceback
    assert d16.cli("select", "caption", "--top", "0").returncode != 0


def test_explain_roles_models_gpus_profile_list(d16: Daemon) -> None:
    e = d16.cli_json("explain", "caption", "qwen3-vl")
    assert e["status"] == "eligible" and "rank 1" in e["reason"]
    assert d16.cli_json("explain", "caption", "gpt-oss-20b")["status"] == "no_support"
    ghost = d16.cli("explain", "caption", "ghost", "--json")
    assert ghost.returncode == 3  # not found, as for every other command
    assert json.loads(ghost.stdout)["status"] == "not_found"
    assert "keywords" in d16.cli_json("roles")["roles"]
    models = {m["id"]: m for m in d16.cli_json("models")["models"]}
    assert models["qwen25vl"]["vram_estimate_mb"] == 6400
    assert models["qwen25vl"]["backend"] == "reservation"
    assert models["qwen25vl"]["role_priority"]["keywords"] == 75
    assert d16.cli_json("gpus")["gpus"][0]["total_mb"] == 16384
    profiles = d16.cli_json("profile", "list")["profiles"]
    assert {p["name"] for p in profiles} == {
        "constrained_16gb",
        "balanced_24gb",
        "multi_gpu_2x16gb",
        "generous_96gb",
        "development",
    }
    assert all(p["description"] for p in profiles)
    # Tables for people answer too.
    table = d16.cli("select", "caption")
    assert table.returncode == 0 and "qwen3-vl" in table.stdout


def test_socket_and_directory_modes(d16: Daemon) -> None:
    assert stat.S_IMODE(os.stat(d16.socket).st_mode) == 0o660
    # The group connects; it must not be able to replace the socket or its lock file.
    assert stat.S_IMODE(os.stat(d16.socket.parent).st_mode) == 0o750
    assert stat.S_ISSOCK(os.stat(d16.socket).st_mode)


def test_second_daemon_on_the_same_socket_refuses(d16: Daemon) -> None:
    r = run_daemon_once("--address", d16.address, env={"GPULET_SIMULATED_GPUS": "16384"})
    assert r.returncode != 0
    assert "another gpuletd" in r.stderr
    # The first one still answers.
    assert d16.cli("roles").returncode == 0


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("16384", "constrained_16gb"),
        ("24576", "balanced_24gb"),
        ("16384,16384", "multi_gpu_2x16gb"),
        ("98304", "generous_96gb"),
        ("12288", "development"),
        # Where the seed's match does not fit the machine: a dynamic profile (docs/profiles.md).
        ("8192", "dynamic_1x8gb"),
        ("81920", "dynamic_1x80gb"),
        ("24576,16384", "dynamic_1x24gb_1x16gb"),
        ("24576,24576,24576", "dynamic_3x24gb"),
    ],
)
def test_hardware_rows_pick_their_profile(spec: str, expected: str) -> None:
    r = run_daemon_once("check-config", "--simulated-gpus", spec)
    assert r.returncode == 0, r.stderr
    active = json.loads(r.stdout)["active_profile"]
    assert (active["name"], active["source"]) == (expected, "auto")


def test_precedence_through_the_real_daemon(tmp_path: Path) -> None:
    cfg = tmp_path / "gpulet.toml"
    cfg.write_text('profile = "balanced_24gb"\n')
    env = {"GPULET_SIMULATED_GPUS": "16384"}
    with Daemon("--config", str(cfg), env=env) as d:
        data = d.cli_json("profile", "show")
        assert (data["name"], data["source"]) == ("balanced_24gb", "config")
        assert any("22000 MiB" in w for w in data["warnings"])  # larger than the hardware
    with Daemon("--config", str(cfg), env={**env, "GPULET_DEPLOYMENT_PROFILE": "development"}) as d:
        assert d.cli_json("profile", "show")["source"] == "env"
    with Daemon(
        "--config",
        str(cfg),
        "--profile",
        "generous_96gb",
        "--set",
        "max_concurrent_models=2",
        env={**env, "GPULET_DEPLOYMENT_PROFILE": "development"},
    ) as d:
        data = d.cli_json("profile", "show")
        assert (data["name"], data["source"], data["max_concurrent_models"]) == (
            "generous_96gb",
            "flag",
            2,
        )


def test_unknown_profile_stops_the_daemon_listing_known_ones() -> None:
    r = run_daemon_once(
        "--profile",
        "huge",
        "--simulated-gpus",
        "16384",
        "--address",
        f"unix://{short_tmpdir()}/s.sock",
    )
    assert r.returncode == 2
    assert "unknown profile 'huge'" in r.stderr and "balanced_24gb" in r.stderr


def test_bad_config_stops_the_daemon_with_file_and_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[profiles.mine]\nextends = "balanced_24gb"\nmax_vram_mb = -1\n')
    sock = short_tmpdir() / "s.sock"
    r = run_daemon_once("--config", str(cfg), "--address", f"unix://{sock}")
    assert r.returncode == 2
    assert f"{cfg}:3:" in r.stderr and "max_vram_mb" in r.stderr and ">= 0" in r.stderr
    assert not sock.exists()
    check = run_daemon_once("check-config", "--config", str(cfg))
    assert check.returncode == 2 and f"{cfg}:3:" in check.stderr


def test_check_config_prints_the_effective_configuration(tmp_path: Path) -> None:
    cfg = tmp_path / "gpulet.toml"
    cfg.write_text(
        'profile = "my_4090"\n[profiles.my_4090]\nextends = "balanced_24gb"\n'
        "max_concurrent_models = 3\n"
    )
    r = run_daemon_once("check-config", "--config", str(cfg), "--simulated-gpus", "24576")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["active_profile"]["name"] == "my_4090"
    assert data["active_profile"]["max_concurrent_models"] == 3
    assert data["active_profile"]["source"] == "config"
    assert "qwen3-vl" in data["models"]


def test_cli_says_daemon_not_running_in_one_line() -> None:
    r = run_cli("profile", "show", address=f"unix://{short_tmpdir()}/none.sock")
    assert r.returncode != 0
    assert r.stderr.startswith("gpulet: gpuletd is not running")
    assert len(r.stderr.strip().splitlines()) == 1


def test_address_from_environment(d16: Daemon) -> None:
    r = run_cli("roles", env={"GPULET_ADDRESS": d16.address})
    assert r.returncode == 0 and "keywords" in r.stdout


def test_sigterm_shuts_down_cleanly_and_notifies_systemd() -> None:
    notify_dir = short_tmpdir()
    notify_path = notify_dir / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ns:
        ns.bind(str(notify_path))
        ns.settimeout(20)
        d = Daemon(
            env={
                "GPULET_SIMULATED_GPUS": "16384",
                "NOTIFY_SOCKET": str(notify_path),
                "WATCHDOG_USEC": "400000",
            }
        )
        d.start()
        messages = []
        while not any(b"READY=1" in m for m in messages):
            messages.append(ns.recv(4096))
        while not any(b"WATCHDOG=1" in m for m in messages):
            messages.append(ns.recv(4096))
        assert d.stop(signal.SIGTERM) == 0
        while not any(b"STOPPING=1" in m for m in messages):
            messages.append(ns.recv(4096))
    ready = next(m for m in messages if b"READY=1" in m)
    assert b"STATUS=serving" in ready
    assert not d.socket.exists()
    out = d.output()
    # JSON lines off a tty.
    assert '"event": "daemon.serving"' in out and '"event": "daemon.stopped"' in out


def test_tcp_only_when_asked() -> None:
    from gpuletd.backends import pick_free_port

    port = pick_free_port()
    with Daemon(
        "--listen",
        f"127.0.0.1:{port}",
        "--insecure-loopback",
        env={"GPULET_SIMULATED_GPUS": "16384"},
    ) as d:
        r = run_cli("profile", "show", "--json", address=f"127.0.0.1:{port}")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["name"] == "constrained_16gb"
        assert '"tcp": "127.0.0.1:' in d.output()


def test_an_existing_socket_directory_keeps_its_mode() -> None:
    shared = short_tmpdir()
    os.chmod(shared, 0o755)
    with Daemon(env={"GPULET_SIMULATED_GPUS": "16384"}, socket=shared / "g.sock"):
        pass
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o755


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--listen", "not-an-address"], "--listen"),
        (["--socket-group", "no-such-group-xyz"], "no group named"),
        (["--address", "unix:///tmp/" + "x" * 120 + ".sock"], "longer than the 107 bytes"),
        (["--poll-interval", "0"], "--poll-interval"),
    ],
)
def test_bad_daemon_flags_give_one_line_errors(args: list[str], needle: str) -> None:
    base = ["--address", f"unix://{short_tmpdir()}/s.sock", "--simulated-gpus", "16384"]
    r = run_daemon_once(*base, *args)
    assert r.returncode == 2
    assert needle in r.stderr
    assert "Traceback" not in r.stderr


def test_a_socket_directory_owned_by_another_user_is_refused() -> None:
    theirs = short_tmpdir()
    os.chown(theirs, 12345, 12345)
    r = run_daemon_once("--address", f"unix://{theirs}/s.sock", "--simulated-gpus", "16384")
    assert r.returncode == 2
    assert "belongs to uid 12345" in r.stderr
    assert list(theirs.iterdir()) == []  # not even a lock file written there
