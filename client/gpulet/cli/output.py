"""How the CLI prints: `--json` for scripts, tables and lines for people.

Every string that came from gpuletd passes through `safe()` before it reaches a terminal:
client names are chosen by whoever can reach the socket, and an escape sequence in one
must not paint (or rewrite) an operator's screen. `--json` is safe by construction (`json`
escapes every control character).
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Collection, Iterable, Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["err", "print_json", "safe", "say", "table"]

# A free-text column is squeezed no narrower than this before the lines are let overflow.
FLEXIBLE_MIN = 12

# Colours for the states people scan a table for; nothing else is coloured.
STYLES = {
    "loaded": "green",
    "ok": "green",
    "eligible": "green",
    "loading": "yellow",
    "unloading": "yellow",
    "stale": "yellow",
    "rejected": "yellow",
    "failed": "red",
    "lost": "red",
    "backend_died": "red",
    "expired": "red",
    "not_found": "red",
}


def _escape(ch: str) -> str:
    n = ord(ch)
    if n < 0x100:
        return f"\\x{n:02x}"
    return f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def safe(text: object, *, keep_newlines: bool = False) -> str:
    """`text` with every non-printable character (C0/C1 controls, ESC, DEL, bidi overrides,
    line separators, unassigned code points) shown as a Python escape, e.g. `\\x1b`."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() or (keep_newlines and c == "\n") else _escape(c) for c in s)


def _colour(stream: TextIO) -> bool:
    # https://no-color.org: any non-empty value turns colour off. Off too when not a terminal.
    return not os.environ.get("NO_COLOR") and stream.isatty()


def _console(stream: TextIO) -> Console:
    """A console for this call: `sys.stdout` is looked up now, so a test that captures it
    (or a caller that replaced it) gets the output."""
    tty = stream.isatty()
    return Console(
        file=stream,
        # A pipe gets whole lines (for grep and awk); a terminal gets tables fitted to it.
        width=None if tty else 1_000_000,
        color_system="auto" if _colour(stream) else None,
        force_terminal=tty,
        no_color=not _colour(stream),
        highlight=False,
        markup=False,
        emoji=False,
    )


def _cell(v: Any, sep: str) -> Text:
    if v is None:
        return Text("-")
    if isinstance(v, list | tuple):
        return Text(sep.join(safe(x) for x in v) or "-")
    s = safe(v)
    return Text(s, style=STYLES.get(s, ""))


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    flexible: Collection[str] = (),
) -> None:
    """Aligned columns under UPPERCASE headers, fitted to the terminal: only the `flexible`
    columns (free text: descriptions, client names, lists) wrap; ids and numbers keep their
    width so that they can still be copied. When even those do not fit, the lines run past
    the edge (the terminal wraps them) rather than lose a column."""
    stream = sys.stdout
    # A list wraps between its items on a terminal; piped, it stays one word for awk.
    sep = ", " if stream.isatty() else ","
    cells = [[_cell(v, sep) for v in row] for row in rows]
    t = Table(box=None, show_edge=False, pad_edge=False, header_style="bold")
    needed = 2 * (len(headers) - 1)  # the gaps between columns
    for i, h in enumerate(headers):
        widest = max([len(h), *(r[i].cell_len for r in cells)])
        if h in flexible:
            narrowest = min(widest, FLEXIBLE_MIN)
            t.add_column(h, overflow="fold", min_width=narrowest)
        else:
            narrowest = widest
            t.add_column(h, no_wrap=True, min_width=widest)
        needed += narrowest
    for r in cells:
        t.add_row(*r)
    console = _console(stream)
    # Rich squeezes a table wider than the console by dropping whole columns: never let it.
    console.width = max(console.width, needed)
    if _colour(stream):
        console.print(t)
        return
    # Plain: rendered aside so that the padding rich leaves at the end of lines goes.
    buf = io.StringIO()
    console.file = buf
    console.print(t)
    stream.write("".join(line.rstrip() + "\n" for line in buf.getvalue().splitlines()))


def say(*parts: object, flush: bool = False) -> None:
    """One line on stdout, each part made safe for a terminal."""
    print("".join(safe(p) for p in parts), flush=flush)


def err(message: str) -> None:
    """An error on stderr as `gpulet: ...`; a multi-line message (a backend's last log
    lines) keeps its lines, indented under the first."""
    text = safe(message, keep_newlines=True).replace("\n", "\n  ")
    print(f"gpulet: {text}", file=sys.stderr)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")
