"""`python -m bench.decisions --out FILE [--quick]`: every decision gpulet's core makes on the
bench's traces, as stable text, so that a refactor of the core can be shown to change no policy.

It replays every workload, machine and multi-tenant-day seed the bench uses, through the real
core only (the built-in profile and the uncapped what-if), and writes one line per event fed to
the core and one per decision it returned, in order. Each decision is projected onto the fields
the decision types had before decisions learnt to carry what their consumers need (Granted's
client/granted_at/ttl_s/endpoint, Renewed's ttl_s), so the same file comes out of the core
before and after such a change: `cmp` of the two files is the proof.

This module must run unchanged against older trees too (that is how the "before" file is
made), so it uses only what the bench has long had: bench.replay, bench.sim and the decision
types.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, assert_never

from bench.replay import GPULET, UNCAPPED, contenders, day_seeds, workloads
from bench.sim import Build, Simulator
from bench.workloads import Workload
from gpuletd.probe.types import GpuSnapshot, GpuState, MigMode
from gpuletd.profiles import BUILTIN_PROFILES
from gpuletd.registry import Backend, Model
from gpuletd.scheduler import Scheduler, Tuning
from gpuletd.scheduler.decisions import (
    Decision,
    Granted,
    LeaseEnded,
    LeaseRefused,
    Loading,
    ModelStateChanged,
    PreloadSkipped,
    Queued,
    Rejected,
    Renewed,
    StartBackend,
    StopBackend,
)

if TYPE_CHECKING:
    from gpuletd.scheduler.events import PolicyEvents

__all__ = ["main", "project", "record", "scripted"]

# The real core under these contenders' labels; the peers are not what a core refactor changes.
_CORE_LABELS = (GPULET, UNCAPPED)


def _ids(uuids: Sequence[str]) -> str:
    return "[" + ",".join(uuids) + "]"


def project(d: Decision) -> str:
    """One decision as a line, restricted to the fields every version of the core has."""
    match d:
        case Queued():
            return f"Queued {d.request_id} {d.model_id} pos={d.position}"
        case Loading():
            return f"Loading {d.request_id} {d.model_id} {_ids(d.gpu_uuids)}"
        case StartBackend():
            shares = ",".join(str(mb) for mb in d.gpu_reservations_mb)
            return (
                f"StartBackend {d.model_id} {_ids(d.gpu_uuids)} {d.reservation_mb} MiB [{shares}]"
            )
        case StopBackend():
            return f"StopBackend {d.model_id} {_ids(d.gpu_uuids)} {d.reason.value} {d.message!r}"
        case Granted():
            # Only the fields Granted had before it carried client/granted_at/ttl_s/endpoint.
            return (
                f"Granted {d.lease_id} {d.model_id} {_ids(d.gpu_uuids)} "
                f"expires={d.expires_at!r} exclusive={d.exclusive}"
            )
        case Renewed():
            return f"Renewed {d.lease_id} {d.model_id} expires={d.expires_at!r}"
        case Rejected():
            return f"Rejected {d.request_id} {d.code.value} {d.reason.value} {d.message!r}"
        case LeaseRefused():
            return f"LeaseRefused {d.lease_id} {d.code.value} {d.reason.value} {d.message!r}"
        case LeaseEnded():
            return (
                f"LeaseEnded {d.lease_id} {d.model_id} {d.reason.value} {d.message!r} "
                f"client={d.client!r} {_ids(d.gpu_uuids)}"
            )
        case ModelStateChanged():
            return (
                f"ModelStateChanged {d.model_id} {d.state.value} {_ids(d.gpu_uuids)} {d.message!r}"
            )
        case PreloadSkipped():
            return f"PreloadSkipped {d.model_id} {d.message!r}"
        case _:
            assert_never(d)


def _readings(readings: Sequence[GpuSnapshot]) -> str:
    return (
        "["
        + ", ".join(
            f"{r.uuid} {r.state.value} total={r.total_mb} free={r.free_mb} at={r.read_at!r}"
            for r in readings
        )
        + "]"
    )


class _Recorder:
    """The core behind the bench's event interface, writing down each event and its answer."""

    def __init__(self, inner: PolicyEvents, lines: list[str], run: str) -> None:
        self._inner = inner
        self._lines = lines
        self._run = run
        self._n = 0

    def _log(self, event: str, out: list[Decision]) -> list[Decision]:
        self._n += 1
        self._lines.append(f"{self._run} #{self._n} {event}")
        self._lines.extend("  " + project(d) for d in out)
        return out

    def request(
        self,
        request_id: str,
        model_id: str,
        *,
        now: float,
        priority: int = 0,
        ttl_s: float | None = None,
    ) -> list[Decision]:
        out = self._inner.request(request_id, model_id, now=now, priority=priority, ttl_s=ttl_s)
        event = f"request {request_id} {model_id} now={now!r} prio={priority} ttl={ttl_s!r}"
        return self._log(event, out)

    def release(self, lease_id: str, *, now: float) -> list[Decision]:
        return self._log(f"release {lease_id} now={now!r}", self._inner.release(lease_id, now=now))

    def load_succeeded(
        self, model_id: str, *, now: float, measured_mb: int | None = None
    ) -> list[Decision]:
        out = self._inner.load_succeeded(model_id, now=now, measured_mb=measured_mb)
        return self._log(f"load_succeeded {model_id} now={now!r} measured={measured_mb}", out)

    def load_failed(self, model_id: str, reason: str, *, now: float) -> list[Decision]:
        out = self._inner.load_failed(model_id, reason, now=now)
        return self._log(f"load_failed {model_id} {reason!r} now={now!r}", out)

    def unload_finished(self, model_id: str, *, now: float) -> list[Decision]:
        out = self._inner.unload_finished(model_id, now=now)
        return self._log(f"unload_finished {model_id} now={now!r}", out)

    def probe(self, readings: Sequence[GpuSnapshot], *, now: float) -> list[Decision]:
        out = self._inner.probe(readings, now=now)
        return self._log(f"probe {_readings(readings)} now={now!r}", out)

    def tick(self, now: float) -> list[Decision]:
        return self._log(f"tick now={now!r}", self._inner.tick(now))

    def next_wakeup(self) -> float | None:
        return self._inner.next_wakeup()


def _recording(inner: Build, lines: list[str], run: str) -> Build:
    def build(gpus: list[GpuSnapshot]) -> tuple[PolicyEvents, Callable[[], list[str]] | None]:
        core, _check = inner(gpus)
        # No invariant check: it cannot change a decision, and it is slow.
        return _Recorder(core, lines, run), None

    return build


def _traces(quick: bool) -> list[Workload]:
    """Every trace the bench replays, each once (the first day seed is also in the tables)."""
    seen: list[Workload] = []
    for w in [*workloads(quick=quick), *day_seeds(quick=quick)]:
        if w not in seen:
            seen.append(w)
    return seen


def record(*, quick: bool) -> list[str]:
    lines: list[str] = []
    for i, w in enumerate(_traces(quick)):
        for machine in w.machines:
            for c in contenders():
                if c.label not in _CORE_LABELS:
                    continue
                run = f"{w.name}#{i} {machine.label} {c.label!r}"
                lines.append(f"== {run}: {len(w.requests)} requests")
                build = _recording(c.build(w, machine), lines, run)
                Simulator(w, machine, build, label=c.label).run()
    return lines


# -- scripted shells ---------------------------------------------------------------------------
# The traces never renew, cancel, crash, preload, share exclusively or miss a deadline; these
# seeded random shells do all of that, on every built-in profile, with the pre-change API.

_SETUPS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("constrained_16gb", (16384,)),
    ("balanced_24gb", (24576,)),
    ("multi_gpu_2x16gb", (16384, 16384)),
    ("generous_96gb", (98304,)),
    ("development", ()),
    ("development", (12288,)),
)


def _model(mid: str, mb: int, backend: Backend, gpus: tuple[str, ...] = ()) -> Model:
    return Model(
        id=mid,
        name=mid,
        backend=backend,
        quantization="fp8",
        vram_estimate_mb=mb,
        role_priority={"caption": 1},
        gpus=gpus,
    )


_REGISTRY = {
    m.id: m
    for m in (
        _model("qwen3-vl", 10600, Backend.PROCESS),
        _model("qwen25vl", 6400, Backend.RESERVATION),
        _model("florence-2-large", 3500, Backend.PROCESS),
        _model("siglip", 2600, Backend.RESERVATION),
        _model("gpt-oss-20b", 13800, Backend.PROCESS),
        _model("tiny-a", 800, Backend.RESERVATION),
        _model("tiny-b", 1200, Backend.PROCESS),
        _model("mid-c", 5000, Backend.RESERVATION),
        _model("pinned-1", 3000, Backend.RESERVATION, gpus=("1",)),
    )
}
_IDS = sorted(_REGISTRY)


def _gpu(i: int, total: int, free: int, at: float, state: GpuState) -> GpuSnapshot:
    return GpuSnapshot(
        index=i,
        uuid=f"GPU-{i}",
        name="Scripted GPU",
        pci_bus_id=f"0000:0{i}:00.0",
        total_mb=total,
        free_mb=free,
        used_mb=total - free,
        reserved_mb=0,
        compute_capability=(8, 9),
        mig_mode=MigMode.DISABLED,
        state=state,
        read_at=at,
    )


class _Shell:
    """A random client population and backend supervisor around one core."""

    def __init__(self, seed: int, lines: list[str]) -> None:
        self.rng = random.Random(seed)
        self.lines = lines
        self.label = f"script#{seed}"
        self.n_events = 0
        self.now = 0.0
        self.n = 0
        name, self.totals = self.rng.choice(_SETUPS)
        self.foreign = self.rng.choice([0, 0, 900]) if self.totals else 0
        preload = self.rng.sample(_IDS, self.rng.randint(0, 3))
        queue_limit = self.rng.choice([4, 256])
        bypass = self.rng.choice([0, 1, 3])
        lines.append(
            f"== {self.label}: {name} {self.totals} foreign={self.foreign} preload={preload} "
            f"queue_limit={queue_limit} bypass={bypass}"
        )
        # model -> [kind, gpus, shares]; kind: starting | running | stopping
        self.procs: dict[str, tuple[str, tuple[str, ...], tuple[int, ...]]] = {}
        self.ghosts: list[tuple[tuple[str, ...], tuple[int, ...], float]] = []
        self.pending: set[str] = set()
        self.leases: dict[str, str] = {}
        self.core = Scheduler(
            BUILTIN_PROFILES[name],
            _REGISTRY,
            [self._reading(i, GpuState.OK) for i in range(len(self.totals))],
            queue_limit=queue_limit,
            preload=preload,
            tuning=Tuning(bypass_limit=bypass, aging_interval_s=20.0),
        )
        self.log("start", self.core.start(self.now))

    def log(self, event: str, out: list[Decision]) -> None:
        self.n_events += 1
        self.lines.append(f"{self.label} #{self.n_events} {event}")
        self.lines.extend("  " + project(d) for d in out)
        for d in out:
            match d:
                case StartBackend():
                    self.procs[d.model_id] = ("starting", d.gpu_uuids, d.gpu_reservations_mb)
                case StopBackend():
                    if d.model_id in self.procs:
                        _kind, gpus, shares = self.procs[d.model_id]
                        self.procs[d.model_id] = ("stopping", gpus, shares)
                case Granted():
                    self.pending.discard(d.lease_id)
                    self.leases[d.lease_id] = d.model_id
                case Rejected():
                    self.pending.discard(d.request_id)
                case LeaseEnded():
                    self.leases.pop(d.lease_id, None)
                case (
                    Queued()
                    | Loading()
                    | Renewed()
                    | LeaseRefused()
                    | ModelStateChanged()
                    | PreloadSkipped()
                ):
                    pass
                case _:
                    assert_never(d)

    def _reading(self, i: int, state: GpuState) -> GpuSnapshot:
        used = self.foreign
        held = [(g, s) for _k, g, s in self.procs.values()]
        held += [(g, s) for g, s, until in self.ghosts if until > self.now]
        for gpus, shares in held:
            used += sum(mb for u, mb in zip(gpus, shares, strict=True) if u == f"GPU-{i}")
        total = self.totals[i]
        return _gpu(i, total, max(0, total - used), self.now, state)

    def _gone(self, mid: str) -> None:
        _kind, gpus, shares = self.procs.pop(mid)
        linger = self.rng.choice([0.0, 0.0, 0.5, 3.0])
        if linger > 0:
            self.ghosts.append((gpus, shares, self.now + linger))

    def _procs(self, kind: str) -> list[str]:
        return sorted(m for m, p in self.procs.items() if p[0] == kind)

    def step(self) -> None:
        rng, core, now = self.rng, self.core, self.now
        kinds = ["request"] * 5 + ["advance", "advance", "wake", "wake", "probe", "probe"]
        kinds += ["stale", "late"]
        if self.leases:
            kinds += ["release", "release", "renew"]
        if self.pending or self.leases:
            kinds.append("cancel")
        kinds += ["answer_start"] * 3 if self._procs("starting") else []
        kinds += ["answer_stop"] * 3 if self._procs("stopping") else []
        kinds += ["crash"] if self._procs("running") else []
        kind = rng.choice(kinds)
        if kind == "request":
            self.n += 1
            rid = f"r{self.n}"
            mid = rng.choice([*_IDS, "no-such-model"])
            prio = rng.randint(0, 2)
            excl = rng.random() < 0.25
            ttl = rng.choice([5.0, 30.0, 120.0])
            dl = rng.choice([None, None, 2.0, 30.0, 300.0])
            deadline = None if dl is None else now + dl
            self.pending.add(rid)
            out = core.request(
                rid,
                mid,
                now=now,
                client="script",
                priority=prio,
                ttl_s=ttl,
                exclusive=excl,
                deadline=deadline,
                secret=f"s-{rid}",
            )
            self.log(f"request {rid} {mid} p={prio} x={excl} ttl={ttl} dl={deadline!r}", out)
        elif kind == "release":
            lid = rng.choice(sorted(self.leases))
            self.log(f"release {lid} now={now!r}", core.release(lid, now=now))
        elif kind == "renew":
            lid = rng.choice(sorted(self.leases))
            ttl_s = rng.choice([None, 10.0, 200.0])
            self.log(f"renew {lid} ttl={ttl_s} now={now!r}", core.renew(lid, now=now, ttl_s=ttl_s))
        elif kind == "stale":
            lid = rng.choice(["never-granted", "r1", "r2"])
            if lid not in self.leases:
                self.log(f"renew {lid} now={now!r}", core.renew(lid, now=now))
                self.log(f"release {lid} now={now!r}", core.release(lid, now=now))
        elif kind == "cancel":
            rid = rng.choice(sorted(self.pending) + sorted(self.leases))
            self.log(f"cancel {rid} now={now!r}", core.cancel(rid, now=now))
        elif kind == "advance":
            self.now += rng.choice([0.05, 0.5, 1.0, 3.0, 10.0, 30.0, 200.0])
            self.log(f"tick now={self.now!r}", core.tick(self.now))
        elif kind == "wake":
            due = core.next_wakeup()
            self.now = self.now if due is None else max(self.now, due)
            self.log(f"tick (wake {due!r}) now={self.now!r}", core.tick(self.now))
        elif kind == "probe":
            state = rng.choice([GpuState.OK, GpuState.OK, GpuState.OK, GpuState.STALE])
            readings = [self._reading(i, state) for i in range(len(self.totals))]
            self.log(f"probe {_readings(readings)}", core.probe(readings, now=now))
        elif kind == "answer_start":
            self._answer_start(rng.choice(self._procs("starting")))
        elif kind == "answer_stop":
            mid = rng.choice(self._procs("stopping"))
            self._gone(mid)
            self.log(f"unload_finished {mid} now={now!r}", core.unload_finished(mid, now=now))
        elif kind == "crash":
            mid = rng.choice(self._procs("running"))
            self._gone(mid)
            self.log(f"backend_died {mid} now={now!r}", core.backend_died(mid, "segv", now=now))
        else:
            mid = rng.choice(_IDS)
            event = rng.choice(["ok", "fail", "died", "unl"])
            self.log(f"late {event} {mid} now={now!r}", self._late(mid, event))

    def _answer_start(self, mid: str) -> None:
        core, now = self.core, self.now
        outcome = self.rng.choice(["ok", "ok", "ok", "measured", "bigger", "fail", "died"])
        if outcome in ("fail", "died"):
            self._gone(mid)
            if outcome == "fail":
                out = core.load_failed(mid, "exit status 1", now=now)
            else:
                out = core.backend_died(mid, "killed", now=now)
            self.log(f"{outcome} {mid} now={now!r}", out)
            return
        _kind, gpus, shares = self.procs[mid]
        measured = None
        if outcome != "ok":
            est = _REGISTRY[mid].vram_estimate_mb
            measured = est - 200 if outcome == "measured" else est + 900
            if gpus:
                shares = tuple(-(-measured // len(gpus)) for _ in gpus)
        self.procs[mid] = ("running", gpus, shares)
        out = core.load_succeeded(mid, now=now, measured_mb=measured)
        self.log(f"load_succeeded {mid} measured={measured} now={now!r}", out)

    def _late(self, mid: str, event: str) -> list[Decision]:
        proc = self.procs.get(mid)
        core, now = self.core, self.now
        if event in ("ok", "fail") and (proc is None or proc[0] != "starting"):
            if event == "ok":
                return core.load_succeeded(mid, now=now, measured_mb=1)
            return core.load_failed(mid, "late", now=now)
        if event == "died" and proc is None:
            return core.backend_died(mid, "late", now=now)
        if event == "unl" and (proc is None or proc[0] != "stopping"):
            return core.unload_finished(mid, now=now)
        return []

    def finish(self) -> None:
        """Everyone lets go and the shell answers everything, as time passes."""
        for _ in range(50):
            for lid in sorted(self.leases):
                self.log(f"release {lid}", self.core.release(lid, now=self.now))
            for mid in self._procs("starting"):
                _kind, gpus, shares = self.procs[mid]
                self.procs[mid] = ("running", gpus, shares)
                self.log(f"load_succeeded {mid}", self.core.load_succeeded(mid, now=self.now))
            for mid in self._procs("stopping"):
                del self.procs[mid]
                self.log(f"unload_finished {mid}", self.core.unload_finished(mid, now=self.now))
            readings = [self._reading(i, GpuState.OK) for i in range(len(self.totals))]
            self.log("probe", self.core.probe(readings, now=self.now))
            self.now += 20.0
            self.log(f"tick now={self.now!r}", self.core.tick(self.now))
            if not (self.pending or self.leases or self._procs("starting")):
                break


def scripted(*, scripts: int, steps: int) -> list[str]:
    lines: list[str] = []
    for seed in range(scripts):
        shell = _Shell(seed, lines)
        for _ in range(steps):
            shell.step()
        shell.finish()
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.decisions", description=__doc__)
    parser.add_argument("--out", required=True, type=Path, help="file to write the lines to")
    parser.add_argument("--quick", action="store_true", help="the short traces of --quick")
    parser.add_argument(
        "--scripts", type=int, default=600, help="seeded random shells to add (default 600)"
    )
    parser.add_argument("--steps", type=int, default=80, help="events per random shell")
    args = parser.parse_args(argv)
    lines = record(quick=args.quick)
    lines += scripted(scripts=args.scripts // (10 if args.quick else 1), steps=args.steps)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(lines)} lines written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
