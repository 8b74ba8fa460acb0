"""Selection fits the machine (issue 9, item 2): on a simulated 8 GB GPU, `gpulet select` lists
only models that can ever be placed there, says which limit kept the others out, and an
Acquire by role is granted the best model that fits instead of failing on one that cannot."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuletd.state_dir import STATE_FILE
from gpuletd.store import StateStore
from tests.helpers import Daemon

pytestmark = pytest.mark.system

# development allows 10000 MiB in total; an 8 GB GPU has 8192 - 2048 headroom = 6144 usable.
CONFIG = """
[models.big-vl]
quantization = "fp8"
vram_estimate_mb = 9000
role_priority = { description = 95 }

[models.huge-vl]
quantization = "fp8"
vram_estimate_mb = 12000
role_priority = { description = 99 }

[models.small-vl]
quantization = "q4_k_m"
vram_estimate_mb = 4000
role_priority = { description = 80 }

[models.tiny-vl]
quantization = "q4_k_m"
vram_estimate_mb = 2000
role_priority = { description = 60 }

[models.tagger]
quantization = "q4_k_m"
vram_estimate_mb = 1000
role_priority = { keywords = 90 }
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    cfg: Path = tmp_path_factory.mktemp("cfg") / "gpulet.toml"
    cfg.write_text(CONFIG)
    # The profile is forced, so the test does not depend on what auto-detection makes of 8 GB.
    args = ("--config", str(cfg), "--profile", "development")
    with Daemon(*args, env={"GPULET_SIMULATED_GPUS": "8192"}) as d:
        yield d


def test_select_lists_only_models_that_fit_the_gpu(daemon: Daemon) -> None:
    s = daemon.cli_json("select", "description", "--top", "5")
    assert s["profile"] == "development"
    assert [m["id"] for m in s["models"]] == ["small-vl", "tiny-vl"]
    assert {x["id"]: x["limit"] for x in s["excluded"]} == {
        "big-vl": "gpu_memory",
        "huge-vl": "profile_budget",
    }
    assert s["top_n"] == 5
    assert s["model_selection_bias"] == "vram_efficient"
    assert s["bf16_preferred"] is True  # the simulated GPU reports compute capability 8.9
    assert all(m["engine"] for m in s["models"])


def test_select_says_what_left_a_model_out(daemon: Daemon) -> None:
    r = daemon.cli("select", "description")
    assert r.returncode == 0, r.stderr
    listed = r.stdout.partition("left out:")[0]
    assert "small-vl" in listed and "big-vl" not in listed
    assert "big-vl needs 9000 MiB but the largest GPU" in r.stdout
    assert "6144 MiB usable" in r.stdout


def test_explain_names_the_limit(daemon: Daemon) -> None:
    big = daemon.cli_json("explain", "description", "big-vl")
    assert (big["status"], big["limit"]) == ("rejected", "gpu_memory")
    assert "largest GPU" in big["reason"]
    huge = daemon.cli_json("explain", "description", "huge-vl")
    assert (huge["status"], huge["limit"]) == ("rejected", "profile_budget")
    small = daemon.cli_json("explain", "description", "small-vl")
    assert (small["status"], small["rank"]) == ("eligible", 1)


def test_acquire_by_role_is_granted_the_best_model_that_fits(daemon: Daemon) -> None:
    r = daemon.cli("lease", "acquire", "--role", "description", "--json")
    assert r.returncode == 0, r.stderr
    granted = [line for line in r.stdout.splitlines() if '"granted"' in line]
    assert granted and '"model_id": "small-vl"' in granted[-1]


def test_select_under_another_profile_on_the_same_gpu(daemon: Daemon) -> None:
    # generous_96gb's budget holds every model, but the 8 GB GPU still does not.
    s = daemon.cli_json("select", "description", "--profile", "generous_96gb")
    assert s["profile"] == "generous_96gb"
    assert s["model_selection_bias"] == "quality"
    assert [m["id"] for m in s["models"]] == ["small-vl", "tiny-vl"]
    assert {x["id"]: x["limit"] for x in s["excluded"]} == {
        "big-vl": "gpu_memory",
        "huge-vl": "gpu_memory",
    }
    # The active profile is unchanged by the question.
    assert daemon.cli_json("profile", "show")["name"] == "development"


def test_an_unknown_profile_is_not_found(daemon: Daemon) -> None:
    r = daemon.cli("select", "description", "--profile", "nope")
    assert r.returncode != 0
    assert "unknown profile 'nope'" in r.stderr and "development" in r.stderr


def test_a_role_on_an_empty_registry_is_unknown(tmp_path: Path) -> None:
    # No model at all: the role is unknown (exit 3), not a top_n the user never gave.
    cfg = tmp_path / "gpulet.toml"
    cfg.write_text("example_models = false\n")
    args = ("--config", str(cfg), "--profile", "development")
    with Daemon(*args, env={"GPULET_SIMULATED_GPUS": "8192"}) as d:
        for cmd in (("lease", "acquire", "--role", "caption"), ("plan", "--role", "caption")):
            r = d.cli(*cmd)
            assert r.returncode == 3, (cmd, r.stderr)
            assert "unknown role 'caption'" in r.stderr and "top_n" not in r.stderr


def test_select_shows_the_reservation_it_ranked_by(tmp_path: Path) -> None:
    # A model measured larger than its estimate: the candidate shows the measured reservation,
    # the number ranking and fit used (vram_efficient puts the smaller one first).
    cfg = tmp_path / "gpulet.toml"
    cfg.write_text(
        '[models.grown]\nquantization = "q4_k_m"\nvram_estimate_mb = 1000\n'
        "role_priority = { description = 50 }\n"
        '[models.steady]\nquantization = "q4_k_m"\nvram_estimate_mb = 2000\n'
        "role_priority = { description = 50 }\n"
    )
    args = ("--config", str(cfg), "--profile", "development")
    d = Daemon(*args, env={"GPULET_SIMULATED_GPUS": "16384"})
    store = StateStore.open(d.state_dir / STATE_FILE)
    store.put_footprint("grown", measured_mb=3000, load_seconds=1.0)
    store.close()
    with d:
        s = d.cli_json("select", "description")
        assert [(m["id"], m["reservation_mb"]) for m in s["models"]] == [
            ("steady", 2000),
            ("grown", 3000),
        ]
