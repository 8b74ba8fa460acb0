"""The reconfigure event (SIGHUP), and what grants carry: example-based, the shell played by
hand as in test_scheduler_core.py."""

from __future__ import annotations

import dataclasses

from gpuletd.profiles import BUILTIN_PROFILES
from gpuletd.registry import Model
from gpuletd.scheduler import (
    Granted,
    LeaseEnded,
    LeaseRefused,
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
)
from tests.fakes.snapshots import snapshot as snap
from tests.unit.test_scheduler_core import REG, lease, make, mv, of, ok, one, probe_free


def without(*ids: str) -> dict[str, Model]:
    return {mid: m for mid, m in REG.items() if mid not in ids}


def redefined(mid: str, **changes: object) -> dict[str, Model]:
    return {**REG, mid: dataclasses.replace(REG[mid], **changes)}  # type: ignore[arg-type]


# -- what grants carry ----------------------------------------------------------------------------


def test_granted_carries_client_time_ttl_and_the_endpoint_from_load_succeeded() -> None:
    s = make()
    out = s.request("r1", "a", now=1.0, client="tagger", ttl_s=45.0)
    assert one(out, StartBackend).model_id == "a"
    out = s.load_succeeded("a", now=3.0, endpoint="http://127.0.0.1:8001")
    g = one(out, Granted)
    assert (g.client, g.granted_at, g.ttl_s, g.expires_at) == ("tagger", 3.0, 45.0, 48.0)
    assert g.endpoint == "http://127.0.0.1:8001"
    assert mv(s, "a").endpoint == "http://127.0.0.1:8001"
    # A later grant on the same backend carries the same endpoint.
    g2 = one(s.request("r2", "a", now=4.0, client="captioner"), Granted)
    assert (g2.client, g2.granted_at, g2.endpoint) == ("captioner", 4.0, g.endpoint)
    renewed = one(s.renew("r1", now=5.0, ttl_s=20.0), Renewed)
    assert (renewed.expires_at, renewed.ttl_s) == (25.0, 20.0)


def test_granted_endpoint_defaults_to_the_registry_and_is_forgotten_with_the_memory() -> None:
    models = {**REG, "a": dataclasses.replace(REG["a"], endpoint="http://a.local:9000")}
    s = make(models=models)
    assert lease(s, "r1", "a", 1.0).endpoint == "http://a.local:9000"
    s.release("r1", now=2.0)
    assert one(s.request("r2", "b", now=3.0), StopBackend).model_id == "a"
    assert mv(s, "a").endpoint == "http://a.local:9000"  # still its process, stopping
    assert one(s.unload_finished("a", now=4.0), StartBackend).model_id == "b"
    assert mv(s, "a").endpoint == ""
    assert one(s.load_succeeded("b", now=5.0), Granted).endpoint == ""  # none known


# -- removed models -------------------------------------------------------------------------------


def test_a_removed_model_serves_its_holder_then_retires() -> None:
    s = make()
    g = lease(s, "r1", "a", 1.0)
    out = s.reconfigure(s.profile, without("a"), now=2.0)
    assert of(out, StopBackend) == []
    assert mv(s, "a").retired and mv(s, "a").state is ModelState.LOADED
    ok(s)
    # Its holder keeps it: renew and release work.
    assert one(s.renew("r1", now=3.0), Renewed).expires_at == 63.0
    # New requests do not find it.
    rej = one(s.request("r2", "a", now=4.0), Rejected)
    assert (rej.code, rej.reason) == (RejectCode.NOT_FOUND, RejectReason.UNKNOWN_MODEL)
    assert "'a'" in rej.message and "qwen3-vl" in rej.message
    out = s.release("r1", now=5.0)
    assert one(out, LeaseEnded).lease_id == g.lease_id
    stop = one(out, StopBackend)
    assert (stop.model_id, stop.reason) == ("a", StopReason.RETIRED)
    ok(s)
    out = s.unload_finished("a", now=6.0)
    assert one(out, ModelStateChanged).state is ModelState.UNLOADED
    assert s.model("a") is None and "a" not in s.models()
    ok(s)
    # Its lease is remembered as ended, not unknown.
    assert one(s.renew("r1", now=7.0), LeaseRefused).reason is RejectReason.LEASE_ENDED


def test_a_removed_idle_model_stops_at_once_and_its_waiters_are_not_found() -> None:
    s = make()
    lease(s, "r1", "a", 1.0)
    s.release("r1", now=2.0)
    s.request("r2", "b", now=3.0)  # evicts a: b loads
    s.unload_finished("a", now=4.0)
    probe_free(s, 4.0)
    assert one(s.load_succeeded("b", now=5.0), Granted).lease_id == "r2"
    s.release("r2", now=6.0)
    assert s.request("r3", "c", now=7.0) == [
        ModelStateChanged("b", ModelState.UNLOADING, ("GPU-0",), "evicted to make room for c"),
        StopBackend("b", ("GPU-0",), StopReason.EVICTED, "evicted to make room for c"),
        Queued("r3", "c", 1),
    ]
    # c waits in the queue; removing c refuses it; b (unloading) is simply forgotten later.
    out = s.reconfigure(s.profile, without("b", "c"), now=8.0)
    rej = one(out, Rejected)
    assert (rej.request_id, rej.code) == ("r3", RejectCode.NOT_FOUND)
    assert "removed from the registry" in rej.message
    s.unload_finished("b", now=9.0)
    assert "b" not in s.models() and s.queue() == []
    ok(s)


def test_a_removed_loaded_idle_model_is_stopped_as_retired() -> None:
    s = make()
    lease(s, "r1", "siglip", 1.0)
    s.release("r1", now=2.0)
    out = s.reconfigure(s.profile, without("siglip"), now=3.0)
    stop = one(out, StopBackend)
    assert (stop.model_id, stop.reason) == ("siglip", StopReason.RETIRED)
    ok(s)


# -- redefined models -----------------------------------------------------------------------------


def test_a_redefined_model_reloads_with_its_new_definition_after_its_holder_releases() -> None:
    s = make()
    lease(s, "r1", "a", 1.0)
    out = s.reconfigure(s.profile, redefined("a", vram_estimate_mb=7000), now=2.0)
    assert of(out, StopBackend) == []
    # A new request waits for the old instance to go, though the old one is loaded.
    assert s.request("r2", "a", now=3.0) == [Queued("r2", "a", 1)]
    ok(s)
    out = s.release("r1", now=4.0)
    stop = one(out, StopBackend)
    assert (stop.model_id, stop.reason) == ("a", StopReason.RETIRED)
    assert "vram_estimate_mb changed" in stop.message
    assert of(out, StartBackend) == []
    out = s.unload_finished("a", now=5.0)
    start = one(out, StartBackend)
    assert (start.model_id, start.reservation_mb) == ("a", 7000)
    assert one(s.load_succeeded("a", now=6.0), Granted).lease_id == "r2"
    assert not mv(s, "a").retired and mv(s, "a").reserved_mb == 7000
    ok(s)


def test_a_change_that_does_not_touch_the_backend_keeps_the_loaded_model() -> None:
    s = make()
    lease(s, "r1", "a", 1.0)
    s.release("r1", now=2.0)
    models = redefined("a", role_priority={"caption": 5}, grace_period_seconds=10.0)
    assert s.reconfigure(s.profile, models, now=3.0) == []
    # Still the same instance; the new grace period applies from now on.
    assert mv(s, "a").state is ModelState.LOADED and not mv(s, "a").retired
    assert mv(s, "a").grace_until == 12.0
    assert one(s.request("r2", "a", now=4.0), Granted).lease_id == "r2"


def test_the_waiters_of_a_redefined_load_wait_for_the_new_definition() -> None:
    s = make()
    assert one(s.request("r1", "a", now=1.0), StartBackend).reservation_mb == 6000
    out = s.reconfigure(s.profile, redefined("a", command=("serve", "a")), now=2.0)
    # The old load serves no one now: stopped at once; r1 is back in the queue.
    assert one(out, StopBackend).reason is StopReason.RETIRED
    assert one(out, Queued) == Queued("r1", "a", 1)
    assert s.load_succeeded("a", now=3.0) == []  # late: it was stopped
    out = s.unload_finished("a", now=4.0)
    assert one(out, StartBackend).model_id == "a"
    assert one(s.load_succeeded("a", now=5.0), Granted).lease_id == "r1"
    ok(s)


def test_a_model_put_back_as_it_was_is_reinstated_without_a_reload() -> None:
    s = make()
    lease(s, "r1", "a", 1.0)
    s.reconfigure(s.profile, without("a"), now=2.0)
    out = s.reconfigure(s.profile, REG, now=3.0)
    assert of(out, StopBackend) == [] and of(out, StartBackend) == []
    assert not mv(s, "a").retired
    assert one(s.request("r2", "a", now=4.0), Granted).lease_id == "r2"
    ok(s)


# -- a new profile --------------------------------------------------------------------------------


def test_a_smaller_profile_stops_idle_models_not_leased_ones_and_loads_nothing_while_over() -> None:
    s = make("generous_96gb", (98304,))
    for i, mid in enumerate(("a", "b", "siglip")):
        lease(s, f"r{i}", mid, 1.0 + i)
    s.release("r1", now=5.0)  # b idle; a and siglip leased
    out = s.reconfigure(BUILTIN_PROFILES["development"], REG, now=6.0)
    stops = of(out, StopBackend)
    assert [(d.model_id, d.reason) for d in stops] == [("b", StopReason.RECONFIGURED)]
    assert s.inherited is not None and s.inherited.models == 3
    ok(s)
    # Over the new limits: a request waits, and no load starts, even once b is gone.
    assert s.request("r9", "florence-2-large", now=7.0) == [Queued("r9", "florence-2-large", 1)]
    assert of(s.unload_finished("b", now=8.0), StartBackend) == []
    assert s.inherited is not None and s.inherited.models == 2
    ok(s)
    # Released, a leased model goes too while the excess lasts.
    out = s.release("r0", now=9.0)
    assert [(d.model_id, d.reason) for d in of(out, StopBackend)] == [
        ("a", StopReason.RECONFIGURED)
    ]
    assert of(s.unload_finished("a", now=10.0), StartBackend) == []
    assert s.inherited is None  # 2600 MiB and one model: within development's limits
    ok(s)
    # The last one is evicted as usual for the waiting request.
    out = s.release("r2", now=11.0)
    assert one(out, StopBackend).reason is StopReason.EVICTED
    probe_free(s, 12.0)
    assert one(s.unload_finished("siglip", now=12.0), StartBackend).model_id == "florence-2-large"
    ok(s)


def test_the_new_profile_applies_to_new_requests() -> None:
    s = make("generous_96gb", (98304,))
    out = s.reconfigure(BUILTIN_PROFILES["development"], REG, now=1.0)
    assert out == []
    rej = one(s.request("r1", "qwen3-vl", now=2.0), Rejected)
    assert rej.reason is RejectReason.MODEL_TOO_LARGE and "development" in rej.message


def test_reconfigure_replaces_the_preload_list_without_loading_twice() -> None:
    s = Scheduler(BUILTIN_PROFILES["generous_96gb"], REG, [snap(0, 98304)], preload=["a"])
    assert one(s.start(0.0), StartBackend).model_id == "a"
    assert mv(s, "a").keep_warm
    out = s.reconfigure(s.profile, REG, now=1.0, preload=["a", "b", "nope"])
    # a is loading already: not again; b waits for the GPU (one load per GPU at a time).
    assert of(out, StartBackend) == []
    assert [d.model_id for d in of(out, PreloadSkipped)] == ["nope"]
    out = s.load_succeeded("a", now=2.0)
    assert [d.model_id for d in of(out, StartBackend)] == ["b"]
    s.load_succeeded("b", now=3.0)
    # Dropped from the list, they are no longer kept warm: the grace period applies again.
    assert s.reconfigure(s.profile, REG, now=4.0, preload=[]) == []
    assert not mv(s, "a").keep_warm and mv(s, "a").grace_until == 3602.0
    ok(s)
