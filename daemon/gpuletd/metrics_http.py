"""The opt-in `/metrics` endpoint (`gpuletd --metrics HOST:PORT`).

A small asyncio HTTP server rather than prometheus_client's `start_http_server`: that one
answers from its own thread, and the scrape reads the scheduler core's views, which the event
loop mutates without locks (the core is single-threaded by design). Answering on the loop
means a scrape runs between two events and sees a consistent core; rendering a few hundred
series takes well under a millisecond. It needs no web framework: one GET, one answer, the
connection closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client.exposition import generate_latest

from gpuletd.config_errors import ConfigError

if TYPE_CHECKING:
    from gpuletd.daemon import Daemon

__all__ = ["MetricsEndpoint", "parse_listen", "serve_metrics", "start_metrics"]

# prometheus_client's CONTENT_TYPE_LATEST has moved to text format 1.0.0 (UTF-8 names) in
# recent releases. Our names are all legacy-valid, so the body is the 0.0.4 format whatever the
# library's version, and every Prometheus (Debian's 2.42 included) reads it under this type.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A scrape request is one line and a few headers; more is not a scraper.
MAX_REQUEST_BYTES = 8192
# A client that connects and says nothing must not hold a connection open.
REQUEST_TIMEOUT_S = 10.0


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT or [IPv6]:PORT. The host is required: the endpoint binds only where asked
    (0.0.0.0 or :: must be written out to mean every address)."""
    host, sep, port_text = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not sep or not host or not 0 <= port <= 65535:
        raise ConfigError(
            "--metrics",
            f"expected HOST:PORT (e.g. 127.0.0.1:9400 or [::1]:9400), got {listen!r}",
        )
    return host, port


def _response(status: str, body: bytes, content_type: str, *, head: bool = False) -> bytes:
    lines = [
        f"HTTP/1.1 {status}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        "",
        "",
    ]
    return "\r\n".join(lines).encode() + (b"" if head else body)


class MetricsEndpoint:
    """The listening server; `close()` stops it (idempotent)."""

    def __init__(self, server: asyncio.Server, registry: CollectorRegistry) -> None:
        self._server = server
        self._registry = registry
        self._clients: set[asyncio.StreamWriter] = set()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Where it listens (the real port when 0 was asked)."""
        return [s.getsockname()[:2] for s in self._server.sockets]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(self._answer(head))
                await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away or said nothing: nothing to answer
        except asyncio.LimitOverrunError:
            writer.write(_response("431 Request Header Fields Too Large", b"", "text/plain"))
        finally:
            self._clients.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _answer(self, head: bytes) -> bytes:
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3:
            return _response("400 Bad Request", b"bad request line\n", "text/plain")
        method, target, _ = parts
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return _response("405 Method Not Allowed", b"GET or HEAD\n", "text/plain")
        is_head = method == "HEAD"
        if path == "/metrics":
            return _response("200 OK", generate_latest(self._registry), CONTENT_TYPE, head=is_head)
        if path == "/":
            return _response("200 OK", b"gpuletd: see /metrics\n", "text/plain", head=is_head)
        return _response("404 Not Found", b"not found: see /metrics\n", "text/plain", head=is_head)

    def close(self) -> None:
        self._server.close()
        for w in list(self._clients):
            w.close()


async def serve_metrics(registry: CollectorRegistry, listen: str) -> MetricsEndpoint:
    host, port = parse_listen(listen)
    endpoint: MetricsEndpoint | None = None

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert endpoint is not None
        await endpoint.handle(reader, writer)

    try:
        server = await asyncio.start_server(handle, host, port, limit=MAX_REQUEST_BYTES)
    except OSError as e:
        raise ConfigError("--metrics", f"cannot listen on {listen!r}: {e.strerror or e}") from None
    endpoint = MetricsEndpoint(server, registry)
    return endpoint


async def start_metrics(daemon: Daemon, listen: str) -> MetricsEndpoint:
    """Serve the daemon's metrics on `listen` (HOST:PORT) until `close()`. A bad address or
    one that cannot be bound raises ConfigError naming --metrics."""
    # No `_created` series: in the 0.0.4 text format each counter and histogram would get a
    # second gauge of its creation time, doubling the series for no dashboard's use. The
    # switch is process-wide, and in gpuletd this registry is the library's only user.
    disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
    return await serve_metrics(daemon.metrics.registry, listen)
