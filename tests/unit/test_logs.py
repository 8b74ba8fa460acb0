"""The daemon's log output: colour only on a terminal and never under NO_COLOR, and one
naming style (`noun.verb`) for every event."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from gpuletd.logs import colors_wanted, renderer
from gpuletd.scheduler import LeaseEndReason

DAEMON = Path(__file__).resolve().parents[2] / "daemon" / "gpuletd"
NOUN_VERB = re.compile(r"^[a-z]+\.[a-z]+(_[a-z]+)*$")
LEVELS = {"debug", "info", "warning", "error", "exception", "critical", "msg"}


@pytest.mark.parametrize(
    ("env", "tty", "expected"),
    [
        ({}, True, True),
        ({}, False, False),
        ({"NO_COLOR": "1"}, True, False),
        ({"NO_COLOR": "anything"}, True, False),
        # no-color.org: set *and not empty*.
        ({"NO_COLOR": ""}, True, True),
    ],
)
def test_colours_follow_the_terminal_and_no_color(
    env: dict[str, str], tty: bool, expected: bool
) -> None:
    assert colors_wanted(env, tty=tty) is expected


def test_the_console_renderer_without_colours_writes_no_escape_codes() -> None:
    event = {"event": "lease.granted", "log_level": "info", "client": "w", "timestamp": "t"}
    plain = renderer(json=False, colors=False)(None, "info", dict(event))
    assert isinstance(plain, str) and "lease.granted" in plain and "\x1b" not in plain
    coloured = renderer(json=False, colors=True)(None, "info", dict(event))
    assert isinstance(coloured, str) and "\x1b[" in coloured


def _event_names() -> list[tuple[str, str]]:
    """(where, name) of every literal event name passed to a logger in the daemon."""
    found = []
    for path in sorted(DAEMON.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            called = node.func.attr
            on = ast.unparse(node.func.value).lower()
            if not ((called in LEVELS and "log" in on) or called == "_warn_once"):
                continue
            if node.args and isinstance(node.args[0], ast.Constant):
                found.append((f"{path.name}:{node.lineno}", str(node.args[0].value)))
    return found


def test_every_log_event_is_named_noun_verb() -> None:
    names = _event_names()
    assert len(names) > 50  # the scan finds the daemon's log calls
    assert [(w, n) for w, n in names if not NOUN_VERB.match(n)] == []


def test_lease_end_events_are_noun_verb_too() -> None:
    # The log sink names these `lease.<reason>` from the value.
    assert all(NOUN_VERB.match(f"lease.{r.value}") for r in LeaseEndReason)
