"""Seed 003's loop on the real daemon with the shipped example profile: one heavy model at a
time (the LLM or SDXL), the light TTS beside it, never reloaded.

gpuletd as a subprocess on a simulated 16 GB GPU, real backend processes (tests/model_server.py)
whose pid files tell which process served each lease."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import gpulet
from tests.system.test_leases import alive, daemon_for, pid_of, process_model

pytestmark = pytest.mark.system

PROFILE = Path(__file__).resolve().parents[2] / "deploy" / "profiles" / "seed003_16gb.toml"


def states(c: gpulet.Client) -> dict[str, str]:
    return {m.id: m.state.value for m in c.models()}


def seed003_config(piddir: Path) -> str:
    return (
        PROFILE.read_text()
        # Seed 003's sizes; the LLM and SDXL are heavy by the profile's threshold, the TTS by
        # its own class (so the test also covers `weight_class`).
        + process_model("llm", 11776, piddir, roles="chat = 90")
        + process_model("sdxl", 10752, piddir, roles="image = 90")
        + process_model("tts", 3584, piddir, roles="tts = 90")
        + 'weight_class = "light"\n'
    )


def test_seed003_loop_keeps_the_tts_loaded_beside_one_heavy_model(
    tmp_path: Path, piddir: Path
) -> None:
    config = seed003_config(piddir)
    d = daemon_for(tmp_path, config, "--profile", "seed003_16gb").start()
    try:
        with gpulet.Client(address=d.address) as c:
            assert c.active_profile().profile.name == "seed003_16gb"

            def use(mid: str) -> int:
                lease = c.acquire(mid, ttl=60)
                pid = pid_of(piddir, mid)
                c.release(lease)
                return pid

            llm_pids, tts_pids = [], []
            for _ in range(2):
                llm_pids.append(use("llm"))
                tts_pids.append(use("tts"))
                use("sdxl")
                loaded = {m for m, s in states(c).items() if s in ("loaded", "loading")}
                # SDXL took the LLM's place (the 15.5 GB budget holds one heavy model and the
                # TTS, as does the cap); the TTS stayed beside it.
                assert loaded == {"sdxl", "tts"}, states(c)
                tts_pids.append(use("tts"))
                llm_pids.append(use("llm"))
                loaded = {m for m, s in states(c).items() if s in ("loaded", "loading")}
                assert loaded == {"llm", "tts"}, states(c)
            # One TTS process served every TTS lease: it was loaded once.
            assert len(set(tts_pids)) == 1 and alive(tts_pids[0])
            # Each return of the LLM after SDXL was a reload (one heavy model at a time).
            assert len(set(llm_pids)) == 3
    finally:
        d.stop()
    output = d.output()
    assert "scheduler.invariant_violated" not in output, output
    # Every reload of the LLM polls its health fastest around the load time learnt before.
    spawns = [e for e in map(json.loads, output.splitlines()) if e["event"] == "backend.spawned"]
    expected = [e["expected_load_s"] for e in spawns if e["model"] == "llm"]
    assert expected[0] is None and len(expected) == 3, expected
    assert all(isinstance(x, float) and x > 0 for x in expected[1:]), expected


@pytest.mark.parametrize(("cap", "after_sdxl"), [(1, {"sdxl", "tts"}), (2, {"llm", "sdxl", "tts"})])
def test_the_heavy_cap_alone_swaps_heavy_models_that_fit_by_memory(
    tmp_path: Path, piddir: Path, cap: int, after_sdxl: set[str]
) -> None:
    """On a 32 GB GPU with room for all three models (26 GB), and for three models at once,
    only `max_heavy_models` can keep SDXL from loading beside the LLM."""
    roomy = ("max_vram_mb=30720", "headroom_mb=1024", "max_concurrent_models=3")
    sets = [a for field in (*roomy, f"max_heavy_models={cap}") for a in ("--set", field)]
    config = seed003_config(piddir)
    d = daemon_for(tmp_path, config, "--profile", "seed003_16gb", *sets, gpus="32768").start()
    try:
        with gpulet.Client(address=d.address) as c:
            for mid in ("llm", "tts", "sdxl"):
                c.release(c.acquire(mid, ttl=60))
            loaded = {m for m, s in states(c).items() if s in ("loaded", "loading")}
            assert loaded == after_sdxl, states(c)
    finally:
        d.stop()
    output = d.output()
    assert "scheduler.invariant_violated" not in output, output
