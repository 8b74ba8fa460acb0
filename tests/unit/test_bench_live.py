"""The live replay's parts that decide what its table says: the traces' shape, the fake NVML
vramd reads, and how records become figures. Nothing here depends on how fast the machine
is; the replay itself runs in tests/system/test_bench_live.py."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from bench.core_scale import measure_scale
from bench.live import traces
from bench.live.__main__ import live_profile, recycles, simulated, without_spawn
from bench.live.gpulet_side import PROFILE, config_toml
from bench.live.report import format_seeds
from bench.live.results import grant_lags, summarise
from bench.live.vramd_side import backends_yaml
from tests.helpers import run_daemon_once

FAKE_NVML = Path(__file__).resolve().parents[2] / "bench" / "live" / "fakenvml" / "pynvml.py"


def _fake_nvml(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    # Loaded from its file under another name: the real pynvml stays what gpuletd imports.
    spec = importlib.util.spec_from_file_location("bench_fake_pynvml", FAKE_NVML)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_fake_pynvml", mod)
    spec.loader.exec_module(mod)
    return mod


def test_the_workflow_fits_any_two_models_but_not_all_three() -> None:
    sizes = {m.id: m.mb for m in traces.workflow().models}
    assert set(sizes) == {"llm", "tts", "image"}
    for a in sizes:
        for b in sizes:
            if a != b:
                assert sizes[a] + sizes[b] <= traces.USABLE_MB
    assert sum(sizes.values()) > traces.USABLE_MB


def test_the_cyclic_scan_has_room_for_all_but_one() -> None:
    models = traces.cyclic().models
    assert len({m.mb for m in models}) == 1
    assert (len(models) - 1) * models[0].mb <= traces.USABLE_MB < len(models) * models[0].mb


def test_traces_are_deterministic_and_loads_short() -> None:
    for make in (traces.workflow, traces.zipf_mix, traces.cyclic):
        assert make() == make()
        for m in make().models:
            assert 0.2 <= m.load_s <= 1.5, m


def test_as_shipped_vramd_is_replayed_only_where_its_recycling_bites() -> None:
    # 0.3.9 recycles a worker after its 12th job: a trace with no model asked more often
    # than that would replay the same policy twice.
    assert not recycles(traces.cyclic())
    assert recycles(traces.zipf_mix())


def test_the_fake_nvml_counts_only_live_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nvml = _fake_nvml(monkeypatch)
    monkeypatch.setenv("BENCH_FAKE_GPU_DIR", str(tmp_path))
    monkeypatch.setenv("BENCH_FAKE_GPU_MB", "16384")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / str(dead.pid)).write_text("9000")
    # This test's own process stands for a live worker holding 3000 MiB.
    (tmp_path / str(Path("/proc/self").resolve().name)).write_text("3000")
    (tmp_path / "not-a-pid").write_text("5000")
    mem = nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(0))
    mib = 1024 * 1024
    assert (mem.total // mib, mem.used // mib, mem.free // mib) == (16384, 3000, 13384)
    procs = nvml.nvmlDeviceGetComputeRunningProcesses(0)
    assert [(p.pid, p.usedGpuMemory // mib) for p in procs] == [
        (int(Path("/proc/self").resolve().name), 3000)
    ]
    with pytest.raises(nvml.NVMLError):
        nvml.nvmlDeviceGetHandleByIndex(1)


def test_the_live_profile_gives_gpulet_the_capacity_vramd_has(tmp_path: Path) -> None:
    w = traces.workflow()
    cfg = tmp_path / "gpulet.toml"
    cfg.write_text(config_toml(w, tmp_path / "workers.jsonl"))
    r = run_daemon_once("check-config", "--config", str(cfg), "--profile", PROFILE)
    assert r.returncode == 0, r.stderr
    effective = json.loads(r.stdout)
    text = json.dumps(effective)
    assert '"max_vram_mb": 16000' in text and '"headroom_mb": 384' in text
    assert traces.USABLE_MB + traces.SAFETY_MB == traces.GPU_MB
    # The pure-core twin is the same profile.
    p = live_profile(w)
    assert (p.max_vram_mb, p.headroom_mb, p.max_concurrent_models) == (16000, 384, 3)


def test_vramd_sees_each_model_as_exactly_its_size(tmp_path: Path) -> None:
    w = traces.workflow()
    cfg = json.loads(backends_yaml(w, tmp_path / "r", tmp_path / "gpu", Path("/bin/python")))
    by = {b["name"]: b for b in cfg["backends"]}
    for m in w.models:
        b = by[m.id]
        # Measured weights with no activation: vramd's peak is the size plus its safety.
        assert b["vram"] == {"weights_gib": m.mb / 1024, "activation_gib": 0}
        assert str(m.mb) in b["runtime"]["command"] and str(m.load_s) in b["runtime"]["command"]


def _req(rid: str, model: str, arrived: float, granted: float | None) -> dict[str, object]:
    return {
        "rid": rid,
        "model": model,
        "arrived": arrived,
        "granted": granted,
        "released": None if granted is None else granted + 1,
        "done": (granted or arrived) + 1,
        "error": None if granted is not None else "QueueFull: full",
    }


def test_grant_lag_counts_only_grants_that_waited_on_that_load() -> None:
    workers = [
        {"event": "ready", "model": "a", "start": 0.0, "ready": 2.0},
        {"event": "ready", "model": "a", "start": 10.0, "ready": 11.0},
        {"event": "stop", "model": "a", "at": 5.0},
    ]
    requests = [
        _req("r1", "a", 0.0, 2.03),  # waited on the first load: 30 ms
        _req("r2", "a", 1.0, 2.05),  # the same load: only the first grant counts
        _req("r3", "a", 3.0, 3.01),  # warm: no load to wait for
        _req("r4", "a", 9.0, 11.2),  # waited on the second load: 200 ms
        _req("r5", "b", 0.0, 4.0),  # another model
    ]
    assert [round(x, 3) for x in grant_lags(requests, workers)] == [0.03, 0.2]


def test_summary_of_a_run() -> None:
    run = {
        "started": 0.0,
        "workers": [{"event": "ready", "model": "a", "start": 0.0, "ready": 2.0}],
        "requests": [_req("r1", "a", 0.0, 2.5), _req("r2", "a", 1.0, None)],
    }
    r = summarise("gpulet", run)
    assert (r.requests, r.served, r.refused, r.loads) == (2, 1, 1, 1)
    assert (r.load_s, r.wait_mean_s, r.makespan_s) == (2.0, 2.5, 3.5)
    assert r.errors == ("QueueFull: full",)


def test_the_pure_core_twin_serves_every_request_of_the_live_traces() -> None:
    for w in traces.live_traces(quick=True):
        for r in simulated(w):
            assert r.refused == r.unserved == r.anomaly_count == 0, (w.name, r.policy)


def test_the_pure_core_twin_waits_for_a_worker_to_spawn_but_counts_only_its_load() -> None:
    # Each live worker is a Python process that starts its load only once the interpreter is
    # up: without that delay the pure-core replay runs ahead of the live one and its closed
    # loops meet in another order than the daemon's.
    spawned = traces.cyclic(1)
    assert all(m.spawn_s == traces.SPAWN_S > 0 for m in spawned.models)
    slow, fast = (simulated(w)[0] for w in (spawned, without_spawn(spawned)))
    loads = sum(m.load_s for m in spawned.models)
    assert slow.loads == fast.loads == len(spawned.models)
    assert slow.load_s == pytest.approx(loads) and fast.load_s == pytest.approx(loads)
    # One client, every request a cold load: each waits the spawn on top of the load.
    assert slow.wait_mean_s == pytest.approx(fast.wait_mean_s + traces.SPAWN_S)
    # vramd's workers outlive their unloads (and the bound is an ideal): neither pays it.
    pairs = zip(simulated(spawned)[1:], simulated(without_spawn(spawned))[1:], strict=True)
    for twin, ideal in pairs:
        assert twin.wait_mean_s == ideal.wait_mean_s, twin.policy


def test_the_scale_benchmark_holds_the_queue_at_its_length() -> None:
    r = measure_scale(40, models=30, gpus=2, events=60, fill_budget_s=60, steady_budget_s=60)
    assert r.reached and r.queued == r.queue_at_end == 40
    assert r.events >= 60 and r.rate > 0


def test_the_seed_summary_reports_the_ratios_of_every_seed() -> None:
    runs = [simulated(traces.zipf_mix(2, 5, seed=s)) for s in (1, 2, 3)]
    text = format_seeds("three seeds", runs)
    total = sum(r[0].load_s for r in runs) / sum(r[1].load_s for r in runs)
    per_seed = sorted(r[0].load_s / r[1].load_s for r in runs)
    assert f"all seeds together {total:.2f}x" in text
    assert f"median {per_seed[1]:.2f}x ({per_seed[0]:.2f}-{per_seed[2]:.2f})" in text
    assert f"at most 0.8x on {sum(x <= 0.8 for x in per_seed)} of 3" in text
