"""Dynamic profiles and overrides that do not brick the service, on a real gpuletd subprocess."""

from __future__ import annotations

import json
import signal
import time

import pytest

from gpulet.admin import AdminClient
from tests.helpers import Daemon, run_daemon_once

pytestmark = pytest.mark.system

H100 = "NVIDIA H100 80GB HBM3:81920"


def _events(d: Daemon, event: str) -> list[dict[str, object]]:
    out = []
    for line in d.output().splitlines():
        if line.startswith("{") and f'"event": "{event}"' in line:
            out.append(json.loads(line))
    return out


def test_a_typo_in_the_environment_serves_on_the_auto_profile_and_warns() -> None:
    env = {"GPULET_DEPLOYMENT_PROFILE": "typo", "GPULET_SIMULATED_GPUS": "16384"}
    with Daemon(env=env) as d:
        data = d.cli_json("profile", "show")
        assert (data["name"], data["source"]) == ("constrained_16gb", "auto")
        (w,) = data["warnings"]
        assert "GPULET_DEPLOYMENT_PROFILE: unknown profile 'typo'" in w
        assert "running on constrained_16gb (auto)" in w
        # The people's view says it too.
        assert "typo" in d.cli("profile", "show").stdout
        assert any("typo" in str(e["warning"]) for e in _events(d, "profile.warned"))


def test_check_config_fails_on_an_unknown_profile_from_env_or_config() -> None:
    r = run_daemon_once(
        "check-config",
        env={"GPULET_DEPLOYMENT_PROFILE": "typo", "GPULET_SIMULATED_GPUS": "16384"},
    )
    assert r.returncode == 2
    assert "unknown profile 'typo'" in r.stderr
    # What the daemon would run on is still printed.
    assert json.loads(r.stdout)["active_profile"]["name"] == "constrained_16gb"
    # A typo on the command line stays an error that stops at once.
    r = run_daemon_once("check-config", "--profile", "typo", "--simulated-gpus", "16384")
    assert r.returncode == 2 and not r.stdout


def test_an_80gb_gpu_gets_a_dynamic_profile_end_to_end() -> None:
    with Daemon(env={"GPULET_SIMULATED_GPUS": H100}) as d:
        data = d.cli_json("profile", "show")
        assert (data["name"], data["source"]) == ("dynamic_1x80gb", "auto")
        assert data["max_vram_mb"] >= 70000 and data["max_vram_mb"] <= data["usable_vram_mb"]
        assert "generous_96gb" in data["reason"] and data["warnings"] == []
        assert data["derived_from"] == "generous_96gb"
        assert "derived   from generous_96gb" in d.cli("profile", "show").stdout
        names = {p["name"] for p in d.cli_json("profile", "list")["profiles"]}
        assert {"dynamic_1x80gb", "balanced_24gb"} <= names
        got = d.cli_json("profile", "get", "dynamic_1x80gb")
        assert got["max_vram_mb"] == 79872 and got["max_concurrent_models"] == 4
        assert got["layer_names"] == ["generous_96gb", "dynamic_1x80gb"]
        # The startup log says what was detected and chosen.
        (sel,) = _events(d, "profile.selected")
        assert sel["gpus"] == ["0: NVIDIA H100 80GB HBM3 (81920 MiB)"]
        assert (sel["profile"], sel["strategy"], sel["derived_from"]) == (
            "dynamic_1x80gb",
            "concurrent_full",
            "generous_96gb",
        )
        assert isinstance(sel["models"], int) and sel["models"] > 0
        # An administrator may switch away and back; a reload re-derives it.
        with AdminClient(address=str(d.socket.with_name("admin.sock"))) as admin:
            admin.switch_profile("balanced_24gb", "")
            shown = d.cli_json("profile", "show")
            assert (shown["name"], shown["derived_from"]) == ("balanced_24gb", None)
            # The dynamic profile is still one `select --profile` and `explain` may ask about,
            # as `profile list` and the switch back offer it.
            what_if = d.cli_json("select", "caption", "--profile", "dynamic_1x80gb")
            assert what_if["profile"] == "dynamic_1x80gb"
            best = what_if["models"][0]["id"]
            r = d.cli("explain", "caption", best, "--profile", "dynamic_1x80gb")
            assert r.returncode == 0, r.stderr
            admin.switch_profile("dynamic_1x80gb", "")
            assert d.cli_json("profile", "show")["max_vram_mb"] == 79872
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not _events(d, "config.reloaded") and time.monotonic() < deadline:
            time.sleep(0.05)
        shown = d.cli_json("profile", "show")
        assert (shown["name"], shown["source"]) == ("dynamic_1x80gb", "auto")


def test_a_predefined_profile_can_still_be_forced_on_an_80gb_gpu() -> None:
    r = run_daemon_once("check-config", "--profile", "balanced_24gb", "--simulated-gpus", "81920")
    assert r.returncode == 0, r.stderr
    active = json.loads(r.stdout)["active_profile"]
    assert (active["name"], active["source"], active["max_vram_mb"]) == (
        "balanced_24gb",
        "flag",
        22000,
    )
