"""Property tests of the scheduler core: random event sequences on every built-in profile.

The state machine plays the daemon's shell: it answers StartBackend with load_succeeded /
load_failed / backend_died and StopBackend with unload_finished some steps later, reports
probe readings that follow the memory its simulated processes hold, and plays clients that
request, renew, release and cancel. After every step `check_invariants` must be empty, and the
decisions must respect what the shell can see:

- no StartBackend for a model whose previous process is not gone;
- no StopBackend (and no unloaded/failed state) for a model with a live lease;
- a grant only on a model whose backend is healthy, on the GPUs it was started on;
- no GPU ever holds more than it has (simulated processes included);
- FIFO within a priority, as guaranteed: a request is never granted while an older request of
  the same priority for the same model, which is not exclusive, still waits. (Across models,
  order is bounded rather than strict: a later request may be served from a model already
  loaded or loading, but at most `bypass_limit` times against a blocked head when that delays
  it; the invariants check that bound. See docs/scheduling.md.)
- a late or duplicate backend event changes nothing (returns no decision);
- at the end, once clients let go and time passes, no request is left pending (no starvation,
  whatever the patience and bypass limits).

Issue 8's rules are covered by two more setups (seed 003's heavy cap, and idle unload only
under pressure with a heavy cap) and by the patience limit (0, 30 s, 300 s): `check_invariants`
holds the core to the heavy cap, and to every patient request's bound (begun once, at most
`patience_max_s`, never past its deadline, with a wakeup by its end).

Two rules change the core under the shell's feet, as the daemon does: a restart (snapshot,
JSON, restore; only when no request is pending, since pending requests die with the daemon)
and a reconfigure to another built-in profile and registry. The shell's checks above must
hold across both (a retired or drained model is never stopped while leased), and the ceilings
a reconfigure leaves (`Scheduler.inherited`) only ever go down between reconfigures.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gpuletd.config import load_config
from gpuletd.probe.types import GpuSnapshot, GpuState
from gpuletd.profiles import BUILTIN_PROFILES, IdleUnload, Profile
from gpuletd.registry import Backend, Model, WeightClass
from gpuletd.scheduler import (
    Decision,
    Granted,
    Inherited,
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
from tests.fakes.snapshots import snapshot


def _model(
    mid: str, mb: int, gpus: tuple[str, ...] = (), weight: WeightClass | None = None
) -> Model:
    return Model(
        id=mid,
        name=mid,
        backend=Backend.RESERVATION,
        quantization="fp8",
        vram_estimate_mb=mb,
        role_priority={"caption": 1},
        gpus=gpus,
        weight_class=weight,
    )


REGISTRY = {
    m.id: m
    for m in (
        _model("qwen3-vl", 10600),
        _model("qwen25vl", 6400),
        _model("florence-2-large", 3500),
        _model("siglip", 2600),
        _model("gpt-oss-20b", 13800),
        _model("tiny-a", 800),
        # Heavy by its own class, though small (the others by the profiles' threshold).
        _model("tiny-b", 1200, weight=WeightClass.HEAVY),
        _model("mid-c", 5000),
        _model("pinned-1", 3000, gpus=("1",)),
    )
}
MODEL_IDS = sorted(REGISTRY)
# Registries a reconfigure may switch to: the same, one model removed, one redefined (a new
# instance is needed), one changed only in what does not touch its backend.
REGISTRIES: list[dict[str, Model]] = [
    REGISTRY,
    {mid: m for mid, m in REGISTRY.items() if mid != "mid-c"},
    {**REGISTRY, "tiny-a": dataclasses.replace(REGISTRY["tiny-a"], vram_estimate_mb=900)},
    {**REGISTRY, "qwen25vl": dataclasses.replace(REGISTRY["qwen25vl"], command=("serve",))},
    {**REGISTRY, "siglip": dataclasses.replace(REGISTRY["siglip"], role_priority={"tags": 2})},
]
LINGER = st.sampled_from([0.0, 0.0, 0.5, 3.0])

# The built-in profiles, and issue 8's rules on top of them: seed 003's heavy cap (the shipped
# example profile, as the daemon reads it) and idle unload only under pressure.
SEED003_FILE = Path(__file__).resolve().parents[2] / "deploy" / "profiles" / "seed003_16gb.toml"
PROFILES: dict[str, Profile] = {
    **BUILTIN_PROFILES,
    "seed003_16gb": load_config([SEED003_FILE]).profiles["seed003_16gb"],
    "pressure_24gb": dataclasses.replace(
        BUILTIN_PROFILES["balanced_24gb"],
        name="pressure_24gb",
        max_concurrent_models=3,
        grace_period_seconds=30,
        idle_unload=IdleUnload.PRESSURE,
        max_heavy_models=1,
        heavy_threshold_mb=10000,
    ),
}

SETUPS: list[tuple[str, tuple[int, ...]]] = [
    ("constrained_16gb", (16384,)),
    ("balanced_24gb", (24576,)),
    ("multi_gpu_2x16gb", (16384, 16384)),
    ("generous_96gb", (98304,)),
    ("development", ()),
    ("development", (12288,)),
    ("seed003_16gb", (16384,)),
    ("pressure_24gb", (24576,)),
]


@dataclass
class Proc:
    """A simulated backend process, as the shell sees it."""

    kind: str  # starting | running | stopping
    gpus: tuple[str, ...]
    shares: tuple[int, ...]


@dataclass
class Pending:
    model_id: str
    priority: int
    exclusive: bool
    seq: int


@dataclass
class Ghost:
    """Memory of a process that is gone but that the driver has not given back yet."""

    gpus: tuple[str, ...]
    shares: tuple[int, ...]
    until: float


@dataclass
class Shell:
    procs: dict[str, Proc] = field(default_factory=dict)
    ghosts: list[Ghost] = field(default_factory=list)
    pending: dict[str, Pending] = field(default_factory=dict)
    leases: dict[str, str] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.n = 0
        self.shell = Shell()
        self.totals: tuple[int, ...] = ()
        self.foreign = 0
        self.profile: Profile = BUILTIN_PROFILES["development"]
        self.registry: dict[str, Model] = REGISTRY
        self.preload: list[str] = []
        self.queue_limit = 256
        self.tuning = Tuning()
        self.sched: Scheduler
        # The last inherited ceilings seen, and whether a reconfigure or restore may have set
        # new ones since.
        self.inherited: Inherited | None = None
        self.may_inherit = False

    # -- setup -------------------------------------------------------------------------------

    @initialize(
        setup=st.sampled_from(SETUPS),
        foreign=st.sampled_from([0, 0, 900]),
        preload=st.lists(st.sampled_from(MODEL_IDS), max_size=3, unique=True),
        queue_limit=st.sampled_from([4, 256]),
        bypass_limit=st.sampled_from([0, 1, 3]),
        patience=st.sampled_from([0.0, 30.0, 300.0]),
        learnt=st.booleans(),
    )
    def setup(
        self,
        setup: tuple[str, tuple[int, ...]],
        foreign: int,
        preload: list[str],
        queue_limit: int,
        bypass_limit: int,
        patience: float,
        learnt: bool,
    ) -> None:
        name, self.totals = setup
        self.profile = PROFILES[name]
        self.foreign = foreign if self.totals else 0
        gpus = [
            snapshot(i, t, t - self.foreign, at=0.0, state=GpuState.OK)
            for i, t in enumerate(self.totals)
        ]
        self.tuning = Tuning(
            bypass_limit=bypass_limit, aging_interval_s=20.0, patience_max_s=patience
        )
        self.preload, self.queue_limit = preload, queue_limit
        self.sched = Scheduler(
            self.profile,
            REGISTRY,
            gpus,
            queue_limit=queue_limit,
            preload=preload,
            tuning=self.tuning,
        )
        if learnt:
            # Footprints measured by an earlier run: loads of these may share a GPU.
            for mid, m in REGISTRY.items():
                self.sched.learn(mid, measured_mb=m.vram_estimate_mb)
        self.apply(self.sched.start(self.now))

    # -- the shell's view of decisions -------------------------------------------------------

    def apply(self, decisions: list[Decision]) -> None:
        sh = self.shell
        bad = sh.violations
        for d in decisions:
            if isinstance(d, StartBackend):
                if d.model_id in sh.procs:
                    bad.append(f"start {d.model_id} while its process is {sh.procs[d.model_id]}")
                sh.procs[d.model_id] = Proc("starting", d.gpu_uuids, d.gpu_reservations_mb)
            elif isinstance(d, StopBackend):
                proc = sh.procs.get(d.model_id)
                if proc is None or proc.kind == "stopping":
                    bad.append(f"stop {d.model_id} whose process is {proc}")
                held = [lid for lid, m in sh.leases.items() if m == d.model_id]
                if held:
                    bad.append(f"stop {d.model_id} while leased by {held}")
                if proc is not None:
                    proc.kind = "stopping"
            elif isinstance(d, Granted):
                p = sh.pending.pop(d.lease_id, None)
                if p is None:
                    bad.append(f"grant of unknown request {d.lease_id}")
                    continue
                proc = sh.procs.get(d.model_id)
                if proc is None or proc.kind != "running" or proc.gpus != d.gpu_uuids:
                    bad.append(f"grant {d.lease_id} on {d.model_id} whose process is {proc}")
                for rid, older in sh.pending.items():
                    if (
                        older.model_id == p.model_id
                        and older.priority == p.priority
                        and older.seq < p.seq
                        and not older.exclusive
                    ):
                        bad.append(f"{d.lease_id} granted before older {rid} (same model/prio)")
                sh.leases[d.lease_id] = d.model_id
            elif isinstance(d, Rejected):
                if sh.pending.pop(d.request_id, None) is None:
                    bad.append(f"rejection of {d.request_id}, which is not pending")
            elif isinstance(d, LeaseRefused):
                if d.code is RejectCode.NOT_FOUND and d.lease_id in sh.leases:
                    bad.append(f"live lease {d.lease_id} reported not found")
            elif isinstance(d, LeaseEnded):
                if sh.leases.pop(d.lease_id, None) is None:
                    bad.append(f"end of unknown lease {d.lease_id}")
            elif isinstance(d, Renewed):
                if d.lease_id not in sh.leases:
                    bad.append(f"renewed unknown lease {d.lease_id}")
            elif isinstance(d, (Queued, Loading)):
                if d.request_id not in sh.pending:
                    bad.append(f"{type(d).__name__} for request {d.request_id} not pending")
            elif isinstance(d, ModelStateChanged):
                if d.state in (ModelState.UNLOADED, ModelState.FAILED, ModelState.UNLOADING):
                    held = [lid for lid, m in sh.leases.items() if m == d.model_id]
                    if held:
                        bad.append(f"{d.model_id} -> {d.state.value} while leased by {held}")
            else:
                assert isinstance(d, PreloadSkipped)

    def new_id(self) -> str:
        self.n += 1
        return f"r{self.n}"

    def memory_in_use(self) -> list[int]:
        used = [self.foreign] * len(self.totals)
        held: list[Proc | Ghost] = [*self.shell.procs.values()]
        held += [g for g in self.shell.ghosts if g.until > self.now]
        for p in held:
            for u, mb in zip(p.gpus, p.shares, strict=True):
                used[int(u.split("-")[1])] += mb
        return used

    def gone(self, mid: str, linger: float) -> None:
        """The process exits; the driver frees its memory `linger` seconds later (well
        within the core's 10 s settle bound, as real drivers do)."""
        proc = self.shell.procs.pop(mid)
        if linger > 0:
            self.shell.ghosts.append(Ghost(proc.gpus, proc.shares, self.now + linger))

    # -- clients -----------------------------------------------------------------------------

    @rule(
        model=st.sampled_from([*MODEL_IDS, "no-such-model"]),
        priority=st.integers(0, 2),
        exclusive=st.sampled_from([False, False, False, True]),
        ttl=st.sampled_from([5.0, 30.0, 120.0]),
        deadline=st.sampled_from([None, None, 2.0, 30.0, 300.0]),
    )
    def request(
        self, model: str, priority: int, exclusive: bool, ttl: float, deadline: float | None
    ) -> None:
        rid = self.new_id()
        self.shell.pending[rid] = Pending(model, priority, exclusive, self.n)
        out = self.sched.request(
            rid,
            model,
            now=self.now,
            client="prop",
            priority=priority,
            ttl_s=ttl,
            exclusive=exclusive,
            deadline=None if deadline is None else self.now + deadline,
        )
        self.apply(out)
        if model not in self.registry:
            assert any(isinstance(d, Rejected) and d.code is RejectCode.NOT_FOUND for d in out)

    @precondition(lambda self: bool(self.shell.leases))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        lid = data.draw(st.sampled_from(sorted(self.shell.leases)))
        self.apply(self.sched.release(lid, now=self.now))
        assert lid not in self.shell.leases

    @precondition(lambda self: bool(self.shell.leases))
    @rule(data=st.data(), ttl=st.sampled_from([None, 10.0, 200.0]))
    def renew(self, data: st.DataObject, ttl: float | None) -> None:
        lid = data.draw(st.sampled_from(sorted(self.shell.leases)))
        out = self.sched.renew(lid, now=self.now, ttl_s=ttl)
        self.apply(out)
        assert any(isinstance(d, Renewed) and d.lease_id == lid for d in out)

    @rule(op=st.sampled_from(["renew", "release"]), which=st.sampled_from(["never", "ended"]))
    def stale_lease_op(self, op: str, which: str) -> None:
        """Renew/release of a lease that is gone (or never was) is refused with NOT_FOUND."""
        lid = "never-granted" if which == "never" else "r1"
        if lid in self.shell.leases:
            return
        if op == "renew":
            out = self.sched.renew(lid, now=self.now)
        else:
            out = self.sched.release(lid, now=self.now)
        self.apply(out)
        assert any(
            isinstance(d, LeaseRefused) and d.lease_id == lid and d.code is RejectCode.NOT_FOUND
            for d in out
        )

    @precondition(lambda self: bool(self.shell.pending) or bool(self.shell.leases))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        ids = sorted(self.shell.pending) + sorted(self.shell.leases)
        self.apply(self.sched.cancel(data.draw(st.sampled_from(ids)), now=self.now))

    # -- an administrator ------------------------------------------------------------------------

    @rule(data=st.data(), stale=st.sampled_from([False, False, True]))
    def revoke(self, data: st.DataObject, stale: bool) -> None:
        """A live lease ends as revoked; a gone one is refused with NOT_FOUND."""
        if stale or not self.shell.leases:
            lid = "never-granted" if stale else "r1"
            if lid in self.shell.leases:
                return
            out = self.sched.revoke(lid, "gone", now=self.now)
            self.apply(out)
            assert any(
                isinstance(d, LeaseRefused) and d.lease_id == lid and d.code is RejectCode.NOT_FOUND
                for d in out
            )
            return
        lid = data.draw(st.sampled_from(sorted(self.shell.leases)))
        out = self.sched.revoke(lid, "admin", now=self.now)
        self.apply(out)
        assert any(
            isinstance(d, LeaseEnded)
            and d.lease_id == lid
            and (d.reason is LeaseEndReason.REVOKED or d.reason is LeaseEndReason.EXPIRED)
            for d in out
        )
        assert lid not in self.shell.leases

    @rule(model=st.sampled_from([*MODEL_IDS, "no-such-model"]))
    def unload(self, model: str) -> None:
        """Never stops a leased or loading model (`apply` checks every StopBackend); an idle
        loaded one stops at once, and is no longer kept warm."""
        out = self.sched.unload(model, now=self.now, message="admin")
        self.apply(out)
        view = self.sched.model(model)
        refused = [d for d in out if isinstance(d, LeaseRefused) and d.model_id == model]
        held = sorted(lid for lid, m in self.shell.leases.items() if m == model)
        if view is None:
            assert not refused
            return
        if view.state is ModelState.LOADED and held:
            assert sorted(d.lease_id for d in refused) == held
            assert all(d.reason is RejectReason.MODEL_LEASED for d in refused)
        elif view.state is ModelState.UNLOADING and held:
            raise AssertionError(f"{model} unloading while leased by {held}")
        if any(isinstance(d, StopBackend) and d.reason is StopReason.ADMIN for d in out):
            assert not view.keep_warm

    @rule(model=st.sampled_from([*MODEL_IDS, "no-such-model"]), keep_warm=st.booleans())
    def pin(self, model: str, keep_warm: bool) -> None:
        out = self.sched.pin(model, keep_warm, now=self.now)
        self.apply(out)
        view = self.sched.model(model)
        if model not in self.registry:
            assert any(isinstance(d, PreloadSkipped) for d in out)
        elif view is not None and not view.retired:
            assert view.keep_warm is keep_warm

    # -- time ----------------------------------------------------------------------------------

    @rule(dt=st.sampled_from([0.05, 0.5, 1.0, 3.0, 10.0, 30.0, 200.0]))
    def advance(self, dt: float) -> None:
        self.now += dt
        self.apply(self.sched.tick(self.now))

    @rule()
    def wake(self) -> None:
        """Sleep exactly until the core's next wakeup, as the shell does."""
        due = self.sched.next_wakeup()
        if due is not None:
            assert due > self.now or self.sched.tick(self.now) == [], "wakeup that does nothing"
            self.now = max(self.now, due)
        out = self.sched.tick(self.now)
        self.apply(out)
        after = self.sched.next_wakeup()
        assert after is None or after > self.now, f"next wakeup {after} not after {self.now}"

    # -- the shell answering -------------------------------------------------------------------

    def procs(self, kind: str) -> list[str]:
        return sorted(m for m, p in self.shell.procs.items() if p.kind == kind)

    @precondition(lambda self: bool(self.procs("starting")))
    @rule(
        data=st.data(),
        outcome=st.sampled_from(["ok", "ok", "ok", "measured", "bigger", "fail", "died"]),
        linger=LINGER,
    )
    def answer_start(self, data: st.DataObject, outcome: str, linger: float) -> None:
        mid = data.draw(st.sampled_from(self.procs("starting")))
        proc = self.shell.procs[mid]
        if outcome in ("fail", "died"):
            self.gone(mid, linger)
            if outcome == "fail":
                self.apply(self.sched.load_failed(mid, "exit status 1", now=self.now))
            else:
                self.apply(self.sched.backend_died(mid, "killed by signal 9", now=self.now))
            return
        measured = None
        if outcome != "ok":
            est = REGISTRY[mid].vram_estimate_mb
            measured = est - 200 if outcome == "measured" else est + 900
            n = len(proc.gpus)
            if n:
                proc.shares = tuple(math.ceil(measured / n) for _ in proc.gpus)
        proc.kind = "running"
        self.apply(self.sched.load_succeeded(mid, now=self.now, measured_mb=measured))

    @precondition(lambda self: bool(self.procs("stopping")))
    @rule(data=st.data(), linger=LINGER)
    def answer_stop(self, data: st.DataObject, linger: float) -> None:
        mid = data.draw(st.sampled_from(self.procs("stopping")))
        self.gone(mid, linger)
        self.apply(self.sched.unload_finished(mid, now=self.now))

    @precondition(lambda self: bool(self.procs("running")))
    @rule(data=st.data(), linger=LINGER)
    def crash(self, data: st.DataObject, linger: float) -> None:
        mid = data.draw(st.sampled_from(self.procs("running")))
        self.gone(mid, linger)
        self.apply(self.sched.backend_died(mid, "segfault", now=self.now))

    @rule(model=st.sampled_from(MODEL_IDS), event=st.sampled_from(["ok", "fail", "died", "unl"]))
    def late_event(self, model: str, event: str) -> None:
        """An event the shell has no business sending now must change nothing."""
        proc = self.shell.procs.get(model)
        if event in ("ok", "fail") and (proc is None or proc.kind != "starting"):
            out = (
                self.sched.load_succeeded(model, now=self.now, measured_mb=1)
                if event == "ok"
                else self.sched.load_failed(model, "late", now=self.now)
            )
        elif event == "died" and proc is None:
            out = self.sched.backend_died(model, "late", now=self.now)
        elif event == "unl" and (proc is None or proc.kind != "stopping"):
            out = self.sched.unload_finished(model, now=self.now)
        else:
            return
        assert out == [], f"late {event} for {model} produced {out}"

    def readings(self, state: GpuState) -> list[GpuSnapshot]:
        used = self.memory_in_use()
        return [
            snapshot(i, t, max(0, t - used[i]), at=self.now, state=state)
            for i, t in enumerate(self.totals)
        ]

    @rule(state=st.sampled_from([GpuState.OK, GpuState.OK, GpuState.OK, GpuState.STALE]))
    def probe(self, state: GpuState) -> None:
        self.apply(self.sched.probe(self.readings(state), now=self.now))

    # -- the daemon restarting, and reloading its configuration --------------------------------

    @precondition(lambda self: not self.shell.pending)
    @rule(shift=st.sampled_from([0.0, 0.0, 1000.0, -50.0]))
    def restart(self, shift: float) -> None:
        """snapshot -> JSON -> restore on a clock `shift` seconds away; the shell's processes
        live on (the contract: it answers the restored loads and unloads as before)."""
        saved = json.loads(json.dumps(self.sched.snapshot(), allow_nan=False))
        self.now += shift
        self.shell.ghosts = [
            dataclasses.replace(g, until=g.until + shift) for g in self.shell.ghosts
        ]
        self.sched = Scheduler.restore(
            saved,
            self.profile,
            self.registry,
            self.readings(GpuState.OK),
            now=self.now,
            shift=shift,
            queue_limit=self.queue_limit,
            preload=self.preload,
            tuning=self.tuning,
        )
        if shift == 0.0:
            assert self.sched.snapshot() == saved
        self.may_inherit = True
        self.apply(self.sched.start(self.now))

    @rule(
        name=st.sampled_from(sorted(PROFILES)),
        registry=st.sampled_from(range(len(REGISTRIES))),
        preload=st.lists(st.sampled_from(MODEL_IDS), max_size=2, unique=True),
    )
    def reconfigure(self, name: str, registry: int, preload: list[str]) -> None:
        self.profile, self.registry, self.preload = (
            PROFILES[name],
            REGISTRIES[registry],
            preload,
        )
        self.may_inherit = True
        self.apply(
            self.sched.reconfigure(self.profile, self.registry, now=self.now, preload=preload)
        )

    # -- checks --------------------------------------------------------------------------------

    @invariant()
    def invariants_hold(self) -> None:
        if not hasattr(self, "sched"):
            return
        problems = check_invariants(self.sched) + self.shell.violations
        for i, (total, used) in enumerate(zip(self.totals, self.memory_in_use(), strict=True)):
            if used > total:
                problems.append(f"GPU {i} over-committed: {used} MiB in use of {total}")
        now, before = self.sched.inherited, self.inherited
        if now is not None and not self.may_inherit:
            if before is None:
                problems.append(f"inherited ceilings {now} appeared without a reconfigure")
            elif now.vram_mb > before.vram_mb or now.models > before.models:
                problems.append(f"inherited ceilings went up: {before} -> {now}")
            elif any(mb > before.gpu_mb.get(u, -1) for u, mb in now.gpu_mb.items()):
                problems.append(f"inherited GPU ceilings went up: {before} -> {now}")
            elif now.heavy is not None and (before.heavy is None or now.heavy > before.heavy):
                problems.append(f"inherited heavy ceiling went up: {before} -> {now}")
        self.inherited, self.may_inherit = now, False
        assert not problems, "\n".join(problems)

    def teardown(self) -> None:
        if not hasattr(self, "sched"):
            return
        # Everyone lets go, the shell answers everything, time passes: nothing may be stuck.
        for _ in range(200):
            for lid in sorted(self.shell.leases):
                self.apply(self.sched.release(lid, now=self.now))
            for mid in self.procs("starting"):
                self.shell.procs[mid].kind = "running"
                self.apply(self.sched.load_succeeded(mid, now=self.now))
            for mid in self.procs("stopping"):
                del self.shell.procs[mid]
                self.apply(self.sched.unload_finished(mid, now=self.now))
            self.probe(GpuState.OK)
            self.now += 20.0
            self.apply(self.sched.tick(self.now))
            problems = check_invariants(self.sched) + self.shell.violations
            assert not problems, "\n".join(problems)
            if not (self.shell.pending or self.shell.leases or self.procs("starting")):
                break
        assert not self.shell.pending, f"requests never granted or refused: {self.shell.pending}"
        assert not self.sched.queue()


SchedulerMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSchedulerProperties = SchedulerMachine.TestCase


# -- patience, alone: its bound is kept whatever is leased ---------------------------------------


@given(
    big=st.lists(st.integers(6000, 9000), min_size=1, max_size=2),
    small=st.lists(st.integers(1000, 3000), min_size=1, max_size=3),
    extra=st.floats(0.01, 1.0),
    release_small=st.booleans(),
    patience=st.sampled_from([5.0, 30.0]),
    deadline=st.sampled_from([None, 20.0, 100.0]),
)
@settings(max_examples=150, deadline=None)
def test_a_patient_request_evicts_by_its_bound_if_nothing_cheaper_came(
    big: list[int],
    small: list[int],
    extra: float,
    release_small: bool,
    patience: float,
    deadline: float | None,
) -> None:
    """Idle big models and leased small ones on one GPU, and a request that needs room: either
    it evicts at once, or it waits patiently no longer than `patience_max_s` (and its
    deadline), and, with the leases still held, evicts when its patience ends."""
    sizes = [*big, *small]
    prof = dataclasses.replace(BUILTIN_PROFILES["balanced_24gb"], max_concurrent_models=6)
    usable = min(prof.max_vram_mb, 24576 - prof.headroom_mb)
    assume(sum(sizes) < usable)
    # Evicting any one of them makes room.
    newcomer = usable - sum(sizes) + max(1, int(extra * min(small)))
    models = {f"m{i}": _model(f"m{i}", mb) for i, mb in enumerate(sizes)}
    models["new"] = _model("new", newcomer)
    s = Scheduler(
        prof,
        models,
        [snapshot(0, 24576, at=0.0)],
        tuning=Tuning(patience_max_s=patience, patience_horizon_requests=1000),
    )
    s.start(0.0)
    now = 0.0
    for i in range(len(sizes)):
        now += 1.0
        out = s.request(f"r{i}", f"m{i}", now=now, ttl_s=1000.0)
        if any(isinstance(d, StartBackend) for d in out):
            s.load_succeeded(f"m{i}", now=now)
    for i in range(len(sizes)):
        if i < len(big) or release_small:
            s.release(f"r{i}", now=now)
    now += 1.0
    out = s.request("x", "new", now=now, deadline=None if deadline is None else now + deadline)
    assert check_invariants(s) == []
    entry = next((q for q in s.queue() if q.request_id == "x"), None)
    if entry is None or entry.patient_until is None:
        event("evicted at once")
        assert any(isinstance(d, StopBackend) for d in out)
        return
    event("patient")
    # Patient: no eviction yet, and the bound holds.
    assert not any(isinstance(d, StopBackend) for d in out)
    assert entry.patient_until - now <= patience + 1e-9
    if entry.deadline is not None:
        assert entry.patient_until <= entry.deadline
    due = s.next_wakeup()
    assert due is not None and due <= entry.patient_until
    out = s.tick(entry.patient_until)
    assert any(isinstance(d, StopBackend) and d.reason is StopReason.EVICTED for d in out), out
    assert check_invariants(s) == []
