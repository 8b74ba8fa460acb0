"""Checking what a person typed, before anything is sent: one line per mistake, exit code 2.

The daemon checks the same fields (it is the authority, and other clients exist); checking
here too turns `--ttl nan` into a sentence naming the flag instead of a gRPC status, and a
typo costs no connection.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from gpulet.address import normalize_address
from gpulet.cli.exits import Exit
from gpulet.cli.output import safe

__all__ = [
    "MAX_CLIENT_NAME",
    "PRIORITY",
    "TOKEN_ENV",
    "ArgumentParser",
    "address",
    "client_name",
    "identifier",
    "integer",
    "join_token_values",
    "read_token",
    "seconds",
]

# The daemon's limits (gpuletd/leases.py), repeated so that a bad value fails before dialing.
PRIORITY = range(-1000, 1001)
MAX_CLIENT_NAME = 128
# Longer than any id, role or token gpuletd makes; past it, a value is a paste gone wrong.
MAX_TEXT = 256
# A year: beyond any sensible wait or lease, and far inside what gRPC's deadline arithmetic
# (nanoseconds in an int64) can hold.
MAX_SECONDS = 365 * 24 * 3600.0
TOKEN_ENV = "GPULET_LEASE_TOKEN"


def quote(text: str, limit: int = 40) -> str:
    """What the user typed, for an error message: short, and safe for a terminal."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what was wrong, and where to look), not the
    usage block followed by the error; and it never echoes raw input to the terminal.
    Abbreviated options are off: `--tok -x` would escape the handling of tokens that begin
    with `-`, and a script that abbreviates breaks when an option is added."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        kw.setdefault("allow_abbrev", False)
        super().__init__(*a, **kw)

    def error(self, message: str) -> NoReturn:
        line = safe(message)
        if len(line) > 300:
            line = line[:300] + "..."
        self.exit(Exit.USAGE, f"{self.prog}: {line} (see `{self.prog} --help`)\n")


def seconds(*, minimum: float, inclusive: bool = True) -> Callable[[str], float]:
    """A finite number of seconds ≥ `minimum` (> when not `inclusive`), at most a year."""
    low = f"from {minimum:g}" if inclusive else f"above {minimum:g}"
    rule = f"a number of seconds {low} to {MAX_SECONDS:.0f} (a year)"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{rule}, got {quote(text)}") from None
        above = value >= minimum if inclusive else value > minimum
        if not (math.isfinite(value) and above and value <= MAX_SECONDS):
            raise argparse.ArgumentTypeError(f"{rule}, got {quote(text)}")
        return value

    parse.__name__ = "seconds"
    return parse


def integer(valid: range) -> Callable[[str], int]:
    rule = f"a whole number from {valid.start} to {valid.stop - 1}"

    def parse(text: str) -> int:
        # Bounded before int(): a 5000-digit string would hit Python's int-parsing limit.
        try:
            value = int(text) if len(text) <= 40 else None
        except ValueError:
            value = None
        if value is None or value not in valid:
            raise argparse.ArgumentTypeError(f"{rule}, got {quote(text)}")
        return value

    parse.__name__ = "integer"
    return parse


def identifier(what: str) -> Callable[[str], str]:
    """A model id, role, lease id or profile name: non-empty, printable, not absurdly long.
    Whether it exists is for gpuletd to say."""

    def parse(text: str) -> str:
        if not text:
            raise argparse.ArgumentTypeError(f"{what} is empty")
        if len(text) > MAX_TEXT:
            raise argparse.ArgumentTypeError(
                f"{what} is {len(text)} characters long, at most {MAX_TEXT}: {quote(text)}"
            )
        if not text.isprintable():
            raise argparse.ArgumentTypeError(f"{what} has control characters: {quote(text)}")
        return text

    parse.__name__ = what
    return parse


def client_name(text: str) -> str:
    """Shown to everyone in `gpulet lease list`: printable and at most 128 characters."""
    if not text or len(text) > MAX_CLIENT_NAME or not text.isprintable():
        raise argparse.ArgumentTypeError(
            f"1 to {MAX_CLIENT_NAME} printable characters, got {len(text)} ({quote(text)})"
        )
    return text


def address(text: str) -> str:
    """`unix:///path`, a bare socket path, or `host:port`."""
    if not text or len(text) > 1024 or not text.isprintable():
        raise argparse.ArgumentTypeError(
            f"an address such as unix:///run/gpulet/gpulet.sock, got {quote(text)}"
        )
    return normalize_address(text)


def join_token_values(args: Sequence[str]) -> list[str]:
    """`--token VALUE` → `--token=VALUE`: argparse takes a value that begins with `-` for an
    option (`--token -dVRj...` fails with "expected one argument"), and tokens may."""
    out: list[str] = []
    it = iter(args)
    for a in it:
        if a == "--token":
            value = next(it, None)
            out.append(a if value is None else f"--token={value}")
        else:
            out.append(a)
    return out


def read_token(given: str | None, parser: argparse.ArgumentParser) -> str:
    """The token from `--token VALUE`, `--token -` (standard input) or `$GPULET_LEASE_TOKEN`;
    the last two keep it out of `ps` and shell history."""
    if given == "-":
        token, source = sys.stdin.readline().strip(), "standard input"
    elif given is not None:
        token, source = given, "--token"
    else:
        token, source = os.environ.get(TOKEN_ENV, ""), f"${TOKEN_ENV}"
        if not token:
            parser.error(
                f"the lease's token is needed: --token TOKEN, --token - (read from standard "
                f"input) or ${TOKEN_ENV}"
            )
    if not token or len(token) > MAX_TEXT or not token.isprintable() or " " in token:
        parser.error(f"the token from {source} is not a token")
    return token
