"""Issue 8's policy rules on the pure core: heavy and light models (seed 003), idle unload only
under pressure, and the head of the queue against the per-GPU load lock."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from gpuletd.config import load_config
from gpuletd.profiles import BUILTIN_PROFILES, IdleUnload, Profile
from gpuletd.registry import Backend, Model, WeightClass
from gpuletd.scheduler import (
    Decision,
    Granted,
    ModelState,
    Scheduler,
    StartBackend,
    StopBackend,
    StopReason,
    Tuning,
    check_invariants,
)
from gpuletd.scheduler.eviction import Candidate, FutureView, plan_room
from gpuletd.scheduler.placement import Need
from tests.fakes.snapshots import snapshot as snap

D = TypeVar("D")

# The shipped example profile, as the daemon reads it.
SEED003_FILE = Path(__file__).resolve().parents[2] / "deploy" / "profiles" / "seed003_16gb.toml"
SEED003 = load_config([SEED003_FILE]).profiles["seed003_16gb"]


def model(mid: str, mb: int, **kw: object) -> Model:
    fields: dict[str, object] = {"backend": Backend.PROCESS, "command": ("serve",), **kw}
    return Model(
        id=mid,
        name=mid,
        quantization="fp8",
        vram_estimate_mb=mb,
        role_priority={"chat": 1},
        **fields,  # type: ignore[arg-type]
    )


SEED_MODELS = {m.id: m for m in (model("llm", 11776), model("sdxl", 10752), model("tts", 3584))}


def make(profile: Profile, models: dict[str, Model], gpus: Sequence[int] = (16384,)) -> Scheduler:
    s = Scheduler(profile, models, [snap(i, t) for i, t in enumerate(gpus)])
    s.start(0.0)
    return s


def of(out: list[Decision], kind: type[D]) -> list[D]:
    return [d for d in out if isinstance(d, kind)]


def ok(s: Scheduler) -> None:
    assert check_invariants(s) == []


def probe_exact(s: Scheduler, now: float, foreign: int = 0) -> list[Decision]:
    """A reading that shows what the core has placed, plus `foreign` MiB of someone else's."""
    readings = []
    for g in s.gpus():
        assert g.total_mb is not None
        readings.append(snap(g.index, g.total_mb, g.total_mb - g.reserved_mb - foreign, at=now))
    return s.probe(readings, now=now)


def use(s: Scheduler, rid: str, mid: str, now: float, starts: list[str]) -> None:
    """Request, load if needed (unloads finish at once and show free), hold and release."""
    out = s.request(rid, mid, now=now)
    for _ in range(3):
        for stop in of(out, StopBackend):
            out += s.unload_finished(stop.model_id, now=now)
            out += probe_exact(s, now)
        if any(g.lease_id == rid for g in of(out, Granted)):
            break
        for start in of(out, StartBackend):
            starts.append(start.model_id)
            out += s.load_succeeded(start.model_id, now=now)
    assert any(g.lease_id == rid for g in of(out, Granted)), out
    ok(s)
    s.release(rid, now=now + 1)
    ok(s)


def loaded(s: Scheduler) -> set[str]:
    return {m.model_id for m in s.models().values() if m.state is ModelState.LOADED}


# -- heavy and light ----------------------------------------------------------------------------


def test_seed003_loop_loads_the_tts_once_and_one_heavy_model_at_a_time() -> None:
    s = make(SEED003, SEED_MODELS)
    starts: list[str] = []
    t = 1.0
    for _ in range(5):
        for mid in ("llm", "tts", "sdxl", "tts", "llm"):
            use(s, f"r{t:g}", mid, t, starts)
            assert not {"llm", "sdxl"} <= loaded(s)
            t += 10
    assert starts.count("tts") == 1
    assert loaded(s) == {"llm", "tts"}


def test_without_the_heavy_cap_the_constrained_profile_swaps_the_tts_every_time() -> None:
    # The seed's numbers under the built-in constrained_16gb: one model at a time.
    s = make(BUILTIN_PROFILES["constrained_16gb"], {k: v for k, v in SEED_MODELS.items()})
    starts: list[str] = []
    for i, mid in enumerate(("tts", "llm", "tts", "llm")):
        use(s, f"r{i}", mid, 1.0 + 10 * i, starts)
    assert starts.count("tts") == 2


def test_weight_class_overrides_the_threshold() -> None:
    # A 9 GB model declared light may sit beside a heavy one; one declared heavy (though
    # small) may not.
    models = {
        "llm": model("llm", 8192),
        "vlm": model("vlm", 4000, weight_class=WeightClass.HEAVY),
        "big-tts": model("big-tts", 7000, weight_class=WeightClass.LIGHT),
    }
    prof = dataclasses.replace(SEED003, max_concurrent_models=3, max_vram_mb=15872)
    s = make(prof, models)
    starts: list[str] = []
    use(s, "a", "llm", 1.0, starts)
    use(s, "b", "big-tts", 2.0, starts)
    assert loaded(s) == {"llm", "big-tts"}
    use(s, "c", "vlm", 3.0, starts)
    # vlm is heavy: the LLM made way, the light model stayed.
    assert loaded(s) == {"vlm", "big-tts"}
    assert s.model("vlm") is not None and s.model("vlm").heavy  # type: ignore[union-attr]


def test_a_heavy_request_waits_while_the_heavy_model_is_leased_and_a_light_one_is_served() -> None:
    s = make(SEED003, SEED_MODELS)
    starts: list[str] = []
    out = s.request("l", "llm", now=1.0)
    out += s.load_succeeded("llm", now=1.0)
    assert of(out, Granted)
    out = s.request("i", "sdxl", now=2.0)
    # Memory would allow it beside nothing else, but the heavy slot is held by a lease.
    assert not of(out, StartBackend) and not of(out, StopBackend)
    use(s, "t", "tts", 3.0, starts)
    assert starts == ["tts"]
    out = s.release("l", now=4.0)
    stops = of(out, StopBackend)
    assert [x.model_id for x in stops] == ["llm"]
    out = s.unload_finished("llm", now=4.0) + probe_exact(s, 4.0)
    assert [x.model_id for x in of(out, StartBackend)] == ["sdxl"]
    ok(s)


def test_lowering_the_heavy_cap_drains_idle_heavy_models_only() -> None:
    prof = dataclasses.replace(SEED003, max_concurrent_models=3, max_heavy_models=2)
    models = {
        "a": model("a", 5000, weight_class=WeightClass.HEAVY),
        "b": model("b", 5000, weight_class=WeightClass.HEAVY),
        "t": model("t", 3000),
    }
    s = make(prof, models)
    starts: list[str] = []
    for i, mid in enumerate("abt"):
        use(s, f"r{i}", mid, 1.0 + i, starts)
    assert loaded(s) == {"a", "b", "t"}
    out = s.reconfigure(dataclasses.replace(prof, max_heavy_models=1), models, now=10.0)
    ok(s)
    assert len(of(out, StopBackend)) == 1
    assert of(out, StopBackend)[0].model_id in {"a", "b"}


# -- idle unload only under pressure --------------------------------------------------------------

ROOMY = dataclasses.replace(
    BUILTIN_PROFILES["generous_96gb"], grace_period_seconds=60, idle_unload=IdleUnload.PRESSURE
)
SMALL = {m.id: m for m in (model("a", 20000), model("b", 20000), model("c", 20000))}


def test_pressure_keeps_idle_models_past_their_grace_when_nothing_needs_the_room() -> None:
    s = make(ROOMY, SMALL, gpus=(98304,))
    starts: list[str] = []
    use(s, "r1", "a", 1.0, starts)
    assert s.next_wakeup() is None or s.next_wakeup() != 62.0
    assert of(s.tick(now=10_000.0), StopBackend) == []
    assert loaded(s) == {"a"}
    # The default keeps the seeds' meaning: unloaded at release + grace.
    g = make(dataclasses.replace(ROOMY, idle_unload=IdleUnload.GRACE), SMALL, gpus=(98304,))
    use(g, "r1", "a", 1.0, starts)
    stops = of(g.tick(now=62.0), StopBackend)
    assert [x.reason for x in stops] == [StopReason.GRACE_EXPIRED]


def test_pressure_unloads_an_idle_model_when_another_process_wants_the_memory() -> None:
    s = make(ROOMY, SMALL, gpus=(98304,))
    starts: list[str] = []
    use(s, "r1", "a", 1.0, starts)
    use(s, "r2", "b", 2.0, starts)
    s.release("r2", now=2.0)
    # Within the grace period a foreign process takes memory: nothing is unloaded yet.
    assert of(probe_exact(s, 30.0, foreign=60000), StopBackend) == []
    # Past it, the memory is still wanted: one idle model goes (one is enough).
    out = probe_exact(s, 100.0, foreign=60000)
    assert len(of(out, StopBackend)) == 1
    ok(s)


def test_pressure_still_evicts_an_idle_model_for_a_request() -> None:
    prof = dataclasses.replace(ROOMY, max_concurrent_models=2)
    s = make(prof, SMALL, gpus=(98304,))
    starts: list[str] = []
    use(s, "r1", "a", 1.0, starts)
    use(s, "r2", "b", 2.0, starts)
    use(s, "r3", "c", 3.0, starts)
    assert len(loaded(s)) == 2 and "c" in loaded(s)


# -- the head of the queue and the per-GPU load lock ------------------------------------------


def test_a_later_load_does_not_take_the_load_lock_the_head_is_about_to_need() -> None:
    # One GPU, room for X beside Y but not beside V. X is the head: it evicted idle V and
    # waits for the unload. Y arrives and would fit at once, but loading Y would hold the
    # GPU's load lock when X's room comes back, pushing X back by Y's whole load time.
    prof = dataclasses.replace(BUILTIN_PROFILES["balanced_24gb"], max_concurrent_models=3)
    models = {m.id: m for m in (model("v", 8000), model("x", 8000), model("y", 2000))}
    s = make(prof, models, gpus=(16384,))
    starts: list[str] = []
    use(s, "r0", "v", 1.0, starts)
    out = s.request("rx", "x", now=2.0)
    assert [x.model_id for x in of(out, StopBackend)] == ["v"]
    out = s.request("ry", "y", now=2.5)
    assert of(out, StartBackend) == []
    ok(s)
    out = s.unload_finished("v", now=3.0) + probe_exact(s, 3.0)
    assert [x.model_id for x in of(out, StartBackend)] == ["x"]
    out = s.load_succeeded("x", now=4.0)
    assert [g.lease_id for g in of(out, Granted)] == ["rx"]
    assert [x.model_id for x in of(out, StartBackend)] == ["y"]
    ok(s)


# -- patience (ski rental) ------------------------------------------------------------------------

# Any two of the three fit, not all three; the LLM is the costly one to bring back.
TRIO_PROFILE = dataclasses.replace(
    BUILTIN_PROFILES["balanced_24gb"], max_concurrent_models=3, headroom_mb=512
)
TRIO = {m.id: m for m in (model("llm", 9000), model("tts", 3000), model("img", 6000))}
# Patience counts every reload expected within the next 1000 requests as certain: with two
# models each asked for once so far, evicting the LLM (20 s to load) rather than the TTS (7 s)
# is worth waiting 13 s for.
PATIENT = Tuning(patience_horizon_requests=1000)


def _trio(s: Scheduler) -> None:
    """LLM loaded in 20 s, used and released; TTS loaded in 7 s and still leased."""
    s.request("l", "llm", now=0.0)
    s.load_succeeded("llm", now=20.0)
    s.release("l", now=25.0)
    s.request("t", "tts", now=30.0)
    out = s.load_succeeded("tts", now=37.0)
    assert [g.lease_id for g in of(out, Granted)] == ["t"]


def test_patience_waits_for_a_cheaper_victim_whose_lease_is_ending() -> None:
    s = Scheduler(TRIO_PROFILE, TRIO, [snap(0, 16384)], tuning=PATIENT)
    s.start(0.0)
    _trio(s)
    out = s.request("i", "img", now=40.0)
    # Evicting the idle LLM would cost a 20 s reload; the TTS, leased, would cost 7 s.
    assert of(out, StopBackend) == []
    entry = next(q for q in s.queue() if q.request_id == "i")
    assert entry.patient_until == 53.0
    ok(s)
    out = s.release("t", now=45.0)
    assert [x.model_id for x in of(out, StopBackend)] == ["tts"]
    assert loaded(s) == {"llm"}
    ok(s)


def test_patience_waits_for_a_load_under_way_whose_lease_will_end() -> None:
    # The TTS is still loading for its client when the image model is asked for: once loaded,
    # granted and released it is the cheaper victim (a ~6 s reload, never measured, against
    # the LLM's measured 20 s), so the image request waits for that rather than evict the LLM.
    s = Scheduler(TRIO_PROFILE, TRIO, [snap(0, 16384)], tuning=PATIENT)
    s.start(0.0)
    s.request("l", "llm", now=0.0)
    s.load_succeeded("llm", now=20.0)
    s.release("l", now=25.0)
    s.request("t", "tts", now=30.0)
    out = s.request("i", "img", now=32.0)
    assert of(out, StopBackend) == []
    entry = next(q for q in s.queue() if q.request_id == "i")
    assert entry.patient_until is not None and entry.patient_until > 45.0
    ok(s)
    assert [g.lease_id for g in of(s.load_succeeded("tts", now=37.0), Granted)] == ["t"]
    out = s.release("t", now=45.0)
    assert [x.model_id for x in of(out, StopBackend)] == ["tts"]
    assert loaded(s) == {"llm"}
    ok(s)


def test_patience_is_bounded_then_the_eviction_happens() -> None:
    s = Scheduler(TRIO_PROFILE, TRIO, [snap(0, 16384)], tuning=PATIENT)
    s.start(0.0)
    _trio(s)
    assert of(s.request("i", "img", now=40.0), StopBackend) == []
    # The TTS lease does not end: at the bound (the 13 s saved) the LLM goes after all.
    assert s.next_wakeup() == 53.0
    assert of(s.tick(52.9), StopBackend) == []
    assert [x.model_id for x in of(s.tick(53.0), StopBackend)] == ["llm"]
    ok(s)


def test_patience_never_runs_past_a_deadline_or_when_disabled() -> None:
    s = Scheduler(TRIO_PROFILE, TRIO, [snap(0, 16384)], tuning=PATIENT)
    s.start(0.0)
    _trio(s)
    # Deadline 50 minus img's own load time (6000 MiB at 2 s/GiB, ~11.7 s): no time to wait.
    out = s.request("i", "img", now=40.0, deadline=50.0)
    assert [x.model_id for x in of(out, StopBackend)] == ["llm"]
    s2 = Scheduler(TRIO_PROFILE, TRIO, [snap(0, 16384)], tuning=Tuning(patience_max_s=0.0))
    s2.start(0.0)
    _trio(s2)
    assert [x.model_id for x in of(s2.request("i", "img", now=40.0), StopBackend)] == ["llm"]


def test_a_patient_request_does_not_hold_back_a_load_that_fits_now() -> None:
    models = {**TRIO, "tiny": model("tiny", 500)}
    s = Scheduler(TRIO_PROFILE, models, [snap(0, 16384)], tuning=PATIENT)
    s.start(0.0)
    _trio(s)
    assert of(s.request("i", "img", now=40.0), StopBackend) == []
    assert next(q for q in s.queue() if q.request_id == "i").patient_until == 53.0
    # 500 MiB fit beside the LLM and the TTS: the patient head is not waiting for memory on
    # its way back, so the load goes now rather than after its patience.
    out = s.request("x", "tiny", now=41.0)
    assert [x.model_id for x in of(out, StartBackend)] == ["tiny"]
    ok(s)


def test_patience_spends_at_most_half_the_slack_a_deadline_leaves() -> None:
    s = Scheduler(TRIO_PROFILE, TRIO, [snap(0, 16384)], tuning=PATIENT)
    s.start(0.0)
    _trio(s)
    own_load = 6000 / 1024 * 2.0  # img never loaded: 2 s per GiB
    out = s.request("i", "img", now=40.0, deadline=40.0 + own_load + 10.0)
    assert of(out, StopBackend) == []
    entry = next(q for q in s.queue() if q.request_id == "i")
    assert entry.patient_until == pytest.approx(45.0)
    ok(s)


# -- set-aware eviction --------------------------------------------------------------------------


def test_the_victim_choice_counts_what_bringing_a_victim_back_would_force_out() -> None:
    # 15872 MiB usable; an idle TTS (3000 MiB, 7 s to load) and an idle model A (9000 MiB,
    # 10 s), the TTS asked for a little more often. B (6000 MiB, 30 s to load) needs one gone.
    # Alone, the TTS is the cheaper victim (7 x 0.012 < 10 x 0.010); but once B is in, the TTS
    # does not fit back beside A and B, so its return forces A out (10 s more at its rate),
    # whereas A's return only forces the TTS out (7 s). A is the better victim.
    view = FutureView(
        room={"g": 15872 - 12000},
        slots_used=2,
        budget_used=12000,
        candidates=[
            Candidate("tts", {"g": 3000}, 3000, 7 * 0.012, False, load_s=7.0, rate=0.012),
            Candidate("a", {"g": 9000}, 9000, 10 * 0.010, False, load_s=10.0, rate=0.010),
        ],
        slot_limit=3,
        budget_limit=15872,
    )
    b = Need("b", 6000, 1, 6000, ("g",))
    alone = plan_room(b, view, allow_pinned=False)
    assert alone is not None and alone.victims == ("tts",)
    ahead = plan_room(b, view, allow_pinned=False, lookahead=True, added_load_s=30.0)
    assert ahead is not None and ahead.victims == ("a",)
    # When what its return would force out is cheap (B reloads in 1 s), the TTS stays the
    # victim.
    cheap = plan_room(b, view, allow_pinned=False, lookahead=True, added_load_s=1.0)
    assert cheap is not None and cheap.victims == ("tts",)


# -- concurrent loads on one GPU -------------------------------------------------------------------

ROOMY_96 = BUILTIN_PROFILES["generous_96gb"]
THREE = {m.id: m for m in (model("p", 20000), model("q", 20000), model("r", 20000))}


def _roomy(tuning: Tuning | None = None, *, learnt: Sequence[str] = ("p", "q", "r")) -> Scheduler:
    s = Scheduler(ROOMY_96, THREE, [snap(0, 98304)], tuning=tuning)
    for mid in learnt:
        s.learn(mid, measured_mb=20000, load_seconds=30.0)
    s.start(0.0)
    return s


def test_models_with_learnt_footprints_load_side_by_side_when_they_fit_with_margin() -> None:
    s = _roomy()
    started = [
        x.model_id
        for rid, mid in (("1", "p"), ("2", "q"), ("3", "r"))
        for x in of(s.request(rid, mid, now=1.0), StartBackend)
    ]
    # 3 x 20000 MiB + 2048 margin fit in 98304 - 2048 headroom: all three load at once.
    assert started == ["p", "q", "r"]
    ok(s)


def test_the_load_lock_stays_where_memory_is_uncertain() -> None:
    # q was never measured: its first load may take more than its estimate while warming up.
    s = _roomy(learnt=("p", "r"))
    assert of(s.request("1", "p", now=1.0), StartBackend)
    assert of(s.request("2", "q", now=1.0), StartBackend) == []
    assert of(s.request("3", "r", now=1.0), StartBackend) == []
    # Without a margin configured, one load per GPU as before.
    s = _roomy(Tuning(concurrent_load_margin_mb=None))
    assert of(s.request("1", "p", now=1.0), StartBackend)
    assert of(s.request("2", "q", now=1.0), StartBackend) == []
    # Not enough to spare beyond the headroom once both are in: wait.
    s = _roomy(Tuning(concurrent_load_margin_mb=60000))
    assert of(s.request("1", "p", now=1.0), StartBackend)
    assert of(s.request("2", "q", now=1.0), StartBackend) == []
    ok(s)
