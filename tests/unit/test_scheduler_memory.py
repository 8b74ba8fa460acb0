"""Memory leases: raw VRAM on one GPU, queued, admitted, evicted for and granted like a model."""

from __future__ import annotations

import json

from gpuletd.scheduler import (
    Granted,
    LeaseEnded,
    LeaseEndReason,
    ModelState,
    PreloadSkipped,
    Queued,
    RejectCode,
    Rejected,
    RejectReason,
    Scheduler,
    StartBackend,
    StopBackend,
    StopReason,
    check_invariants,
)
from tests.unit.test_scheduler_core import REG, lease, make, mv, of, ok, one, probe_free

VRAM = "vram:m1"


def memory_lease(s: Scheduler, rid: str, mb: int, now: float, **kw: object) -> Granted:
    out = s.request(rid, "", now=now, vram_mb=mb, **kw)  # type: ignore[arg-type]
    start = one(out, StartBackend)
    assert start.model_id == f"vram:{rid}" and len(start.gpu_uuids) == 1
    out = s.load_succeeded(start.model_id, now=now)
    return one(out, Granted)


def test_memory_lease_is_granted_and_released_like_any_lease() -> None:
    s = make()
    g = memory_lease(s, "m1", 12000, 1.0)
    assert g.model_id == VRAM
    view = mv(s, VRAM)
    assert view.memory and view.reserved_mb == 12000 and view.lease_count == 1
    assert s.reserved_mb_by_gpu() == {g.gpu_uuids[0]: 12000}
    ok(s)
    out = s.release("m1", now=2.0)
    assert one(out, LeaseEnded).reason is LeaseEndReason.RELEASED
    stop = one(out, StopBackend)
    assert (stop.model_id, stop.reason) == (VRAM, StopReason.RELEASED)
    ok(s)
    s.unload_finished(VRAM, now=3.0)
    # Forgotten once it holds nothing: no record, no model listed.
    assert s.model(VRAM) is None and VRAM not in s.models()
    ok(s)


def test_memory_lease_blocks_a_model_that_no_longer_fits_then_lets_it_in() -> None:
    s = make()
    memory_lease(s, "m1", 12000, 1.0)
    out = s.request("ra", "a", now=2.0)
    assert out == [Queued("ra", "a", 1)]
    ok(s)
    out = s.release("m1", now=3.0)
    assert one(out, StopBackend).model_id == VRAM
    out = s.unload_finished(VRAM, now=4.0)
    out = out + probe_free(s, 4.0)
    out = out + s.tick(4.0)
    assert one(out, StartBackend).model_id == "a"
    assert one(s.load_succeeded("a", now=5.0), Granted).lease_id == "ra"
    assert s.model(VRAM) is None
    ok(s)


def test_memory_lease_evicts_an_idle_model_to_make_room() -> None:
    s = make()
    lease(s, "ra", "a", 1.0)
    s.release("ra", now=2.0)
    assert mv(s, "a").state is ModelState.LOADED
    out = s.request("m1", "", now=3.0, vram_mb=12000)
    stop = one(out, StopBackend)
    assert (stop.model_id, stop.reason) == ("a", StopReason.EVICTED)
    out = s.unload_finished("a", now=4.0)
    out = out + probe_free(s, 4.0)
    out = out + s.tick(4.0)
    assert one(out, StartBackend).model_id == VRAM
    assert one(s.load_succeeded(VRAM, now=5.0), Granted).lease_id == "m1"
    ok(s)


def test_memory_lease_waits_behind_a_leased_model() -> None:
    s = make()
    lease(s, "ra", "a", 1.0)
    out = s.request("m1", "", now=2.0, vram_mb=12000)
    assert out == [Queued("m1", VRAM, 1)]
    assert mv(s, VRAM).state is ModelState.UNLOADED
    ok(s)
    # Cancelled while waiting: nothing is left of it.
    s.cancel("m1", now=3.0)
    assert s.model(VRAM) is None
    ok(s)


def test_memory_lease_larger_than_the_profile_is_refused_at_once() -> None:
    s = make()
    out = s.request("m1", "", now=1.0, vram_mb=20000)
    r = one(out, Rejected)
    assert (r.code, r.reason) == (RejectCode.RESOURCE_EXHAUSTED, RejectReason.MODEL_TOO_LARGE)
    out = s.request("m2", "", now=1.0, vram_mb=0)
    assert one(out, Rejected).code is RejectCode.INVALID_ARGUMENT
    assert [m for m in s.models() if m.startswith("vram:")] == []
    ok(s)


def test_memory_record_is_not_a_model_anyone_may_name_or_pin() -> None:
    s = make()
    memory_lease(s, "m1", 4000, 1.0)
    out = s.request("x", VRAM, now=2.0)
    assert one(out, Rejected).reason is RejectReason.UNKNOWN_MODEL
    assert "known models: a, b," in one(out, Rejected).message
    assert of(s.pin(VRAM, True, now=2.0), PreloadSkipped)
    # A reconfigure leaves it alone.
    s.reconfigure(s.profile, REG, now=3.0)
    assert mv(s, VRAM).lease_count == 1
    ok(s)


def test_memory_lease_expires_like_any_lease() -> None:
    s = make()
    memory_lease(s, "m1", 4000, 1.0, ttl_s=10.0)
    out = s.tick(11.0)
    assert one(out, LeaseEnded).reason is LeaseEndReason.EXPIRED
    assert one(out, StopBackend).model_id == VRAM
    ok(s)


def test_memory_lease_survives_snapshot_and_restore() -> None:
    s = make()
    memory_lease(s, "m1", 12000, 1.0, ttl_s=1000.0)
    snap_ = json.loads(json.dumps(s.snapshot(), allow_nan=False))
    gpus = s.gpus()
    from tests.fakes.snapshots import snapshot as snap

    r = Scheduler.restore(
        snap_, s.profile, REG, [snap(g.index, g.total_mb or 0) for g in gpus], now=2.0
    )
    r.start(2.0)
    assert r.snapshot() == s.snapshot()
    assert mv(r, VRAM).memory and mv(r, VRAM).lease_count == 1
    assert check_invariants(r) == []
    assert r.request("ra", "a", now=3.0) == [Queued("ra", "a", 1)]
    out = r.release("m1", now=4.0)
    assert one(out, StopBackend).model_id == VRAM
    r.unload_finished(VRAM, now=5.0)
    assert r.model(VRAM) is None
    assert check_invariants(r) == []
