from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gpuletd.store import (
    SCHEMA_VERSION,
    Footprint,
    StateStore,
    StoreError,
    read_boot_id,
)

SNAPSHOT: dict[str, Any] = {
    "leases": [{"id": "l-1", "model": "qwen3-vl", "expires_mono": 1234.5}],
    "queue": [],
    "placed": {"qwen3-vl": {"gpus": ["GPU-0"], "mb": 9000}},
}


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "state.db"


def open_store(path: Path) -> StateStore:
    return StateStore.open(path)


def moved_files(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.corrupt-*"))


def open_and_capture(path: Path) -> tuple[StateStore, list[MutableMapping[str, Any]]]:
    with capture_logs() as logs:
        store = StateStore.open(path)
    return store, [e for e in logs if e["log_level"] == "warning"]


def assert_fresh(store: StateStore) -> None:
    assert store.load_core() is None
    assert store.backends() == {}
    assert store.footprints() == {}
    store.save_core({"ok": True}, wall=1.0, mono=2.0)  # and it takes writes
    assert store.load_core() is not None


def assert_moved_once(
    path: Path, store: StateStore, warnings: list[MutableMapping[str, Any]]
) -> Path:
    assert len(warnings) == 1
    (warning,) = warnings
    assert warning["event"] == "store.moved_aside"
    assert warning["path"] == str(path)
    assert warning["reason"] == store.moved_aside
    (moved,) = [p for p in moved_files(path) if not p.name.endswith(("-wal", "-shm"))]
    assert warning["moved_to"] == str(moved) == str(store.moved_to)
    return moved


# -- round trips -----------------------------------------------------------------------------


def test_everything_survives_close_and_reopen(path: Path) -> None:
    store = open_store(path)
    assert store.moved_aside is None
    store.save_core(SNAPSHOT, wall=1_700_000_000.5, mono=4242.25)
    store.put_backend("qwen3-vl", {"pid": 4321, "port": 8001, "endpoint": "http://127.0.0.1:8001"})
    store.put_backend("sdxl", {"pid": 99})
    store.delete_backend("sdxl")
    store.put_footprint("qwen3-vl", measured_mb=9100, load_seconds=41.5)
    store.close()

    store = open_store(path)
    try:
        core = store.load_core()
        assert core is not None
        assert core.snapshot == SNAPSHOT
        assert (core.wall, core.mono) == (1_700_000_000.5, 4242.25)
        assert core.boot_id == read_boot_id()
        assert core.same_boot(store.boot_id) == (read_boot_id() is not None)
        assert store.backends() == {
            "qwen3-vl": {"pid": 4321, "port": 8001, "endpoint": "http://127.0.0.1:8001"}
        }
        fp = store.footprints()["qwen3-vl"]
        assert (fp.measured_mb, fp.load_seconds) == (9100, 41.5)
        assert store.moved_aside is None
        assert moved_files(path) == []
    finally:
        store.close()


def test_snapshot_from_another_boot_is_not_same_boot(path: Path) -> None:
    store = open_store(path)
    store.save_core(SNAPSHOT, wall=1.0, mono=2.0)
    core = store.load_core()
    store.close()
    assert core is not None
    assert not core.same_boot("another-boot")
    assert not core.same_boot(None)


def test_footprint_none_keeps_the_previous_measurement(path: Path) -> None:
    store = open_store(path)
    store.put_footprint("m", measured_mb=5000, load_seconds=None)
    store.put_footprint("m", measured_mb=None, load_seconds=12.0)
    store.put_footprint("m", measured_mb=None, load_seconds=None)
    store.close()
    store = open_store(path)
    fp = store.footprints()["m"]
    store.close()
    assert isinstance(fp, Footprint)
    assert (fp.measured_mb, fp.load_seconds) == (5000, 12.0)
    assert fp.updated_wall > 0


def test_discarding_the_snapshot_keeps_footprints(path: Path) -> None:
    store = open_store(path)
    store.save_core(SNAPSHOT, wall=1.0, mono=2.0)
    store.save_core({"v": 2}, wall=3.0, mono=4.0)
    core = store.load_core()
    assert core is not None
    assert (core.snapshot, core.wall) == ({"v": 2}, 3.0)
    store.put_footprint("m", measured_mb=100, load_seconds=1.0)
    store.discard_core()
    store.close()
    store = open_store(path)
    assert store.load_core() is None
    assert set(store.footprints()) == {"m"}
    store.close()


def test_clearing_state_after_a_clean_stop_keeps_footprints(path: Path) -> None:
    store = open_store(path)
    store.save_core(SNAPSHOT, wall=1.0, mono=2.0)
    store.put_backend("m", {"pid": 1})
    store.put_footprint("m", measured_mb=100, load_seconds=1.0)
    store.clear_state()
    store.close()
    store = open_store(path)
    try:
        assert store.load_core() is None
        assert store.backends() == {}
        assert store.footprints()["m"].measured_mb == 100
    finally:
        store.close()


def test_committed_writes_survive_kill_9(path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from gpuletd.store import StateStore
        store = StateStore.open(Path({str(path)!r}))
        store.save_core({{"n": 1}}, wall=1.0, mono=2.0)
        with store.transaction():
            store.put_backend("m", {{"pid": 7}})
            store.put_footprint("m", measured_mb=10, load_seconds=None)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()
    store = open_store(path)
    try:
        core = store.load_core()
        assert core is not None and core.snapshot == {"n": 1}
        assert store.backends() == {"m": {"pid": 7}}
        assert store.footprints()["m"].measured_mb == 10
    finally:
        store.close()


# -- transactions ----------------------------------------------------------------------------


def test_transaction_commits_its_writes_together(path: Path) -> None:
    store = open_store(path)
    reader = sqlite3.connect(path)
    try:
        with store.transaction():
            store.save_core(SNAPSHOT, wall=1.0, mono=2.0)
            store.put_backend("m", {"pid": 1})
            # Nothing is visible to anyone else until the block ends.
            assert reader.execute("SELECT count(*) FROM backends").fetchone() == (0,)
            assert reader.execute("SELECT count(*) FROM core").fetchone() == (0,)
        assert reader.execute("SELECT count(*) FROM backends").fetchone() == (1,)
        assert reader.execute("SELECT count(*) FROM core").fetchone() == (1,)
    finally:
        reader.close()
        store.close()


def test_failure_inside_a_transaction_rolls_back_all_of_it(path: Path) -> None:
    store = open_store(path)
    store.put_backend("kept", {"pid": 1})
    with pytest.raises(RuntimeError, match="boom"), store.transaction():
        store.save_core(SNAPSHOT, wall=1.0, mono=2.0)
        store.put_backend("lost", {"pid": 2})
        store.delete_backend("kept")
        store.put_footprint("lost", measured_mb=1, load_seconds=1.0)
        raise RuntimeError("boom")
    store.close()
    store = open_store(path)
    try:
        assert store.load_core() is None
        assert store.backends() == {"kept": {"pid": 1}}
        assert store.footprints() == {}
    finally:
        store.close()


def test_a_failing_nested_block_undoes_only_its_own_writes(path: Path) -> None:
    store = open_store(path)
    with store.transaction():
        store.put_backend("outer", {"pid": 1})
        with pytest.raises(RuntimeError), store.transaction():
            store.put_backend("inner", {"pid": 2})
            raise RuntimeError
        store.put_backend("after", {"pid": 3})
    assert set(store.backends()) == {"outer", "after"}
    store.close()


# -- files, modes, directories ---------------------------------------------------------------


def test_files_are_private_to_the_daemon(path: Path) -> None:
    store = open_store(path)
    store.save_core(SNAPSHOT, wall=1.0, mono=2.0)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        for companion in ("-wal", "-shm"):
            side = Path(f"{path}{companion}")
            assert stat.S_IMODE(side.stat().st_mode) == 0o600, side
    finally:
        store.close()


def test_an_existing_world_readable_file_is_tightened(path: Path) -> None:
    open_store(path).close()
    path.chmod(0o644)
    open_store(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_a_directory_without_write_permission_raises_naming_it(tmp_path: Path) -> None:
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(OSError) as info:
            StateStore.open(locked / "state.db")
        assert str(locked) in str(info.value)
    finally:
        locked.chmod(0o700)


def test_a_state_directory_that_is_a_file_raises_naming_it(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "state"
    not_a_dir.write_text("oops")
    with pytest.raises(OSError) as info:
        StateStore.open(not_a_dir / "state.db")
    assert str(not_a_dir) in str(info.value)
    assert not_a_dir.read_text() == "oops"


# -- never a crash loop: unusable files are moved aside --------------------------------------


@pytest.mark.parametrize("size", [1, 50, 5000])
def test_garbage_is_moved_aside_with_one_warning(path: Path, size: int) -> None:
    path.parent.mkdir(mode=0o700)
    garbage = (b"this is not a database\x00\xff" * 300)[:size]
    path.write_bytes(garbage)
    store, warnings = open_and_capture(path)
    try:
        moved = assert_moved_once(path, store, warnings)
        assert store.moved_aside is not None and "not a SQLite database" in store.moved_aside
        assert moved.read_bytes() == garbage
        assert moved.name.startswith("state.db.corrupt-")
        assert_fresh(store)
    finally:
        store.close()


def test_a_truncated_database_is_moved_aside(path: Path) -> None:
    store = open_store(path)
    for i in range(300):
        store.put_backend(f"model-{i}", {"pid": i, "note": "x" * 300})
    store.close()
    data = path.read_bytes()
    assert len(data) > 64 * 1024
    path.write_bytes(data[: len(data) // 2])

    store, warnings = open_and_capture(path)
    try:
        moved = assert_moved_once(path, store, warnings)
        assert moved.read_bytes() == data[: len(data) // 2]
        assert store.moved_aside is not None and "corrupt" in store.moved_aside
        assert_fresh(store)
    finally:
        store.close()


def test_a_future_schema_version_is_moved_aside_untouched(path: Path) -> None:
    store = open_store(path)
    store.put_backend("m", {"pid": 1})
    store.close()
    with sqlite3.connect(path) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()

    store, warnings = open_and_capture(path)
    try:
        moved = assert_moved_once(path, store, warnings)
        assert store.moved_aside is not None
        assert f"schema version {SCHEMA_VERSION + 1}" in store.moved_aside
        assert_fresh(store)
    finally:
        store.close()
    old = sqlite3.connect(moved)
    try:
        assert old.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION + 1,)
        assert old.execute("SELECT model_id FROM backends").fetchall() == [("m",)]
    finally:
        old.close()


def test_a_file_locked_by_another_process_is_moved_aside(path: Path) -> None:
    store = open_store(path)
    store.put_backend("m", {"pid": 1})
    store.close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        store, warnings = open_and_capture(path)
        try:
            moved = assert_moved_once(path, store, warnings)
            assert store.moved_aside is not None and "locked" in store.moved_aside
            assert_fresh(store)
        finally:
            store.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    old = sqlite3.connect(moved)
    try:
        assert old.execute("SELECT model_id FROM backends").fetchall() == [("m",)]
    finally:
        old.close()


def raw_edit(path: Path, *statements: str) -> None:
    open_store(path).close()
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        for sql in statements:
            raw.execute(sql)
    finally:
        raw.close()


@pytest.mark.parametrize(
    ("statements", "words"),
    [
        (["INSERT INTO core VALUES (1, '{not json', 1.0, 2.0, NULL)"], "not valid JSON"),
        (["INSERT INTO core VALUES (1, '[1, 2]', 1.0, 2.0, NULL)"], "not a JSON object"),
        (["INSERT INTO backends VALUES ('m', 'garbage', 1.0)"], "backend 'm'"),
        (["DROP TABLE footprints"], "'footprints' is missing"),
        (
            ["DROP TABLE backends", "CREATE TABLE backends (model_id TEXT, blob BLOB)"],
            "'backends' has the wrong columns",
        ),
        (
            ["DROP TABLE core", "DROP TABLE backends", "DROP TABLE footprints",
             "CREATE TABLE photos (x)", "PRAGMA user_version = 0"],
            "not gpulet's",
        ),
    ],
    ids=["bad-json", "json-not-object", "bad-backend", "missing-table", "wrong-shape", "foreign"],
)  # fmt: skip
def test_a_damaged_database_is_moved_aside(path: Path, statements: list[str], words: str) -> None:
    raw_edit(path, *statements)
    store, warnings = open_and_capture(path)
    try:
        assert_moved_once(path, store, warnings)
        assert store.moved_aside is not None and words in store.moved_aside
        assert_fresh(store)
    finally:
        store.close()


def test_a_stale_wal_moves_aside_with_its_database(path: Path) -> None:
    path.parent.mkdir(mode=0o700)
    path.write_bytes(b"junk" * 100)
    Path(f"{path}-wal").write_bytes(b"old wal")
    store, warnings = open_and_capture(path)
    try:
        moved = assert_moved_once(path, store, warnings)
        assert Path(f"{moved}-wal").read_bytes() == b"old wal"
        assert_fresh(store)
    finally:
        store.close()


def test_two_move_asides_in_the_same_second_keep_both(path: Path) -> None:
    for _ in range(2):
        path.parent.mkdir(mode=0o700, exist_ok=True)
        path.write_bytes(b"junk" * 100)
        store, _warnings = open_and_capture(path)
        store.close()
    assert len(moved_files(path)) == 2


# -- failures at run time --------------------------------------------------------------------


def test_writing_after_the_file_was_removed_raises_store_error(path: Path) -> None:
    store = open_store(path)
    store.save_core(SNAPSHOT, wall=1.0, mono=2.0)
    path.unlink()
    try:
        with pytest.raises(StoreError, match="removed or replaced"):
            store.save_core(SNAPSHOT, wall=1.0, mono=2.0)
        with pytest.raises(StoreError, match="removed or replaced"), store.transaction():
            store.put_backend("m", {"pid": 1})
    finally:
        store.close()


def test_a_full_disk_raises_store_error_and_keeps_what_was_saved(path: Path) -> None:
    # RLIMIT_FSIZE makes write() fail like a full disk, in a child so pytest is unaffected.
    script = textwrap.dedent(
        f"""
        import resource, signal
        from pathlib import Path
        from gpuletd.store import StateStore, StoreError
        store = StateStore.open(Path({str(path)!r}))
        store.save_core({{"n": 1}}, wall=1.0, mono=2.0)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
        try:
            store.save_core({{"big": "x" * 2_000_000}}, wall=3.0, mono=4.0)
        except StoreError as e:
            print("StoreError:", e)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    assert "StoreError: could not save the scheduler snapshot in" in out, out
    assert str(path) in out
    store = open_store(path)
    try:
        core = store.load_core()
        assert core is not None and core.snapshot == {"n": 1}
    finally:
        store.close()


def test_a_closed_store_raises_store_error(path: Path) -> None:
    store = open_store(path)
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.put_backend("m", {})
