"""A backend's log file: opening it for a start, and reading a start's tail from it."""

from __future__ import annotations

import os
from pathlib import Path

from gpuletd.backends.logs import open_log_file, read_log_tail

COMMAND = ("serve", "--port", "8000")


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def test_open_writes_a_header_and_the_offset_is_after_it(tmp_path: Path) -> None:
    log = open_log_file(tmp_path / "logs", "org/m:7b", COMMAND)
    assert log is not None
    try:
        os.write(log.fd, b"hello\n")
    finally:
        os.close(log.fd)

    text = log.path.read_text()
    assert log.path == tmp_path / "logs" / "org_m_7b.log"
    assert text.startswith("=== gpulet: starting org/m:7b at ")
    assert text.splitlines()[0].endswith(": serve --port 8000")
    assert log.offset == len(text) - len("hello\n")
    assert read_log_tail(log.path, log.offset, 10) == ["hello"]


def test_the_descriptor_appends_even_after_someone_else_wrote(tmp_path: Path) -> None:
    log = open_log_file(tmp_path, "m", COMMAND)
    assert log is not None
    try:
        append(log.path, b"other writer\n")
        os.write(log.fd, b"backend line\n")
    finally:
        os.close(log.fd)

    assert log.path.read_text().endswith("other writer\nbackend line\n")


def test_a_big_log_is_rotated_once_at_start(tmp_path: Path) -> None:
    path = tmp_path / "m.log"
    with open(path, "wb") as f:
        f.truncate(33 * 1024 * 1024)  # sparse: big to stat, cheap to make

    log = open_log_file(tmp_path, "m", COMMAND)
    assert log is not None
    os.close(log.fd)

    assert (tmp_path / "m.log.1").stat().st_size == 33 * 1024 * 1024
    assert path.read_text().startswith("=== gpulet: starting m at ")


def test_an_unwritable_log_dir_gives_no_log_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")

    assert open_log_file(blocker / "logs", "m", COMMAND) is None


def test_the_tail_shows_only_what_came_after_the_offset(tmp_path: Path) -> None:
    path = tmp_path / "m.log"
    path.write_bytes(b"earlier start\nits last words\n")
    offset = path.stat().st_size
    append(path, b"one\ntwo\nthree\n")

    assert read_log_tail(path, offset, 10) == ["one", "two", "three"]
    assert read_log_tail(path, offset, 2) == ["two", "three"]
    assert read_log_tail(path, offset, 0) == []


def test_the_tail_rewinds_progress_bars_and_keeps_an_unterminated_line(tmp_path: Path) -> None:
    path = tmp_path / "m.log"
    path.write_bytes(b"one\r\nLoading: 10%\rLoading: 55%\rLoading: 100%\nfatal: no GPU")

    assert read_log_tail(path, 0, 10) == ["one", "Loading: 100%", "fatal: no GPU"]


def test_the_tail_reads_only_the_end_of_a_big_file(tmp_path: Path) -> None:
    path = tmp_path / "m.log"
    lines = [f"line {i:07d} " + "x" * 90 for i in range(20_000)]  # ~2 MB
    path.write_text("\n".join(lines) + "\n" + "y" * 20_000 + "\nlast\n")

    tail = read_log_tail(path, 0, 1000)

    assert tail[-1] == "last"
    assert tail[-2] == "y" * 8192  # a runaway line is cut
    # What fits in the last 64 KiB, starting on a whole line, never on half of one.
    assert 300 < len(tail) < 1000
    assert tail[:-2] == lines[-(len(tail) - 2) :]


def test_the_tail_follows_its_file_when_a_later_start_rotated_it(tmp_path: Path) -> None:
    path = tmp_path / "m.log"
    path.write_bytes(b"header\nold start's output\n")
    inode = path.stat().st_ino
    path.replace(tmp_path / "m.log.1")
    path.write_bytes(b"header\nnew start's output\n")

    assert read_log_tail(path, 7, 10, inode=inode) == ["old start's output"]
    assert read_log_tail(path, 7, 10) == ["new start's output"]


def test_a_missing_or_truncated_file_gives_what_is_there(tmp_path: Path) -> None:
    path = tmp_path / "m.log"

    assert read_log_tail(path, 0, 10) == []
    path.write_bytes(b"short\n")
    assert read_log_tail(path, 10_000, 10) == ["short"]
