from __future__ import annotations

import pytest

from gpuletd.active_profile import ProfileSource, UnknownProfile, resolve_active_profile
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


@pytest.mark.parametrize("kw", ["flag", "env", "config"])
def test_unknown_profile_lists_the_known_ones(kw: str) -> None:
    with pytest.raises(UnknownProfile) as e:
        resolve_active_profile(P, gpus("16384"), **{kw: "huge_gpu"})
    msg = str(e.value)
    assert "unknown profile 'huge_gpu'" in msg
    for name in P:
        assert name in msg


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
