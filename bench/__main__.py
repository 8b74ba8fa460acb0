"""`python -m bench` (or `make bench`): replay workloads against gpulet's scheduler core and
emulations of its peers, then measure the RPC hot path against a bare gRPC echo server.
`--quick` for a run under 30 s."""

from __future__ import annotations

import argparse
import sys
import time

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short traces (< 30 s in all)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--no-rpc", action="store_true", help="skip the RPC hot path")
    group.add_argument("--rpc-only", action="store_true", help="only the RPC hot path")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if not args.rpc_only:
        _replay_all(args.quick)
    if not args.no_rpc:
        from bench.rpc import format_rpc, run_rpc

        print(format_rpc(run_rpc(quick=args.quick)) + "\n", flush=True)
    print(f"(bench finished in {time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
