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
from bisect import bisect_left
from collections.abc import AsyncIterator, Iterator
from itertools import accumulate
from typing import Any

import grpc
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

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
# The buckets' `le` labels, as prometheus_client writes them.
_LE = (*(floatToGoString(b) for b in RPC_BUCKETS), "+Inf")  # type: ignore[no-untyped-call]


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
    """One method's numbers, as plain ints and floats: the event loop is their only writer, and
    a prometheus_client child costs a lock per update (about four times the work of the whole
    bookkeeping here, on a call that answers in a few hundred microseconds). The registry
    reads them when scraped (`RpcMetricsInterceptor.collect`)."""

    __slots__ = ("buckets", "handled", "labels", "seconds", "started", "timed")

    def __init__(self, labels: tuple[str, str, str]) -> None:
        self.labels = labels  # grpc_type, grpc_service, grpc_method
        self.timed = labels[0] == "unary"
        self.started = 0
        # By code name: at most the 17 gRPC codes.
        self.handled: dict[str, int] = {}
        # Non-cumulative, one per bound of RPC_BUCKETS and a last one for +Inf.
        self.buckets = [0] * (len(RPC_BUCKETS) + 1)
        self.seconds = 0.0

    def done(self, context: Context, error: BaseException | None, began: float) -> None:
        code = _code(context, error)
        self.handled[code] = self.handled.get(code, 0) + 1
        if self.timed:
            took = time.perf_counter() - began
            self.seconds += took
            # bisect_left: a call that took exactly a bound counts in that bound's bucket (le).
            self.buckets[bisect_left(RPC_BUCKETS, took)] += 1


def _measured(h: Handler, m: _Method) -> Handler:
    if not is_async(h):
        return h  # a plain function grpc runs in a thread: left unmeasured (none of ours)

    def call(inner: Behaviour) -> Behaviour:
        async def measured(request: Any, context: Context) -> Any:
            m.started += 1
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
            m.started += 1
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
    """Put it first (in `wrapping.composed`) so that it also counts the calls the wrappers
    after it answer themselves (DecodeGuard's INVALID_ARGUMENT). Registers itself as a
    collector of `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        # By labels: the admin and user servers both serve reflection, one series for both.
        self._methods: dict[tuple[str, str, str], _Method] = {}
        registry.register(self)

    def wrap(self, handler: Handler, method: str) -> Handler:
        service, _, name = method.lstrip("/").rpartition("/")
        labels = (_kind(handler), service, name)
        m = self._methods.get(labels)
        if m is None:
            m = self._methods[labels] = _Method(labels)
        return _measured(handler, m)

    def collect(self) -> Iterator[Metric]:
        # Called from the scraping thread: each copy below is one C call, made under the GIL,
        # so it never sees a dict the event loop is resizing.
        kind = ["grpc_type", "grpc_service", "grpc_method"]
        started = CounterMetricFamily(
            "gpulet_grpc_server_started", "RPCs started on the server.", labels=kind
        )
        handled = CounterMetricFamily(
            "gpulet_grpc_server_handled",
            "RPCs completed on the server, whatever their status code.",
            labels=[*kind, "grpc_code"],
        )
        seconds = HistogramMetricFamily(
            "gpulet_grpc_server_handling_seconds",
            "Time to handle a unary RPC, from its request to its answer (streams are not "
            "timed: see gpulet_request_wait_seconds).",
            labels=["grpc_service", "grpc_method"],
        )
        for m in list(self._methods.values()):
            started.add_metric(m.labels, m.started)
            for code, n in dict(m.handled).items():
                handled.add_metric([*m.labels, code], n)
            if m.timed:
                counts = accumulate(list(m.buckets))
                buckets = list(zip(_LE, counts, strict=True))
                seconds.add_metric(list(m.labels[1:]), buckets, m.seconds)
        yield from (started, handled, seconds)
