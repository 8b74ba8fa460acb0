from __future__ import annotations

import pytest

from gpuletd.probe.simulated import SimulatedGpu, SimulatedProbe, parse_simulated_gpus
from gpuletd.probe.types import GpuProcess


def test_sizes_with_optional_names() -> None:
    assert parse_simulated_gpus("16384, 16384") == [
        SimulatedGpu("Simulated GPU", 16384),
        SimulatedGpu("Simulated GPU", 16384),
    ]
    assert parse_simulated_gpus("NVIDIA GeForce RTX 4080:16384,24576") == [
        SimulatedGpu("NVIDIA GeForce RTX 4080", 16384),
        SimulatedGpu("Simulated GPU", 24576),
    ]


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("16GB", "'16GB' is not a whole number"),
        ("16384,,1", "empty entry"),
        ("0", "must be > 0"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        parse_simulated_gpus(spec)


def test_free_memory_follows_what_the_daemon_placed() -> None:
    probe = SimulatedProbe(parse_simulated_gpus("16384,16384"))
    first = probe.open()
    assert [g.free_mb for g in first] == [16384, 16384]
    assert len({g.uuid for g in first}) == 2
    probe.set_used({first[1].uuid: 6400}, {first[1].uuid: (GpuProcess(4242, 6400),)})
    again = probe.read()
    assert [g.free_mb for g in again] == [16384, 16384 - 6400]
    assert probe.processes(first[1].uuid) == (GpuProcess(4242, 6400),)
    assert probe.processes(first[0].uuid) == ()
    assert [g.uuid for g in again] == [g.uuid for g in first]  # stable identity


def test_uuids_are_stable_across_restarts() -> None:
    a = SimulatedProbe(parse_simulated_gpus("16384")).read()[0].uuid
    b = SimulatedProbe(parse_simulated_gpus("16384")).read()[0].uuid
    assert a == b and a.startswith("GPU-")
