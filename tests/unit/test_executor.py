"""The executor: one event into the core, its decisions through every sink in order; backend
outcomes come back as core events."""

from __future__ import annotations

from collections.abc import Sequence

from gpuletd.executor import BackendDied, Clock, Executor, Loaded, LoadFailed, Unloaded
from gpuletd.profiles import BUILTIN_PROFILES
from gpuletd.registry import Backend, Model
from gpuletd.scheduler import (
    Decision,
    Granted,
    LeaseEnded,
    ModelState,
    ModelStateChanged,
    Scheduler,
    StartBackend,
    StopBackend,
)
from tests.fakes.snapshots import snapshot as snap


def _model(mid: str, mb: int) -> Model:
    return Model(mid, mid, Backend.PROCESS, "fp8", mb, {"caption": 1}, command=("x",))


class Recorder:
    def __init__(self, name: str, log: list[tuple[str, Decision]]) -> None:
        self.name = name
        self.log = log

    def apply(self, decisions: Sequence[Decision]) -> None:
        self.log.extend((self.name, d) for d in decisions)


class FakeTime:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _executor() -> tuple[Executor, list[tuple[str, Decision]], FakeTime]:
    profile = BUILTIN_PROFILES["constrained_16gb"]
    models = {m.id: m for m in (_model("a", 4000), _model("b", 9000))}
    now = FakeTime()
    core = Scheduler(profile, models, [snap(0, 16384)])
    ex = Executor(core, clock=Clock(mono=now, wall=lambda: now.t + 1_000_000))
    log: list[tuple[str, Decision]] = []
    for name in ("store", "supervisor", "watch"):
        ex.add_sink(Recorder(name, log))
    return ex, log, now


def test_every_sink_sees_every_decision_in_order_store_first() -> None:
    ex, log, _ = _executor()
    out = ex.feed(lambda c, now: c.request("l-0000000000000001", "a", now=now, client="me"))
    assert any(isinstance(d, StartBackend) for d in out)
    by_sink: dict[str, list[Decision]] = {}
    for name, d in log:
        by_sink.setdefault(name, []).append(d)
    assert by_sink["store"] == by_sink["supervisor"] == by_sink["watch"] == out
    # For each decision the store heard of it before the supervisor acted on it.
    order = [name for name, d in log if isinstance(d, StartBackend)]
    assert order == ["store", "supervisor", "watch"]


def test_backend_outcomes_become_core_events() -> None:
    ex, log, now = _executor()
    ex.feed(lambda c, t: c.request("l-0000000000000001", "a", now=t, client="me"))
    now.t += 2
    ex.backend_outcome(Loaded("a", 4100, "http://127.0.0.1:9/v1"))
    granted = [d for _, d in log if isinstance(d, Granted)]
    assert granted and granted[0].endpoint == "http://127.0.0.1:9/v1"
    assert granted[0].client == "me"
    # The wall clock is only for people: a grant time shown is the monotonic one shifted.
    assert ex.clock.to_wall(granted[0].granted_at) == granted[0].granted_at + 1_000_000
    view = ex.core.model("a")
    assert view is not None and view.measured_mb == 4100 and view.state is ModelState.LOADED
    ex.backend_outcome(BackendDied("a", "segfault"))
    ended = [d for _, d in log if isinstance(d, LeaseEnded)]
    assert ended and "segfault" in ended[0].message


def test_a_failed_load_and_an_unload_reach_the_core() -> None:
    ex, log, _ = _executor()
    ex.feed(lambda c, t: c.request("l-0000000000000001", "b", now=t))
    ex.backend_outcome(LoadFailed("b", "no such file"))
    view = ex.core.model("b")
    assert view is not None and view.state is ModelState.FAILED
    assert "no such file" in view.last_error
    # A late duplicate answer changes nothing.
    ex.backend_outcome(Unloaded("b"))
    assert ex.core.model("b") == view
    assert not [d for _, d in log if isinstance(d, StopBackend)]


class Raising:
    def apply(self, decisions: Sequence[Decision]) -> None:
        raise RuntimeError("a sink's bug")


class AnswersAtOnce:
    """A supervisor that knows the outcome of a start at once (a reservation)."""

    def __init__(self, ex: Executor) -> None:
        self.ex = ex

    def apply(self, decisions: Sequence[Decision]) -> None:
        for d in decisions:
            if isinstance(d, StartBackend):
                self.ex.backend_outcome(Loaded(d.model_id, None, ""))


def test_a_failing_sink_does_not_keep_decisions_from_the_others() -> None:
    profile = BUILTIN_PROFILES["constrained_16gb"]
    ex = Executor(Scheduler(profile, {"a": _model("a", 4000)}, [snap(0, 16384)]))
    log: list[tuple[str, Decision]] = []
    ex.add_sink(Raising())
    ex.add_sink(Recorder("after", log))
    out = ex.feed(lambda c, now: c.request("l-0000000000000001", "a", now=now))
    assert [d for _, d in log] == out


def test_an_outcome_raised_inside_a_batch_is_seen_after_it_in_order() -> None:
    profile = BUILTIN_PROFILES["constrained_16gb"]
    ex = Executor(Scheduler(profile, {"a": _model("a", 4000)}, [snap(0, 16384)]))
    log: list[tuple[str, Decision]] = []
    ex.add_sink(AnswersAtOnce(ex))
    ex.add_sink(Recorder("watch", log))
    ex.feed(lambda c, now: c.request("l-0000000000000001", "a", now=now))
    kinds = [type(d).__name__ for _, d in log]
    # The start (and the request's Loading) before the load's outcome and the grant.
    assert kinds.index("StartBackend") < kinds.index("Granted")
    states = [d.state for _, d in log if isinstance(d, ModelStateChanged)]
    assert states == [ModelState.LOADING, ModelState.LOADED]
