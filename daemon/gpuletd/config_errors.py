"""Where a configuration value came from, and errors that point at it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ConfigError", "Location", "SourceMap"]


@dataclass(frozen=True)
class Location:
    file: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else self.file


class ConfigError(Exception):
    """A configuration problem a person can fix: where, which field, what was expected."""

    def __init__(self, location: Location | str, message: str) -> None:
        super().__init__(f"{location}: {message}")
        self.location = location
        self.message = message


_HEADER = re.compile(r"^\s*\[(?!\[)\s*(?P<key>[^\]]+?)\s*\]")
_KEY = re.compile(r"""^\s*(?P<key>"[^"]*"|'[^']*'|[A-Za-z0-9_.\-"' ]+?)\s*=""")


def _split_key(dotted: str) -> tuple[str, ...]:
    parts: list[str] = []
    for m in re.finditer(r""""([^"]*)"|'([^']*)'|([^.\s]+)""", dotted):
        parts.append(next(g for g in m.groups() if g is not None))
    return tuple(parts)


class SourceMap:
    """Finds the line of a key in a TOML file.

    tomllib reports line numbers only for syntax errors, so the loader asks this map where
    a table or key was written. It understands headers and `key =` lines (dotted keys too),
    which is how people write gpulet configs; inline tables point at their key's line.
    """

    def __init__(self, path: Path | str, text: str) -> None:
        self.path = str(path)
        self._lines: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        for n, line in enumerate(text.splitlines(), start=1):
            if m := _HEADER.match(line):
                table = _split_key(m.group("key"))
                self._lines.setdefault(table, n)
            elif m := _KEY.match(line):
                self._lines.setdefault(table + _split_key(m.group("key")), n)

    def at(self, *keys: str) -> Location:
        """The line of the deepest prefix of `keys` that was written in the file."""
        for end in range(len(keys), 0, -1):
            line = self._lines.get(tuple(keys[:end]))
            if line is not None:
                return Location(self.path, line)
        return Location(self.path)
