"""One way to wrap a grpc.aio server's handlers, for the interceptors that need to see a call.

An aio server interceptor only chooses the handler; it never sees the request or the outcome.
The interceptors that must (`decoding.DecodeGuard`, `metrics_interceptor`) hand back a handler
of the same kind whose behaviour wraps the servicer's. `WrappingInterceptor` makes that handler
once per handler of a server and caches it; `rebuilt` builds it for every kind of handler.

A server gets them as one interceptor (`composed`): grpc runs each interceptor of a server as a
coroutine of its own on every call, before the handler runs, and the wrappers only need to be
chosen once.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import grpc

__all__ = [
    "Behaviour",
    "Context",
    "Handler",
    "WrappingInterceptor",
    "behaviour",
    "composed",
    "is_async",
    "rebuilt",
]

Context = grpc.aio.ServicerContext[Any, Any]
# The stubs make it generic; at run time it is not subscriptable.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Behaviour = Callable[[Any, Context], Any]


def behaviour(h: Handler) -> Any:
    return h.stream_stream or h.stream_unary or h.unary_stream or h.unary_unary


def is_async(h: Handler) -> bool:
    """False for a plain function, which grpc runs in a thread (health's List, say)."""
    inner = behaviour(h)
    return inspect.isasyncgenfunction(inner) or inspect.iscoroutinefunction(inner)


def rebuilt(
    h: Handler,
    *,
    call: Callable[[Behaviour], Behaviour],
    stream: Callable[[Behaviour], Behaviour],
    deserializer: Callable[[bytes], Any] | None = None,
) -> Handler:
    """A handler of `h`'s kind whose behaviour is `stream(inner)` when the servicer's is an
    async generator, else `call(inner)` (a coroutine function)."""
    inner = behaviour(h)
    wrapped = stream(inner) if inspect.isasyncgenfunction(inner) else call(inner)
    des, ser = deserializer or h.request_deserializer, h.response_serializer
    if h.request_streaming and h.response_streaming:
        return grpc.stream_stream_rpc_method_handler(wrapped, des, ser)
    if h.request_streaming:
        return grpc.stream_unary_rpc_method_handler(wrapped, des, ser)
    if h.response_streaming:
        return grpc.unary_stream_rpc_method_handler(wrapped, des, ser)
    return grpc.unary_unary_rpc_method_handler(wrapped, des, ser)


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    """Subclasses say how to wrap one handler (`wrap`); this makes each wrapper once, on the
    handler's first call, so a call costs one dict lookup."""

    def __init__(self) -> None:
        # Keyed by the server's own handler, not by the method name: an interceptor shared by
        # two servers must never answer one's methods on the other (the admin socket's on the
        # user socket).
        self._wrapped: dict[Handler, Handler] = {}

    def wrap(self, handler: Handler, method: str) -> Handler:
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # UNIMPLEMENTED: a name the client chose, nothing to wrap
        wrapped = self._wrapped.get(handler)
        if wrapped is None:
            wrapped = self._wrapped[handler] = self.wrap(handler, handler_call_details.method)
        return wrapped


class _Composed(WrappingInterceptor):
    def __init__(self, wrappers: tuple[WrappingInterceptor, ...]) -> None:
        super().__init__()
        self._wrappers = wrappers

    def wrap(self, handler: Handler, method: str) -> Handler:
        for w in reversed(self._wrappers):
            handler = w.wrap(handler, method)
        return handler


def composed(*wrappers: WrappingInterceptor) -> WrappingInterceptor:
    """One interceptor doing what `wrappers` would do as a server's interceptors in this order
    (the first outermost, so it sees what the later ones answer by themselves)."""
    return _Composed(wrappers)
