"""The command under `gpulet run`: found, started, signalled and waited for like under
timeout(1) or tini.

Signals. The command stays in gpulet's process group, so whatever the terminal sends to the
foreground group (Ctrl-C's SIGINT, Ctrl-\\'s SIGQUIT, SIGWINCH, Ctrl-Z) reaches it directly,
once. gpulet catches SIGINT and SIGQUIT so as not to die of them while the command runs
(it has to wait for the command and then release the lease); it passes them on only when it
is not its terminal's foreground group (then they were sent to gpulet alone): passing on a
Ctrl-C would deliver it twice. Signals sent to gpulet alone (SIGTERM, SIGHUP, SIGUSR1,
SIGUSR2: kill, systemd, timeout(1)) are forwarded. A signal that gpulet's caller had set to
ignored (nohup, for SIGHUP) stays ignored for the command too, as if it ran directly; SIGINT
and SIGQUIT are always at their default in the command.

Dying with gpulet. The command gets PR_SET_PDEATHSIG = SIGKILL (set by a small exec shim, see
_SHIM), so a `kill -9` of gpulet, which no handler can see, does not leave it running on a GPU
that is no longer leased.
"""

from __future__ import annotations

import contextlib
import enum
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import FrameType

__all__ = [
    "EXIT_NOT_EXECUTABLE",
    "EXIT_NOT_FOUND",
    "LOST_GRACE_S",
    "CommandError",
    "Relay",
    "Signalled",
    "exit_status",
    "parse_on_lost",
    "resolve",
    "start",
    "stop",
    "supervise",
]

# What a shell answers for a command it cannot run (POSIX 2.8.2).
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127

# From the terminal, to the whole foreground group (the command has them already).
FROM_TERMINAL = (signal.SIGINT, signal.SIGQUIT)
# To gpulet alone: passed on to the command.
FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)

# After the lease is lost: how long the command has between the first signal and SIGKILL.
# Short, because the daemon may already have given its GPU memory to someone else.
LOST_GRACE_S = 5.0
# How often the wait for the command looks at `lease.lost` (the renewer sets it at most once
# per TTL/3, so this adds little); the command's own exit wakes the wait at once (pidfd).
POLL_S = 0.25


class CommandError(Exception):
    """COMMAND cannot be run; `code` is the shell's exit code for it (126 or 127)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def resolve(name: str, path: str | None = None) -> str:
    """The file COMMAND names, found the way a shell finds it; CommandError if none can run.

    Done before a lease is taken: a typo must not load (or evict) a model."""
    if "/" in name:
        if not os.path.lexists(name):
            raise CommandError(EXIT_NOT_FOUND, f"{name}: no such file or directory")
        if os.path.isdir(name):
            raise CommandError(EXIT_NOT_EXECUTABLE, f"{name}: is a directory")
        if not os.access(name, os.X_OK):
            raise CommandError(EXIT_NOT_EXECUTABLE, f"{name}: permission denied")
        return name
    search = os.environ.get("PATH", os.defpath) if path is None else path
    found = shutil.which(name, path=search)
    if found is not None:
        return found
    # Nothing runnable on PATH. A file of that name that cannot be executed is "permission
    # denied" (126), as in a shell; otherwise "command not found" (127).
    for d in search.split(os.pathsep):
        if os.path.isfile(os.path.join(d or ".", name)):
            raise CommandError(EXIT_NOT_EXECUTABLE, f"{name}: permission denied")
    raise CommandError(EXIT_NOT_FOUND, f"{name}: command not found")


def parse_on_lost(value: str) -> signal.Signals | None:
    """`--on-lost`: `term` (SIGTERM), `ignore` (None), or a signal name or number."""
    v = value.strip().upper()
    if v == "IGNORE":
        return None
    if v == "TERM":
        return signal.SIGTERM
    try:
        name = v if v.startswith("SIG") else f"SIG{v}"
        sig = signal.Signals(int(v)) if v.isdigit() else signal.Signals[name]
    except (KeyError, ValueError):
        raise ValueError(
            f"--on-lost: expected term, ignore or a signal name (e.g. INT, KILL), not {value!r}"
        ) from None
    return sig


def exit_status(returncode: int) -> int:
    # Killed by a signal: report it as a shell does, 128 + the signal number.
    return returncode if returncode >= 0 else 128 - returncode


class Signalled(BaseException):
    """A signal arrived before the command started: gpulet ends as that signal would have
    ended it, but through the `with` blocks, so that a lease already granted is released.
    A BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it."""

    def __init__(self, sig: int) -> None:
        super().__init__(sig)
        self.sig = sig


class _Phase(enum.Enum):
    WAITING = enum.auto()  # no command yet: a signal ends gpulet (Signalled)
    STARTING = enum.auto()  # inside Popen: signals are kept for the command
    RUNNING = enum.auto()  # forward to the command
    DONE = enum.auto()  # ending: finish releasing the lease, ignoring further signals


class Child:
    """A started command, signalled through a pidfd where the kernel has them (5.3+): a
    pidfd cannot reach another process that reused the pid once the command is reaped."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):
            self.pidfd = os.pidfd_open(proc.pid)

    def send(self, sig: int) -> None:
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, sig)
            else:
                self.proc.send_signal(sig)
        except ProcessLookupError:
            pass  # already ended: its exit is what we report

    def wait(self, timeout: float) -> int | None:
        """The command's return code, or None if it still runs after `timeout` seconds."""
        if self.pidfd is None:
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        code = self.proc.poll()
        if code is None:
            # Readable once the process has exited; a signal handler that runs meanwhile
            # does not end the wait early (PEP 475), which is fine: the caller's loop is.
            poller = select.poll()
            poller.register(self.pidfd, select.POLLIN)
            poller.poll(timeout * 1000)
            code = self.proc.poll()
        return code

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _in_terminal_foreground() -> bool:
    """Whether gpulet's process group is its terminal's foreground group: only then did a
    SIGINT or SIGQUIT come from the terminal to the whole group (the command has its own
    copy). Otherwise it was sent to gpulet alone (kill, a CI runner) and must be passed on."""
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            return os.tcgetpgrp(fd) == os.getpgrp()
    return False


class Relay:
    """gpulet's signal handlers for the whole of `gpulet run` (a context manager restoring the
    previous ones). Installed before the lease is taken: from then on a signal must never end
    gpulet without releasing the lease, nor while the command still runs."""

    def __init__(self) -> None:
        self.phase = _Phase.WAITING
        self.child: Child | None = None
        self.pending: list[int] = []
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Relay:
        for sig in (*FROM_TERMINAL, *FORWARDED):
            previous = signal.getsignal(sig)
            if sig in FORWARDED and previous == signal.SIG_IGN:
                continue  # ignored by our caller (nohup): the command inherits it ignored
            self._previous[sig] = previous
            signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        self.phase = _Phase.DONE
        for sig, previous in self._previous.items():
            if previous is not None:  # None: set outside Python, cannot be put back
                signal.signal(sig, previous)  # type: ignore[arg-type]

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if self.phase is _Phase.WAITING:
            # Once: a second signal must not cut short the release on the way out.
            self.phase = _Phase.DONE
            raise Signalled(sig)
        if self.phase is _Phase.STARTING:
            self.pending.append(sig)
        elif (
            self.phase is _Phase.RUNNING
            and self.child is not None
            and (sig in FORWARDED or not _in_terminal_foreground())
        ):
            self.child.send(sig)
        # DONE: gpulet is on its way out (releasing the lease): nothing more to do.

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        # Popen must not be interrupted by Signalled: the command might be forked already
        # and would be left unwatched. What arrives meanwhile is kept and forwarded below.
        self.phase = _Phase.STARTING
        try:
            yield
        finally:
            if self.phase is _Phase.STARTING:  # Popen failed: nothing to forward to
                self.phase = _Phase.WAITING
                if self.pending:
                    raise Signalled(self.pending[0])

    def running(self, child: Child) -> None:
        self.child = child
        self.phase = _Phase.RUNNING
        # Kept while Popen ran: whether the command already had its own copy of a terminal
        # signal cannot be known, and one twice is better than one lost.
        for sig in self.pending:
            child.send(sig)
        self.pending.clear()

    def done(self) -> None:
        self.phase = _Phase.DONE


# The command is started through this, run by gpulet's own Python (`-I -S`: stdlib only, no
# site, no PYTHON* variables), which sets the parent-death signal and execs the command in
# its place (same pid; PR_SET_PDEATHSIG survives exec). Not a preexec_fn: that makes Popen
# fork() instead of vfork(), and fork() runs gRPC's pthread_atfork handlers, which restart
# gRPC's poller thread in the child; Popen then closes its descriptors and the poller aborts
# the child (seen about once in 15 starts: "epoll_wait error: Bad file descriptor", SIGABRT
# or "Bad exception data from child"). With vfork nothing of gpulet's runs in the child.
# It costs the command about 20 ms.
_SHIM = """\
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
parent, lc_ctype, path, *argv = sys.argv[1:]
import ctypes, errno
ulong = ctypes.c_ulong
ctypes.CDLL(None).prctl(1, ulong(signal.SIGKILL), ulong(0), ulong(0), ulong(0))
if os.getppid() != int(parent):
    os.kill(os.getpid(), signal.SIGKILL)
for sig in (signal.SIGPIPE, signal.SIGXFSZ):
    signal.signal(sig, signal.SIG_DFL)
if lc_ctype:
    os.environ["LC_CTYPE"] = lc_ctype[1:]
else:
    os.environ.pop("LC_CTYPE", None)
try:
    os.execv(path, argv)
except OSError as e:
    sys.stderr.write(f"gpulet run: {argv[0]}: {e.strerror}\\n")
    os._exit(127 if e.errno == errno.ENOENT else 126)
"""
# What the lines above do, in order, and why:
# - SIGINT to its default first: from here on a Ctrl-C ends it as it would end the command.
# - prctl(PR_SET_PDEATHSIG, SIGKILL): killed when gpulet's main thread (which started it)
#   ends, even by SIGKILL. Then getppid(): gpulet may have died before prctl took effect, in
#   which case no signal will ever come.
# - SIGPIPE and SIGXFSZ back to their defaults (Python starts with them ignored, and an
#   ignored signal stays ignored across exec).
# - LC_CTYPE as gpulet meant it: Python's start-up sets LC_CTYPE=C.UTF-8 under the C locale
#   (PEP 538), which the command must not inherit. `lc_ctype` is "" for unset, "=VALUE" else.
# - exec failures (a script whose interpreter is missing, a file that is no program) end it
#   with a shell's codes: 127 for ENOENT, 126 otherwise.


def start(argv: Sequence[str], executable: str, env: Mapping[str, str], relay: Relay) -> Child:
    """Start the command, from the main thread: the parent-death signal follows the thread
    that started it, and the main thread is the one that outlives the command."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("gpulet run must start its command from the main thread")
    lc_ctype = env.get("LC_CTYPE")
    shim = [
        sys.executable,
        "-I",
        "-S",
        "-c",
        _SHIM,
        str(os.getpid()),
        "" if lc_ctype is None else f"={lc_ctype}",
        executable,
        *argv,
    ]
    with relay.starting():
        try:
            # SIGPIPE and SIGXFSZ back to default for the shim too (restore_signals); the
            # signals gpulet handles are at their default after exec by definition.
            proc = subprocess.Popen(shim, env=dict(env), restore_signals=True)
        except OSError as e:
            raise CommandError(EXIT_NOT_EXECUTABLE, f"cannot start {sys.executable}: {e}") from None
        child = Child(proc)
        relay.running(child)
    return child


def supervise(
    child: Child,
    lost: threading.Event,
    action: int | None,
    on_lost: Callable[[], None],
    grace: float = LOST_GRACE_S,
) -> tuple[int, bool]:
    """Wait for the command; once `lost` is set, send it `action` and SIGKILL `grace` seconds
    later (action None: let it run). Returns its return code and whether it was told."""
    told_at: float | None = None
    noticed = False
    while True:
        code = child.wait(POLL_S)
        if code is not None:
            return code, told_at is not None
        if not noticed and lost.is_set():
            noticed = True
            on_lost()
            if action is not None:
                child.send(action)
                told_at = time.monotonic()
        if told_at is not None and time.monotonic() - told_at >= grace:
            child.send(signal.SIGKILL)


def stop(child: Child, grace: float = LOST_GRACE_S) -> None:
    """End the command on gpulet's own failure, so that it never outlives its lease."""
    child.send(signal.SIGTERM)
    if child.wait(grace) is None:
        child.send(signal.SIGKILL)
        child.proc.wait()
