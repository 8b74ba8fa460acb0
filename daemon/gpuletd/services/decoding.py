"""Requests protobuf cannot parse are answered INVALID_ARGUMENT, naming the field, not UNKNOWN.

grpc parses a request (the handler's `request_deserializer`, `Message.FromString`) before any
servicer runs. protobuf raises DecodeError for a string field that is not UTF-8 (proto3
requires UTF-8) or for bytes that are not a message at all, and grpc answers an exception
there with UNKNOWN ("Unexpected <class 'DecodeError'>"), which the API reserves for bugs.

`DecodeGuard` is a server interceptor that gives each handler a deserializer which catches
DecodeError and hands an `Undecodable` on in place of the request, and a behaviour that
answers one with INVALID_ARGUMENT before the servicer is called. Servicers only ever see
requests that parsed, so they stay as they are; health and reflection are covered too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError

from gpuletd.services.errors import abort
from gpuletd.services.wrapping import (
    Behaviour,
    Context,
    Handler,
    WrappingInterceptor,
    behaviour,
    is_async,
    rebuilt,
)

__all__ = ["DecodeGuard", "Undecodable", "bad_utf8_field"]

# Deeper than any of our requests nest; a hostile message nested further is just "malformed".
_MAX_DEPTH = 32


class _Truncated(Exception):
    pass


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Truncated
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def bad_utf8_field(descriptor: Descriptor, data: bytes, depth: int = 0) -> str | None:
    """The dotted path of the first string field in `data` (wire format of `descriptor`)
    whose bytes are not UTF-8, or None when there is none (or the bytes are too malformed to
    say). protobuf's own error does not name the field, and the refusal should."""
    pos = 0
    try:
        while pos < len(data):
            key, pos = _varint(data, pos)
            number, wire_type = key >> 3, key & 7
            if wire_type == 0:
                _, pos = _varint(data, pos)
            elif wire_type == 1:
                pos += 8
            elif wire_type == 5:
                pos += 4
            elif wire_type == 2:
                size, pos = _varint(data, pos)
                chunk, pos = data[pos : pos + size], pos + size
                field = descriptor.fields_by_number.get(number)
                if field is None:
                    continue
                if field.type == FieldDescriptor.TYPE_STRING:
                    try:
                        chunk.decode()
                    except UnicodeDecodeError:
                        return field.name
                elif (
                    field.type == FieldDescriptor.TYPE_MESSAGE
                    and field.message_type is not None
                    and depth < _MAX_DEPTH
                ):
                    inner = bad_utf8_field(field.message_type, chunk, depth + 1)
                    if inner is not None:
                        return f"{field.name}.{inner}"
            else:  # groups (3, 4) or no wire type at all: nothing more to read safely
                return None
    except _Truncated:
        return None
    return None


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a request protobuf refused to parse."""

    type_name: str
    field: str  # "" when no single field is at fault

    async def refuse(self, context: Context) -> NoReturn:
        if self.field:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "INVALID_UTF8",
                f"{self.field}: not valid UTF-8 (protobuf strings must be UTF-8 text)",
                field=self.field,
            )
        await abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            "MALFORMED_REQUEST",
            f"request: not a valid {self.type_name} message",
        )


def _lenient(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    # Message.FromString is bound to its class: that gives the descriptor to walk.
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    type_name = descriptor.full_name if isinstance(descriptor, Descriptor) else "request"

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            field = bad_utf8_field(descriptor, data) if isinstance(descriptor, Descriptor) else ""
            return Undecodable(type_name, field or "")

    return decode


async def _checked(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
    async for r in requests:
        if isinstance(r, Undecodable):
            await r.refuse(context)
        yield r


# How a request reaches the servicer: one that did not parse is refused first; a stream of
# requests is checked as it is read.
Admit = Callable[[Any, Context], Awaitable[Any]]
Wrapper = Callable[[Behaviour], Behaviour]


async def _admit_one(request: Any, context: Context) -> Any:
    if isinstance(request, Undecodable):
        await request.refuse(context)
    return request


async def _admit_stream(requests: AsyncIterator[Any], context: Context) -> Any:
    return _checked(requests, context)


def _refusing(admit: Admit) -> tuple[Wrapper, Wrapper]:
    """The `call` and `stream` wrappers for `rebuilt` that admit the request first."""

    def call(inner: Behaviour) -> Behaviour:
        async def guarded(request: Any, context: Context) -> Any:
            return await inner(await admit(request, context), context)

        return guarded

    def stream(inner: Behaviour) -> Behaviour:
        async def guarded(request: Any, context: Context) -> AsyncIterator[Any]:
            responses = inner(await admit(request, context), context)
            try:
                async for r in responses:
                    yield r
            finally:
                # Closed here, at once, so the servicer's own `finally` (an Acquire leaving
                # the queue) runs when the call ends, not when the generator is collected.
                await responses.aclose()

        return guarded

    return call, stream


_UNARY_REQUEST = _refusing(_admit_one)
_STREAMED_REQUESTS = _refusing(_admit_stream)


def _guard(h: Handler) -> Handler:
    """The same handler with a lenient deserializer and a behaviour that refuses what did not
    parse."""
    if h.request_deserializer is None:
        return h
    decode = _lenient(h.request_deserializer)
    if not is_async(h):
        if h.request_streaming or h.response_streaming:
            return h  # no such handler here; left as grpc runs it
        inner: Any = behaviour(h)

        # A plain function (health's List is the base class's "not implemented"): run where
        # grpc would run it, in a thread, once the request has parsed.
        async def call_sync(request: Any, context: Context) -> Any:
            request = await _admit_one(request, context)
            return await asyncio.get_running_loop().run_in_executor(None, inner, request, context)

        return grpc.unary_unary_rpc_method_handler(call_sync, decode, h.response_serializer)
    call, stream = _STREAMED_REQUESTS if h.request_streaming else _UNARY_REQUEST
    return rebuilt(h, call=call, stream=stream, deserializer=decode)


class DecodeGuard(WrappingInterceptor):
    def wrap(self, handler: Handler, method: str) -> Handler:
        return _guard(handler)
