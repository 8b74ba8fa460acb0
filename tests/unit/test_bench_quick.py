"""The quick trace replay of `bench/`: properties of its results a user relies on when reading
the tables. Nothing here depends on how fast the machine is."""

from __future__ import annotations

import dataclasses

import pytest

from bench.replay import BOUND, GPULET, contenders, replay, workloads
from bench.sim import RunResult
from bench.workloads import Workload


def _quick(name: str) -> Workload:
    return next(w for w in workloads(quick=True) if w.name == name)


@pytest.fixture(scope="module")
def cyclic() -> dict[str, RunResult]:
    w = _quick("cyclic")
    return {r.policy: r for r in replay(w, w.machines[0])}


def test_every_policy_accounts_for_every_request(cyclic: dict[str, RunResult]) -> None:
    assert set(cyclic) == {c.label for c in contenders()}
    for r in cyclic.values():
        assert not r.granted_ids & r.refused_ids, f"{r.policy}: granted and refused"
        assert r.lost_ids <= r.granted_ids, r.policy
        assert r.granted + r.refused + r.unserved == r.requests, r.policy
        # Every lease ended one way or the other before the replay stopped.
        assert r.granted == r.released + r.lost, r.policy
        assert r.anomaly_count == 0, (r.policy, r.anomalies)
        assert r.loads >= 1 and r.load_s > 0, r.policy


def test_gpulet_serves_everything_without_overcommit(cyclic: dict[str, RunResult]) -> None:
    g = cyclic[GPULET]
    # check_invariants ran after every event: anomalies would include its violations.
    assert (g.overcommit, g.oom, g.anomaly_count) == (0, 0, 0)
    assert (g.refused, g.lost, g.unserved) == (0, 0, 0)


def test_gpulet_wastes_no_more_load_time_than_lru_on_the_cyclic_scan(
    cyclic: dict[str, RunResult],
) -> None:
    lru = cyclic["Ray-Serve-like"]
    # Ray-Serve-like is plain LRU here (3 models per GPU, all fit): it misses every time.
    assert lru.loads == lru.requests
    assert cyclic[GPULET].load_s <= lru.load_s
    # The offline bound needs fewer loads than LRU on the case that breaks LRU.
    assert cyclic[BOUND].loads < lru.loads


def test_the_referee_counts_a_policy_that_places_more_than_fits() -> None:
    w = _quick("seed003")
    by = {r.policy: r for r in replay(w, w.machines[0])}
    ray = by["Ray-Serve-like"]
    # No memory check: SDXL next to the 14B LLM does not fit 16 GB, and it shows.
    assert ray.oom > 0 and ray.overcommit >= ray.oom
    assert ray.refused >= ray.oom
    assert (by[GPULET].oom, by[GPULET].overcommit) == (0, 0)


def test_the_replay_is_deterministic() -> None:
    w = _quick("seed003")
    first = replay(w, w.machines[0])
    again = replay(w, w.machines[0])
    assert [dataclasses.replace(r, wall_s=0.0) for r in first] == [
        dataclasses.replace(r, wall_s=0.0) for r in again
    ]
