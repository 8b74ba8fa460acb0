"""The daemon's persistent state: one SQLite file, written before each decision takes effect,
so that a restart (even after kill -9) resumes where the last decision left off.

Starting must never turn into a crash loop: a state file that cannot be used (corrupt, locked,
written by a newer release) is moved aside with one warning and a fresh store takes its place.
Only an unusable state *directory* raises, because only the operator can fix that.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from time import time
from typing import TYPE_CHECKING, Any, Final

import structlog

if TYPE_CHECKING:
    from gpuletd.scheduler.snapshot_delta import SnapshotDelta

__all__ = [
    "BUSY_TIMEOUT_MS",
    "SCHEMA_VERSION",
    "Footprint",
    "Measurement",
    "SavedCore",
    "StateStore",
    "StoreError",
    "read_boot_id",
]

log = structlog.get_logger(__name__)

# Bump only together with a migration in `_open_checked`: a file whose user_version is higher
# than this was written by a newer release, and is moved aside rather than misread.
# 2: the core snapshot by parts (`core_models`, `core_leases`, `core_ended`); a version 1 file
# holds it whole in `core.snapshot`, which is still read, and the first save splits it.
SCHEMA_VERSION: Final = 2

# Short on purpose: the only legitimate holder of the file is this daemon (the server takes a
# lock file before it opens the store), so waiting longer only delays the start.
BUSY_TIMEOUT_MS: Final = 250

_BOOT_ID_PATH: Final = Path("/proc/sys/kernel/random/boot_id")
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"
# Files SQLite keeps beside the database. They belong to it: a stale WAL or journal left next
# to a *new* database would be replayed into it, so they are moved aside together.
_COMPANIONS: Final = ("", "-wal", "-shm", "-journal")

_TABLES: Final = {
    # One row. `saved_mono` and `boot_id` let the daemon carry monotonic deadlines (lease
    # expiries, grace periods) across a restart: they stay comparable while the boot id matches.
    # `snapshot` is the whole snapshot (`save_core`), or its head when it names, under
    # `_PARTS_KEY`, the parts kept in the `core_*` tables below (`save_core_delta`).
    "core": """CREATE TABLE core (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        snapshot TEXT NOT NULL,
        saved_wall REAL NOT NULL,
        saved_mono REAL NOT NULL,
        boot_id TEXT
    )""",
    # The parts of the snapshot that change one item at a time, so that a decision writes
    # only the items it changed: model records and leases by key, read back by position.
    "core_models": """CREATE TABLE core_models (
        key TEXT PRIMARY KEY NOT NULL,
        pos INTEGER NOT NULL,
        record TEXT NOT NULL
    )""",
    "core_leases": """CREATE TABLE core_leases (
        lease_id TEXT PRIMARY KEY NOT NULL,
        pos INTEGER NOT NULL,
        record TEXT NOT NULL
    )""",
    # Ended leases only grow at the end and are forgotten from the start.
    "core_ended": """CREATE TABLE core_ended (
        pos INTEGER PRIMARY KEY NOT NULL,
        lease_id TEXT NOT NULL,
        why TEXT NOT NULL
    )""",
    "backends": """CREATE TABLE backends (
        model_id TEXT PRIMARY KEY NOT NULL,
        record TEXT NOT NULL,
        updated_wall REAL NOT NULL
    )""",
    # Separate from `core` so that what was measured outlives a discarded snapshot.
    "footprints": """CREATE TABLE footprints (
        model_id TEXT PRIMARY KEY NOT NULL,
        measured_mb INTEGER,
        load_seconds REAL,
        updated_wall REAL NOT NULL
    )""",
    # What the probe measured beyond the core's footprint (seed 003): the largest footprint
    # seen, how many healthy loads were measured, and the last stop-to-gone time.
    "measurements": """CREATE TABLE measurements (
        model_id TEXT PRIMARY KEY NOT NULL,
        peak_mb INTEGER,
        loads INTEGER NOT NULL,
        unload_seconds REAL,
        unloads INTEGER NOT NULL,
        updated_wall REAL NOT NULL
    )""",
}
# Tables added after schema 1 shipped, created on open when missing so that a file from the
# release before keeps its state. `measurements` needed no version bump (a release that lacks
# it ignores it); the `core_*` tables did (one without them would read only the head).
_ADDED_TABLES: Final = ("measurements", "core_models", "core_leases", "core_ended")
_PARTS: Final = ("core_models", "core_leases", "core_ended")
# In a head written by parts: the snapshot keys kept as rows, and where.
_PARTS_KEY: Final = "_stored_by_parts"
_PARTS_HEAD: Final = f'{{"{_PARTS_KEY}":["models","leases","ended"],'

_SAVE_CORE: Final = """
    INSERT INTO core (id, snapshot, saved_wall, saved_mono, boot_id) VALUES (1, ?, ?, ?, ?)
    ON CONFLICT (id) DO UPDATE SET snapshot = excluded.snapshot,
        saved_wall = excluded.saved_wall, saved_mono = excluded.saved_mono,
        boot_id = excluded.boot_id"""
_TOUCH_CORE: Final = "UPDATE core SET saved_wall = ?, saved_mono = ?, boot_id = ? WHERE id = 1"
_PUT_MODEL: Final = """
    INSERT INTO core_models (key, pos, record) VALUES (?, ?, ?)
    ON CONFLICT (key) DO UPDATE SET pos = excluded.pos, record = excluded.record"""
_PUT_LEASE: Final = """
    INSERT INTO core_leases (lease_id, pos, record) VALUES (?, ?, ?)
    ON CONFLICT (lease_id) DO UPDATE SET pos = excluded.pos, record = excluded.record"""
_PUT_BACKEND: Final = """
    INSERT INTO backends (model_id, record, updated_wall) VALUES (?, ?, ?)
    ON CONFLICT (model_id) DO UPDATE SET record = excluded.record,
        updated_wall = excluded.updated_wall"""
_PUT_MEASUREMENT: Final = """
    INSERT INTO measurements (model_id, peak_mb, loads, unload_seconds, unloads, updated_wall)
    VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (model_id) DO UPDATE SET peak_mb = excluded.peak_mb, loads = excluded.loads,
        unload_seconds = excluded.unload_seconds, unloads = excluded.unloads,
        updated_wall = excluded.updated_wall"""
_PUT_FOOTPRINT: Final = """
    INSERT INTO footprints (model_id, measured_mb, load_seconds, updated_wall)
    VALUES (?, ?, ?, ?)
    ON CONFLICT (model_id) DO UPDATE SET
        measured_mb = coalesce(excluded.measured_mb, footprints.measured_mb),
        load_seconds = coalesce(excluded.load_seconds, footprints.load_seconds),
        updated_wall = excluded.updated_wall"""

# Primary SQLite result codes, grouped by what the daemon should do about them.
_LOCKED_CODES: Final = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_CORRUPT_CODES: Final = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_FORMAT}
_UNOPENABLE_CODES: Final = {
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_PERM,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_AUTH,
}


class StoreError(Exception):
    """Raised instead of sqlite3's errors so callers handle one type with a message that names
    the file and the operation (disk full, the file removed under a running daemon, ...)."""


@dataclass(frozen=True, slots=True)
class SavedCore:
    snapshot: dict[str, Any]
    wall: float
    mono: float
    boot_id: str | None

    def same_boot(self, boot_id: str | None) -> bool:
        """Monotonic times only compare within one boot; an unknown boot id never matches."""
        return self.boot_id is not None and self.boot_id == boot_id


@dataclass(frozen=True, slots=True)
class Footprint:
    measured_mb: int | None
    load_seconds: float | None
    updated_wall: float


@dataclass(frozen=True, slots=True)
class Measurement:
    peak_mb: int | None
    loads: int
    unload_seconds: float | None
    unloads: int


class _Unusable(Exception):
    """The file at the state path cannot be used; `reason` is said to the operator."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read_boot_id() -> str | None:
    """None off Linux (or in odd sandboxes): saved monotonic times are then never trusted."""
    try:
        return _BOOT_ID_PATH.read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


class StateStore:
    """Use `StateStore.open`; the constructor takes an already validated connection."""

    def __init__(
        self,
        path: Path,
        conn: sqlite3.Connection,
        *,
        moved_aside: str | None = None,
        moved_to: Path | None = None,
    ) -> None:
        self.path = path
        # Why the previous file was moved aside at open (a sentence), and where to; the daemon
        # shows it in its status so the operator learns that state was lost, and why.
        self.moved_aside = moved_aside
        self.moved_to = moved_to
        self.boot_id = read_boot_id()
        self._conn: sqlite3.Connection | None = conn
        self._identity = _identity(path)
        # The daemon is asyncio but may hand a write to a thread; one lock keeps a transaction
        # and a stray write from another thread from interleaving on the shared connection.
        self._lock = threading.RLock()
        self._depth = 0
        # Grows whenever the stored core changes other than by `save_core_delta`, or a
        # transaction is rolled back: a SnapshotWriter's memory of what is stored is then void.
        self.core_epoch = 0

    @classmethod
    def open(cls, path: Path) -> StateStore:
        """Raises OSError only for an unusable directory (the operator's to fix); any problem
        with the file itself is survived by moving the file aside."""
        path = Path(path)
        _prepare_directory(path.parent)
        try:
            conn = _open_checked(path)
        except _Unusable as bad:
            reason = bad.reason
        else:
            log.info("store.opened", path=str(path))
            return cls(path, conn)
        moved_to = _move_aside(path)
        log.warning("store.moved_aside", path=str(path), moved_to=str(moved_to), reason=reason)
        try:
            conn = _open_checked(path)
        except _Unusable as bad:
            raise StoreError(
                f"a fresh state store at {path} is unusable too: {bad.reason}"
            ) from None
        return cls(path, conn, moved_aside=reason, moved_to=moved_to)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- writes: each commits by itself, or joins the enclosing transaction() ------------------

    def save_core(self, snapshot: Mapping[str, Any], *, wall: float, mono: float) -> None:
        """The whole snapshot in one text (what schema 1 always did)."""
        text = json.dumps(_as_dict(snapshot), separators=(",", ":"))
        params = (text, float(wall), float(mono), self.boot_id)
        with self.transaction():
            self._drop_parts()
            self._write("save the scheduler snapshot", _SAVE_CORE, params)

    def save_core_delta(self, delta: SnapshotDelta, *, wall: float, mono: float) -> None:
        """What changed since the writer's previous delta, which must have been the last write
        of the core here (see `core_epoch`); `load_core` then gives the whole snapshot."""
        what = "save the scheduler snapshot"
        with self._joined():
            if delta.full:
                self._drop_parts()
            if delta.head is not None:
                text = _PARTS_HEAD + delta.head[1:]
                self._write(what, _SAVE_CORE, (text, float(wall), float(mono), self.boot_id))
            else:
                self._write(what, _TOUCH_CORE, (float(wall), float(mono), self.boot_id))
            if delta.models_gone:
                sql = "DELETE FROM core_models WHERE key = ?"
                self._write_many(what, sql, [(k,) for k in delta.models_gone])
            if delta.models:
                self._write_many(what, _PUT_MODEL, delta.models)
            if delta.leases_gone:
                sql = "DELETE FROM core_leases WHERE lease_id = ?"
                self._write_many(what, sql, [(k,) for k in delta.leases_gone])
            if delta.leases:
                self._write_many(what, _PUT_LEASE, delta.leases)
            if delta.ended:
                sql = "INSERT INTO core_ended (pos, lease_id, why) VALUES (?, ?, ?)"
                self._write_many(what, sql, delta.ended)
            if delta.ended_from is not None:
                sql = "DELETE FROM core_ended WHERE pos < ?"
                self._write(what, sql, (delta.ended_from,))

    def discard_core(self) -> None:
        """For a snapshot the daemon decided not to trust; footprints are kept."""
        with self.transaction():
            self._drop_parts()
            self._write("discard the scheduler snapshot", "DELETE FROM core", ())

    def clear_state(self) -> None:
        """After a clean stop (every backend stopped) there is nothing to resume or adopt;
        what was measured stays, since it is true of the models, not of this run."""
        with self.transaction():
            self._drop_parts()
            self._write("discard the scheduler snapshot", "DELETE FROM core", ())
            self._write("discard backend records", "DELETE FROM backends", ())

    def _drop_parts(self) -> None:
        self.core_epoch += 1
        for table in _PARTS:
            self._write("discard the scheduler snapshot", f"DELETE FROM {table}", ())

    def put_backend(self, model_id: str, record: Mapping[str, Any]) -> None:
        text = json.dumps(_as_dict(record), separators=(",", ":"))
        self._write(f"save backend {model_id!r}", _PUT_BACKEND, (model_id, text, time()))

    def delete_backend(self, model_id: str) -> None:
        sql = "DELETE FROM backends WHERE model_id = ?"
        self._write(f"delete backend {model_id!r}", sql, (model_id,))

    def put_footprint(
        self, model_id: str, *, measured_mb: int | None, load_seconds: float | None
    ) -> None:
        """None keeps what was measured before: a load that timed out still tells us nothing
        new about memory, and must not erase the last good measurement."""
        params = (model_id, measured_mb, load_seconds, time())
        self._write(f"save the footprint of {model_id!r}", _PUT_FOOTPRINT, params)

    def put_measurement(self, model_id: str, m: Measurement) -> None:
        params = (model_id, m.peak_mb, m.loads, m.unload_seconds, m.unloads, time())
        self._write(f"save the measurements of {model_id!r}", _PUT_MEASUREMENT, params)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Groups writes into one commit: all of them are durable on exit, or none (the block
        raised). Nesting is allowed; an inner block that raises undoes only its own writes."""
        with self._lock:
            conn = self._live()
            if self._depth:
                savepoint = f"sp{self._depth}"
                self._sql("start a nested transaction", f"SAVEPOINT {savepoint}")
                self._depth += 1
                try:
                    yield
                except BaseException:
                    self.core_epoch += 1
                    self._sql("roll back", f"ROLLBACK TO {savepoint}")
                    self._sql("roll back", f"RELEASE {savepoint}")
                    raise
                else:
                    self._sql("commit a nested transaction", f"RELEASE {savepoint}")
                finally:
                    self._depth -= 1
                return
            self._check_file()
            self._sql("start a transaction", "BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
                self._check_file()
                self._sql("commit", "COMMIT")
            except BaseException:
                self.core_epoch += 1
                # The original error says more than a failed rollback would; SQLite undoes an
                # unfinished transaction on close anyway.
                if conn.in_transaction:
                    with suppress(sqlite3.Error):
                        conn.rollback()
                raise
            finally:
                self._depth = 0

    @contextmanager
    def _joined(self) -> Iterator[None]:
        """A transaction of its own, or the enclosing one without a savepoint (two statements
        fewer on the hot path): a failure is left to the enclosing block to roll back."""
        with self._lock:
            if self._depth:
                try:
                    yield
                except BaseException:
                    # Part of it may stand if the caller goes on: what is stored is unknown.
                    self.core_epoch += 1
                    raise
                return
            with self.transaction():
                yield

    # -- reads ---------------------------------------------------------------------------------

    def load_core(self) -> SavedCore | None:
        sql = "SELECT snapshot, saved_wall, saved_mono, boot_id FROM core WHERE id = 1"
        rows = self._read("read the scheduler snapshot", sql)
        if not rows:
            return None
        text, wall, mono, boot_id = rows[0]
        snapshot = self._decode(text, "the scheduler snapshot")
        if snapshot.pop(_PARTS_KEY, None) is not None:
            sql = "SELECT record FROM core_models ORDER BY pos"
            rows = self._read("read the scheduler snapshot", sql)
            snapshot["models"] = [self._decode(t, "a model record") for (t,) in rows]
            sql = "SELECT record FROM core_leases ORDER BY pos"
            rows = self._read("read the scheduler snapshot", sql)
            snapshot["leases"] = [self._decode(t, "a lease record") for (t,) in rows]
            sql = "SELECT lease_id, why FROM core_ended ORDER BY pos"
            rows = self._read("read the scheduler snapshot", sql)
            snapshot["ended"] = [[lid, why] for lid, why in rows]
        return SavedCore(snapshot, wall, mono, boot_id)

    def backends(self) -> dict[str, dict[str, Any]]:
        sql = "SELECT model_id, record FROM backends ORDER BY model_id"
        rows = self._read("read backend records", sql)
        return {mid: self._decode(text, f"the record of backend {mid!r}") for mid, text in rows}

    def footprints(self) -> dict[str, Footprint]:
        sql = "SELECT model_id, measured_mb, load_seconds, updated_wall FROM footprints"
        rows = self._read("read footprints", sql + " ORDER BY model_id")
        return {mid: Footprint(mb, secs, wall) for mid, mb, secs, wall in rows}

    def measurements(self) -> dict[str, Measurement]:
        sql = "SELECT model_id, peak_mb, loads, unload_seconds, unloads FROM measurements"
        rows = self._read("read measurements", sql + " ORDER BY model_id")
        return {mid: Measurement(mb, n, secs, u) for mid, mb, n, secs, u in rows}

    # -- plumbing ------------------------------------------------------------------------------

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"the state store {self.path} is closed")
        return self._conn

    def _sql(self, what: str, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
        try:
            return self._live().execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"could not {what} in {self.path}: {e}") from e

    def _write(self, what: str, sql: str, params: tuple[object, ...]) -> None:
        # Python's sqlite3 keeps a per-connection cache of prepared statements keyed by the SQL
        # text, so these constant statements are compiled once. No fsync per commit: see
        # `_open_checked` for why WAL + synchronous=NORMAL is durable enough.
        with self._lock:
            if not self._depth:
                self._check_file()  # inside a transaction this runs once, before COMMIT
            self._sql(what, sql, params)

    def _write_many(self, what: str, sql: str, rows: Sequence[tuple[object, ...]]) -> None:
        with self._lock:
            if not self._depth:
                self._check_file()
            try:
                self._live().executemany(sql, rows)
            except sqlite3.Error as e:
                raise StoreError(f"could not {what} in {self.path}: {e}") from e

    def _read(self, what: str, sql: str) -> list[Any]:
        with self._lock:
            return self._sql(what, sql)

    def _decode(self, text: Any, what: str) -> dict[str, Any]:
        try:
            return _decode(text, what)
        except ValueError as e:
            raise StoreError(f"{self.path} is damaged: {e}") from e

    def _check_file(self) -> None:
        """SQLite keeps writing to a database file that was deleted or replaced under it, and
        those writes vanish at the next start; one stat() per commit turns that into an error."""
        if _identity(self.path) != self._identity:
            raise StoreError(
                f"the state file {self.path} was removed or replaced while gpuletd was running;"
                " nothing more can be saved - restart gpuletd to create a new one"
            )


def _as_dict(value: Mapping[str, Any]) -> dict[str, Any]:
    # json serialises dicts only; copying one that already is would cost on the hot path.
    return value if isinstance(value, dict) else dict(value)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _prepare_directory(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    except OSError as e:
        msg = f"cannot create the state directory: {e.strerror}"
        raise OSError(e.errno, msg, str(directory)) from e
    else:
        os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
    if not directory.is_dir():
        raise OSError(errno.ENOTDIR, "the state directory is not a directory", str(directory))
    if not os.access(directory, os.W_OK | os.X_OK):
        # SQLite must create its -wal and -shm files next to the database.
        raise OSError(errno.EACCES, "the state directory is not writable", str(directory))


def _ensure_file(path: Path) -> None:
    """Creates the file 0600 ourselves (SQLite would honour only the umask; its -wal and -shm
    copy this mode), and rejects a non-SQLite file before SQLite overwrites a short one."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        pass
    else:
        os.close(fd)
        return
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise _Unusable("it is not a regular file")
        if st.st_mode & 0o077:
            # It holds pids and endpoints: keep it to ourselves (best effort if not our file).
            with suppress(OSError):
                os.chmod(path, 0o600)
        if st.st_size == 0:
            return
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except OSError as e:
        raise _Unusable(f"it cannot be read ({e.strerror})") from e
    if head != _SQLITE_MAGIC:
        raise _Unusable("it is not a SQLite database (wrong header)")


def _open_checked(path: Path) -> sqlite3.Connection:
    """Opens, migrates and validates the file, or raises _Unusable with the reason. Validation
    (quick_check, shapes, JSON) runs here once, never on the write path."""
    _ensure_file(path)
    conn: sqlite3.Connection | None = None
    try:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a lone write is one implicit
        # transaction (one commit) and transaction() groups several.
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # Read the version before anything that rewrites the header: a newer release's file is
        # moved aside untouched.
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise _Unusable(
                f"its schema version {version} is newer than this gpuletd understands"
                f" ({SCHEMA_VERSION}); it was written by a newer release"
            )
        # WAL + synchronous=NORMAL: a commit is in the WAL (the OS page cache) when it returns,
        # so a killed process (kill -9, OOM, crash) loses nothing committed; only a power loss
        # or kernel crash can lose the last few commits (never corrupt the file). Not fsyncing
        # each commit is what keeps a save cheap enough to do before every decision.
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("store.wal_unavailable", path=str(path), journal_mode=mode)
        conn.execute("PRAGMA synchronous = NORMAL")
        # IMMEDIATE takes the write lock now: a file another process holds shows up here as
        # SQLITE_BUSY after the busy timeout, not at the first decision.
        conn.execute("BEGIN IMMEDIATE")
        if version == 0:
            _create_schema(conn)
        _add_missing_tables(conn)
        _check_schema(conn)
        problems = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise _Unusable(f"it is corrupt (quick_check: {'; '.join(problems[:3])})")
        _check_json(conn)
        # A write probe: a file SQLite could open only read-only (not ours, mode 0400) would
        # otherwise pass every check and then fail each decision at run time.
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
        return conn
    except sqlite3.Error as e:
        if conn is not None:
            conn.close()
        code = e.sqlite_errorcode & 0xFF
        if code in _LOCKED_CODES:
            raise _Unusable(
                f"it is locked by another process (still held after {BUSY_TIMEOUT_MS} ms)"
            ) from e
        if code in _CORRUPT_CODES:
            raise _Unusable(f"it is corrupt ({e})") from e
        if code in _UNOPENABLE_CODES:
            raise _Unusable(f"it cannot be opened for writing ({e})") from e
        # Disk full, I/O errors, out of memory: a fresh file would fail the same way, and moving
        # aside a good file for a passing fault would lose it.
        raise StoreError(f"could not open the state store {path}: {e}") from e
    except BaseException:
        if conn is not None:
            conn.close()
        raise


def _create_schema(conn: sqlite3.Connection) -> None:
    foreign = conn.execute(
        "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
    ).fetchall()
    if foreign:
        names = ", ".join(r[0] for r in foreign)
        raise _Unusable(f"it is a SQLite database but not gpulet's (it holds {names})")
    for ddl in _TABLES.values():
        conn.execute(ddl)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _add_missing_tables(conn: sqlite3.Connection) -> None:
    for table in _ADDED_TABLES:
        if not _shape(conn, table):
            conn.execute(_TABLES[table])


def _check_schema(conn: sqlite3.Connection) -> None:
    for table in _TABLES:
        found = _shape(conn, table)
        if not found:
            raise _Unusable(f"it is damaged: table {table!r} is missing")
        if found != _expected_shapes()[table]:
            raise _Unusable(f"it is damaged: table {table!r} has the wrong columns")


def _shape(conn: sqlite3.Connection, table: str) -> list[tuple[Any, ...]]:
    # (name, declared type, not null, primary key) per column, in order.
    rows = conn.execute(f"PRAGMA table_info({table})").fetchall()
    return [(r[1], str(r[2]).upper(), r[3], r[5]) for r in rows]


@cache
def _expected_shapes() -> dict[str, list[tuple[Any, ...]]]:
    """Derived from the DDL itself, so the check cannot drift from the schema it guards."""
    mem = sqlite3.connect(":memory:")
    try:
        for ddl in _TABLES.values():
            mem.execute(ddl)
        return {table: _shape(mem, table) for table in _TABLES}
    finally:
        mem.close()


def _check_json(conn: sqlite3.Connection) -> None:
    """A row that cannot be decoded would fail every later start, so it condemns the file."""
    try:
        for (text,) in conn.execute("SELECT snapshot FROM core"):
            _decode(text, "the scheduler snapshot")
        for model_id, text in conn.execute("SELECT model_id, record FROM backends"):
            _decode(text, f"the record of backend {model_id!r}")
        for key, text in conn.execute("SELECT key, record FROM core_models"):
            _decode(text, f"the scheduler's record of {key!r}")
        for lease_id, text in conn.execute("SELECT lease_id, record FROM core_leases"):
            _decode(text, f"the scheduler's record of lease {lease_id!r}")
    except ValueError as e:
        raise _Unusable(f"it is damaged: {e}") from e


def _decode(text: Any, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} is not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a JSON object")
    return value


def _move_aside(path: Path) -> Path:
    """Keeps the old bytes for a post-mortem (with their WAL, so SQLite can still open them)
    instead of deleting them, and fsyncs the directory so the rename survives a crash."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    dest = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while any(os.path.lexists(f"{dest}{suffix}") for suffix in _COMPANIONS):
        dest = path.with_name(f"{path.name}.corrupt-{stamp}.{n}")
        n += 1
    for suffix in _COMPANIONS:
        try:
            os.rename(f"{path}{suffix}", f"{dest}{suffix}")
        except FileNotFoundError:
            continue
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return dest
