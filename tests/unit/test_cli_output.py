"""How the CLI prints: terminal-safe strings, tables that fit the terminal, colour only for a
terminal that wants it, whole lines for a pipe."""

from __future__ import annotations

import io
import re

import pytest

from gpulet.cli import output

ANSI = re.compile(r"\x1b\[[0-9;]*m")
ROWS = [
    ["l-0123456789abcdef", "qwen3-vl", "caption-worker@" + "host" * 20, "loaded"],
    ["l-fedcba9876543210", "florence-2-large", "me", "failed"],
]
HEADERS = ["LEASE", "MODEL", "CLIENT", "STATE"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain text, ünïcødé, 中文", "plain text, ünïcødé, 中文"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("a\nb\rc\td", "a\\x0ab\\x0dc\\x09d"),
        ("\x9b2J", "\\x9b2J"),  # C1 CSI: an escape sequence without ESC
        ("\x7f", "\\x7f"),
        ("abc\u202edef", "abc\\u202edef"),  # right-to-left override
        ("\u2028", "\\u2028"),
    ],
)
def test_safe_escapes_what_a_terminal_would_act_on(raw: str, shown: str) -> None:
    assert output.safe(raw) == shown


def test_a_table_fits_the_terminal_by_wrapping_free_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "70")
    monkeypatch.setenv("NO_COLOR", "1")
    term = Terminal()
    monkeypatch.setattr("sys.stdout", term)
    output.table(HEADERS, ROWS, flexible={"CLIENT"})
    lines = term.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 70
    assert not ANSI.search(term.getvalue())  # NO_COLOR
    # Ids are never cut: they are what a person copies.
    assert "l-0123456789abcdef" in lines[1] and "florence-2-large" in term.getvalue()


def test_columns_that_cannot_fit_run_past_the_edge_rather_than_vanish(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "20")
    monkeypatch.setenv("NO_COLOR", "1")
    term = Terminal()
    monkeypatch.setattr("sys.stdout", term)
    output.table(HEADERS, ROWS, flexible={"CLIENT"})
    header = term.getvalue().splitlines()[0]
    assert header.split() == HEADERS


def test_colour_on_a_terminal_and_never_in_a_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    term = Terminal()
    monkeypatch.setattr("sys.stdout", term)
    output.table(HEADERS, ROWS)
    assert ANSI.search(term.getvalue())

    pipe = io.StringIO()
    monkeypatch.setattr("sys.stdout", pipe)
    output.table(HEADERS, ROWS, flexible={"CLIENT"})
    text = pipe.getvalue()
    assert not ANSI.search(text)
    lines = text.splitlines()
    # Whole rows for grep and awk, however narrow COLUMNS says the terminal is.
    assert len(lines) == 3 and ROWS[0][2] in lines[1]
    assert all(line == line.rstrip() for line in lines)
    assert lines[1].split() == ROWS[0]


def test_cells_are_made_safe_and_markup_is_not_interpreted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pipe = io.StringIO()
    monkeypatch.setattr("sys.stdout", pipe)
    output.table(["A", "B"], [["[bold red]x[/]", "\x1b]0;pwned\x07"], [None, ["u", "v"]]])
    lines = pipe.getvalue().splitlines()
    assert lines[1].split() == ["[bold", "red]x[/]", "\\x1b]0;pwned\\x07"]
    assert lines[2].split() == ["-", "u,v"]


def test_err_keeps_a_multi_line_message_readable(capsys: pytest.CaptureFixture[str]) -> None:
    output.err("backend failed:\nlast line \x1b[2J")
    assert capsys.readouterr().err == "gpulet: backend failed:\n  last line \\x1b[2J\n"
