"""The pieces of `gpulet run`'s child handling that need no daemon."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import pytest

from gpulet.cli import run_child
from gpulet.cli.run_child import (
    CommandError,
    Relay,
    Signalled,
    exit_status,
    parse_on_lost,
    resolve,
    start,
    supervise,
)

# Exits 3 on SIGINT; ignores SIGTERM (so only SIGKILL ends it); says when it is ready.
STUBBORN = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "signal.signal(signal.SIGINT, lambda *a: sys.exit(3))\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def test_resolve_finds_commands_like_a_shell(tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    (tmp_path / "data").write_text("x")
    assert resolve("tool", path=str(tmp_path)) == str(tool)
    assert resolve(str(tool)) == str(tool)
    cases = [
        ("missing", 127, "missing: command not found"),
        ("data", 126, "data: permission denied"),  # on PATH, not executable
        (str(tmp_path / "data"), 126, f"{tmp_path}/data: permission denied"),
        (str(tmp_path), 126, f"{tmp_path}: is a directory"),
        ("/nonexistent/cmd", 127, "/nonexistent/cmd: no such file or directory"),
    ]
    for name, code, message in cases:
        with pytest.raises(CommandError) as e:
            resolve(name, path=str(tmp_path))
        assert (e.value.code, e.value.message) == (code, message)


def test_parse_on_lost() -> None:
    assert parse_on_lost("term") is signal.SIGTERM
    assert parse_on_lost("ignore") is None
    for spelling in ("INT", "sigint", "SIGINT", "2"):
        assert parse_on_lost(spelling) is signal.SIGINT
    for bad in ("", "nope", "SIGNOPE", "0", "-1", "999"):
        with pytest.raises(ValueError, match="--on-lost"):
            parse_on_lost(bad)


def test_exit_status_reports_signals_as_a_shell_does() -> None:
    assert [exit_status(c) for c in (0, 7, -2, -15)] == [0, 7, 130, 143]


def test_lost_lease_escalates_to_sigkill_after_the_grace() -> None:
    lost = threading.Event()
    told: list[bool] = []
    with Relay() as relay:
        child = start([sys.executable, "-c", STUBBORN], sys.executable, dict(os.environ), relay)
        try:
            lost.set()
            code, was_told = supervise(
                child, lost, signal.SIGTERM, lambda: told.append(True), grace=0.3
            )
        finally:
            child.close()
    # SIGTERM was ignored: SIGKILL ended it.
    assert (code, was_told, told) == (-signal.SIGKILL, True, [True])


def test_on_lost_ignore_lets_the_command_finish() -> None:
    lost = threading.Event()
    lost.set()
    told: list[bool] = []
    with Relay() as relay:
        child = start(
            [sys.executable, "-c", "import sys; sys.exit(4)"],
            sys.executable,
            dict(os.environ),
            relay,
        )
        try:
            code, was_told = supervise(child, lost, None, lambda: told.append(True))
        finally:
            child.close()
    assert (code, was_told) == (4, False)


def test_relay_ends_gpulet_before_the_command_and_forwards_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Signalled) as e, Relay():
        # No command yet: the signal ends gpulet through the `with` (releasing the lease).
        signal.raise_signal(signal.SIGUSR1)
    assert e.value.sig == signal.SIGUSR1
    assert signal.getsignal(signal.SIGTERM) == before  # restored

    lost = threading.Event()
    with Relay() as relay:
        child = start([sys.executable, "-c", STUBBORN], sys.executable, dict(os.environ), relay)
        try:
            # In the terminal's foreground, a SIGINT is not passed on (the terminal sent it to
            # the whole group, the command has its own)...
            monkeypatch.setattr(run_child, "_in_terminal_foreground", lambda: True)
            signal.raise_signal(signal.SIGINT)
            assert child.wait(0.2) is None
            # ...SIGHUP is: the child has no handler for it and dies of it.
            signal.raise_signal(signal.SIGHUP)
            code, _ = supervise(child, lost, signal.SIGTERM, lambda: None)
        finally:
            child.close()
    assert code == -signal.SIGHUP


def test_a_sigint_sent_to_gpulet_alone_reaches_the_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not the terminal's foreground group (a CI runner, `kill -INT`): passed on."""
    monkeypatch.setattr(run_child, "_in_terminal_foreground", lambda: False)
    lost = threading.Event()
    with Relay() as relay:
        child = start(
            [sys.executable, "-c", "import time; time.sleep(30)"],
            sys.executable,
            dict(os.environ),
            relay,
        )
        try:
            signal.raise_signal(signal.SIGINT)
            code, _ = supervise(child, lost, signal.SIGTERM, lambda: None)
        finally:
            child.close()
    assert code == -signal.SIGINT


@pytest.mark.parametrize("lc_ctype", [None, "C", ""])
def test_the_command_gets_the_environment_it_was_given(
    tmp_path: Path, lc_ctype: str | None
) -> None:
    # The exec shim is a Python, which sets LC_CTYPE=C.UTF-8 under the C locale (PEP 538).
    env = {k: v for k, v in os.environ.items() if not k.startswith("LC_") and k != "LANG"}
    if lc_ctype is not None:
        env["LC_CTYPE"] = lc_ctype
    out = tmp_path / "out"
    with Relay() as relay:
        child = start(["sh", "-c", f'echo "${{LC_CTYPE-unset}}" > {out}'], "/bin/sh", env, relay)
        try:
            code, _ = supervise(child, threading.Event(), None, lambda: None)
        finally:
            child.close()
    assert code == 0
    assert out.read_text() == f"{'unset' if lc_ctype is None else lc_ctype}\n"
