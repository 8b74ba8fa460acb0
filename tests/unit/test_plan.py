"""What-if (`gpuletd.plan`): each outcome against a real scheduler core with reservation
models, and proof that the live core is never changed."""

from __future__ import annotations

import gc
from collections import OrderedDict, deque
from collections.abc import Sequence
from enum import Enum
from types import MappingProxyType

from gpuletd.plan import (
    PLAN_REQUEST_ID,
    Outcome,
    PlanResult,
    isolated_copy,
    reload_estimate,
    what_if,
)
from gpuletd.profiles import BUILTIN_PROFILES, Profile
from gpuletd.registry import Backend, Model
from gpuletd.scheduler import Scheduler
from tests.fakes.snapshots import snapshot as snap


def _model(mid: str, mb: int) -> Model:
    return Model(
        id=mid,
        name=mid,
        quantization="fp8",
        vram_estimate_mb=mb,
        role_priority={"caption": 1},
        backend=Backend.RESERVATION,
    )


REG = {
    m.id: m
    for m in [_model("qwen3-vl", 10600), _model("gpt-oss-20b", 13800)]
    + [_model(x, 6000) for x in "abc"]
}


def make(profile: str = "constrained_16gb", gpus: Sequence[int] = (16384,)) -> Scheduler:
    s = Scheduler(BUILTIN_PROFILES[profile], REG, [snap(i, t) for i, t in enumerate(gpus)])
    assert s.start(0.0) == []
    return s


def _no_wait(core: Scheduler, rid: str) -> str:
    return "x" if any(e.request_id == rid for e in core.queue()) else ""


def plan(core: Scheduler, mid: str, now: float, **kw: object) -> PlanResult:
    return what_if(core, mid, now=now, models=REG, waiting=_no_wait, **kw)  # type: ignore[arg-type]


def loaded_idle(core: Scheduler, mid: str, rid: str, t: float) -> None:
    core.request(rid, mid, now=t)
    core.load_succeeded(mid, now=t + 1)
    core.release(rid, now=t + 2)


def _mutable_ids(root: object) -> set[int]:
    """Every mutable container or record reachable from `root`."""
    out: set[int] = set()
    seen: set[int] = set()
    stack = [root]
    while stack:
        o = stack.pop()
        # Frozen registry models, profiles and enum members are shared by design.
        if id(o) in seen or isinstance(o, type | MappingProxyType | Model | Profile | Enum):
            continue
        seen.add(id(o))
        if isinstance(o, dict | list | set | deque | OrderedDict | bytearray) or (
            hasattr(o, "__dict__") and type(o).__module__.startswith("gpuletd.scheduler")
        ):
            out.add(id(o))
        stack.extend(r for r in gc.get_referents(o) if not isinstance(r, type))
    return out


def test_the_copy_shares_no_mutable_state_and_the_live_core_is_unchanged() -> None:
    s = make()
    loaded_idle(s, "a", "r1", 1.0)
    s.request("r2", "b", now=4.0)  # b loads: a queue and a load under way to copy too
    before = s.snapshot()
    queue_before, models_before = s.queue(), s.models()
    c = isolated_copy(s)
    assert not _mutable_ids(c) & _mutable_ids(s)
    c.request("x", "gpt-oss-20b", now=5.0)
    c.load_succeeded("b", now=6.0)
    assert s.snapshot() == before
    assert s.queue() == queue_before and s.models() == models_before
    # And what_if itself, on every outcome path, leaves the live core alone.
    for mid in ("a", "b", "c", "gpt-oss-20b"):
        plan(s, mid, 7.0)
    assert s.snapshot() == before and s.now == 4.0


def test_granted_when_loaded() -> None:
    s = make()
    loaded_idle(s, "a", "r1", 1.0)
    p = plan(s, "a", 5.0)
    assert p.outcome is Outcome.GRANTED
    assert p.gpu_uuids == ("GPU-0",) and p.victims == ()


def test_load_with_room_evicts_nothing() -> None:
    p = plan(make(), "a", 1.0)
    assert p.outcome is Outcome.LOAD and p.gpu_uuids == ("GPU-0",)
    assert p.victims == ()


def test_load_that_needs_room_names_the_idle_victim_and_its_reload_cost() -> None:
    s = make()
    loaded_idle(s, "a", "r1", 1.0)
    p = plan(s, "gpt-oss-20b", 5.0)
    assert p.outcome is Outcome.LOAD, p
    assert p.gpu_uuids == ("GPU-0",)
    [v] = p.victims
    assert v.model_id == "a" and v.reserved_mb == 6000
    # A reservation model's "load" is instant for the core: the size rule, 2 s per GiB.
    assert not v.reload_measured and abs(v.reload_s - 6000 / 1024 * 2) < 1e-9
    assert "after evicting a" in p.message
    assert s.models()["a"].state.value == "loaded"


def test_wait_behind_a_lease_at_position_1() -> None:
    s = make("constrained_16gb")
    s.request("r1", "gpt-oss-20b", now=1.0)
    s.load_succeeded("gpt-oss-20b", now=2.0)  # leased: it cannot be evicted
    p = plan(s, "qwen3-vl", 3.0)
    assert p.outcome is Outcome.WAIT and p.position == 1
    assert p.waiting_for == "x" and p.victims == ()
    assert [e.request_id for e in s.queue()] == []
    assert PLAN_REQUEST_ID not in {e.request_id for e in s.queue()}


def test_joining_a_load_under_way_waits_without_a_turn() -> None:
    s = make()
    s.request("r1", "a", now=1.0)  # loading
    p = plan(s, "a", 2.0)
    assert p.outcome is Outcome.WAIT and p.position is None
    assert p.gpu_uuids == ("GPU-0",)


def test_refused_when_too_large() -> None:
    s = make(gpus=(8192,))
    p = plan(s, "gpt-oss-20b", 1.0)
    assert p.outcome is Outcome.REFUSED
    assert p.code == "RESOURCE_EXHAUSTED" and p.reason == "MODEL_TOO_LARGE"
    assert p.message


def test_reload_estimate_uses_a_measured_time_only_for_a_process_backend() -> None:
    s = make()
    loaded_idle(s, "a", "r1", 1.0)
    v = s.models()["a"]
    assert v.load_seconds == 1.0
    assert reload_estimate(v, REG) == (6000 / 1024 * 2, False)
    from dataclasses import replace

    proc = {"a": replace(REG["a"], backend=Backend.PROCESS)}
    assert reload_estimate(v, proc) == (1.0, True)
