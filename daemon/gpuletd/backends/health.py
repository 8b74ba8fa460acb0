"""Polling a starting backend's health URL until it answers 2xx."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from gpuletd.backends.schedule import PollSchedule

__all__ = ["HealthProbe", "check_health", "probe_health", "wait_healthy"]

# One attempt may not hang longer than this: a server that accepts but never answers (stuck in
# its model load) must not stop us from noticing that it came up on the next attempt.
_ATTEMPT_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class HealthProbe:
    ok: bool
    # What the last attempt saw, for the error message: "HTTP 503", "connection refused", ...
    detail: str


async def probe_health(url: str, *, timeout_s: float = _ATTEMPT_TIMEOUT_S) -> HealthProbe:
    """One GET of `url`; never raises for network trouble, which is normal while starting.

    A raw HTTP/1.1 request on an asyncio stream rather than urllib in a thread: it is
    cancellable at once (a cancelled start must not leave a thread blocked on a socket) and
    costs no thread per starting backend. Only the status line is read.
    """
    parts = urlsplit(url)
    https = parts.scheme == "https"
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if https else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    netloc = parts.netloc.rpartition("@")[2]
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ssl.create_default_context() if https else None
            )
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {netloc}\r\nUser-Agent: gpuletd-health\r\n"
                "Accept: */*\r\nConnection: close\r\n\r\n".encode("latin-1")
            )
            await writer.drain()
            status_line = await reader.readline()
    except TimeoutError:
        return HealthProbe(False, f"no answer within {timeout_s:g} s")
    except ConnectionRefusedError:
        return HealthProbe(False, "connection refused (not listening yet)")
    except (OSError, ssl.SSLError) as exc:
        return HealthProbe(False, f"{type(exc).__name__}: {exc}")
    finally:
        if writer is not None:
            writer.close()
    fields = status_line.decode("latin-1").split(None, 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
        return HealthProbe(False, f"not an HTTP answer: {status_line[:80]!r}")
    code = int(fields[1])
    return HealthProbe(200 <= code < 300, f"HTTP {code}")


async def check_health(url: str, timeout_s: float = _ATTEMPT_TIMEOUT_S) -> bool:
    """One GET of `url`: True if it answered 2xx within `timeout_s`. For a backend believed
    loaded (one adopted after a restart): is it still serving?"""
    return (await probe_health(url, timeout_s=timeout_s)).ok


async def wait_healthy(
    url: str,
    *,
    schedule: PollSchedule | None = None,
    started_at: float | None = None,
    on_probe: Callable[[HealthProbe], None] | None = None,
) -> HealthProbe:
    """Poll `url` until it answers 2xx, as often as `schedule` says for the time since
    `started_at` (monotonic; default: now), one request at a time.

    No deadline here: the caller bounds the wait (it races this against the process exiting
    and other readiness signals). `on_probe` sees every attempt, so that a caller that gives
    up can say what the last one saw.
    """
    schedule = schedule or PollSchedule()
    since = time.monotonic() if started_at is None else started_at
    while True:
        probe = await probe_health(url)
        if on_probe is not None:
            on_probe(probe)
        if probe.ok:
            return probe
        await asyncio.sleep(schedule.interval(time.monotonic() - since))
