"""structlog: JSON lines when not on a terminal (journald, files), a console otherwise."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

import structlog

__all__ = ["colors_wanted", "renderer", "setup_logging"]


def colors_wanted(environ: Mapping[str, str] | None = None, *, tty: bool | None = None) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set to anything but the empty
    string (https://no-color.org)."""
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR"):
        return False
    return sys.stderr.isatty() if tty is None else tty


def renderer(*, json: bool, colors: bool) -> structlog.typing.Processor:
    if json:
        return structlog.processors.JSONRenderer()
    if colors:
        return structlog.dev.ConsoleRenderer(colors=True)
    # The default traceback formatter (rich, when installed) would colour on its own.
    return structlog.dev.ConsoleRenderer(
        colors=False, exception_formatter=structlog.dev.plain_traceback
    )


def setup_logging(level: str = "info", *, json: bool | None = None) -> None:
    if json is None:
        json = not sys.stderr.isatty()
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer(json=json, colors=colors_wanted()),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
