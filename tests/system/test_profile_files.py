"""Profiles by file and combination, and their metadata, through the real daemon and CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import Daemon, run_daemon_once, short_tmpdir

pytestmark = pytest.mark.system

EDGE = {
    "profile": "edge_kiosk",
    "description": "Kiosk with a small GPU",
    "category": "edge",
    "use_case": "Touch-screen kiosks",
    "tags": ["kiosk", "small"],
    "recommended_for": ["edge"],
    "extends": "development",
    "max_vram_mb": 6000,
    "engine": {"device": "cuda", "quantization_bits": 8},
}

CONFIG = """
[profiles.low_latency]
extends = "balanced_24gb"
max_concurrent_models = 1
grace_period_seconds = 30
"""


def test_daemon_runs_on_a_json_profile_file(tmp_path: Path) -> None:
    f = tmp_path / "edge.json"
    f.write_text(json.dumps(EDGE, indent=2))
    with Daemon("--profile", str(f), env={"GPULET_SIMULATED_GPUS": "8192"}) as d:
        shown = d.cli_json("profile", "show")
        assert (shown["name"], shown["source"], shown["max_vram_mb"]) == (
            "edge_kiosk",
            "flag",
            6000,
        )
        got = d.cli_json("profile", "get", "edge_kiosk")
        assert got["layer_names"] == ["development", "edge_kiosk"]
        assert got["layers_count"] == 2
        assert (got["category"], got["tags"]) == ("edge", ["kiosk", "small"])
        text = d.cli("profile", "get", "edge_kiosk")
        assert text.returncode == 0
        assert "development -> edge_kiosk" in text.stdout and "kiosk, small" in text.stdout


def test_a_bad_json_profile_stops_the_daemon_naming_file_line_and_field(tmp_path: Path) -> None:
    f = tmp_path / "p.json"
    f.write_text('{\n  "extends": "development",\n  "max_concurrent_models": 0\n}\n')
    sock = short_tmpdir() / "s.sock"
    r = run_daemon_once(
        "--profile", str(f), "--simulated-gpus", "8192", "--address", f"unix://{sock}"
    )
    assert r.returncode == 2
    assert f"{f}:3: field 'max_concurrent_models': expected an integer >= 1" in r.stderr
    assert "Traceback" not in r.stderr


def test_profiles_combine_in_order_from_the_flag(tmp_path: Path) -> None:
    cfg = tmp_path / "gpulet.toml"
    cfg.write_text(CONFIG)
    env = {"GPULET_SIMULATED_GPUS": "98304"}
    with Daemon("--config", str(cfg), "--profile", "generous_96gb,low_latency", env=env) as d:
        shown = d.cli_json("profile", "show")
        assert shown["name"] == "generous_96gb,low_latency"
        # low_latency's own fields over generous_96gb; the rest stays generous_96gb's.
        assert (shown["max_concurrent_models"], shown["grace_period_seconds"]) == (1, 30)
        assert (shown["max_vram_mb"], shown["strategy"]) == (90000, "concurrent_full")
        got = d.cli_json("profile", "get", "generous_96gb,low_latency")
        assert got["layer_names"] == ["generous_96gb", "low_latency"]


def test_list_and_get_carry_metadata_and_layers(tmp_path: Path) -> None:
    cfg = tmp_path / "gpulet.toml"
    cfg.write_text(CONFIG)
    with Daemon("--config", str(cfg), env={"GPULET_SIMULATED_GPUS": "24576"}) as d:
        listed = {p["name"]: p for p in d.cli_json("profile", "list")["profiles"]}
        for name in ("constrained_16gb", "balanced_24gb", "generous_96gb", "development"):
            p = listed[name]
            assert p["category"] in ("edge", "onprem", "cloud"), name
            assert p["use_case"] and p["tags"] and p["recommended_for"], name
            assert (p["layer_names"], p["layers_count"]) == ([name], 1)
        assert listed["low_latency"]["layer_names"] == ["balanced_24gb", "low_latency"]
        assert listed["low_latency"]["category"] == "onprem"  # inherited metadata
        got = d.cli_json("profile", "get", "low_latency")
        assert (got["layers_count"], got["max_concurrent_models"]) == (2, 1)
        missing = d.cli("profile", "get", "nope")
        assert missing.returncode == 3 and "unknown profile 'nope'" in missing.stderr
