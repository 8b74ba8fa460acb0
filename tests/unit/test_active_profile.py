from __future__ import annotations

from pathlib import Path

import pytest

from gpuletd.active_profile import (
    ProfileSource,
    UnknownProfile,
    available_profiles,
    known_profiles,
    resolve_active_profile,
    startup_fields,
)
from gpuletd.config import load_config
from gpuletd.config_errors import ConfigError
from gpuletd.probe.simulated import SimulatedProbe, parse_simulated_gpus
from gpuletd.probe.types import GpuSnapshot
from gpuletd.profiles import BUILTIN_PROFILES


def gpus(spec: str) -> list[GpuSnapshot]:
    return SimulatedProbe(parse_simulated_gpus(spec)).read()


P = BUILTIN_PROFILES


def test_precedence_flag_env_config_auto() -> None:
    g = gpus("16384")
    full = dict(flag="generous_96gb", env="balanced_24gb", config="development")
    a = resolve_active_profile(P, g, **full)
    assert (a.profile.name, a.source) == ("generous_96gb", ProfileSource.FLAG)
    a = resolve_active_profile(P, g, env="balanced_24gb", config="development")
    assert (a.profile.name, a.source) == ("balanced_24gb", ProfileSource.ENV)
    a = resolve_active_profile(P, g, config="development")
    assert (a.profile.name, a.source) == ("development", ProfileSource.CONFIG)
    a = resolve_active_profile(P, g)
    assert (a.profile.name, a.source) == ("constrained_16gb", ProfileSource.AUTO)
    assert a.usable_vram_mb == 14336


def test_no_probe_falls_back_to_development_with_source_default() -> None:
    a = resolve_active_profile(P, None)
    assert (a.profile.name, a.source) == ("development", ProfileSource.DEFAULT)


def test_no_gpu_detected_is_auto_development() -> None:
    a = resolve_active_profile(P, [])
    assert (a.profile.name, a.source) == ("development", ProfileSource.AUTO)


def test_unknown_profile_on_the_command_line_is_an_error_listing_the_known_ones() -> None:
    with pytest.raises(UnknownProfile) as e:
        resolve_active_profile(P, gpus("16384"), flag="huge_gpu", env="development")
    msg = str(e.value)
    assert "unknown profile 'huge_gpu'" in msg
    for name in P:
        assert name in msg


def test_unknown_env_profile_falls_back_to_auto_detection_with_a_warning() -> None:
    a = resolve_active_profile(P, gpus("16384"), env="typo")
    assert (a.profile.name, a.source) == ("constrained_16gb", ProfileSource.AUTO)
    (w,) = a.warnings
    assert w.startswith("GPULET_DEPLOYMENT_PROFILE: unknown profile 'typo'")
    assert "balanced_24gb" in w and "ignored, running on constrained_16gb (auto)" in w
    assert a.rejected == a.warnings


def test_unknown_env_profile_falls_back_to_the_config_profile_first() -> None:
    a = resolve_active_profile(P, gpus("16384"), env="typo", config="development")
    assert (a.profile.name, a.source) == ("development", ProfileSource.CONFIG)
    assert len(a.rejected) == 1 and "running on development (config)" in a.rejected[0]


def test_unknown_config_profile_names_the_file_and_line_and_falls_back() -> None:
    a = resolve_active_profile(
        P, gpus("81920"), config="nope", config_where="/etc/gpulet/gpulet.toml:3"
    )
    assert (a.profile.name, a.source) == ("dynamic_1x80gb", ProfileSource.AUTO)
    assert a.rejected[0].startswith("profile = in /etc/gpulet/gpulet.toml:3: unknown profile")


def test_unknown_env_and_config_profiles_without_a_probe_fall_back_to_development() -> None:
    a = resolve_active_profile(P, None, env="typo", config="nope")
    assert (a.profile.name, a.source) == ("development", ProfileSource.DEFAULT)
    assert len(a.rejected) == 2


def test_forced_profile_larger_than_hardware_is_honoured_with_warning() -> None:
    a = resolve_active_profile(P, gpus("16384"), flag="multi_gpu_2x16gb")
    assert a.profile.name == "multi_gpu_2x16gb"
    assert any("28000 MiB" in w and "14336 MiB usable" in w for w in a.warnings)
    assert any("expects 2 GPU(s) but 1" in w for w in a.warnings)
    assert resolve_active_profile(P, gpus("16384")).warnings == ()


def test_set_overrides_apply_on_top_of_any_source() -> None:
    a = resolve_active_profile(P, gpus("24576"), overrides=["max_concurrent_models=4"])
    assert a.profile.name == "balanced_24gb" and a.profile.max_concurrent_models == 4
    assert a.overrides == ("max_concurrent_models=4",)
    with pytest.raises(ConfigError):
        resolve_active_profile(P, gpus("24576"), overrides=["max_concurrent_models=0"])


def test_config_profile_may_name_a_user_profile() -> None:
    c = load_config(
        [],
        texts=[
            (
                "c.toml",
                'profile = "mine"\n[profiles.mine]\n'
                'extends = "constrained_16gb"\nheadroom_mb = 1024\n',
            )
        ],
    )
    a = resolve_active_profile(c.profiles, gpus("16384"), config=c.profile)
    assert a.profile.name == "mine" and a.source is ProfileSource.CONFIG
    assert a.usable_vram_mb == 16384 - 1024


def test_an_80gb_gpu_runs_a_dynamic_profile_derived_from_the_nearest_one() -> None:
    a = resolve_active_profile(P, gpus("NVIDIA H100 80GB HBM3:81920"))
    assert (a.profile.name, a.source) == ("dynamic_1x80gb", ProfileSource.AUTO)
    assert a.profile.max_vram_mb == a.usable_vram_mb == 79872
    assert a.derived_from == "generous_96gb" and "derived dynamic_1x80gb" in a.reason
    assert a.warnings == ()


def test_a_predefined_profile_can_still_be_forced_on_hardware_that_gets_a_dynamic_one() -> None:
    for kw in ("flag", "env", "config"):
        a = resolve_active_profile(P, gpus("81920"), **{kw: "balanced_24gb"})
        assert a.profile is P["balanced_24gb"] and a.derived_from is None
        assert a.warnings == ()
    forced = resolve_active_profile(P, gpus("81920"), flag="generous_96gb")
    assert any("90000 MiB" in w and "79872 MiB usable" in w for w in forced.warnings)


def test_the_dynamic_profile_can_be_named_on_the_hardware_it_is_derived_for() -> None:
    a = resolve_active_profile(P, gpus("81920"), flag="dynamic_1x80gb")
    assert (a.profile.name, a.source, a.derived_from) == (
        "dynamic_1x80gb",
        ProfileSource.FLAG,
        "generous_96gb",
    )
    assert "dynamic_1x80gb" in available_profiles(P, gpus("81920"))
    assert set(available_profiles(P, gpus("16384"))) == set(P)
    with pytest.raises(UnknownProfile):
        resolve_active_profile(P, gpus("16384"), flag="dynamic_1x80gb")


def test_known_profiles_add_the_dynamic_one_and_the_active_one_as_it_runs(
    tmp_path: Path,
) -> None:
    # One list for `profile list`, `select --profile` and `admin profile` (issue 9 review).
    g = gpus("81920")
    a = resolve_active_profile(P, g, flag="balanced_24gb", overrides=["max_concurrent_models=4"])
    known = known_profiles(a, P, g)
    assert set(known) == {*P, "dynamic_1x80gb"}
    assert known["balanced_24gb"].max_concurrent_models == 4  # as the daemon runs it
    edge = tmp_path / "edge.json"
    edge.write_text('{"extends": "development", "max_vram_mb": 5000}')
    from_file = resolve_active_profile(P, g, flag=str(edge))
    assert known_profiles(from_file, P, g)["edge"] is from_file.profile


def test_an_auto_profile_made_larger_than_the_hardware_warns_like_a_forced_one() -> None:
    a = resolve_active_profile(P, gpus("8192"), overrides=["max_vram_mb=9000"])
    assert a.source is ProfileSource.AUTO and a.profile.name == "dynamic_1x8gb"
    assert any("9000 MiB" in w and "6144 MiB usable" in w for w in a.warnings)
    assert resolve_active_profile(P, gpus("8192")).warnings == ()


@pytest.mark.parametrize("probe", [[], None])
def test_without_a_gpu_leases_are_said_to_be_cpu_only_reservations(
    probe: list[GpuSnapshot] | None,
) -> None:
    a = resolve_active_profile(P, probe)
    assert a.profile.name == "development"
    (w,) = a.warnings
    assert "no GPU detected: leases are CPU-only reservations" in w and "10000 MiB" in w


def test_startup_fields_name_each_gpu_and_what_was_chosen() -> None:
    g = gpus("NVIDIA H100 80GB HBM3:81920")
    f = startup_fields(resolve_active_profile(P, g), g)
    assert f["gpus"] == ["0: NVIDIA H100 80GB HBM3 (81920 MiB)"]
    assert (f["profile"], f["source"], f["strategy"], f["max_concurrent_models"]) == (
        "dynamic_1x80gb",
        "auto",
        "concurrent_full",
        4,
    )
    assert f["derived_from"] == "generous_96gb" and f["usable_vram_mb"] == 79872


def test_env_may_name_a_profile_file_and_a_broken_one_falls_back(tmp_path: Path) -> None:
    good = tmp_path / "edge.json"
    good.write_text('{"extends": "development", "max_vram_mb": 5000}')
    a = resolve_active_profile(P, gpus("16384"), env=str(good))
    assert (a.profile.name, a.profile.max_vram_mb, a.source) == ("edge", 5000, ProfileSource.ENV)
    bad = tmp_path / "bad.json"
    bad.write_text('{"extends": "development", "max_vram_mb": "lots"}')
    a = resolve_active_profile(P, gpus("16384"), env=str(bad))
    assert (a.profile.name, a.source) == ("constrained_16gb", ProfileSource.AUTO)
    assert str(bad) in a.rejected[0] and "max_vram_mb" in a.rejected[0]
    with pytest.raises(ConfigError, match="max_vram_mb"):
        resolve_active_profile(P, gpus("16384"), flag=str(bad))
