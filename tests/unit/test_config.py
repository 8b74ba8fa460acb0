from __future__ import annotations

from pathlib import Path

import pytest

from gpuletd.config import apply_overrides, config_paths, load_config
from gpuletd.config_errors import ConfigError
from gpuletd.profiles import BUILTIN_PROFILES, Bias, Strategy


def load(text: str, name: str = "gpulet.toml") -> object:
    return load_config([], texts=[(name, text)])


def error_of(text: str, name: str = "gpulet.toml") -> str:
    with pytest.raises(ConfigError) as e:
        load_config([], texts=[(name, text)])
    return str(e.value)


def test_no_config_gives_builtins_and_example_registry() -> None:
    c = load_config([])
    assert set(c.profiles) == set(BUILTIN_PROFILES)
    assert set(c.registry.models) == {
        "qwen3-vl",
        "qwen25vl",
        "florence-2-large",
        "siglip-large-patch16-384",
        "gpt-oss-20b",
    }
    assert c.registry.models["qwen3-vl"].vram_estimate_mb == 10600
    assert c.registry.models["florence-2-large"].role_priority["keywords"] == 95


def test_builtins_carry_every_seed_field() -> None:
    p = BUILTIN_PROFILES["multi_gpu_2x16gb"]
    assert (p.max_vram_mb, p.max_concurrent_models, p.gpu_count) == (28000, 3, 2)
    assert p.tensor_parallel_threshold_mb == 12000
    assert p.strategy is Strategy.TENSOR_PARALLEL_OR_DISTRIBUTED
    g = BUILTIN_PROFILES["generous_96gb"]
    assert (g.grace_period_seconds, g.autostart_timeout_seconds) == (3600, 60)
    assert BUILTIN_PROFILES["constrained_16gb"].preferred_quantizations[0] == "q4_k_m"


def test_extends_patches_a_builtin() -> None:
    c = load_config(
        [],
        texts=[
            (
                "a.toml",
                """
profile = "my_4090"
[profiles.my_4090]
extends = "balanced_24gb"
max_concurrent_models = 3
""",
            )
        ],
    )
    p = c.profiles["my_4090"]
    assert p.max_concurrent_models == 3
    assert p.max_vram_mb == 22000 and p.strategy is Strategy.CONCURRENT_LIMITED
    assert c.profile == "my_4090" and str(c.profile_where) == "a.toml:2"


def test_extends_list_applies_later_layers_own_fields_in_order() -> None:
    c = load_config(
        [],
        texts=[
            (
                "a.toml",
                """
[profiles.quality_mix]
extends = "development"
model_selection_bias = "quality"
grace_period_seconds = 7
[profiles.long_grace]
extends = "development"
grace_period_seconds = 900
[profiles.combo]
extends = ["balanced_24gb", "quality_mix", "long_grace"]
""",
            )
        ],
    )
    p = c.profiles["combo"]
    # Base from balanced_24gb; quality_mix adds its own bias; long_grace's grace wins last.
    assert p.max_vram_mb == 22000
    assert p.model_selection_bias is Bias.QUALITY
    assert p.grace_period_seconds == 900
    # development's own values do not leak in through the later layers.
    assert p.preferred_quantizations == BUILTIN_PROFILES["balanced_24gb"].preferred_quantizations


def test_a_table_named_like_a_builtin_without_extends_replaces_it() -> None:
    c = load_config(
        [],
        texts=[
            (
                "a.toml",
                """
[profiles.development]
max_vram_mb = 4000
max_concurrent_models = 2
preferred_quantizations = ["q8_0"]
strategy = "concurrent_limited"
autostart_timeout_seconds = 30
grace_period_seconds = 10
model_selection_bias = "balanced"
""",
            )
        ],
    )
    assert c.profiles["development"].max_vram_mb == 4000
    assert c.profiles["development"].preferred_quantizations == ("q8_0",)


def test_a_builtin_can_be_patched_in_place() -> None:
    c = load_config(
        [],
        texts=[
            (
                "a.toml",
                """
[profiles.balanced_24gb]
extends = "balanced_24gb"
grace_period_seconds = 5
""",
            )
        ],
    )
    assert c.profiles["balanced_24gb"].grace_period_seconds == 5
    assert c.profiles["balanced_24gb"].max_vram_mb == 22000


@pytest.mark.parametrize(
    ("text", "where", "needle"),
    [
        ('profile = "x"\n[profiles\n', "gpulet.toml:2", "invalid TOML"),
        (
            '[profiles.p]\nextends = "development"\nbogus = 1\n',
            "gpulet.toml:3",
            "unknown field 'bogus'",
        ),
        (
            '[profiles.p]\nextends = "development"\nmax_vram_mb = "lots"\n',
            "gpulet.toml:3",
            "field 'max_vram_mb': expected an integer >= 0 and <= 1099511627776, got string 'lots'",
        ),
        (
            '[profiles.p]\nextends = "development"\n\nmax_vram_mb = -100\n',
            "gpulet.toml:4",
            "expected an integer >= 0 and <= 1099511627776, got integer -100",
        ),
        (
            '[profiles.p]\nextends = "development"\nstrategy = "fastest"\n',
            "gpulet.toml:3",
            "field 'strategy': expected one of 'load_unload'",
        ),
        (
            '[profiles.p]\nextends = "development"\nmodel_selection_bias = "cheap"\n',
            "gpulet.toml:3",
            "field 'model_selection_bias': expected one of 'vram_efficient'",
        ),
        (
            '[profiles.p]\nextends = "development"\nmax_concurrent_models = true\n',
            "gpulet.toml:3",
            "expected an integer >= 1 and <= 2147483647, got boolean True",
        ),
        ('[profiles.p]\nextends = "nope"\n', "gpulet.toml:2", "extends unknown profile 'nope'"),
        ('[profiles.a]\nextends = "b"\n[profiles.b]\nextends = "a"\n', "gpulet.toml:", "cycle"),
        ("[profiles.p]\nmax_vram_mb = 100\n", "gpulet.toml:1", "missing field(s)"),
        ('[models.m]\nname = "M"\n', "gpulet.toml:1", "missing field 'vram_estimate_mb'"),
        (
            "[models.m]\nvram_estimate_mb = 10\nrole_priority = { caption = -1 }\n",
            "gpulet.toml:3",
            "field 'role_priority'",
        ),
        (
            '[models.m]\nvram_estimate_mb = 10\nbackend = "process"\n',
            "gpulet.toml:1",
            "backend 'process' needs field 'command'",
        ),
        ('colour = "blue"\n', "gpulet.toml:1", "unknown top-level key 'colour'"),
        (
            '[profiles.p]\nextends = "development"\ngrace_period_seconds = nan\n',
            "gpulet.toml:3",
            "expected a finite number of seconds >= 0 and <= 3.1536e+07",
        ),
        # Too large for the API's integer fields: refused here, not later by every RPC that
        # returns them ("Value out of range").
        (
            '[profiles.p]\nextends = "development"\nmax_vram_mb = 9223372036854775807\n',
            "gpulet.toml:3",
            "field 'max_vram_mb': expected an integer >= 0 and <= 1099511627776",
        ),
        (
            '[profiles.p]\nextends = "development"\nmax_concurrent_models = 2147483648\n',
            "gpulet.toml:3",
            "field 'max_concurrent_models': expected an integer >= 1 and <= 2147483647",
        ),
        (
            "[models.m]\nvram_estimate_mb = 10\n\nrole_priority = { caption = 2147483648 }\n",
            "gpulet.toml:4",
            "role 'caption'",
        ),
        (
            "[models.m]\nvram_estimate_mb = 18446744073709551616\n",
            "gpulet.toml:2",
            "field 'vram_estimate_mb': expected an integer >= 1 and <= 1099511627776",
        ),
        (
            '[profiles.p]\nextends = "development"\ngrace_period_seconds = 1e300\n',
            "gpulet.toml:3",
            "field 'grace_period_seconds'",
        ),
        (
            '# models\n[[models]]\nid = "m"\nvram_estimate_mb = 10\n',
            "gpulet.toml:2",
            "[[models]] is an array of tables",
        ),
        (
            '\n[[profiles]]\nname = "p"\n',
            "gpulet.toml:2",
            "[[profiles]] is an array of tables",
        ),
        ("\n\n[colour.sub]\nx = 1\n", "gpulet.toml:3", "unknown top-level key 'colour'"),
        ('\n[profiles."a,b"]\nextends = "development"\n', "gpulet.toml:2", "may not contain ','"),
        ('[profiles."edge.json"]\nextends = "development"\n', "gpulet.toml:1", "profile name"),
        (
            '[profiles."my edge"]\nextends = "development"\n',
            "gpulet.toml:1",
            "may not contain spaces",
        ),
        (
            '[profiles.p]\nextends = "development"\n\nengine = { args = "--x" }\n',
            "gpulet.toml:4",
            "field 'engine': engine setting 'args': expected an array of strings",
        ),
        (
            '[profiles.p]\nextends = "development"\nengine = { executable = "" }\n',
            "gpulet.toml:3",
            "engine setting 'executable'",
        ),
        (
            '[profiles.p]\nextends = "development"\n[profiles.p.engine]\n'
            "gpu_memory_utilization = 1.5\n",
            "gpulet.toml:3",
            "'gpu_memory_utilization': expected a fraction of the GPU in (0, 1]",
        ),
        (
            '[profiles.p]\nextends = "development"\nengine = { port = 8000 }\n',
            "gpulet.toml:3",
            "may not set 'port'",
        ),
        ("\n[[colour]]\nx = 1\n", "gpulet.toml:2", "unknown top-level key 'colour'"),
        (
            '[models.m]\nvram_estimate_mb = 10\nbackend = "process"\n'
            'command = ["srv", "--port", "{prot}"]\n',
            "gpulet.toml:4",
            "{prot}",
        ),
        (
            '[models.m]\nvram_estimate_mb = 10\nbackend = "process"\ncommand = ["srv"]\n'
            'env = { CUDA_VISIBLE_DEVICES = "0" }\n',
            "gpulet.toml:5",
            "CUDA_VISIBLE_DEVICES",
        ),
    ],
)
def test_bad_files_name_file_line_field_and_expectation(text: str, where: str, needle: str) -> None:
    msg = error_of(text)
    assert msg.startswith(where), msg
    assert needle in msg, msg


def test_a_model_defined_twice_across_files_is_an_error(tmp_path: Path) -> None:
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text("[models.m]\nvram_estimate_mb = 10\n")
    b.write_text("\n[models.m]\nvram_estimate_mb = 20\n")
    with pytest.raises(ConfigError, match=rf"{b}:2: model 'm' is defined twice \(first at {a}:1\)"):
        load_config([a, b])


def test_models_in_config_replace_the_example_registry_unless_asked() -> None:
    text = "[models.m]\nvram_estimate_mb = 10\nrole_priority = { caption = 1 }\n"
    assert set(load_config([], texts=[("a", text)]).registry.models) == {"m"}
    both = load_config([], texts=[("a", "example_models = true\n" + text)])
    assert "m" in both.registry.models and "qwen3-vl" in both.registry.models


def test_explicit_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        config_paths(str(tmp_path / "missing.toml"))


def test_overrides_use_the_same_validation() -> None:
    p = apply_overrides(
        BUILTIN_PROFILES["constrained_16gb"],
        [
            "max_concurrent_models=2",
            "strategy=concurrent_limited",
            'preferred_quantizations=["fp8"]',
        ],
    )
    assert p.max_concurrent_models == 2
    assert p.strategy is Strategy.CONCURRENT_LIMITED
    assert p.preferred_quantizations == ("fp8",)
    with pytest.raises(ConfigError, match="--set max_vram_mb=-1: override: field 'max_vram_mb'"):
        apply_overrides(BUILTIN_PROFILES["development"], ["max_vram_mb=-1"])
    with pytest.raises(ConfigError, match="unknown field 'colour'"):
        apply_overrides(BUILTIN_PROFILES["development"], ["colour=red"])
    with pytest.raises(ConfigError, match="expected FIELD=VALUE"):
        apply_overrides(BUILTIN_PROFILES["development"], ["max_vram_mb"])


def test_a_model_id_longer_than_the_api_takes_is_refused_with_its_line() -> None:
    long_id = "m" * 300
    text = (
        f'[models.{long_id}]\nbackend = "reservation"\nquantization = "fp16"\n'
        "vram_estimate_mb = 1000\nrole_priority = { caption = 1 }\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config([], texts=[("big.toml", text)])
    assert "big.toml:1" in str(e.value) and "at most 256" in str(e.value)


def test_layer_names_follow_the_extends_chain_base_first() -> None:
    text = """
[profiles.mid]
extends = "balanced_24gb"
max_concurrent_models = 3
[profiles.top]
extends = ["mid", "generous_96gb"]
tags = ["lab"]
[profiles.balanced_24gb]
extends = "balanced_24gb"
grace_period_seconds = 5
[profiles.whole]
max_vram_mb = 1000
max_concurrent_models = 1
preferred_quantizations = []
strategy = "load_unload"
autostart_timeout_seconds = 10
grace_period_seconds = 0
model_selection_bias = "balanced"
"""
    profiles = load_config([], texts=[("gpulet.toml", text)]).profiles
    # balanced_24gb is replaced by a user profile that extends the built-in one.
    base = ("balanced_24gb (built-in)", "balanced_24gb")
    assert profiles["mid"].layer_names == (*base, "mid")
    assert profiles["top"].layer_names == (*base, "mid", "generous_96gb", "top")
    assert profiles["top"].tags == ("lab",)
    assert profiles["top"].own_fields == frozenset({"tags"})
    assert profiles["balanced_24gb"].layer_names == base
    assert profiles["mid"].grace_period_seconds == 5
    assert profiles["whole"].layer_names == ("whole",)
    assert profiles["whole"].own_fields is None
    assert profiles["development"].layer_names == ("development",)


def test_metadata_fields_are_read_and_checked() -> None:
    text = (
        '[profiles.p]\nextends = "development"\ncategory = "cloud"\nuse_case = "batch"\n'
        'recommended_for = ["ci"]\n'
    )
    p = load_config([], texts=[("gpulet.toml", text)]).profiles["p"]
    assert (p.category and p.category.value, p.use_case, p.recommended_for) == (
        "cloud",
        "batch",
        ("ci",),
    )
    msg = error_of('[profiles.p]\nextends = "development"\ncategory = "datacenter"\n')
    assert msg.startswith("gpulet.toml:3: profile 'p': field 'category': expected one of 'edge'")


def test_a_config_file_that_is_not_utf8_names_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "gpulet.toml"
    f.write_bytes(b'profile = "development"\n# caf\xe9\n')
    with pytest.raises(ConfigError) as e:
        load_config([f])
    assert str(e.value).startswith(f"{f}:2: not UTF-8 text (byte 0xe9")


def test_engine_settings_set_on_the_command_line_are_checked() -> None:
    with pytest.raises(ConfigError, match="engine setting 'enforce_eager': expected true or false"):
        apply_overrides(BUILTIN_PROFILES["development"], ["engine.enforce_eager=yes"])


def test_extends_patches_the_engine_table_key_by_key() -> None:
    c = load_config(
        [],
        texts=[
            (
                "gpulet.toml",
                '[profiles.base]\nextends = "development"\n'
                'engine = { dtype = "bf16", max_model_len = 4096 }\n'
                '[profiles.top]\nextends = "base"\nengine = { dtype = "fp16" }\n',
            )
        ],
    )
    assert dict(c.profiles["top"].engine) == {"dtype": "fp16", "max_model_len": 4096}


def test_a_relative_profile_path_in_a_config_is_relative_to_its_folder(tmp_path: Path) -> None:
    cfg = tmp_path / "etc" / "gpulet.toml"
    cfg.parent.mkdir()
    cfg.write_text('profile = "balanced_24gb, ./p.json,edge.toml,/abs/q.json"\n')
    c = load_config([cfg])
    folder = cfg.parent
    assert c.profile == f"balanced_24gb,{folder / 'p.json'},{folder / 'edge.toml'},/abs/q.json"
