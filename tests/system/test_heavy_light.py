"""Seed 003's loop on the real daemon with the shipped example profile: one heavy model at a
time (the LLM or SDXL), the light TTS beside it, never reloaded.

gpuletd as a subprocess on a simulated 16 GB GPU, real backend processes (tests/model_server.py)
whose pid files tell which process served each lease."""

from __future__ import annotations

from pathlib import Path

import pytest

import gpulet
from tests.system.test_leases import alive, daemon_for, pid_of, process_model

pytestmark = pytest.mark.system

PROFILE = Path(__file__).resolve().parents[2] / "deploy" / "profiles" / "seed003_16gb.toml"


def states(c: gpulet.Client) -> dict[str, str]:
    return {m.id: m.state.value for m in c.models()}


def test_seed003_loop_keeps_the_tts_loaded_beside_one_heavy_model(
    tmp_path: Path, piddir: Path
) -> None:
    config = (
        PROFILE.read_text()
        # Seed 003's sizes; the LLM and SDXL are heavy by the profile's threshold, the TTS by
        # its own class (so the test also covers `weight_class`).
        + process_model("llm", 11776, piddir, roles="chat = 90")
        + process_model("sdxl", 10752, piddir, roles="image = 90")
        + process_model("tts", 3584, piddir, roles="tts = 90")
        + 'weight_class = "light"\n'
    )
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
                # The heavy cap swapped the LLM out for SDXL; the TTS stayed beside it.
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
