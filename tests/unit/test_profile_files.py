"""Profile specs: a name, a TOML or JSON profile file, or several combined in order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuletd.active_profile import ProfileSource, resolve_active_profile
from gpuletd.config import load_config
from gpuletd.config_errors import ProfileFileError, ProfileSpecError, UnknownProfileName
from gpuletd.profile_files import is_profile_path, resolve_profile_spec
from gpuletd.profiles import BUILTIN_PROFILES, Bias, Category, Strategy

LOW_LATENCY = """
[profiles.low_latency]
extends = "balanced_24gb"
max_concurrent_models = 1
grace_period_seconds = 30
tags = ["interactive"]
"""


def test_a_name_is_the_profile_itself() -> None:
    p = resolve_profile_spec("balanced_24gb", BUILTIN_PROFILES)
    assert p == BUILTIN_PROFILES["balanced_24gb"]
    assert p.layer_names == ("balanced_24gb",)


def test_an_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownProfileName) as e:
        resolve_profile_spec("balanced_42gb", BUILTIN_PROFILES, where="GPULET_DEPLOYMENT_PROFILE")
    assert str(e.value).startswith("GPULET_DEPLOYMENT_PROFILE: unknown profile 'balanced_42gb'")
    assert "balanced_24gb" in str(e.value)
    assert isinstance(e.value, ProfileSpecError)


@pytest.mark.parametrize(
    ("item", "path"),
    [("edge.json", True), ("./edge", True), ("/etc/gpulet/p.toml", True), ("edge", False)],
)
def test_what_counts_as_a_path(item: str, path: bool) -> None:
    assert is_profile_path(item) is path


def test_combined_profiles_patch_in_order_with_only_their_own_fields() -> None:
    known = load_config([], texts=[("gpulet.toml", LOW_LATENCY)]).profiles
    p = resolve_profile_spec("generous_96gb,low_latency", known)
    assert p.name == "generous_96gb,low_latency"
    # low_latency sets these itself ...
    assert p.max_concurrent_models == 1
    assert p.grace_period_seconds == 30
    assert p.tags == ("interactive",)
    # ... and inherits the rest from balanced_24gb, which does not reach the combination.
    assert p.max_vram_mb == BUILTIN_PROFILES["generous_96gb"].max_vram_mb
    assert p.strategy is Strategy.CONCURRENT_FULL
    assert p.layer_names == ("generous_96gb", "low_latency")


def test_a_later_whole_profile_replaces_every_field() -> None:
    p = resolve_profile_spec("generous_96gb,development", BUILTIN_PROFILES)
    dev = BUILTIN_PROFILES["development"]
    assert (p.max_vram_mb, p.strategy, p.category) == (dev.max_vram_mb, dev.strategy, dev.category)


def test_a_json_profile_file(tmp_path: Path) -> None:
    f = tmp_path / "edge.json"
    f.write_text(
        json.dumps(
            {
                "profile": "edge_small",
                "category": "edge",
                "extends": "development",
                "max_vram_mb": 6000,
                "tags": ["kiosk"],
                "engine": {"device": "cuda", "tensor_parallel_size": 1},
            },
            indent=2,
        )
    )
    p = resolve_profile_spec(str(f), BUILTIN_PROFILES)
    assert p.name == "edge_small"
    assert p.category is Category.EDGE
    assert p.max_vram_mb == 6000
    assert p.model_selection_bias is Bias.VRAM_EFFICIENT  # from development
    assert p.layer_names == ("development", "edge_small")
    assert dict(p.engine) == {"device": "cuda", "tensor_parallel_size": 1}


def test_a_whole_toml_profile_file_is_named_by_its_stem(tmp_path: Path) -> None:
    f = tmp_path / "lab.toml"
    f.write_text(
        'max_vram_mb = 5000\nmax_concurrent_models = 1\npreferred_quantizations = ["q4_k_m"]\n'
        'strategy = "load_unload"\nautostart_timeout_seconds = 60\ngrace_period_seconds = 10\n'
        'model_selection_bias = "balanced"\n'
    )
    p = resolve_profile_spec(str(f), BUILTIN_PROFILES)
    assert (p.name, p.max_vram_mb, p.layer_names) == ("lab", 5000, ("lab",))


def test_a_partial_file_patches_when_it_comes_later(tmp_path: Path) -> None:
    f = tmp_path / "short_grace.json"
    f.write_text('{"grace_period_seconds": 5}')
    with pytest.raises(ProfileFileError, match="missing field"):
        resolve_profile_spec(str(f), BUILTIN_PROFILES)
    p = resolve_profile_spec(f"balanced_24gb,{f}", BUILTIN_PROFILES)
    assert p.grace_period_seconds == 5
    assert p.max_vram_mb == BUILTIN_PROFILES["balanced_24gb"].max_vram_mb
    assert p.layer_names == ("balanced_24gb", "short_grace")


def test_a_bad_json_profile_names_the_file_line_and_field(tmp_path: Path) -> None:
    f = tmp_path / "p.json"
    f.write_text(
        '{\n  "extends": "development",\n  "engine": {"max_vram_mb": 1},\n'
        '  "max_vram_mb": "lots"\n}\n'
    )
    with pytest.raises(ProfileFileError) as e:
        resolve_profile_spec(str(f), BUILTIN_PROFILES)
    assert str(e.value).startswith(f"--profile: {f}:4: field 'max_vram_mb': expected an integer")


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ('{\n  "extends": "development",\n  "colour": 1\n}', 3, "unknown field 'colour'"),
        ('{\n  "extends": "development",\n  "max_vram_mb": 1,\n}', 4, "invalid JSON"),
        ('{"extends": "nope"}', 1, "extends unknown profile 'nope'"),
        ("[1, 2]", 1, "expected a JSON object"),
        ('{\n"extends": "development",\n"gpu_count": 4294967296}', 3, "field 'gpu_count'"),
    ],
)
def test_bad_json_profiles(tmp_path: Path, text: str, line: int, needle: str) -> None:
    f = tmp_path / "p.json"
    f.write_text(text)
    with pytest.raises(ProfileFileError) as e:
        resolve_profile_spec(str(f), BUILTIN_PROFILES)
    assert str(e.value).startswith(f"--profile: {f}:{line}: "), str(e.value)
    assert needle in str(e.value)


def test_a_missing_or_non_utf8_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileFileError, match="cannot read file"):
        resolve_profile_spec(str(tmp_path / "absent.toml"), BUILTIN_PROFILES)
    f = tmp_path / "latin1.toml"
    f.write_bytes(b'extends = "development"\ndescription = "caf\xe9"\n')
    with pytest.raises(ProfileFileError) as e:
        resolve_profile_spec(str(f), BUILTIN_PROFILES)
    assert str(e.value).startswith(f"--profile: {f}:2: not UTF-8")


def test_a_config_file_given_as_a_profile_file_says_so(tmp_path: Path) -> None:
    f = tmp_path / "conf.toml"
    f.write_text('# a conf.d file\n[profiles.mine]\nextends = "development"\n')
    with pytest.raises(ProfileFileError) as e:
        resolve_profile_spec(str(f), BUILTIN_PROFILES)
    assert str(e.value).startswith(
        f"--profile: {f}:2: [profiles...] tables make this a config file"
    )


def test_an_empty_item_is_refused() -> None:
    with pytest.raises(UnknownProfileName, match="empty profile name"):
        resolve_profile_spec("balanced_24gb,", BUILTIN_PROFILES)


ENGINE_BASE = """
[profiles.base]
extends = "development"
engine = { dtype = "bf16", max_model_len = 4096 }
"""
PATCHED_ENGINE = {"dtype": "fp16", "max_model_len": 4096}


def test_every_layering_patches_the_engine_table_key_by_key(tmp_path: Path) -> None:
    # Config `extends`, a profile file's `extends` and a combination are one merge (docs:
    # a combination works as a later `extends` entry does).
    known = load_config([], texts=[("gpulet.toml", ENGINE_BASE)]).profiles
    patch = tmp_path / "patch.json"
    patch.write_text('{"engine": {"dtype": "fp16"}}')
    assert dict(resolve_profile_spec(f"base,{patch}", known).engine) == PATCHED_ENGINE
    child = tmp_path / "child.json"
    child.write_text('{"extends": "base", "engine": {"dtype": "fp16"}}')
    assert dict(resolve_profile_spec(str(child), known).engine) == PATCHED_ENGINE
    two = tmp_path / "two.json"
    two.write_text('{"extends": ["base", "patch"], "engine": {"trust_remote_code": true}}')
    with_patch = {**known, "patch": resolve_profile_spec(f"development,{patch}", known)}
    assert dict(resolve_profile_spec(str(two), with_patch).engine) == {
        **PATCHED_ENGINE,
        "trust_remote_code": True,
    }


@pytest.mark.parametrize(
    ("engine", "needle"),
    [
        ('{"args": "--x"}', "engine setting 'args': expected an array of strings"),
        ('{"executable": []}', "engine setting 'executable'"),
        ('{"gpu_memory_utilization": 0}', "expected a fraction of the GPU in (0, 1]"),
        ('{"tensor_parallel_size": 0}', "'tensor_parallel_size': expected an integer >= 1"),
    ],
)
def test_a_profile_files_engine_table_is_checked_at_load(
    tmp_path: Path, engine: str, needle: str
) -> None:
    f = tmp_path / "p.json"
    f.write_text('{\n  "extends": "development",\n  "engine": ' + engine + "\n}\n")
    with pytest.raises(ProfileFileError) as e:
        resolve_profile_spec(str(f), BUILTIN_PROFILES)
    assert str(e.value).startswith(f"--profile: {f}:3: field 'engine': "), str(e.value)
    assert needle in str(e.value)


def test_a_profile_files_stem_follows_the_profile_name_rule(tmp_path: Path) -> None:
    f = tmp_path / "my edge.json"
    f.write_text('{"extends": "development"}')
    with pytest.raises(ProfileFileError, match=r"'my edge' .*may not contain spaces.*set 'name'"):
        resolve_profile_spec(str(f), BUILTIN_PROFILES)
    f.write_text('{"extends": "development", "name": "my_edge"}')
    assert resolve_profile_spec(str(f), BUILTIN_PROFILES).name == "my_edge"
    f.write_text('{"extends": "development", "name": "a/b"}')
    with pytest.raises(ProfileFileError, match="field 'name': 'a/b': may not contain"):
        resolve_profile_spec(str(f), BUILTIN_PROFILES)


def test_a_combined_name_longer_than_the_api_allows_is_refused(tmp_path: Path) -> None:
    long_name = "x" * 200
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"name": long_name, "grace_period_seconds": 5}))
    p = resolve_profile_spec(f"development,{f}", BUILTIN_PROFILES)
    assert p.name == f"development,{long_name}"
    with pytest.raises(UnknownProfileName, match=r"combined name .* at most 256"):
        resolve_profile_spec(f"development,{f},{f}", BUILTIN_PROFILES)


def test_a_bad_file_from_env_or_config_is_skipped_naming_where_it_was_given(
    tmp_path: Path,
) -> None:
    absent = tmp_path / "absent.json"
    active = resolve_active_profile(
        BUILTIN_PROFILES,
        None,
        env=str(absent),
        config=f"{absent}",
        config_where="/etc/gpulet/gpulet.toml:3",
    )
    assert active.source is ProfileSource.DEFAULT
    env_warning, config_warning = active.rejected
    assert env_warning.startswith(f"GPULET_DEPLOYMENT_PROFILE: {absent}: cannot read file")
    assert config_warning.startswith(
        f"profile = in /etc/gpulet/gpulet.toml:3: {absent}: cannot read file"
    )


def test_a_relative_path_in_a_config_is_found_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "etc" / "gpulet.toml"
    cfg.parent.mkdir()
    cfg.write_text('profile = "./edge.json"\n')
    (cfg.parent / "edge.json").write_text('{"extends": "development", "max_vram_mb": 6000}')
    monkeypatch.chdir(tmp_path)  # as systemd's `/`: not the config's folder
    c = load_config([cfg])
    active = resolve_active_profile(c.profiles, None, config=c.profile, config_where=str(cfg))
    assert (active.source, active.profile.name, active.profile.max_vram_mb) == (
        ProfileSource.CONFIG,
        "edge",
        6000,
    )
