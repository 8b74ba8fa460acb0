"""`python -m bench`: replay workloads against gpulet's scheduler core and emulations of its
peers, measure the core at scale, replay the live traces on the real gpuletd and the real
vramd, then measure the RPC hot path against a bare gRPC echo server. `--quick` for a run of a
few seconds (pure-core replay and RPC only); `make bench` writes everything to
docs/benchmarks.md (`--write`)."""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from bench.replay import contenders, day_seeds, measure_speed, replay, workloads
from bench.report import FOOTNOTES, format_seed_summary, format_speed, format_table
from bench.sim import RunResult
from bench.workloads import Machine, Workload

_LEGEND = """\
Trace replay. load s: GPU seconds spent loading models (the headline), also as a ratio to
gpulet's and to the lower bound's in the same run. wait / p95: request -> grant, mean and
95th percentile. refused: refused or failed; lost: leases cut short by an eviction;
unserved: neither granted nor refused by the end. OOM/over: loads that failed out of memory /
placements that put more on a GPU than it has. stop idle/evict: backends stopped for
idleness / to make room.
"""


def _replay_all(quick: bool) -> None:
    print(_LEGEND, flush=True)
    largest: tuple[int, Workload, Machine] | None = None
    for w in workloads(quick=quick):
        for machine in w.machines:
            print(format_table(w, machine, replay(w, machine)) + "\n", flush=True)
            if largest is None or len(w.requests) > largest[0]:
                largest = (len(w.requests), w, machine)
    print(FOOTNOTES + "\n", flush=True)
    seeds = day_seeds(quick=quick)
    runs: dict[str, list[list[RunResult]]] = {}
    for w in seeds:
        for machine in w.machines:
            runs.setdefault(machine.label, []).append(replay(w, machine))
    policies = [c.label for c in contenders()]
    title = f"multi-tenant day on {len(seeds)} seeds: load time / gpulet's, median (min-max)"
    print(format_seed_summary(title, runs, policies) + "\n", flush=True)
    if largest is not None:
        _n, w, machine = largest
        print(format_speed(measure_speed(w, machine)) + "\n", flush=True)


def _scale() -> None:
    from bench.core_scale import format_scale, measure_ladder

    print(format_scale(measure_ladder()) + "\n", flush=True)


class _Tee(io.TextIOBase):
    """Prints as it goes and keeps a copy, so that a long run shows progress and can still be
    written to a file at the end."""

    def __init__(self, out: io.TextIOBase) -> None:
        self._out = out
        self.copy = io.StringIO()

    def write(self, s: str) -> int:
        self._out.write(s)
        self.copy.write(s)
        return len(s)

    def flush(self) -> None:
        self._out.flush()


@contextlib.contextmanager
def _section(sections: list[tuple[str, str]], title: str) -> Iterator[None]:
    tee = _Tee(sys.stdout)  # type: ignore[arg-type]
    with contextlib.redirect_stdout(tee):
        yield
    sections.append((title, tee.copy.getvalue()))


_DOC_HEAD = """\
# Benchmarks

Written by `make bench` (`python -m bench --write docs/benchmarks.md`); do not edit by hand.
How each benchmark works is in its module's docstring under `bench/`; the figures below are
one run on the machine named at the end, whose other load moves them: read the ratios, which
are measured against baselines in the same run.

- **Trace replay (pure core)**: the scheduler core, unchanged, replayed in simulated time
  (`bench/sim.py`) against emulations of its peers (`bench/policies/`) and an offline bound.
- **Core at scale**: events per second the core handles with a long queue
  (`bench/core_scale.py`).
- **Real-daemon replay** (`bench/live/`): gpuletd as a subprocess with process backends, and
  the real vramd 0.3.9 installed unmodified from PyPI into `.bench/vramd-venv`, on the same
  traces, one after the other. What is faked for vramd: a `pynvml` module put first on its
  `PYTHONPATH` (`bench/live/fakenvml/pynvml.py`) reporting one 16384 MiB GPU whose used memory
  is the sum of what its live workers hold (each writes its model's size to a file named by
  its pid when its load finishes and removes it on unload), with those workers as the GPU's
  compute processes; nothing else. gpuletd runs on its own simulated GPU of the same size.
  Both may fill 16000 MiB: vramd keeps its default 384 MiB safety free, gpulet's profile sets
  `headroom_mb = 384` and `max_vram_mb = 16000`, with a model slot for every model. vramd
  runs with `VRAMD_REAP_ON_START=0`, `VRAMD_MAX_QUEUE_DEPTH=256` and, for the policy
  comparison, `VRAMD_WORKER_MAX_JOBS=1000000` (its 12-job worker recycling never resets in
  0.3.9, so every later job of a model reloads it); the "as shipped" row keeps the default
  recycling and is run only on traces where some model gets more than 12 requests.
- **RPC hot path**: gpuletd's methods that clients call in a loop against a bare grpc.aio
  echo server in the same run (`bench/rpc.py`).
"""


def _markdown(sections: list[tuple[str, str]], argv: list[str], seconds: float) -> str:
    import os
    import platform

    parts = [_DOC_HEAD]
    for title, text in sections:
        parts.append(f"## {title}\n\n```text\n{text.rstrip()}\n```\n")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    parts.append(
        f"Run: `python -m bench {' '.join(argv)}`, {when}, {seconds:.0f} s, on "
        f"{platform.machine()} with {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}.\n"
    )
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short traces, no live replay")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--no-rpc", action="store_true", help="skip the RPC hot path")
    group.add_argument("--rpc-only", action="store_true", help="only the RPC hot path")
    parser.add_argument("--no-live", action="store_true", help="skip the real-daemon replay")
    parser.add_argument("--no-vramd", action="store_true", help="real-daemon replay: gpulet only")
    parser.add_argument(
        "--write", type=Path, metavar="FILE", help="also write the results as Markdown to FILE"
    )
    raw = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(raw)
    started = time.perf_counter()
    sections: list[tuple[str, str]] = []
    if not args.rpc_only:
        with _section(sections, "Trace replay (pure core)"):
            _replay_all(args.quick)
        if not args.quick:
            with _section(sections, "Core at scale"):
                _scale()
        if not args.quick and not args.no_live:
            from bench.live.__main__ import run_live

            with _section(sections, "Real-daemon replay"):
                run_live(quick=False, vramd=not args.no_vramd)
    if not args.no_rpc:
        from bench.rpc import format_rpc, run_rpc

        with _section(sections, "RPC hot path"):
            print(format_rpc(run_rpc(quick=args.quick)) + "\n", flush=True)
    seconds = time.perf_counter() - started
    print(f"(bench finished in {seconds:.1f} s)")
    if args.write:
        args.write.write_text(_markdown(sections, raw, seconds))
        print(f"(written to {args.write})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
