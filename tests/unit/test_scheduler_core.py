"""Example-based tests of the scheduler core, one policy at a time.

Each test plays the shell by hand: it feeds events with explicit times and reads the decisions.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from typing import TypeVar

import pytest

from gpuletd.probe.types import GpuState
from gpuletd.profiles import BUILTIN_PROFILES
from gpuletd.registry import Backend, Model
from gpuletd.scheduler import (
    Decision,
    Granted,
    LeaseEnded,
    LeaseEndReason,
    LeaseRefused,
    Loading,
    ModelState,
    ModelStateChanged,
    PreloadSkipped,
    Queued,
    RejectCode,
    Rejected,
    RejectReason,
    Renewed,
    Scheduler,
    StartBackend,
    StopBackend,
    StopReason,
    Tuning,
    check_invariants,
)
from gpuletd.scheduler.eviction import Candidate, choose_victims
from gpuletd.scheduler.placement import Need, best_fit
from gpuletd.scheduler.views import ModelView
from tests.fakes.snapshots import snapshot as snap

D = TypeVar("D")


def model(mid: str, mb: int, **kw: object) -> Model:
    fields: dict[str, object] = {"backend": Backend.RESERVATION, **kw}
    return Model(
        id=mid,
        name=mid,
        quantization="fp8",
        vram_estimate_mb=mb,
        role_priority={"caption": 1},
        **fields,  # type: ignore[arg-type]
    )


REG = {
    m.id: m
    for m in (
        model("qwen3-vl", 10600),
        model("qwen25vl", 6400),
        model("florence-2-large", 3500),
        model("siglip", 2600),
        model("gpt-oss-20b", 13800),
        model("a", 6000),
        model("b", 6000),
        model("c", 6000),
    )
}


def make(
    profile: str = "constrained_16gb",
    gpus: Sequence[int] = (16384,),
    models: dict[str, Model] | None = None,
    **kw: object,
) -> Scheduler:
    s = Scheduler(
        BUILTIN_PROFILES[profile],
        models or REG,
        [snap(i, t) for i, t in enumerate(gpus)],
        **kw,  # type: ignore[arg-type]
    )
    assert s.start(0.0) == []
    return s


def of(out: list[Decision], kind: type[D]) -> list[D]:
    return [d for d in out if isinstance(d, kind)]


def one(out: list[Decision], kind: type[D]) -> D:
    found = of(out, kind)
    assert len(found) == 1, f"expected one {kind.__name__} in {out}"
    return found[0]


def mv(s: Scheduler, model_id: str) -> ModelView:
    view = s.model(model_id)
    assert view is not None
    return view


def ok(s: Scheduler) -> None:
    assert check_invariants(s) == []


def lease(s: Scheduler, rid: str, mid: str, now: float, **kw: object) -> Granted:
    """Request `mid` and, if a load starts, finish it: returns the grant."""
    out = s.request(rid, mid, now=now, **kw)  # type: ignore[arg-type]
    if of(out, StartBackend):
        out = s.load_succeeded(mid, now=now)
    return next(g for g in of(out, Granted) if g.lease_id == rid)


def probe_free(s: Scheduler, now: float) -> list[Decision]:
    """A reading that shows exactly what the core has placed (as the simulated probe does)."""
    readings = []
    for g in s.gpus():
        assert g.total_mb is not None
        readings.append(snap(g.index, g.total_mb, g.total_mb - g.reserved_mb, at=now))
    return s.probe(readings, now=now)


# -- the example from the issue ----------------------------------------------------------------


def test_constrained_a_leased_b_waits_then_swaps() -> None:
    s = make()
    lease(s, "ra", "qwen3-vl", 1.0)
    out = s.request("rb", "qwen25vl", now=2.0)
    assert out == [Queued("rb", "qwen25vl", 1)]
    ok(s)

    out = s.release("ra", now=3.0)
    assert one(out, LeaseEnded).reason is LeaseEndReason.RELEASED
    stop = one(out, StopBackend)
    assert (stop.model_id, stop.reason) == ("qwen3-vl", StopReason.EVICTED)
    assert not of(out, StartBackend)  # A's memory is not back yet
    ok(s)

    out = s.unload_finished("qwen3-vl", now=4.0)
    assert of(out, ModelStateChanged)[0].state is ModelState.UNLOADED
    assert not of(out, StartBackend)  # not until a reading shows the memory free
    out = probe_free(s, 4.2)
    start = one(out, StartBackend)
    assert start == StartBackend("qwen25vl", ("GPU-0",), 6400, (6400,))
    assert one(out, Loading).request_id == "rb"
    ok(s)

    out = s.load_succeeded("qwen25vl", now=9.0, measured_mb=6000)
    g = one(out, Granted)
    assert (g.lease_id, g.model_id, g.gpu_uuids, g.expires_at) == (
        "rb",
        "qwen25vl",
        ("GPU-0",),
        69.0,
    )
    ok(s)


def test_freed_memory_is_trusted_after_the_settle_bound_without_a_reading() -> None:
    s = make(tuning=Tuning(memory_settle_s=10.0))
    lease(s, "ra", "qwen3-vl", 1.0)
    s.request("rb", "qwen25vl", now=2.0)
    s.release("ra", now=3.0)
    s.unload_finished("qwen3-vl", now=4.0)
    assert s.next_wakeup() == 14.0
    assert not of(s.tick(13.9), StartBackend)
    assert one(s.tick(14.0), StartBackend).model_id == "qwen25vl"


def test_a_reading_that_still_shows_the_memory_used_does_not_free_it() -> None:
    s = make()
    lease(s, "ra", "qwen3-vl", 1.0)
    s.request("rb", "qwen25vl", now=2.0)
    s.release("ra", now=3.0)
    s.unload_finished("qwen3-vl", now=4.0)
    # The driver has not given the memory back yet.
    assert not of(s.probe([snap(0, 16384, 16384 - 10600, at=4.5)], now=4.5), StartBackend)
    assert one(s.probe([snap(0, 16384, 16384, at=5.0)], now=5.0), StartBackend)


# -- grace period ------------------------------------------------------------------------------


def test_released_model_unloads_exactly_at_release_plus_grace() -> None:
    s = make()
    lease(s, "r1", "siglip", 1.0)
    s.release("r1", now=10.0)
    assert s.next_wakeup() == 10.0 + 300
    view = s.model("siglip")
    assert view is not None and view.idle_since == 10.0 and view.grace_until == 310.0
    assert s.tick(309.999) == []
    out = s.tick(310.0)
    stop = one(out, StopBackend)
    assert stop.reason is StopReason.GRACE_EXPIRED and "300 s" in stop.message
    assert s.unload_finished("siglip", now=311.0) == [
        ModelStateChanged("siglip", ModelState.UNLOADED, ())
    ]
    assert s.next_wakeup() == 321.0  # the settle bound of the freed memory; then nothing
    s.tick(321.0)
    assert s.next_wakeup() is None


def test_per_model_grace_overrides_the_profile() -> None:
    reg = {"m": model("m", 1000, grace_period_seconds=5.0)}
    s = make(models=reg)
    lease(s, "r1", "m", 0.0)
    s.release("r1", now=1.0)
    assert s.next_wakeup() == 6.0
    assert one(s.tick(6.0), StopBackend).model_id == "m"


def test_a_new_lease_during_grace_cancels_the_unload() -> None:
    s = make()
    lease(s, "r1", "siglip", 0.0)
    s.release("r1", now=1.0)
    g = lease(s, "r2", "siglip", 100.0)
    assert g.lease_id == "r2"
    assert s.tick(150.0) == []  # past release + grace (301), but r2 holds it until 160
    assert one(s.tick(160.0), LeaseEnded).reason is LeaseEndReason.EXPIRED
    assert s.next_wakeup() == 460.0


# -- admission: the ceiling --------------------------------------------------------------------


def test_model_over_the_profile_budget_is_refused_at_once_with_numbers() -> None:
    s = make("development", (16384,))
    out = s.request("r1", "gpt-oss-20b", now=1.0)
    r = one(out, Rejected)
    assert r.code is RejectCode.RESOURCE_EXHAUSTED and r.reason is RejectReason.MODEL_TOO_LARGE
    assert "13800 MiB" in r.message and "development" in r.message and "10000" in r.message
    assert not of(out, StartBackend) and not of(out, StopBackend)
    assert s.queue() == []


def test_model_larger_than_any_gpu_is_refused_with_the_gpu_numbers() -> None:
    s = make("balanced_24gb", (12288,))
    r = one(s.request("r1", "qwen3-vl", now=1.0), Rejected)
    assert r.reason is RejectReason.MODEL_TOO_LARGE
    assert "10600 MiB" in r.message and "10240 MiB usable" in r.message
    assert "12288 MiB total - 2048 MiB headroom" in r.message


def test_memory_held_by_other_processes_counts_against_the_ceiling() -> None:
    s = Scheduler(BUILTIN_PROFILES["constrained_16gb"], REG, [snap(0, 16384, 16384 - 4000)])
    r = one(s.request("r1", "qwen3-vl", now=1.0), Rejected)
    assert r.reason is RejectReason.MODEL_TOO_LARGE
    assert "4000 MiB held by processes gpulet did not start" in r.message
    # A model that fits next to the foreign process is served.
    assert of(s.request("r2", "qwen25vl", now=1.0), StartBackend)


def test_a_model_blocked_only_by_leases_waits_instead_of_being_refused() -> None:
    s = make()
    lease(s, "r1", "qwen3-vl", 0.0)
    assert s.request("r2", "gpt-oss-20b", now=1.0) == [Queued("r2", "gpt-oss-20b", 1)]


def test_unknown_model_is_not_found() -> None:
    s = make()
    r = one(s.request("r1", "nope", now=0.0), Rejected)
    assert r.code is RejectCode.NOT_FOUND and "nope" in r.message and "qwen3-vl" in r.message


def test_bad_ttl_and_past_deadline_are_refused() -> None:
    s = make()
    assert one(s.request("r1", "a", now=1.0, ttl_s=0.0), Rejected).code is (
        RejectCode.INVALID_ARGUMENT
    )
    assert one(s.request("r2", "a", now=1.0, deadline=1.0), Rejected).code is (
        RejectCode.DEADLINE_EXCEEDED
    )


def test_duplicate_request_id_is_a_programming_error() -> None:
    s = make()
    s.request("r1", "a", now=0.0)
    with pytest.raises(ValueError, match="already in use"):
        s.request("r1", "b", now=0.0)


# -- concurrency ---------------------------------------------------------------------------------


def test_load_unload_keeps_one_model_even_when_memory_would_allow_two() -> None:
    s = make()
    lease(s, "r1", "siglip", 0.0)
    assert s.request("r2", "florence-2-large", now=1.0) == [Queued("r2", "florence-2-large", 1)]


def test_concurrent_limited_runs_two_then_evicts_the_idle_one() -> None:
    s = make("balanced_24gb", (24576,))
    lease(s, "r1", "siglip", 0.0)
    lease(s, "r2", "florence-2-large", 1.0)
    s.release("r1", now=2.0)
    out = s.request("r3", "a", now=3.0)
    assert one(out, StopBackend).model_id == "siglip"
    ok(s)


def test_one_load_per_gpu_at_a_time() -> None:
    s = make("generous_96gb", (98304,))
    assert of(s.request("r1", "qwen3-vl", now=0.0), StartBackend)
    out = s.request("r2", "siglip", now=0.1)
    assert not of(out, StartBackend) and of(out, Queued)
    out = s.load_succeeded("qwen3-vl", now=5.0)
    assert one(out, StartBackend).model_id == "siglip"


# -- placement -----------------------------------------------------------------------------------


def test_tensor_parallel_splits_a_large_model_over_two_gpus() -> None:
    s = make("multi_gpu_2x16gb", (16384, 16384))
    start = one(s.request("r1", "gpt-oss-20b", now=0.0), StartBackend)
    assert start.gpu_uuids == ("GPU-0", "GPU-1")
    assert start.gpu_reservations_mb == (6900, 6900) and start.reservation_mb == 13800
    s.load_succeeded("gpt-oss-20b", now=10.0)
    assert s.reserved_mb_by_gpu() == {"GPU-0": 6900, "GPU-1": 6900}
    # A small model goes on one GPU only.
    start = one(s.request("r2", "siglip", now=11.0), StartBackend)
    assert len(start.gpu_uuids) == 1
    ok(s)


def test_best_fit_picks_the_gpu_left_with_least_room() -> None:
    s = make("multi_gpu_2x16gb", (16384, 16384))
    lease(s, "r1", "qwen25vl", 0.0)  # 6400 on GPU-0 (tie: lower index)
    start = one(s.request("r2", "siglip", now=1.0), StartBackend)
    assert start.gpu_uuids == ("GPU-0",)  # 14336-6400 leaves less than an empty GPU-1
    s.load_succeeded("siglip", now=2.0)
    start = one(s.request("r3", "qwen3-vl", now=3.0), StartBackend)
    assert start.gpu_uuids == ("GPU-1",)  # only GPU-1 still has 10600


def test_best_fit_pure() -> None:
    need = Need("m", 3000, 1, 3000, ("g0", "g1", "g2"))
    assert best_fit(need, {"g0": 9000, "g1": 4000, "g2": 4000}) == ("g1",)
    assert best_fit(need, {"g0": 9000, "g1": 2000, "g2": 4000}, exclude={"g2"}) == ("g0",)
    assert best_fit(need, {"g0": 100, "g1": 100, "g2": 100}) is None


def test_pinning_by_index_and_uuid() -> None:
    reg = {
        "p1": model("p1", 2000, gpus=("1",)),
        "pu": model("pu", 2000, gpus=("GPU-1",)),
        "px": model("px", 2000, gpus=("7",)),
    }
    s = make("multi_gpu_2x16gb", (16384, 16384), models=reg)
    assert one(s.request("r1", "p1", now=0.0), StartBackend).gpu_uuids == ("GPU-1",)
    s.load_succeeded("p1", now=1.0)
    assert one(s.request("r2", "pu", now=2.0), StartBackend).gpu_uuids == ("GPU-1",)
    r = one(s.request("r3", "px", now=3.0), Rejected)
    assert r.reason is RejectReason.MODEL_TOO_LARGE and "pinned to GPU(s) 7" in r.message


def test_a_lost_gpu_is_never_used_and_a_stale_one_uses_accounting() -> None:
    s = make("multi_gpu_2x16gb", (16384, 16384))
    s.probe([snap(0, 16384, None, state=GpuState.LOST, at=0.5)], now=0.5)
    assert one(s.request("r1", "siglip", now=1.0), StartBackend).gpu_uuids == ("GPU-1",)
    # Two GPUs are needed for a tensor-parallel model: refused, and why.
    r = one(s.request("r2", "gpt-oss-20b", now=1.0), Rejected)
    assert "2 usable GPU(s)" in r.message and "lost" in r.message
    # A STALE reading with little free memory is ignored: accounting decides.
    s.load_succeeded("siglip", now=2.0)
    s.probe([snap(1, 16384, 100, state=GpuState.STALE, at=3.0)], now=3.0)
    assert of(s.request("r3", "florence-2-large", now=3.0), StartBackend)


def test_live_free_memory_limits_placement() -> None:
    s = make("generous_96gb", (98304,))
    # Someone else grabbed most of the GPU after we started.
    s.probe([snap(0, 98304, 9000, at=1.0)], now=1.0)
    out = s.request("r1", "qwen3-vl", now=2.0)
    r = one(out, Rejected)  # 98304-2048-89304 foreign leaves 6952 < 10600, nothing in flux
    assert "held by processes gpulet did not start" in r.message
    assert of(s.request("r2", "qwen25vl", now=2.0), StartBackend)


# -- sharing and exclusivity ---------------------------------------------------------------------


def test_requests_for_a_loading_model_join_that_load() -> None:
    s = make()
    out1 = s.request("r1", "a", now=0.0)
    out2 = s.request("r2", "a", now=0.5)
    assert len(of(out1, StartBackend)) == 1 and not of(out2, StartBackend)
    assert one(out2, Loading).request_id == "r2"
    out = s.load_succeeded("a", now=3.0)
    assert [g.lease_id for g in of(out, Granted)] == ["r1", "r2"]
    assert mv(s, "a").lease_count == 2


def test_exclusive_lease_keeps_others_out_until_released() -> None:
    s = make()
    lease(s, "x", "a", 0.0, exclusive=True)
    assert s.request("r2", "a", now=1.0) == [Queued("r2", "a", 1)]
    out = s.release("x", now=2.0)
    assert one(out, Granted).lease_id == "r2"


def test_exclusive_request_waits_for_shared_leases_to_end() -> None:
    s = make()
    lease(s, "r1", "a", 0.0)
    lease(s, "r2", "a", 0.0)
    assert of(s.request("x", "a", now=1.0, exclusive=True), Queued)
    assert not of(s.release("r1", now=2.0), Granted)
    g = one(s.release("r2", now=3.0), Granted)
    assert g.lease_id == "x" and g.exclusive


def test_exclusive_waiters_of_one_load_are_served_one_at_a_time() -> None:
    s = make()
    s.request("x1", "a", now=0.0, exclusive=True)
    s.request("x2", "a", now=0.0, exclusive=True)
    out = s.load_succeeded("a", now=1.0)
    assert [g.lease_id for g in of(out, Granted)] == ["x1"]
    assert of(out, Queued) == [Queued("x2", "a", 1)]
    assert one(s.release("x1", now=2.0), Granted).lease_id == "x2"


# -- queue -----------------------------------------------------------------------------------------


def test_queue_is_bounded() -> None:
    s = make(queue_limit=2)
    lease(s, "r0", "a", 0.0)
    s.request("r1", "b", now=1.0)
    s.request("r2", "b", now=1.0)
    r = one(s.request("r3", "c", now=1.0), Rejected)
    assert (r.code, r.reason, r.message) == (
        RejectCode.RESOURCE_EXHAUSTED,
        RejectReason.QUEUE_FULL,
        "queue full (2 waiting); retry later",
    )


def test_default_queue_limit_is_256() -> None:
    s = make()
    lease(s, "r0", "a", 0.0)
    for i in range(256):
        assert of(s.request(f"q{i}", "b", now=1.0), Queued)
    assert "queue full (256 waiting)" in one(s.request("x", "b", now=1.0), Rejected).message


def test_deadline_takes_a_request_out_of_the_queue() -> None:
    s = make()
    lease(s, "r0", "a", 0.0)
    s.request("r1", "b", now=1.0, deadline=5.0)
    s.request("r2", "c", now=1.0)
    assert s.next_wakeup() == 5.0
    out = s.tick(5.0)
    r = one(out, Rejected)
    assert (r.request_id, r.code) == ("r1", RejectCode.DEADLINE_EXCEEDED)
    assert "position 1" in r.message
    assert of(out, Queued) == [Queued("r2", "c", 1)]


def test_cancel_pending_joined_and_granted() -> None:
    s = make()
    lease(s, "r0", "a", 0.0)
    s.request("r1", "b", now=1.0)
    s.request("r2", "c", now=1.0)
    out = s.cancel("r1", now=2.0)
    assert one(out, Rejected).code is RejectCode.CANCELLED
    assert of(out, Queued) == [Queued("r2", "c", 1)]
    # Joined a load: leaves it; the load carries on.
    s2 = make()
    s2.request("j1", "a", now=0.0)
    s2.request("j2", "a", now=0.0)
    s2.cancel("j1", now=0.5)
    assert [g.lease_id for g in of(s2.load_succeeded("a", now=1.0), Granted)] == ["j2"]
    # Granted meanwhile (a race): the lease is taken back.
    ended = one(s2.cancel("j2", now=2.0), LeaseEnded)
    assert ended.reason is LeaseEndReason.CANCELLED
    assert s2.cancel("nobody", now=2.0) == []


def test_fifo_within_a_priority_and_higher_priority_first() -> None:
    s = make()
    lease(s, "r0", "a", 0.0)
    assert of(s.request("p1", "b", now=1.0), Queued) == [Queued("p1", "b", 1)]
    assert of(s.request("p2", "b", now=2.0), Queued) == [Queued("p2", "b", 2)]
    out = s.request("hi", "c", now=3.0, priority=5)
    assert set(of(out, Queued)) == {
        Queued("hi", "c", 1),
        Queued("p1", "b", 2),
        Queued("p2", "b", 3),
    }
    assert [q.request_id for q in s.queue()] == ["hi", "p1", "p2"]
    s.release("r0", now=4.0)
    # a + c fit together in memory, so the load need not wait for a reading.
    out = s.unload_finished("a", now=5.0)
    assert one(out, StartBackend).model_id == "c"
    assert of(out, Queued) == [Queued("p1", "b", 1), Queued("p2", "b", 2)]


def drive(s: Scheduler, out: list[Decision], now: float) -> list[Decision]:
    """Play the shell until nothing is left to answer: every StartBackend succeeds, every
    StopBackend finishes, and a reading shows the memory. Returns every decision seen."""
    seen = list(out)
    todo = list(out)
    for _ in range(50):
        nxt: list[Decision] = []
        for d in todo:
            if isinstance(d, StopBackend):
                nxt += s.unload_finished(d.model_id, now=now)
            elif isinstance(d, StartBackend):
                nxt += s.load_succeeded(d.model_id, now=now)
        nxt += probe_free(s, now)
        seen += nxt
        todo = nxt
        if not any(isinstance(d, (StartBackend, StopBackend)) for d in nxt):
            break
    return seen


def _serve_head(s: Scheduler, now: float, holder: str) -> str:
    """Release the current holder, finish the swap, return who got the GPU."""
    return one(drive(s, s.release(holder, now=now), now), Granted).lease_id


def test_aging_lets_a_low_priority_request_through_a_stream_of_high_ones() -> None:
    def run(aging: float | None) -> float | None:
        s = make(tuning=Tuning(aging_interval_s=aging, bypass_limit=0))
        holder = lease(s, "h0", "a", 0.0, priority=3).lease_id
        s.request("low", "b", now=0.0, priority=0)
        for i in range(1, 40):
            t = i * 10.0
            # A new high-priority request arrives for another model before each release.
            s.request(f"h{i}", "c" if i % 2 else "a", now=t, priority=3)
            holder = _serve_head(s, t + 1, holder)
            if holder == "low":
                return t
        return None

    served_at = run(30.0)
    assert served_at is not None and served_at <= 3 * 30 + 20  # 3 levels of aging, then a turn
    assert run(None) is None  # without aging it starves


def test_bypass_of_a_blocked_head_is_bounded() -> None:
    s = make(tuning=Tuning(bypass_limit=3))
    lease(s, "a0", "a", 0.0)
    assert of(s.request("B", "b", now=1.0), Queued)
    # Requests for the loaded model A cost nothing to serve, but keep A (which B needs gone)
    # leased: three may pass B, then they wait behind it.
    granted = []
    for i in range(1, 7):
        if of(s.request(f"a{i}", "a", now=1.0 + i), Granted):
            granted.append(f"a{i}")
    assert granted == ["a1", "a2", "a3"]
    entry = next(q for q in s.queue() if q.request_id == "B")
    assert entry.position == 1 and entry.bypassed == 3
    for lid in ["a0", "a1", "a2"]:
        assert not of(s.release(lid, now=10.0), StopBackend)
    out = drive(s, s.release("a3", now=10.0), 10.0)
    assert one(out, StopBackend).model_id == "a"
    assert [g.lease_id for g in of(out, Granted)] == ["B"]


def test_bypass_that_does_not_delay_the_head_is_not_counted() -> None:
    s = make("balanced_24gb", (24576,), tuning=Tuning(bypass_limit=1))
    lease(s, "s0", "siglip", 0.0)
    lease(s, "q0", "qwen3-vl", 1.0)
    assert of(s.request("G", "gpt-oss-20b", now=2.0), Queued)  # needs qwen3-vl gone
    # siglip is not in G's way (13800 + 2600 fit together): grants on it are free.
    for i in range(4):
        assert of(s.request(f"s{i + 1}", "siglip", now=3.0 + i), Granted)
    assert next(q for q in s.queue() if q.request_id == "G").bypassed == 0
    # qwen3-vl is: one bypass (the limit here), then new requests for it wait behind G.
    assert of(s.request("q1", "qwen3-vl", now=8.0), Granted)
    assert of(s.request("q2", "qwen3-vl", now=9.0), Queued)
    assert [(q.request_id, q.position, q.bypassed) for q in s.queue()] == [
        ("G", 1, 1),
        ("q2", 2, 0),
    ]


# -- failures ------------------------------------------------------------------------------------


def test_load_failure_refuses_every_waiter_and_gives_memory_back() -> None:
    s = make()
    s.request("r1", "a", now=0.0)
    s.request("r2", "a", now=0.1)
    out = s.load_failed("a", "exit status 1: CUDA out of memory", now=1.0)
    rej = of(out, Rejected)
    assert [r.request_id for r in rej] == ["r1", "r2"]
    assert all(r.code is RejectCode.FAILED_PRECONDITION for r in rej)
    assert "CUDA out of memory" in rej[0].message
    view = s.model("a")
    assert view is not None and view.state is ModelState.FAILED and view.reserved_mb == 0
    assert s.reserved_mb_by_gpu() == {"GPU-0": 0}
    ok(s)


def test_backend_death_ends_leases_and_restarts_only_after_backoff() -> None:
    s = make()
    lease(s, "r1", "a", 0.0, ttl_s=1000.0)
    lease(s, "r2", "a", 0.0, ttl_s=1000.0)
    out = s.backend_died("a", "killed by signal 9", now=100.0)
    ended = of(out, LeaseEnded)
    assert [e.lease_id for e in ended] == ["r1", "r2"]
    assert all(e.reason is LeaseEndReason.BACKEND_DIED for e in ended)
    assert mv(s, "a").state is ModelState.FAILED
    refused = one(s.renew("r1", now=100.1), LeaseRefused)
    assert refused.reason is RejectReason.LEASE_ENDED and "backend_died" in refused.message
    # Crashed 100 s after a healthy start: the streak was reset, so the backoff is 1 s.
    assert of(s.request("r3", "a", now=100.5), Queued)
    assert s.next_wakeup() == 101.0
    assert one(s.tick(101.0), StartBackend).model_id == "a"
    # It fails again at once: 2 s, then 4 s.
    s.load_failed("a", "crash", now=102.0)
    s.request("r4", "a", now=102.0)
    assert mv(s, "a").backoff_until == 104.0
    assert not of(probe_free(s, 103.0), StartBackend)  # memory is back, backoff is not over
    assert s.next_wakeup() == 104.0
    assert of(s.tick(104.0), StartBackend)
    s.load_failed("a", "crash", now=105.0)
    assert mv(s, "a").backoff_until == 109.0
    # A success resets the streak.
    s.request("r5", "a", now=109.0)
    s.load_succeeded("a", now=110.0)
    s.backend_died("a", "oom", now=200.0)
    assert mv(s, "a").backoff_until == 201.0


def test_a_crash_right_after_a_healthy_start_keeps_backing_off() -> None:
    s = make()
    s.request("r1", "a", now=0.0)
    s.load_failed("a", "x", now=1.0)  # streak 1: 1 s
    s.request("r2", "a", now=1.5)
    assert of(probe_free(s, 2.0), StartBackend)
    s.load_failed("a", "x", now=2.5)  # streak 2: 2 s
    s.request("r3", "a", now=3.0)
    assert of(probe_free(s, 4.5), StartBackend)
    assert of(s.load_succeeded("a", now=5.0), Granted)
    s.backend_died("a", "x", now=6.0)  # 1 s after healthy: streak 3 -> 4 s
    assert mv(s, "a").backoff_until == 10.0


def test_backoff_is_capped_at_30_s() -> None:
    s = make()
    t = 0.0
    for i in range(8):
        out = s.request(f"r{i}", "a", now=t)
        t = max(t, mv(s, "a").backoff_until or t)
        assert of(out + probe_free(s, t), StartBackend)
        s.load_failed("a", "x", now=t)
    view = s.model("a")
    assert view is not None and view.consecutive_failures == 8
    assert view.backoff_until == t + 30.0


def test_load_timeout_stops_the_backend_and_fails_the_waiters() -> None:
    s = make()
    s.request("r1", "a", now=0.0)
    # A backstop 5 s past autostart_timeout_seconds: the shell's own timeout normally wins.
    assert s.next_wakeup() == 125.0
    assert s.tick(124.9) == []
    out = s.tick(125.0)
    stop = one(out, StopBackend)
    assert stop.reason is StopReason.LOAD_TIMEOUT and "120 s" in stop.message
    r = one(out, Rejected)
    assert r.code is RejectCode.FAILED_PRECONDITION and "did not become healthy" in r.message
    # The shell's own timeout fires too, and a late success arrives: both harmless.
    assert s.load_failed("a", "timeout", now=125.1) == []
    assert s.load_succeeded("a", now=125.2) == []
    assert mv(s, "a").reserved_mb == 6000  # until it is gone
    out = s.unload_finished("a", now=126.0)
    assert one(out, ModelStateChanged).state is ModelState.FAILED
    assert s.reserved_mb_by_gpu() == {"GPU-0": 0}


def test_per_model_autostart_timeout() -> None:
    s = make(models={"m": model("m", 1000, autostart_timeout_seconds=7.0)})
    s.request("r1", "m", now=1.0)
    assert s.next_wakeup() == 1.0 + 7.0 + 5.0  # with the backstop slack


def test_late_and_duplicate_events_are_ignored() -> None:
    s = make()
    assert s.load_succeeded("a", now=0.0) == []
    assert s.load_failed("nope", "x", now=0.0) == []
    assert s.backend_died("a", "x", now=0.0) == []
    assert s.unload_finished("a", now=0.0) == []
    lease(s, "r1", "a", 0.0)
    assert s.load_succeeded("a", now=1.0) == []
    assert s.unload_finished("a", now=1.0) == []
    assert s.probe([snap(9, 1000)], now=1.0) == []
    ok(s)


def test_measured_memory_raises_the_reservation_or_fails_the_load() -> None:
    s = make()
    s.request("r1", "qwen25vl", now=0.0)
    s.load_succeeded("qwen25vl", now=1.0, measured_mb=7000)
    view = s.model("qwen25vl")
    assert view is not None and view.reserved_mb == 7000 and view.reservation_mb == 7000
    # A model that measures more than the GPU can hold fails, and is then refused at once.
    s2 = make()
    s2.request("r1", "qwen3-vl", now=0.0)
    out = s2.load_succeeded("qwen3-vl", now=1.0, measured_mb=15000)
    assert one(out, StopBackend).reason is StopReason.TOO_LARGE
    assert one(out, Rejected).code is RejectCode.FAILED_PRECONDITION
    s2.unload_finished("qwen3-vl", now=2.0)
    r = one(s2.request("r2", "qwen3-vl", now=40.0), Rejected)
    assert r.reason is RejectReason.MODEL_TOO_LARGE and "15000 MiB" in r.message


# -- leases --------------------------------------------------------------------------------------


def test_lease_expiry_renew_and_release() -> None:
    s = make()
    g = lease(s, "r1", "a", 0.0, ttl_s=30.0)
    assert g.expires_at == 30.0 and s.next_wakeup() == 30.0
    assert s.renew("r1", now=20.0) == [Renewed("r1", "a", 50.0, ttl_s=30.0)]
    assert s.renew("r1", now=25.0, ttl_s=100.0) == [Renewed("r1", "a", 125.0, ttl_s=100.0)]
    out = s.tick(125.0)
    assert one(out, LeaseEnded).reason is LeaseEndReason.EXPIRED
    assert one(s.renew("r1", now=126.0), LeaseRefused).reason is RejectReason.LEASE_ENDED
    assert one(s.release("r1", now=126.0), LeaseRefused).code is RejectCode.NOT_FOUND
    assert one(s.release("zz", now=126.0), LeaseRefused).reason is RejectReason.UNKNOWN_LEASE
    lease(s, "r2", "a", 127.0)
    assert one(s.renew("r2", now=128.0, ttl_s=-1.0), LeaseRefused).code is (
        RejectCode.INVALID_ARGUMENT
    )
    assert one(s.release("r2", now=129.0), LeaseEnded).reason is LeaseEndReason.RELEASED


def test_renew_at_the_expiry_instant_is_too_late() -> None:
    s = make()
    lease(s, "r1", "a", 0.0, ttl_s=10.0)
    out = s.renew("r1", now=10.0)
    assert one(out, LeaseEnded).reason is LeaseEndReason.EXPIRED
    assert one(out, LeaseRefused).reason is RejectReason.LEASE_ENDED


# -- eviction ------------------------------------------------------------------------------------


def test_eviction_prefers_the_cheap_to_reload_model_over_the_lru_one() -> None:
    reg = {
        "slow": model("slow", 10600, backend=Backend.PROCESS),
        "fast": model("fast", 2600, backend=Backend.PROCESS),
        "new": model("new", 3500, backend=Backend.PROCESS),
    }
    s = make("balanced_24gb", (24576,), models=reg)
    # slow: 60 s to load (measured), used long ago. fast: 2 s, used just now.
    s.request("q", "slow", now=0.0)
    s.load_succeeded("slow", now=60.0)
    s.release("q", now=61.0)
    s.request("s", "fast", now=100.0)
    s.load_succeeded("fast", now=102.0)
    s.release("s", now=103.0)
    out = s.request("f", "new", now=104.0)
    victim = one(out, StopBackend)
    # LRU would evict `slow` and pay 60 s to bring it back; `fast` costs 2 s.
    assert victim.model_id == "fast" and victim.reason is StopReason.EVICTED


def test_eviction_prefers_the_rarely_used_model_when_reload_costs_are_equal() -> None:
    s = make("balanced_24gb", (24576,))
    for i in range(5):  # a: popular
        lease(s, f"a{i}", "a", float(i))
        s.release(f"a{i}", now=i + 0.5)
    lease(s, "b0", "b", 10.0)
    s.release("b0", now=10.5)  # b: once, but most recently
    out = s.request("c0", "c", now=11.0)
    assert one(out, StopBackend).model_id == "b"


def test_never_evicts_a_leased_or_loading_model() -> None:
    s = make("balanced_24gb", (24576,))
    lease(s, "r1", "siglip", 0.0)
    s.request("r2", "florence-2-large", now=1.0)  # loading
    out = s.request("r3", "a", now=2.0)
    assert not of(out, StopBackend) and of(out, Queued)


def test_choose_victims_finds_the_cheapest_set_not_the_cheapest_first() -> None:
    # Need 6000 MiB: one 6000 MiB model costing 10 beats two 3000 MiB ones costing 6 each.
    cands = [
        Candidate("big", {"g": 6000}, 6000, 10.0, False),
        Candidate("s1", {"g": 3000}, 3000, 6.0, False),
        Candidate("s2", {"g": 3000}, 3000, 6.0, False),
    ]

    def fits(chosen: Sequence[Candidate]) -> tuple[str, ...] | None:
        return ("g",) if sum(c.reserved_mb for c in chosen) >= 6000 else None

    found = choose_victims(cands, fits)
    assert found is not None and [c.model_id for c in found[0]] == ["big"]
    # Greedy fallback (many candidates) still returns a feasible, minimal set.
    found = choose_victims(cands, fits, exact_limit=0)
    assert found is not None and sum(c.reserved_mb for c in found[0]) >= 6000


def _count_loads(
    models: list[str], rounds: int, *, restart_at: int | None = None
) -> tuple[int, int]:
    """Cycle through k+1 models with room for k (balanced_24gb: 2 at a time): our loads, and an
    LRU cache's misses on the same sequence. `restart_at`: the daemon restarts (snapshot,
    JSON, restore) before that request."""
    reg = {m: model(m, 6000) for m in models}
    s = make("balanced_24gb", (24576,), models=reg)
    loads = 0
    t = 0.0
    lru: OrderedDict[str, None] = OrderedDict()
    lru_misses = 0
    for i in range(rounds):
        if i == restart_at:
            saved = json.loads(json.dumps(s.snapshot()))
            used = sum(g.reserved_mb for g in s.gpus())
            s = Scheduler.restore(
                saved, s.profile, reg, [snap(0, 24576, 24576 - used)], now=t + 2.5
            )
        mid = models[i % len(models)]
        if mid in lru:
            lru.move_to_end(mid)
        else:
            lru_misses += 1
            lru[mid] = None
            if len(lru) > 2:
                lru.popitem(last=False)
        t += 5.0
        out = drive(s, s.request(f"r{i}", mid, now=t), t)
        loads += len(of(out, StartBackend))
        assert of(out, Granted), f"round {i}: {out}"
        s.release(f"r{i}", now=t + 2)
        ok(s)
    return loads, lru_misses


def _fewest_loads(sequence: list[str], room: int) -> int:
    """The offline optimum (Belady): on a miss, evict the model asked for again last."""
    held: set[str] = set()
    misses = 0
    for i, mid in enumerate(sequence):
        if mid in held:
            continue
        misses += 1
        if len(held) >= room:
            ahead = sequence[i + 1 :]
            held.remove(max(held, key=lambda m: ahead.index(m) if m in ahead else len(ahead)))
        held.add(mid)
    return misses


@pytest.mark.parametrize("models", [["p", "q", "r"], ["p", "q", "r", "s"]])
def test_a_cyclic_scan_loads_no_more_than_the_offline_optimum(models: list[str]) -> None:
    # LRU misses every time (30). Counted in requests, a scan is regular from its second round
    # (every model's gap is the cycle's length), so the model just used is the one evicted,
    # as the offline optimum would; before that, the models seen twice lend their pattern to
    # the ones seen once.
    loads, lru = _count_loads(models, 30)
    assert lru == 30
    assert loads == _fewest_loads([models[i % len(models)] for i in range(30)], 2)


def test_a_restart_keeps_the_learnt_cycle() -> None:
    models = ["p", "q", "r", "s"]
    assert _count_loads(models, 30, restart_at=13) == _count_loads(models, 30)


def test_a_mixed_cycle_loads_no_more_than_lru() -> None:
    models = ["p", "q", "r", "p", "q"]
    loads, lru = _count_loads(models, 30)
    assert loads <= lru
    assert loads <= _fewest_loads([models[i % len(models)] for i in range(30)], 2) + 1


# -- preload ---------------------------------------------------------------------------------------


def test_concurrent_full_preloads_one_load_at_a_time_and_keeps_them_warm() -> None:
    s = Scheduler(
        BUILTIN_PROFILES["generous_96gb"],
        REG,
        [snap(0, 98304)],
        preload=["qwen3-vl", "siglip", "nope"],
    )
    out = s.start(0.0)
    assert one(out, StartBackend).model_id == "qwen3-vl"
    assert one(out, PreloadSkipped).model_id == "nope"
    assert one(s.load_succeeded("qwen3-vl", now=20.0), StartBackend).model_id == "siglip"
    s.load_succeeded("siglip", now=25.0)
    assert s.next_wakeup() is None  # no grace unload for preloaded models
    assert s.tick(100000.0) == []
    view = s.model("siglip")
    assert view is not None and view.keep_warm and view.state is ModelState.LOADED


def test_preload_is_ignored_outside_concurrent_full() -> None:
    s = Scheduler(BUILTIN_PROFILES["balanced_24gb"], REG, [snap(0, 24576)], preload=["a"])
    assert one(s.start(0.0), PreloadSkipped).model_id == "a"


def test_preloaded_models_are_evictable_under_pressure() -> None:
    s = Scheduler(BUILTIN_PROFILES["generous_96gb"], REG, [snap(0, 98304)], preload=["a"])
    s.start(0.0)
    s.load_succeeded("a", now=1.0)
    for i, mid in enumerate(["b", "c", "qwen25vl", "siglip"]):
        lease(s, f"r{i}", mid, 2.0 + i)
    out = s.request("r9", "florence-2-large", now=10.0)  # a 6th model: limit 5
    if not of(out, StopBackend):
        # Patience: a leased model would be a little cheaper to evict; it waits a bounded
        # while (docs/scheduling.md, "Patience"), then evicts the preloaded one.
        due = s.next_wakeup()
        assert due is not None and due <= 10.0 + Tuning().patience_max_s
        out = s.tick(due)
    assert one(out, StopBackend).model_id == "a"


# -- machine without GPUs, determinism, views ---------------------------------------------------


def test_without_gpus_only_the_budget_and_slots_apply() -> None:
    s = Scheduler(BUILTIN_PROFILES["development"], REG, [])
    start = one(s.request("r1", "a", now=0.0), StartBackend)
    assert start.gpu_uuids == () and start.reservation_mb == 6000
    assert one(s.request("r2", "gpt-oss-20b", now=0.0), Rejected).reason is (
        RejectReason.MODEL_TOO_LARGE
    )


def test_same_events_same_decisions() -> None:
    def run() -> list[Decision]:
        s = make("multi_gpu_2x16gb", (16384, 16384))
        out: list[Decision] = []
        for i, mid in enumerate(["gpt-oss-20b", "siglip", "a", "b", "qwen3-vl", "c"]):
            out += s.request(f"r{i}", mid, now=float(i), priority=i % 2)
        for mid in ["gpt-oss-20b", "siglip", "a", "b", "qwen3-vl", "c"]:
            out += s.load_succeeded(mid, now=10.0)
        for i in range(6):
            out += s.release(f"r{i}", now=11.0 + i)
        out += s.tick(1000.0)
        return out

    assert run() == run()


def test_views_describe_the_state() -> None:
    s = make()
    lease(s, "r1", "a", 0.0)
    s.request("r2", "b", now=1.0, client="cli", priority=2)
    (lv,) = s.leases()
    assert (lv.lease_id, lv.model_id, lv.gpu_uuids) == ("r1", "a", ("GPU-0",))
    (q,) = s.queue()
    assert (q.request_id, q.position, q.client, q.priority) == ("r2", 1, "cli", 2)
    (g,) = s.gpus()
    assert g.reserved_mb == 6000 and g.models == ("a",) and g.available_mb == 14336 - 6000
    assert s.models()["a"].lease_count == 1


# -- claims: a grant its caller never received ------------------------------------------------


def test_an_unclaimed_grant_ends_at_its_claim_deadline_and_frees_the_model() -> None:
    s = make()
    lease(s, "l1", "florence-2-large", 0.0, ttl_s=600.0, claim_within_s=2.0)
    assert s.next_wakeup() == 2.0
    assert s.tick(1.9) == []
    out = s.tick(2.0)
    ended = one(out, LeaseEnded)
    assert ended.lease_id == "l1" and ended.reason is LeaseEndReason.CANCELLED
    assert "never received" in ended.message
    assert s.leases() == [] and mv(s, "florence-2-large").idle_since == 2.0
    ok(s)


def test_a_renew_claims_the_grant_and_it_lives_to_its_ttl() -> None:
    s = make()
    lease(s, "l1", "florence-2-large", 0.0, ttl_s=600.0, claim_within_s=2.0)
    one(s.renew("l1", now=1.0), Renewed)
    assert of(s.tick(5.0), LeaseEnded) == []
    assert [le.lease_id for le in s.leases()] == ["l1"]
    assert s.next_wakeup() == 601.0


def test_the_claim_deadline_survives_a_restart() -> None:
    s = make()
    lease(s, "l1", "florence-2-large", 0.0, ttl_s=600.0, claim_within_s=2.0)
    r = Scheduler.restore(
        s.snapshot(), BUILTIN_PROFILES["constrained_16gb"], REG, [snap(0, 16384)], now=1.0
    )
    r.start(1.0)
    assert one(r.tick(2.0), LeaseEnded).reason is LeaseEndReason.CANCELLED


# -- administrator events: revoke, unload, pin ----------------------------------------------------


def restored(s: Scheduler, now: float, profile: str = "constrained_16gb") -> Scheduler:
    r = Scheduler.restore(
        s.snapshot(), BUILTIN_PROFILES[profile], REG, [snap(0, s.gpus()[0].total_mb or 0)], now=now
    )
    r.start(now)
    return r


def test_revoke_ends_a_lease_and_a_late_renew_says_revoked() -> None:
    s = make()
    lease(s, "l1", "a", 0.0, client="w")
    ended = one(s.revoke("l1", "ended by an administrator: oops", now=1.0), LeaseEnded)
    assert (ended.reason, ended.message, ended.client) == (
        LeaseEndReason.REVOKED,
        "ended by an administrator: oops",
        "w",
    )
    assert s.leases() == [] and mv(s, "a").idle_since == 1.0
    ok(s)
    for late in (s.renew("l1", now=2.0), s.release("l1", now=2.0), s.revoke("l1", "x", now=2.0)):
        refused = one(late, LeaseRefused)
        assert refused.code is RejectCode.NOT_FOUND and refused.reason is RejectReason.LEASE_ENDED
        assert "revoked: ended by an administrator: oops" in refused.message
    assert one(s.revoke("nope", "x", now=2.0), LeaseRefused).reason is RejectReason.UNKNOWN_LEASE


def test_a_revoked_leases_memory_survives_a_restore() -> None:
    s = make()
    lease(s, "l1", "a", 0.0)
    s.revoke("l1", "maintenance", now=1.0)
    r = restored(s, 2.0)
    assert "revoked: maintenance" in one(r.renew("l1", now=2.0), LeaseRefused).message


def test_revoke_serves_the_queue_at_once() -> None:
    s = make()
    lease(s, "l1", "a", 0.0, exclusive=True)
    assert of(s.request("r2", "a", now=1.0), Granted) == []
    out = s.revoke("l1", "m", now=2.0)
    assert one(out, Granted).lease_id == "r2"
    ok(s)


def test_unload_stops_an_idle_model_at_once() -> None:
    s = make()
    lease(s, "l1", "a", 0.0)
    s.release("l1", now=1.0)
    out = s.unload("a", now=2.0, message="unloaded by an administrator: update")
    stop = one(out, StopBackend)
    assert (stop.model_id, stop.reason, stop.message) == (
        "a",
        StopReason.ADMIN,
        "unloaded by an administrator: update",
    )
    assert mv(s, "a").state is ModelState.UNLOADING
    ok(s)
    assert one(s.unload_finished("a", now=3.0), ModelStateChanged).state is ModelState.UNLOADED
    # Not loaded: a no-op answer.
    assert s.unload("a", now=4.0, message="x") == []
    assert s.unload("no-such", now=4.0, message="x") == []
    ok(s)


def test_unload_of_a_leased_model_is_refused_naming_the_holders() -> None:
    s = make()
    lease(s, "l1", "a", 0.0, client="w1")
    lease(s, "l2", "a", 0.5)
    out = s.unload("a", now=1.0, message="x")
    refused = of(out, LeaseRefused)
    assert [(r.lease_id, r.client, r.model_id) for r in refused] == [
        ("l1", "w1", "a"),
        ("l2", "", "a"),
    ]
    assert all(r.code is RejectCode.FAILED_PRECONDITION for r in refused)
    assert all(r.reason is RejectReason.MODEL_LEASED for r in refused)
    assert "w1" in refused[0].message and "l1" in refused[0].message
    assert of(out, StopBackend) == [] and mv(s, "a").state is ModelState.LOADED
    assert len(s.leases()) == 2
    ok(s)


def test_unload_of_a_loading_model_is_refused() -> None:
    s = make()
    s.request("r1", "a", now=0.0)
    refused = one(s.unload("a", now=1.0, message="x"), LeaseRefused)
    assert refused.reason is RejectReason.MODEL_LOADING and refused.lease_id == ""
    assert "loading" in refused.message
    assert mv(s, "a").state is ModelState.LOADING
    assert one(s.load_succeeded("a", now=2.0), Granted).lease_id == "r1"
    ok(s)


def test_unload_clears_keep_warm_so_a_preload_does_not_come_back() -> None:
    s = Scheduler(BUILTIN_PROFILES["generous_96gb"], REG, [snap(0, 98304)], preload=["a"])
    s.start(0.0)
    s.load_succeeded("a", now=1.0)
    assert mv(s, "a").keep_warm
    one(s.unload("a", now=2.0, message="m"), StopBackend)
    s.unload_finished("a", now=3.0)
    assert not mv(s, "a").keep_warm
    assert of(s.tick(100000.0), StartBackend) == []
    # A request still loads it again, as any model.
    assert one(s.request("r1", "a", now=100001.0), StartBackend).model_id == "a"


def test_pin_keeps_an_idle_model_loaded_and_unpin_starts_its_grace() -> None:
    s = make()
    lease(s, "l1", "a", 0.0)
    assert s.pin("a", True, now=1.0) == []
    s.release("l1", now=2.0)
    assert mv(s, "a").keep_warm and s.next_wakeup() is None
    assert of(s.tick(100000.0), StopBackend) == []
    assert s.pin("a", False, now=100000.0) == []
    grace = BUILTIN_PROFILES["constrained_16gb"].grace_period_seconds
    assert s.next_wakeup() == 100000.0 + grace
    assert one(s.tick(100000.0 + grace), StopBackend).reason is StopReason.GRACE_EXPIRED
    ok(s)


def test_pin_loads_an_unloaded_model_when_it_fits_without_evicting() -> None:
    s = make("generous_96gb", (98304,))
    out = s.pin("a", True, now=0.0)
    assert one(out, StartBackend).model_id == "a"
    s.load_succeeded("a", now=1.0)
    assert mv(s, "a").keep_warm and s.next_wakeup() is None
    ok(s)


def test_pin_without_room_is_skipped_and_the_pinned_model_stays_evictable() -> None:
    s = make()  # constrained_16gb: one model at a time
    lease(s, "l1", "a", 0.0)
    skipped = one(s.pin("b", True, now=1.0), PreloadSkipped)
    assert skipped.model_id == "b" and "without evicting" in skipped.message
    assert mv(s, "b").state is ModelState.UNLOADED
    s.release("l1", now=2.0)
    s.pin("a", True, now=2.0)
    # Pressure: a request for b evicts the pinned, idle a.
    assert one(s.request("r2", "b", now=3.0), StopBackend).model_id == "a"
    ok(s)
    assert one(s.pin("nope", True, now=4.0), PreloadSkipped).model_id == "nope"


def test_a_pin_survives_restore_and_reconfigure() -> None:
    s = make()
    lease(s, "l1", "a", 0.0)
    s.pin("a", True, now=0.5)
    s.release("l1", now=1.0)
    assert any(m.get("pinned") for m in s.snapshot()["models"])
    r = restored(s, 2.0)
    assert mv(r, "a").keep_warm and r.next_wakeup() is None
    r.reconfigure(BUILTIN_PROFILES["constrained_16gb"], REG, now=3.0)
    assert mv(r, "a").keep_warm and r.next_wakeup() is None
    r.pin("a", False, now=4.0)
    assert not mv(r, "a").keep_warm and r.next_wakeup() is not None
    ok(r)


def test_a_pinned_but_skipped_model_stays_pinned_across_a_restore() -> None:
    s = make()
    lease(s, "l1", "a", 0.0)
    s.pin("b", True, now=1.0)  # skipped: no room; still pinned
    s.release("l1", now=2.0)
    s.unload("a", now=3.0, message="m")
    s.unload_finished("a", now=4.0)
    assert mv(s, "b").keep_warm
    r = Scheduler.restore(
        s.snapshot(), BUILTIN_PROFILES["generous_96gb"], REG, [snap(0, 98304)], now=100.0
    )
    assert mv(r, "b").keep_warm
    ok(r)
