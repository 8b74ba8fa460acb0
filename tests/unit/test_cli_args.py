"""The CLI's argument space, explored by hypothesis, in-process and with no daemon to reach.

Numbers at and past every limit, NaN, infinities, empty, huge and control-character strings:
whatever is typed, `gpulet` prints one line and no traceback, and exits 2 (usage) for what
it must refuse. What it accepts gets as far as dialing, where the missing socket ends it
with 6 (unreachable); so an exit code of 0 would mean an input slipped past both.

Each flag's rule is written out below a second time, plainly, as the specification the
parser is held to.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpulet.cli.main import main

USAGE, UNREACHABLE = 2, 6
YEAR = 365 * 24 * 3600.0
# A socket that does not exist: every accepted command ends at the dial.
ADDRESS = f"--address=unix://{tempfile.gettempdir()}/gpulet-test-absent/{os.getpid()}.sock"
BOUNDED = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str


def gpulet(argv: Sequence[str], stdin: str = "") -> Outcome:
    out, err = io.StringIO(), io.StringIO()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPULET_")}
    with (
        mock.patch.dict(os.environ, env, clear=True),
        mock.patch("sys.stdin", io.StringIO(stdin)),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        code = main([ADDRESS, *argv])
    return Outcome(int(code), out.getvalue(), err.getvalue())


def check(argv: Sequence[str], valid: bool) -> None:
    r = gpulet(argv)
    assert "Traceback" not in r.err, (argv, r.err)
    assert r.err.endswith("\n") and r.err.count("\n") == 1, (argv, r.err)  # one line
    assert r.code == (UNREACHABLE if valid else USAGE), (argv, r)
    assert "\x1b" not in r.err and "\x00" not in r.err  # nothing typed is echoed raw


# -- the rules ----------------------------------------------------------------------------


def as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def as_int(text: str) -> int | None:
    if len(text) > 40:  # no whole number in range needs more; Python's own limit is 4300
        return None
    try:
        return int(text)
    except ValueError:
        return None


def seconds_rule(low: float, inclusive: bool) -> Callable[[str], bool]:
    def ok(text: str) -> bool:
        v = as_float(text)
        if v is None or not math.isfinite(v) or v > YEAR:
            return False
        return v >= low if inclusive else v > low

    return ok


def int_rule(low: int, high: int) -> Callable[[str], bool]:
    def ok(text: str) -> bool:
        v = as_int(text)
        return v is not None and low <= v <= high

    return ok


def text_rule(limit: int) -> Callable[[str], bool]:
    return lambda text: 0 < len(text) <= limit and text.isprintable()


def token_rule(text: str) -> bool:
    # `-` reads standard input, empty here.
    return text != "-" and text_rule(256)(text) and " " not in text


TTL = seconds_rule(1, inclusive=True)
TIMEOUT = seconds_rule(0, inclusive=False)
PRIORITY = int_rule(-1000, 1000)
TOP = int_rule(1, 2**31 - 1)
IDENT = text_rule(256)
CLIENT_NAME = text_rule(128)

# -- the inputs ---------------------------------------------------------------------------


def around(*limits: float) -> st.SearchStrategy[str]:
    """Each limit, the floats on either side of it, and one past it either way."""
    values = []
    for x in limits:
        values += [x, math.nextafter(x, math.inf), math.nextafter(x, -math.inf), x - 1, x + 1]
    return st.sampled_from([repr(v) for v in values] + [str(int(v)) for v in limits])


NASTY = st.sampled_from(
    [
        "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e309", "-1e309", "5e-324",
        "1e-320", "0", "-0", "0.0", "", " ", "0x10", "1_000", "١٢", "1\n", "\x1b[31m1",
        "9" * 5000, "0" * 60 + "5", "2147483648", "99999999999999999999", "-2147483649",
        "1e3", "١e3",
    ]
)  # fmt: skip
STRINGS = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(max_codepoint=0x9F), max_size=20),  # controls, C1 included
    st.sampled_from(["", "x" * 256, "x" * 257, "x" * 100_000, "a\nb", "\x1b]0;t\x07", "\u202e"]),
)


def number(*limits: float) -> st.SearchStrategy[str]:
    return st.one_of(
        around(*limits),
        NASTY,
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
        st.text(max_size=12),
    )


def positional() -> st.SearchStrategy[str]:
    # A word that begins with `-` is an option to argparse: those have tests of their own.
    return STRINGS.filter(lambda s: not s.startswith("-"))


# -- the properties -----------------------------------------------------------------------


@BOUNDED
@given(
    target=st.one_of(
        positional().map(lambda m: ([m], IDENT(m))),
        positional().map(lambda r: ([f"--role={r}"], IDENT(r))),
        st.just(([], False)),  # neither a model nor a role
        st.just((["m", "--role=r"], False)),  # both
    ),
    ttl=st.none() | number(1, YEAR),
    priority=st.none() | number(-1000, 1000),
    timeout=st.none() | number(0, YEAR),
    client_name=st.none() | STRINGS,
    command=st.sampled_from([["lease", "acquire"], ["run"]]),
)
def test_acquire_and_run_flags(
    target: tuple[list[str], bool],
    ttl: str | None,
    priority: str | None,
    timeout: str | None,
    client_name: str | None,
    command: list[str],
) -> None:
    argv, valid = [*command, *target[0]], target[1]
    for flag, value, rule in (
        ("--ttl", ttl, TTL),
        ("--priority", priority, PRIORITY),
        ("--timeout", timeout, TIMEOUT),
        ("--client-name", client_name, CLIENT_NAME),
    ):
        if value is not None:
            argv.append(f"{flag}={value}")
            valid = valid and rule(value)
    if command == ["run"]:
        argv += ["--", "true"]
    check(argv, valid)


@BOUNDED
@given(role=positional(), top=st.none() | number(1, 2**31 - 1))
def test_select(role: str, top: str | None) -> None:
    argv = ["select", role] + ([] if top is None else [f"--top={top}"])
    check(argv, IDENT(role) and (top is None or TOP(top)))


@BOUNDED
@given(role=positional(), model=positional())
def test_explain(role: str, model: str) -> None:
    check(["explain", role, model], IDENT(role) and IDENT(model))


@BOUNDED
@given(
    verb=st.sampled_from(["renew", "release"]),
    lease_id=positional(),
    token=STRINGS | st.sampled_from(["-", "-dVRj", "--json", "-x y"]),
    joined=st.booleans(),
    ttl=st.none() | number(1, YEAR),
)
def test_renew_and_release(
    verb: str, lease_id: str, token: str, joined: bool, ttl: str | None
) -> None:
    # `--token VALUE` and `--token=VALUE` are the same, whatever VALUE begins with.
    argv = ["lease", verb, lease_id, *([f"--token={token}"] if joined else ["--token", token])]
    valid = IDENT(lease_id) and token_rule(token)
    if verb == "renew" and ttl is not None:
        argv.append(f"--ttl={ttl}")
        valid = valid and TTL(ttl)
    check(argv, valid)


@BOUNDED
@given(
    argv=st.lists(STRINGS | st.sampled_from(["lease", "--json", "--", "-", "--ttl"]), max_size=6)
)
def test_any_words_at_all(argv: list[str]) -> None:
    r = gpulet(argv)
    assert "Traceback" not in r.err
    assert r.code in (0, USAGE, UNREACHABLE), r
    if r.code == 0:  # only --help or --version (or an abbreviation of them) succeed here
        assert r.out.startswith(("usage:", "gpulet ")), r
    else:
        assert r.err.count("\n") == 1, r


def test_the_limits_themselves() -> None:
    """The boundaries, named, so that a change of limit shows here as well as above."""
    accepted = [
        ["lease", "acquire", "m", "--ttl=1", "--priority=-1000", "--timeout=0.001"],
        ["lease", "acquire", "m", f"--ttl={YEAR:.0f}", "--priority=1000", f"--timeout={YEAR:.0f}"],
        ["select", "r", "--top=1"],
        ["select", "r", f"--top={2**31 - 1}"],
        ["lease", "renew", "l-1", "--token", "-dVRj", "--ttl", "1"],
        ["--address=/no/such/dir/gpulet.sock", "roles"],  # a bare path is a socket
    ]
    refused = [
        ["lease", "acquire", "m", "--ttl=0.999"],
        ["lease", "acquire", "m", "--ttl=0.000001"],
        ["lease", "acquire", "m", "--timeout=0"],
        ["lease", "acquire", "m", "--timeout=-1"],
        ["lease", "acquire", "m", "--timeout", "nan"],
        ["lease", "acquire", "m", "--timeout", "inf"],
        ["lease", "acquire", "m", "--priority=1001"],
        ["lease", "acquire", "m", "--priority", "99999999999999999999"],
        ["select", "r", "--top=0"],
        ["select", "r", "--top", "2147483648"],
        ["lease", "acquire", "m", "--client-name", "x" * 129],
        ["lease", "acquire", "m", "--client-name", "a\x1b[31mb"],
    ]
    for argv in accepted:
        check(argv, True)
    for argv in refused:
        check(argv, False)
