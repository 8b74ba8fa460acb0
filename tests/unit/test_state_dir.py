from __future__ import annotations

from pathlib import Path

import pytest

from gpuletd.state_dir import LOG_SUBDIR, STATE_FILE, default_state_dir

EVERYTHING = {
    "GPULET_STATE_DIR": "/srv/gpulet",
    "STATE_DIRECTORY": "/var/lib/gpulet-unit:/var/lib/other",
    "XDG_STATE_HOME": "/home/ann/.state",
    "HOME": "/home/ann",
}


def without(*names: str) -> dict[str, str]:
    return {k: v for k, v in EVERYTHING.items() if k not in names}


def test_explicit_gpulet_state_dir_wins_over_everything() -> None:
    assert default_state_dir(EVERYTHING, euid=0) == Path("/srv/gpulet")
    assert default_state_dir(EVERYTHING, euid=1000) == Path("/srv/gpulet")


def test_systemd_state_directory_is_next_and_its_first_entry_is_used() -> None:
    env = without("GPULET_STATE_DIR")
    assert default_state_dir(env, euid=0) == Path("/var/lib/gpulet-unit")
    assert default_state_dir(env, euid=1000) == Path("/var/lib/gpulet-unit")


def test_root_without_systemd_uses_var_lib() -> None:
    env = without("GPULET_STATE_DIR", "STATE_DIRECTORY")
    assert default_state_dir(env, euid=0) == Path("/var/lib/gpulet")


def test_a_user_gets_xdg_state_home() -> None:
    env = without("GPULET_STATE_DIR", "STATE_DIRECTORY")
    assert default_state_dir(env, euid=1000) == Path("/home/ann/.state/gpulet")


def test_a_user_without_xdg_gets_dot_local_state() -> None:
    env = without("GPULET_STATE_DIR", "STATE_DIRECTORY", "XDG_STATE_HOME")
    assert default_state_dir(env, euid=1000) == Path("/home/ann/.local/state/gpulet")


def test_empty_values_count_as_unset() -> None:
    env = {"GPULET_STATE_DIR": "", "STATE_DIRECTORY": "", "XDG_STATE_HOME": "", "HOME": "/h"}
    assert default_state_dir(env, euid=1000) == Path("/h/.local/state/gpulet")


def test_a_relative_xdg_state_home_is_ignored_as_the_spec_says() -> None:
    env = {"XDG_STATE_HOME": "relative/state", "HOME": "/h"}
    assert default_state_dir(env, euid=1000) == Path("/h/.local/state/gpulet")


def test_euid_defaults_to_the_process_euid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert default_state_dir({}) == Path("/var/lib/gpulet")
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert default_state_dir({"HOME": "/h"}) == Path("/h/.local/state/gpulet")


def test_file_names() -> None:
    assert STATE_FILE == "state.db"
    assert LOG_SUBDIR == "logs"
