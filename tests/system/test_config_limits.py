"""Config numbers are bounded where they are read: what check-config accepts, every RPC that
returns it can carry (a value too large for a proto integer used to pass check-config and
then fail `gpulet profile show`, `gpulet models` and `gpulet select` with UNKNOWN "Value out
of range")."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuletd.config_fields import INT32_MAX, MAX_MIB, MAX_SECONDS
from tests.helpers import Daemon, run_daemon_once

pytestmark = pytest.mark.system

PROFILE = """profile = "big"
[profiles.big]
extends = "generous_96gb"
max_vram_mb = {vram}
max_concurrent_models = {models}
grace_period_seconds = {grace}

[models.m]
vram_estimate_mb = {estimate}
role_priority = {{ caption = {priority} }}
"""


def _config(tmp_path: Path, **values: object) -> Path:
    defaults: dict[str, object] = {
        "vram": 90000,
        "models": 2,
        "grace": 60,
        "estimate": 1000,
        "priority": 50,
    }
    cfg = tmp_path / "gpulet.toml"
    cfg.write_text(PROFILE.format(**{**defaults, **values}))
    return cfg


@pytest.mark.parametrize(
    ("values", "line", "field"),
    [
        ({"vram": 2**63 - 1}, 4, "max_vram_mb"),
        ({"models": 2**31}, 5, "max_concurrent_models"),
        ({"grace": "1e300"}, 6, "grace_period_seconds"),
        ({"estimate": 2**64}, 9, "vram_estimate_mb"),
        ({"priority": 2**31}, 10, "role_priority"),
    ],
)
def test_check_config_refuses_numbers_the_api_cannot_carry(
    tmp_path: Path, values: dict[str, object], line: int, field: str
) -> None:
    cfg = _config(tmp_path, **values)
    r = run_daemon_once("check-config", "--config", str(cfg))
    assert r.returncode == 2, r.stdout
    assert r.stderr.startswith(f"gpuletd: {cfg}:{line}:") or f"{cfg}:{line}:" in r.stderr
    assert field in r.stderr


def test_the_largest_accepted_numbers_reach_every_command(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path,
        vram=MAX_MIB,
        models=INT32_MAX,
        grace=MAX_SECONDS,
        estimate=MAX_MIB,
        priority=INT32_MAX,
    )
    assert run_daemon_once("check-config", "--config", str(cfg)).returncode == 0
    with Daemon("--config", str(cfg), env={"GPULET_SIMULATED_GPUS": "24576"}) as d:
        shown = d.cli_json("profile", "show")
        assert (shown["max_vram_mb"], shown["max_concurrent_models"]) == (MAX_MIB, INT32_MAX)
        (model,) = d.cli_json("models")["models"]
        assert model["vram_estimate_mb"] == MAX_MIB
        assert model["role_priority"] == {"caption": INT32_MAX}
        selected = d.cli_json("select", "caption")
        # A 2^40 MiB estimate fits the profile's 2^40 MiB budget but no 24 GB GPU: the model is
        # left out, and `excluded` names the GPU's memory as the limit.
        assert selected["models"] == []
        assert [(x["id"], x["limit"]) for x in selected["excluded"]] == [("m", "gpu_memory")]


def test_a_config_that_is_not_utf8_names_the_file_and_line(tmp_path: Path) -> None:
    cfg = tmp_path / "latin1.toml"
    cfg.write_bytes(b'# gpulet\n[profiles.p]\nextends = "development"\ndescription = "caf\xe9"\n')
    r = run_daemon_once("check-config", "--config", str(cfg))
    assert r.returncode == 2
    assert f"{cfg}:4: not UTF-8" in r.stderr
    assert "Traceback" not in r.stderr
