"""Readiness signals faster than a health check: a line in the backend's log, a pipe message.

- `wait_for_log_line`: the model's `ready_log_pattern` (a regex, checked at config load) is
  searched in every line the backend writes to its stdout or stderr after it was started.
  Its output goes to its log file (never a pipe to the daemon: that would die with the
  daemon), so the file is read as it grows, every `poll_s`: one read() of a few bytes.
- `ReadyPipe`: every process backend inherits the write end of a pipe, its number in
  `GPULET_READY_FD`; a backend written for gpulet writes the line `READY` to it once it
  serves. Nothing else is needed from the backend, and one that ignores the variable loses
  nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from pathlib import Path

import structlog

__all__ = ["READY_FD_ENV", "READY_MESSAGE", "LineMatcher", "ReadyPipe", "wait_for_log_line"]

_log = structlog.get_logger("gpuletd.backends")

READY_FD_ENV = "GPULET_READY_FD"
READY_MESSAGE = b"READY"

# A line longer than this is matched on its first 8 KiB only: a runaway line (a progress bar
# without newlines, a base64 blob) must not grow the daemon.
_MAX_LINE_BYTES = 8192
# Read at most this much of a chatty log per look, so one look never holds the event loop long.
_READ_BYTES = 1024 * 1024
# Bytes of ready-pipe input kept while waiting for a newline.
_MAX_PIPE_LINE = 256
# CRLF is one line end; a CR and an LF in two reads make an empty line between, never matched.
_LINE_END = re.compile(rb"\r\n?|\n")


class LineMatcher:
    """Splits a byte stream into lines (ended by LF, CR or CRLF) and searches each for a regex.

    A line is only matched once it is complete: "Application startup" followed later by
    " complete" is one line, matched when its end arrives.
    """

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self._pattern = pattern
        self._partial = bytearray()

    def feed(self, data: bytes) -> str | None:
        """The first complete line in what was fed so far that matches, or None."""
        # One scan for every line end: looking for LF and CR separately would search to the
        # end of the data for the one that is absent, at every line (quadratic in a read).
        start = 0
        for end in _LINE_END.finditer(data):
            self._extend(data, start, end.start())
            line = bytes(self._partial).decode("utf-8", "replace")
            self._partial.clear()
            if line and self._pattern.search(line):
                return line
            start = end.end()
        self._extend(data, start, len(data))
        return None

    def _extend(self, data: bytes, start: int, end: int) -> None:
        room = _MAX_LINE_BYTES - len(self._partial)
        if room > 0:
            self._partial += data[start : min(end, start + room)]


async def wait_for_log_line(
    path: Path,
    offset: int,
    pattern: re.Pattern[str],
    *,
    inode: int | None = None,
    poll_s: float = 0.02,
) -> str | None:
    """The first line written to `path` after byte `offset` that `pattern` matches.

    Waits as long as it takes (the caller races it against health checks, the backend's exit
    and its start timeout). None at once if the file cannot be read, or is not the file with
    `inode`: then this signal says nothing, and the health checks decide alone.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        _log.warning("backend.log_unreadable", path=str(path), error=str(exc))
        return None
    try:
        if inode is not None and os.fstat(fd).st_ino != inode:
            return None
        os.lseek(fd, offset, os.SEEK_SET)
        matcher = LineMatcher(pattern)
        while True:
            data = os.read(fd, _READ_BYTES)
            if data:
                line = matcher.feed(data)
                if line is not None:
                    return line
            # A full read means more is waiting: look again at once, after letting others run.
            await asyncio.sleep(0 if len(data) == _READ_BYTES else poll_s)
    except OSError as exc:
        _log.warning("backend.log_unreadable", path=str(path), error=str(exc))
        return None
    finally:
        os.close(fd)


class ReadyPipe:
    """The pipe a backend may announce its readiness on: it writes `READY\\n` to the inherited
    descriptor named by `GPULET_READY_FD`.

    The read end stays open until `close` (call it when the backend has exited), not just until
    readiness is seen: a backend that writes after another signal won the race must not get
    EPIPE for it.
    """

    def __init__(self) -> None:
        # Both ends are non-inheritable (Python's default): only the backend it is passed to
        # (pass_fds) gets the write end, not a backend spawned at the same time.
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        self._write_open = True
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: asyncio.Future[bool] | None = None

    @property
    def child_fd(self) -> int:
        """The descriptor to pass to the child; the same number in the child."""
        return self._write_fd

    def spawned(self) -> None:
        """The child has its copy of the write end: drop ours, so that the pipe ends (EOF)
        when every process of the backend has closed it."""
        if self._write_open:
            os.close(self._write_fd)
            self._write_open = False

    async def wait(self) -> bool:
        """True once a `READY` line arrives; False if the pipe ends (or is closed) first."""
        if self._closed:
            return False
        loop = asyncio.get_running_loop()
        result: asyncio.Future[bool] = loop.create_future()
        buffer = bytearray()

        def readable() -> None:
            if result.done():
                return
            try:
                data = os.read(self._read_fd, 4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                result.set_result(False)
                return
            buffer.extend(data)
            *lines, rest = bytes(buffer).split(b"\n")
            if any(line.rstrip(b"\r") == READY_MESSAGE for line in lines):
                result.set_result(True)
                return
            buffer[:] = rest[-_MAX_PIPE_LINE:]

        loop.add_reader(self._read_fd, readable)
        self._loop = loop
        self._waiting = result
        try:
            return await result
        finally:
            self._stop_reading()

    def close(self) -> None:
        self.spawned()
        if not self._closed:
            self._stop_reading()
            self._closed = True
            os.close(self._read_fd)

    def _stop_reading(self) -> None:
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_result(False)  # closed while someone waited: no READY came
        self._waiting = None
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed already
                self._loop.remove_reader(self._read_fd)
            self._loop = None
