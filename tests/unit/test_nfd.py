"""The NFD feature file (gpulet/nfd.py) for registries and nodes a real daemon rarely shows:
more labels than NFD's 64 KiB allows, ids that cannot be labels, mixed or unread GPUs."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from gpulet.nfd import MAX_FILE_BYTES, NAMESPACE, facts_from, render, write_atomic

NOW = datetime(2026, 12, 2, 6, 0, 0, tzinfo=UTC)


def labels(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")
    return {k.removeprefix(f"{NAMESPACE}/"): v for k, v in pairs}


def test_a_huge_registry_stays_within_the_size_nfd_reads() -> None:
    models = {f"model-{i:05d}-{'x' * 30}": {f"role{j}": 50 for j in range(8)} for i in range(600)}
    r = render(facts_from("p", [("A100", 81920)], 70000, models), now=NOW, ttl_seconds=600)
    size = len(r.text.encode())
    assert 60000 < size <= MAX_FILE_BYTES
    # The node's own facts come first and survive; the tail says what was dropped.
    got = labels(r.text)
    assert got["profile"] == "p" and got["gpu.count"] == "1" and got["role.role0"]
    assert "more labels left out: NFD ignores a file over 64 KiB" in r.text


def test_ids_that_cannot_be_labels_are_left_out_not_mangled() -> None:
    models = {"good": {"caption": 60}, "bad id": {"caption": 99}, "x" * 70: {"caption": 10}}
    r = render(facts_from("my profile!", [], 0, models), now=NOW, ttl_seconds=600)
    got = labels(r.text)
    # "bad id" has the highest priority, but it cannot be named: the next one is the label.
    assert got["role.caption"] == "good"
    assert "role.caption.good" in got and not any("bad" in k for k in got)
    assert got["profile"] == "my-profile"
    assert any("'bad id'" in why for why in r.left_out)
    assert "# left out: model 'bad id'" in r.text


def test_mixed_and_unread_gpus() -> None:
    gpus = [("NVIDIA L4", 23034), ("NVIDIA A10G", None)]
    got = labels(render(facts_from("p", gpus, 1, {}), now=NOW, ttl_seconds=60).text)
    assert got["gpu.model"] == "mixed" and got["gpu.count"] == "2"
    # A total that could not be read is not summed as zero.
    assert "vram.total-mib" not in got


def test_the_expiry_is_rfc3339_utc() -> None:
    r = render(facts_from("p", [], 0, {}), now=NOW, ttl_seconds=3600)
    assert "# +expiry-time=2026-12-02T07:00:00Z\n" in r.text


def test_write_refuses_a_file_nfd_would_ignore(tmp_path: Path) -> None:
    out = tmp_path / "gpulet"
    out.write_text("old\n")
    with pytest.raises(ValueError, match="limit"):
        write_atomic(out, "x" * (MAX_FILE_BYTES + 1))
    assert out.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["gpulet"]
