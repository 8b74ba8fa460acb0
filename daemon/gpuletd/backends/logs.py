"""A backend's output: its log file (its stdout and stderr), and reading the tail of it."""

from __future__ import annotations

import os
import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import structlog

__all__ = ["LogFile", "LogRing", "log_path_for", "open_log_file", "read_log_tail"]

_log = structlog.get_logger("gpuletd.backends")

# A line longer than this is cut: a tail is for people, and one runaway line (a base64 blob, a
# progress bar without newlines) must not hold megabytes.
_MAX_LINE_BYTES = 8192
_ROTATE_BYTES = 32 * 1024 * 1024
# A tail is read from at most this much of the file's end: enough for the last lines even
# when some are long, cheap enough to read for every error message.
_TAIL_BYTES = 64 * 1024


class LogRing:
    """The last `max_lines` lines of a byte stream (here: the end of a log file).

    A carriage return rewinds the current line as a terminal would, so a progress bar
    ("Loading: 10%\\rLoading: 20%...") leaves one line with its last state, not hundreds.
    """

    def __init__(self, max_lines: int = 200) -> None:
        self._max_lines = max_lines
        self._lines: deque[str] = deque(maxlen=max_lines)
        self._partial = bytearray()

    def feed(self, data: bytes) -> None:
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                self._extend_partial(data[start:])
                return
            self._extend_partial(data[start:end])
            self._emit()
            start = end + 1

    def close(self) -> None:
        """The stream ended: keep an unterminated last line (often the most telling one)."""
        if self._partial:
            self._emit()

    def tail(self, n: int) -> list[str]:
        if n <= 0:
            return []
        lines = list(self._lines)
        partial = self._current()
        if partial:
            lines.append(partial)
        return lines[-min(n, self._max_lines) :]

    def _extend_partial(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self._partial.endswith(b"\r"):
            # The CR that ended the previous chunk was not half of a CRLF: it rewinds the line.
            self._partial.clear()
        # A CR as the very last byte may be the first half of a CRLF split across reads: keep
        # it until the next chunk tells (`_current` strips it).
        cr = chunk.rfind(b"\r", 0, len(chunk) - 1)
        if cr >= 0:
            self._partial.clear()
            chunk = chunk[cr + 1 :]
        room = _MAX_LINE_BYTES - len(self._partial)
        if room > 0:
            self._partial += chunk[:room]

    def _current(self) -> str:
        return bytes(self._partial).rstrip(b"\r").decode("utf-8", "replace")

    def _emit(self) -> None:
        self._lines.append(self._current())
        self._partial.clear()


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class LogFile:
    """A backend's log file, opened for the child's stdout and stderr."""

    # Write-only, O_APPEND; the caller passes it to the child and then closes its own copy.
    fd: int
    path: Path
    # Where this start's output begins (after the header): a tail never shows earlier starts.
    offset: int
    # Names the file even after a later start of the same model rotates it away.
    inode: int


def log_path_for(log_dir: Path, model_id: str) -> Path:
    return log_dir / f"{_UNSAFE.sub('_', model_id) or 'model'}.log"


def open_log_file(log_dir: Path, model_id: str, command: tuple[str, ...]) -> LogFile | None:
    """Open `<log_dir>/<model>.log` for appending, with a header naming this start.

    O_APPEND because the backend writes to it directly, for as long as it runs, whatever
    happens to the daemon; its workers share the descriptor and appends never overwrite each
    other. A file over 32 MiB is moved to `.log.1` first (one generation), so a chatty backend
    cannot fill the disk over weeks of restarts. If it cannot be opened the backend still
    starts, without output, and the failure is logged.
    """
    path = log_path_for(log_dir, model_id)
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size > _ROTATE_BYTES:
            path.replace(path.with_name(path.name + ".1"))
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        _log.warning("backend.log_file_unavailable", model=model_id, path=str(path), error=str(exc))
        return None
    try:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        header = f"=== gpulet: starting {model_id} at {stamp}: {' '.join(command)}\n"
        os.write(fd, header.encode())
        info = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        _log.warning("backend.log_file_unavailable", model=model_id, path=str(path), error=str(exc))
        return None
    return LogFile(fd=fd, path=path, offset=info.st_size, inode=info.st_ino)


def read_log_tail(path: Path, offset: int, n: int, *, inode: int | None = None) -> list[str]:
    """The last `n` lines written to `path` after `offset`, read from at most its last 64 KiB.

    `inode`, when known, names the file this start wrote: if a later start rotated it to
    `.log.1`, that is where it is read. A file that is gone or shorter than `offset` (someone
    truncated it) gives what is there, never an error: a tail is for a message, not a must.
    """
    if n <= 0:
        return []
    candidates = [path, path.with_name(path.name + ".1")] if inode is not None else [path]
    for candidate in candidates:
        try:
            with open(candidate, "rb") as f:
                info = os.fstat(f.fileno())
                if inode is not None and info.st_ino != inode:
                    continue
                start = offset if info.st_size >= offset else 0
                begin = max(start, info.st_size - _TAIL_BYTES)
                cut = begin > start
                # One byte more when cutting, to tell whether `begin` starts a line.
                f.seek(begin - cut)
                data = f.read(info.st_size - begin + cut)
        except OSError:
            continue
        if cut:
            # Drop the line fragment before the first newline rather than show half a line.
            data = data[data.find(b"\n") + 1 :] if b"\n" in data else b""
        ring = LogRing(max_lines=n)
        ring.feed(data)
        ring.close()
        return ring.tail(n)
    return []
