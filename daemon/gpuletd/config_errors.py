"""Where a configuration value came from, and errors that point at it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ConfigError",
    "Location",
    "ProfileFileError",
    "ProfileSpecError",
    "SourceMap",
    "UnknownProfileName",
    "read_config_text",
]


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


class ProfileSpecError(ConfigError):
    """A `--profile` / GPULET_DEPLOYMENT_PROFILE / `profile =` value that names no profile."""


class UnknownProfileName(ProfileSpecError):
    """A name that is neither built in nor defined in the config; the message lists the known."""


class ProfileFileError(ProfileSpecError):
    """A profile file that cannot be read or is not a valid profile: file, line, field."""


def read_config_text(path: Path, error: type[ConfigError] = ConfigError) -> str:
    """A configuration file's text; one that cannot be read or is not UTF-8 names the file
    (and the line of the first bad byte) instead of raising a traceback."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise error(Location(str(path)), f"cannot read file: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise error(
            Location(str(path), line),
            f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); save the file "
            "as UTF-8",
        ) from None


_HEADER = re.compile(r"^\s*\[\[?\s*(?P<key>[^\]]+?)\s*\]")
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
                # `[a.b]` (or `[[a]]`) also defines `a` here when nothing named it earlier.
                for end in range(1, len(table) + 1):
                    self._lines.setdefault(table[:end], n)
            elif m := _KEY.match(line):
                self._lines.setdefault(table + _split_key(m.group("key")), n)

    def at(self, *keys: str) -> Location:
        """The line of the deepest prefix of `keys` that was written in the file."""
        for end in range(len(keys), 0, -1):
            line = self._lines.get(tuple(keys[:end]))
            if line is not None:
                return Location(self.path, line)
        return Location(self.path)
