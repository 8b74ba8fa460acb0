"""RPC metrics: a grpc.aio server interceptor counting calls by method and status code.

Named after go-grpc-prometheus (the convention most gRPC dashboards expect), with our prefix:
`gpulet_grpc_server_started_total`, `gpulet_grpc_server_handled_total` (with `grpc_code`) and
`gpulet_grpc_server_handling_seconds`.

An aio interceptor only gets to choose the handler; it never sees the call's outcome. So
(`services/wrapping.py`) it returns the same handler with a wrapped behaviour that times
the call and reads the code the servicer set (`context.code()`; an abort sets it too) when
the behaviour ends. Unary calls are measured fully. Streaming calls are counted when they
start and when they end (a stream is "handled" when its generator finishes, fails or is
cancelled), but their duration is not put in the latency histogram: an Acquire lasts as long
as its queue wait (measured by `gpulet_request_wait_seconds`) and a Watch as long as its
subscriber, and either would drown the unary latencies.

Only methods that have a handler are counted: an unknown method name comes from the client,
and counting it would let any client mint series.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from gpuletd.services.wrapping import (
    Behaviour,
    Context,
    Handler,
    WrappingInterceptor,
    is_async,
    rebuilt,
)

__all__ = ["RPC_BUCKETS", "RpcMetricsInterceptor"]

# Our unary RPCs answer from memory: sub-millisecond to a few ms; a Renew that waits on the
# event loop behind a burst may take longer.
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _code(context: Context, error: BaseException | None) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if error is None:
        return "OK"
    # The task was cancelled: the client went away or its deadline passed.
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    return "UNKNOWN"  # grpc's answer to an exception no one turned into a status


class _Method:
    """The metric children of one method, bound once so that a call costs no label lookup."""

    def __init__(self, owner: RpcMetricsInterceptor, method: str, kind: str) -> None:
        service, _, name = method.lstrip("/").rpartition("/")
        self._labels = (kind, service, name)
        self._handled = owner.handled
        self.started = owner.started.labels(kind, service, name)
        self.seconds = owner.seconds.labels(service, name) if kind == "unary" else None

    def done(self, context: Context, error: BaseException | None, began: float) -> None:
        self._handled.labels(*self._labels, _code(context, error)).inc()
        if self.seconds is not None:
            self.seconds.observe(time.perf_counter() - began)


def _measured(h: Handler, m: _Method) -> Handler:
    if not is_async(h):
        return h  # a plain function grpc runs in a thread: left unmeasured (none of ours)

    def call(inner: Behaviour) -> Behaviour:
        async def measured(request: Any, context: Context) -> Any:
            m.started.inc()
            began, error = time.perf_counter(), None
            try:
                return await inner(request, context)
            except BaseException as e:
                error = e
                raise
            finally:
                m.done(context, error, began)

        return measured

    def stream(inner: Behaviour) -> Behaviour:
        async def measured(request: Any, context: Context) -> AsyncIterator[Any]:
            m.started.inc()
            began, error = time.perf_counter(), None
            responses = inner(request, context)
            try:
                async for r in responses:
                    yield r
            except BaseException as e:
                error = e
                raise
            finally:
                # Closed here, so that the servicer's own cleanup runs when the call ends.
                await responses.aclose()
                m.done(context, error, began)

        return measured

    return rebuilt(h, call=call, stream=stream)


def _kind(h: Handler) -> str:
    if h.request_streaming:
        return "bidi_stream" if h.response_streaming else "client_stream"
    return "server_stream" if h.response_streaming else "unary"


class RpcMetricsInterceptor(WrappingInterceptor):
    """Put it first in the server's interceptors so that it also counts the calls the ones
    after it answer themselves (DecodeGuard's INVALID_ARGUMENT)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        kind = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter(
            "gpulet_grpc_server_started",
            "RPCs started on the server.",
            kind,
            registry=registry,
        )
        self.handled = Counter(
            "gpulet_grpc_server_handled",
            "RPCs completed on the server, whatever their status code.",
            [*kind, "grpc_code"],
            registry=registry,
        )
        self.seconds = Histogram(
            "gpulet_grpc_server_handling_seconds",
            "Time to handle a unary RPC, from its request to its answer (streams are not "
            "timed: see gpulet_request_wait_seconds).",
            ["grpc_service", "grpc_method"],
            buckets=RPC_BUCKETS,
            registry=registry,
        )
        super().__init__()

    def wrap(self, handler: Handler, method: str) -> Handler:
        return _measured(handler, _Method(self, method, _kind(handler)))
