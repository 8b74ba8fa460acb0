"""snapshot() / restore(): the core's state across a daemon restart."""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import fields
from typing import Any

import pytest

from gpuletd.profiles import BUILTIN_PROFILES
from gpuletd.registry import Model
from gpuletd.scheduler import (
    Granted,
    LeaseEnded,
    LeaseEndReason,
    LeaseRefused,
    ModelState,
    ModelStateChanged,
    RejectReason,
    Renewed,
    Scheduler,
    SnapshotError,
    StartBackend,
    StopBackend,
    StopReason,
    check_invariants,
)
from gpuletd.scheduler.codec import model_from_dict, model_to_dict
from tests.fakes.snapshots import snapshot as snap
from tests.unit.test_scheduler_core import REG, lease, make, mv, of, ok, one, probe_free

GPUS_96 = [snap(0, 98304)]


def json_round_trip(d: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(json.dumps(d, allow_nan=False))
    return loaded


def busy_core() -> Scheduler:
    """A core with something in every record field: leases, a load and an unload under way,
    a failure with backoff, memory not yet seen free, ended leases, a keep-warm preload."""
    s = Scheduler(BUILTIN_PROFILES["generous_96gb"], REG, GPUS_96, preload=["siglip"])
    assert one(s.start(0.0), StartBackend).model_id == "siglip"
    s.load_succeeded("siglip", now=1.0, measured_mb=2700, endpoint="http://127.0.0.1:7001")
    lease(s, "r1", "a", 2.0, client="tagger", ttl_s=10000.0, secret="digest-1")
    lease(s, "r2", "a", 3.0, priority=2, ttl_s=10000.0)
    lease(s, "r3", "b", 4.0)
    s.release("r3", now=5.0)
    s.request("r4", "c", now=6.0)
    s.load_failed("c", "exit status 1", now=7.0)
    lease(s, "r5", "florence-2-large", 8.0)
    s.cancel("r5", now=9.0)
    s.reconfigure(s.profile, REG, now=10.0, preload=["siglip"])
    # b's grace period (an hour) ends: it unloads; c fails again and backs off.
    assert [d.model_id for d in of(s.tick(3606.0), StopBackend)] == ["b"]
    s.request("r7", "c", now=3607.0)
    s.load_failed("c", "exit status 1", now=3608.0)
    assert one(s.request("r6", "qwen25vl", now=3608.0), StartBackend).model_id == "qwen25vl"
    ok(s)
    return s


def test_snapshot_is_json_and_a_restore_gives_the_same_snapshot() -> None:
    s = busy_core()
    first = s.snapshot()
    assert first["version"] == 1
    restored = Scheduler.restore(
        json_round_trip(first), s.profile, REG, GPUS_96, now=s.now, preload=["siglip"]
    )
    assert restored.snapshot() == first
    assert check_invariants(restored) == []
    # What was pending died with the old daemon: the load is there, its waiter is not.
    assert restored.queue() == [] and mv(restored, "qwen25vl").waiters == ()
    assert mv(restored, "qwen25vl").state is ModelState.LOADING
    assert mv(restored, "b").state is ModelState.UNLOADING
    assert mv(restored, "c").state is ModelState.FAILED
    assert mv(restored, "siglip").endpoint == "http://127.0.0.1:7001"
    assert restored.lease_secret("r1") == "digest-1"
    assert [v.lease_id for v in restored.leases()] == ["r1", "r2"]
    assert restored.gpus() == s.gpus()


def test_restore_with_a_shift_moves_every_time() -> None:
    s = busy_core()
    first = s.snapshot()
    keep = ["siglip"]
    restored = Scheduler.restore(
        json_round_trip(first), s.profile, REG, GPUS_96, now=9.0, shift=-3600.0, preload=keep
    )
    before = {v.lease_id: v for v in s.leases()}
    for v in restored.leases():
        assert v.expires_at == before[v.lease_id].expires_at - 3600.0
        assert v.granted_at == before[v.lease_id].granted_at - 3600.0
    assert mv(restored, "c").backoff_until == 3610.0 - 3600.0
    assert mv(restored, "florence-2-large").grace_until == 3609.0 - 3600.0
    assert restored.gpus()[0].pending_free_mb == 6000
    assert restored.next_wakeup() == 9.0  # florence's grace, as it was due at 3609
    # Shifting back gives the very same snapshot.
    again = Scheduler.restore(
        json_round_trip(restored.snapshot()),
        s.profile,
        REG,
        GPUS_96,
        now=0.0,
        shift=3600.0,
        preload=keep,
    )
    assert again.snapshot() == first


def test_a_restored_core_renews_and_releases_the_restored_leases() -> None:
    s = make()
    lease(s, "r1", "a", 1.0, ttl_s=30.0)
    s.request("r0", "nope", now=1.5)
    lease(s, "r2", "a", 2.0)
    s.release("r2", now=3.0)
    r = Scheduler.restore(s.snapshot(), s.profile, REG, [snap(0, 16384)], now=4.0, shift=100.0)
    assert r.start(104.0) == []
    assert r.lease("r1") is not None and r.lease("r1").expires_at == 131.0  # type: ignore[union-attr]
    assert one(r.renew("r1", now=105.0), Renewed) == Renewed("r1", "a", 135.0, ttl_s=30.0)
    # Unknown stays unknown; ended stays ended.
    assert one(r.renew("zz", now=106.0), LeaseRefused).reason is RejectReason.UNKNOWN_LEASE
    assert one(r.release("r2", now=106.0), LeaseRefused).reason is RejectReason.LEASE_ENDED
    ended = one(r.release("r1", now=107.0), LeaseEnded)
    assert (ended.lease_id, ended.reason) == ("r1", LeaseEndReason.RELEASED)
    ok(r)
    # A new request cannot reuse a restored lease id, and gets a fresh one as usual.
    assert one(r.request("r3", "a", now=108.0), Granted).lease_id == "r3"


def test_a_restored_lease_expires_on_the_new_clock() -> None:
    s = make()
    lease(s, "r1", "a", 1.0, ttl_s=30.0)
    r = Scheduler.restore(s.snapshot(), s.profile, REG, [snap(0, 16384)], now=500.0, shift=480.0)
    assert r.next_wakeup() == 511.0
    assert r.start(505.0) == []
    ended = one(r.tick(511.0), LeaseEnded)
    assert ended.reason is LeaseEndReason.EXPIRED


def loading_snapshot() -> tuple[Scheduler, dict[str, Any]]:
    s = make()
    assert one(s.request("r1", "a", now=1.0), StartBackend).model_id == "a"
    return s, s.snapshot()


def test_a_restored_load_that_succeeds_is_loaded_and_idle() -> None:
    s, first = loading_snapshot()
    r = Scheduler.restore(first, s.profile, REG, [snap(0, 16384, 10384)], now=2.0)
    assert r.start(2.0) == []
    out = r.load_succeeded("a", now=3.0, endpoint="http://x")
    assert out == [ModelStateChanged("a", ModelState.LOADED, ("GPU-0",))]
    assert mv(r, "a").idle_since == 3.0 and mv(r, "a").endpoint == "http://x"
    assert one(r.request("r2", "a", now=4.0), Granted).endpoint == "http://x"
    ok(r)


def test_a_restored_load_that_fails_gives_its_memory_back() -> None:
    s, first = loading_snapshot()
    r = Scheduler.restore(first, s.profile, REG, [snap(0, 16384, 10384)], now=2.0)
    r.start(2.0)
    assert r.gpus()[0].reserved_mb == 6000
    out = r.load_failed("a", "gone after the restart", now=3.0)
    assert one(out, ModelStateChanged).state is ModelState.FAILED
    assert mv(r, "a").reserved_mb == 0 and r.gpus()[0].reserved_mb == 0
    ok(r)


def test_restored_memory_is_not_counted_as_foreign() -> None:
    s, first = loading_snapshot()
    # The reading after the restart shows the loading model's 6000 MiB as used, and 1000 more.
    r = Scheduler.restore(first, s.profile, REG, [snap(0, 16384, 9384)], now=2.0)
    assert r.gpus()[0].foreign_mb == 1000


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.update(version=2),
        lambda d: d.pop("version"),
        lambda d: d.update(version=True),
        lambda d: d.update(models="nope"),
        lambda d: d["models"][0].update(state="sleeping"),
        lambda d: d["models"][0].pop("definition"),
        lambda d: d["models"][0]["definition"].update(backend="docker"),
        lambda d: d["models"][0].update(reserved_mb="6000"),
        lambda d: d["models"][0].update(backoff_until=float("nan")),
        lambda d: d["leases"].append(dict(d["leases"][0])),
        lambda d: d["leases"][0].update(model_id="b"),
        lambda d: d["gpus"][0].update(pending=[[1, 2, 3]]),
        lambda d: d.update(ended=[["only-one"]]),
        lambda d: d.update(seq=None),
        lambda d: d.update(pace_s="inf"),
        lambda d: d.update(pace_s=-1.0),
        lambda d: d["models"][0]["usage"].update(last_seq=-1),
        lambda d: d["models"][0]["usage"].update(last_seq=d["seq"] + 1),
        lambda d: d["models"][0]["usage"].update(mean_gap="inf"),
        lambda d: d["models"][0]["usage"].update(mean_dev=-0.5),
        lambda d: d["models"][0]["usage"].update(gaps=3),
    ],
)
def test_a_bad_snapshot_is_refused(damage: Any) -> None:
    s = make()
    lease(s, "r1", "a", 1.0)
    good = s.snapshot()
    Scheduler.restore(copy.deepcopy(good), s.profile, REG, [snap(0, 16384)], now=2.0)
    bad = copy.deepcopy(good)
    # Put the loaded model first so the damage lands on a record that matters.
    bad["models"].sort(key=lambda m: m["definition"]["id"] != "a")
    damage(bad)
    with pytest.raises(SnapshotError):
        Scheduler.restore(bad, s.profile, REG, [snap(0, 16384)], now=2.0)
    assert issubclass(SnapshotError, ValueError)


def test_not_a_snapshot_at_all_is_refused() -> None:
    for bad in ([], "x", None, {"version": 1}):
        with pytest.raises(SnapshotError):
            Scheduler.restore(bad, BUILTIN_PROFILES["development"], REG, [], now=0.0)  # type: ignore[arg-type]


def test_a_model_removed_while_the_daemon_was_down_is_retired() -> None:
    s = make()
    lease(s, "r1", "a", 1.0)
    models = {mid: m for mid, m in REG.items() if mid != "a"}
    r = Scheduler.restore(s.snapshot(), s.profile, models, [snap(0, 16384)], now=2.0)
    assert mv(r, "a").retired
    assert r.start(2.0) == []
    ok(r)
    assert one(r.renew("r1", now=3.0), Renewed).lease_id == "r1"
    out = r.release("r1", now=4.0)
    assert one(out, StopBackend).reason is StopReason.RETIRED
    r.unload_finished("a", now=5.0)
    assert r.model("a") is None
    ok(r)


def test_a_model_redefined_while_the_daemon_was_down_reloads_after_its_holder() -> None:
    s = make()
    lease(s, "r1", "a", 1.0)
    s.request("r9", "c", now=1.5)  # queued: dropped by the restart
    models = {**REG, "a": dataclasses.replace(REG["a"], vram_estimate_mb=6500)}
    r = Scheduler.restore(s.snapshot(), s.profile, models, [snap(0, 16384)], now=2.0)
    assert r.start(2.0) == []
    assert r.queue() == []
    r.request("r2", "a", now=3.0)
    out = r.release("r1", now=4.0)
    assert one(out, StopBackend).reason is StopReason.RETIRED
    assert one(r.unload_finished("a", now=5.0), StartBackend).reservation_mb == 6500
    ok(r)


def test_an_idle_model_redefined_meanwhile_takes_its_new_definition() -> None:
    s = make()
    lease(s, "r1", "c", 1.0)
    s.release("r1", now=2.0)
    s.backend_died("c", "oom", now=3.0)
    models = {**REG, "c": dataclasses.replace(REG["c"], vram_estimate_mb=5000)}
    r = Scheduler.restore(s.snapshot(), s.profile, models, [snap(0, 16384)], now=4.0)
    assert mv(r, "c").state is ModelState.UNLOADED and mv(r, "c").reservation_mb == 5000
    assert mv(s, "c").state is ModelState.FAILED


def test_a_restored_preload_is_not_loaded_again() -> None:
    s = Scheduler(BUILTIN_PROFILES["generous_96gb"], REG, GPUS_96, preload=["siglip", "a"])
    s.start(0.0)
    s.load_succeeded("siglip", now=1.0)
    r = Scheduler.restore(
        s.snapshot(), s.profile, REG, GPUS_96, now=2.0, preload=["siglip", "a", "b"]
    )
    out = r.start(2.0)
    # siglip is loaded, a loading; b waits for the GPU (one load at a time), then comes.
    assert of(out, StartBackend) == []
    assert [d.model_id for d in of(r.load_succeeded("a", now=3.0), StartBackend)] == ["b"]
    assert mv(r, "siglip").keep_warm and mv(r, "a").keep_warm and mv(r, "b").keep_warm


def test_a_restore_under_a_smaller_profile_drains_what_is_idle() -> None:
    s = Scheduler(BUILTIN_PROFILES["generous_96gb"], REG, GPUS_96)
    s.start(0.0)
    lease(s, "r1", "a", 1.0)
    lease(s, "r2", "b", 2.0)
    s.release("r2", now=3.0)
    dev = BUILTIN_PROFILES["development"]
    r = Scheduler.restore(s.snapshot(), dev, REG, GPUS_96, now=4.0)
    assert r.inherited is not None
    ok(r)
    out = r.start(4.0)
    assert [(d.model_id, d.reason) for d in of(out, StopBackend)] == [
        ("b", StopReason.RECONFIGURED)
    ]
    probe_free(r, 5.0)
    r.unload_finished("b", now=5.0)
    assert r.inherited is None
    ok(r)


def test_every_model_field_survives_the_codec() -> None:
    m = dataclasses.replace(
        REG["a"],
        command=("serve", "--port", "{port}"),
        health_url="http://127.0.0.1:{port}/health",
        endpoint="http://127.0.0.1:{port}",
        env={"A": "1"},
        gpus=("0",),
        group="g",
        autostart_timeout_seconds=90.0,
        grace_period_seconds=5.5,
    )
    d = json_round_trip(model_to_dict(m))
    assert set(d) == {f.name for f in fields(Model)}
    assert model_from_dict(d, "m") == m


def test_learnt_footprints_size_the_next_load() -> None:
    s = Scheduler(BUILTIN_PROFILES["constrained_16gb"], REG, [snap(0, 16384)])
    s.learn("a", measured_mb=6300, load_seconds=12.0)
    s.learn("nope", measured_mb=1)
    s.start(0.0)
    assert mv(s, "a").reservation_mb == 6300 and mv(s, "a").load_seconds == 12.0
    assert one(s.request("r1", "a", now=1.0), StartBackend).reservation_mb == 6300


def test_a_snapshot_from_before_reuse_was_counted_in_requests_restores() -> None:
    # State files written by an earlier gpuletd: gaps in seconds, no request numbers. When
    # each model was last asked for is kept; its pattern starts afresh.
    s = busy_core()
    old = json_round_trip(s.snapshot())
    for m in old["models"]:
        m["usage"] = {"last_at": m["usage"]["last_at"], "mean_gap": 2.5, "mean_dev": 1.0}
    del old["last_request_at"], old["pace_s"]
    r = Scheduler.restore(old, s.profile, REG, GPUS_96, now=3609.0)
    ok(r)
    usage = {m["definition"]["id"]: m["usage"] for m in r.snapshot()["models"]}
    assert usage["a"]["last_at"] == 3.0 and usage["a"]["gaps"] == 0
    assert usage["a"]["mean_gap"] is None and usage["a"]["last_seq"] == old["seq"]
