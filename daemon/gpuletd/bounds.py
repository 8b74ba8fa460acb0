"""Bounds on what a client sends, and how a refusal may quote it.

Everything a client controls is checked here before it reaches the core, a log line or an
error message: a string without a bound grows every `gpulet lease list` row, every Watch
event and every log line it appears in, and an error message that repeats it in full
overflows gRPC's trailers (about 8 KB of headers), so the caller gets RESOURCE_EXHAUSTED
instead of the code meant for it. Refusals quote at most a short, repr-escaped prefix.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

__all__ = [
    "MAX_CLIENT_NAME",
    "MAX_NAME",
    "MAX_TOKEN",
    "MIN_TTL_S",
    "QUOTE_CHARS",
    "Refused",
    "check_client_name",
    "check_name",
    "check_token",
    "listing",
    "quote",
]

# Shown in `gpulet lease list`, Watch and logs: a name, not a document.
MAX_CLIENT_NAME = 128
# Model ids, roles and profile names are looked up, never stored: the bound only has to be
# longer than any real one (Hugging Face ids run to about 100 characters).
MAX_NAME = 256
# Tokens are `gpl_` and 32 characters; the slack lets a later format be longer.
MAX_TOKEN = 256
# A lease shorter than this expires before its holder could use or renew it; below it, a
# TTL such as 5e-324 makes expiry equal the grant time.
MIN_TTL_S = 1.0
# How much of a client's string a refusal repeats.
QUOTE_CHARS = 40

# Unicode's bidirectional embeddings, overrides and isolates reorder what a terminal shows
# ("Trojan Source"); U+2028/U+2029 break lines in some terminals and viewers.
_DISPLAY_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_LINE_BREAKS = frozenset({"Zl", "Zp"})


class Refused(Exception):
    """A request refused before it changed anything: `code` names the gRPC status,
    `reason` the ErrorInfo reason, `field` the request field at fault (empty when none is)."""

    def __init__(self, code: str, reason: str, message: str, field: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.field = field


def quote(text: str, limit: int = QUOTE_CHARS) -> str:
    """A client's string as a message may show it: repr-escaped (no control character reaches
    a terminal or a log) and cut to `limit` characters, with its length when cut."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def listing(names: Iterable[str], limit: int = 12) -> str:
    """Known names for a "did you mean" hint, at most `limit` of them: a registry with
    hundreds of models must not make every refusal hundreds of names long."""
    shown = sorted(names)
    if not shown:
        return "none"
    more = f", ... ({len(shown) - limit} more)" if len(shown) > limit else ""
    return ", ".join(shown[:limit]) + more


def _too_long(field: str, value: str, limit: int) -> Refused:
    return Refused(
        "INVALID_ARGUMENT",
        "TOO_LONG",
        f"{field}: at most {limit} characters, got {len(value)} ({quote(value)})",
        field,
    )


def check_name(field: str, value: str, *, required: bool = True, limit: int = MAX_NAME) -> None:
    """A model id, role or profile name: present (when required) and bounded."""
    if required and not value:
        raise Refused("INVALID_ARGUMENT", "MISSING_FIELD", f"{field}: a value is required", field)
    if len(value) > limit:
        raise _too_long(field, value, limit)


def _unprintable(ch: str) -> bool:
    # Cc is C0 (NUL..US, including newline, tab and ESC), DEL and C1 (0x80..0x9f, CSI among
    # them): each can move the cursor or start an escape sequence in a terminal.
    category = unicodedata.category(ch)
    return category == "Cc" or category in _LINE_BREAKS or ch in _DISPLAY_CONTROLS


def check_client_name(value: str) -> None:
    """Bounded, and refused (not stripped) when it holds a control character: a name is what
    operators grep for, and one silently rewritten would no longer match what its client
    logs; a refusal tells the client at once, changes nothing, and the caller can clean it."""
    if len(value) > MAX_CLIENT_NAME:
        raise _too_long("client_name", value, MAX_CLIENT_NAME)
    for i, ch in enumerate(value):
        if _unprintable(ch):
            raise Refused(
                "INVALID_ARGUMENT",
                "CONTROL_CHARACTER",
                f"client_name: control character {ch!r} at position {i} is not allowed "
                f"(names are printed in terminals and logs); got {quote(value)}",
                "client_name",
            )


def check_token(value: str) -> None:
    """Bounded before it is hashed; never quoted, it is a secret."""
    if len(value) > MAX_TOKEN:
        raise Refused(
            "INVALID_ARGUMENT",
            "TOO_LONG",
            f"token: at most {MAX_TOKEN} characters, got {len(value)}",
            "token",
        )
