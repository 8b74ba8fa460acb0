"""A backend's output: the last lines in memory, and optionally everything in a log file."""

from __future__ import annotations

import re
import time
from collections import deque
from pathlib import Path
from typing import BinaryIO

import structlog

__all__ = ["LogRing", "open_log_file"]

_log = structlog.get_logger("gpuletd.backends")

# A line longer than this is cut: a tail is for people, and one runaway line (a base64 blob, a
# progress bar without newlines) must not hold megabytes.
_MAX_LINE_BYTES = 8192
_ROTATE_BYTES = 32 * 1024 * 1024


class LogRing:
    """The last `max_lines` lines of a byte stream.

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


def open_log_file(log_dir: Path, model_id: str, command: tuple[str, ...]) -> BinaryIO | None:
    """Open `<log_dir>/<model>.log` for appending, with a header naming this start.

    A file over 32 MiB is moved to `.log.1` first (one generation), so a chatty backend cannot
    fill the disk over weeks. A log file is a convenience: if it cannot be opened the backend
    still starts, and the failure is logged once.
    """
    path = log_dir / f"{_UNSAFE.sub('_', model_id) or 'model'}.log"
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size > _ROTATE_BYTES:
            path.replace(path.with_name(path.name + ".1"))
        # Unbuffered: a chunk is on disk as soon as it is read, even if the daemon dies.
        f = open(path, "ab", buffering=0)  # noqa: SIM115 - owned and closed by the backend
    except OSError as exc:
        _log.warning("backend.log_file_unavailable", model=model_id, path=str(path), error=str(exc))
        return None
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    f.write(f"=== gpulet: starting {model_id} at {stamp}: {' '.join(command)}\n".encode())
    return f
