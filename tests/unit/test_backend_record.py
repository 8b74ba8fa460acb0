"""BackendRecord: what the daemon persists to find a backend again."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gpuletd.backends import BackendRecord

RECORD = BackendRecord(
    model_id="org/model:7b",
    pid=4242,
    start_time=123456,
    pgid=4242,
    boot_id="ffa3830d-36b7-46de-ad6c-8e22b5ee9e2d",
    port=38001,
    gpu_uuids=("GPU-1", "GPU-2"),
    endpoint="http://127.0.0.1:38001/v1",
    health_url="http://127.0.0.1:38001/health",
    command=("vllm", "serve", "org/model", "--hf-overrides", '{"n": 1}'),
    log_path=Path("/var/log/gpulet/org_model_7b.log"),
    log_offset=1024,
    spawned_at=1_790_000_000.25,
    healthy=True,
    members=((4242, 123456), (4250, 123470)),
)


def test_a_record_survives_a_json_round_trip() -> None:
    text = json.dumps(RECORD.to_dict())

    assert BackendRecord.from_dict(json.loads(text)) == RECORD


def test_a_record_without_a_log_file_round_trips() -> None:
    record = replace(RECORD, log_path=None, members=())

    assert BackendRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record


def test_unknown_keys_are_ignored() -> None:
    data = {**RECORD.to_dict(), "written_by": "a newer gpuletd"}

    assert BackendRecord.from_dict(data) == RECORD


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("pid", "4242", "'pid' must be an integer >= 1"),
        ("pid", 0, "'pid' must be an integer >= 1"),
        ("start_time", True, "'start_time' must be an integer"),
        ("port", 70000, "'port' must be an integer in 1..65535"),
        ("model_id", "", "'model_id' must be a non-empty string"),
        ("gpu_uuids", "GPU-1", "'gpu_uuids' must be a list of strings"),
        ("command", ["vllm", 3], "'command' must be a list of strings"),
        ("spawned_at", float("nan"), "'spawned_at' must be a finite number"),
        ("healthy", "yes", "'healthy' must be true or false"),
        ("members", [[4242]], "'members' must be a list of [pid, start_time] pairs"),
        ("members", [[4242, -1]], "'members' must be a list of [pid, start_time] pairs"),
        ("log_path", 7, "'log_path' must be a non-empty string"),
    ],
)
def test_a_bad_field_is_named(field: str, value: Any, expected: str) -> None:
    data = {**RECORD.to_dict(), field: value}

    with pytest.raises(ValueError, match=expected.replace("[", r"\[").replace(".", r"\.")):
        BackendRecord.from_dict(data)


def test_a_missing_field_is_named() -> None:
    data = RECORD.to_dict()
    del data["boot_id"]

    with pytest.raises(ValueError, match="field 'boot_id' is missing"):
        BackendRecord.from_dict(data)


def test_a_record_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(ValueError, match="must be a mapping"):
        BackendRecord.from_dict([1, 2])  # type: ignore[arg-type]
