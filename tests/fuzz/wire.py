"""Hypothesis strategies for request messages, written in protobuf's wire format directly.

Built from a message descriptor (found by reflection) rather than through the protobuf
classes, because the hostile values are ones those classes refuse to build: strings that are
not UTF-8, integers past the field's width, NaN payloads, fields sent twice or a thousand
times, unknown field numbers, and bytes cut short. Next to those, values the daemon knows
(model ids, roles, a live lease id) let a message get past validation into deeper code.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

__all__ = ["BAD_UTF8", "ld", "message", "varint"]

_U64 = (1 << 64) - 1
VARINT_EXTREMES = [
    0,
    1,
    2,
    127,
    128,
    (1 << 31) - 1,
    1 << 31,
    (1 << 32) - 1,
    1 << 32,
    (1 << 63) - 1,
    _U64,
    -1 & _U64,
    -(1 << 31) & _U64,
    -(1 << 63) & _U64,
]
DOUBLE_EXTREMES = [
    0.0,
    -0.0,
    5e-324,
    1e-9,
    0.5,
    1.0,
    30.0,
    300.0,
    301.0,
    3600.0,
    3601.0,
    1e12,
    1.7976931348623157e308,
    -1.0,
    math.nan,
    math.inf,
    -math.inf,
]
# Forms of invalid UTF-8: a bare 0xff, an overlong NUL, an encoded surrogate, a lone
# continuation byte, a code point past U+10FFFF, a sequence cut short.
BAD_UTF8 = [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"ok\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"]
_VARINT_TYPES = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_BOOL,
    FieldDescriptor.TYPE_ENUM,
}
_FIXED64 = {FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}
_FIXED32 = {FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_SFIXED32}
# Deep enough for every request we serve; deeper nesting is not what these tests are about.
_MAX_DEPTH = 3


def varint(value: int) -> bytes:
    value &= _U64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def ld(number: int, payload: bytes) -> bytes:
    return key(number, 2) + varint(len(payload)) + payload


def strings(known: Sequence[str]) -> st.SearchStrategy[bytes]:
    texts = st.one_of(
        st.sampled_from(list(known) or [""]),  # get past validation
        st.text(max_size=40),
        st.text(st.characters(categories=["Cc", "Cf", "Zl", "Zp", "Co"]), max_size=20),
        st.builds(
            lambda c, n: c * n,
            st.sampled_from(["x", "é", "😀", "\x1b", "\n", "\u202e"]),
            st.integers(100, 100_000),
        ),
        st.just(""),
    )
    return st.one_of(
        texts.map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.sampled_from(BAD_UTF8),
        st.binary(max_size=40),
    )


def _varints() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(VARINT_EXTREMES), st.integers(0, _U64))


def _doubles() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.sampled_from(DOUBLE_EXTREMES).map(lambda f: struct.pack("<d", f)),
        st.floats().map(lambda f: struct.pack("<d", f)),
        st.binary(min_size=8, max_size=8),  # NaNs with payloads, signalling NaNs
    )


def _floats() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.sampled_from(DOUBLE_EXTREMES).map(lambda f: struct.pack("<f", f)),
        st.binary(min_size=4, max_size=4),
    )


def _scalar(f: FieldDescriptor, known: Sequence[str], depth: int) -> st.SearchStrategy[bytes]:
    n, t = f.number, f.type
    if t == FieldDescriptor.TYPE_STRING:
        return strings(known).map(lambda b: ld(n, b))
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64).map(lambda b: ld(n, b))
    if t == FieldDescriptor.TYPE_MESSAGE:
        if depth >= _MAX_DEPTH or f.message_type is None:
            return st.just(ld(n, b""))
        return message(f.message_type, known, depth + 1).map(lambda b: ld(n, b))
    if t in _VARINT_TYPES:
        return _varints().map(lambda v: key(n, 0) + varint(v))
    if t in _FIXED64 or t == FieldDescriptor.TYPE_DOUBLE:
        return _doubles().map(lambda b: key(n, 1) + b)
    if t in _FIXED32 or t == FieldDescriptor.TYPE_FLOAT:
        return _floats().map(lambda b: key(n, 5) + b)
    raise AssertionError(f"unhandled field type {t} ({f.full_name})")


def _field(f: FieldDescriptor, known: Sequence[str], depth: int) -> st.SearchStrategy[bytes]:
    one = _scalar(f, known, depth)
    # A singular field may be sent more than once (the last wins); a repeated one any
    # number of times, occasionally a thousand.
    return st.one_of(
        one,
        st.lists(one, min_size=2, max_size=4).map(b"".join),
        st.builds(lambda b, k: b * k, one.filter(lambda b: len(b) < 200), st.just(1000)),
    )


def _unknown() -> st.SearchStrategy[bytes]:
    # Fields this server's schema does not have: a newer client's, or noise.
    number = st.integers(16, (1 << 29) - 1)
    return st.one_of(
        st.builds(lambda n, v: key(n, 0) + varint(v), number, _varints()),
        st.builds(lambda n, b: ld(n, b), number, st.binary(max_size=32)),
        st.builds(lambda n, b: key(n, 1) + b, number, st.binary(min_size=8, max_size=8)),
        st.builds(lambda n, b: key(n, 5) + b, number, st.binary(min_size=4, max_size=4)),
    )


@st.composite
def message(
    draw: st.DrawFn, descriptor: Descriptor, known: Sequence[str] = (), depth: int = 0
) -> bytes:
    """Wire bytes for `descriptor`: any subset of its fields, in any order, with unknown
    fields and now and then a cut-short or garbage tail."""
    parts = [draw(_field(f, known, depth)) for f in descriptor.fields if draw(st.booleans())]
    parts += draw(st.lists(_unknown(), max_size=2))
    parts = list(draw(st.permutations(parts)))
    data = b"".join(parts)
    tail = draw(st.integers(0, 19))
    if tail == 0 and data:
        data = data[: draw(st.integers(0, len(data) - 1))]  # cut short
    elif tail == 1:
        data += draw(st.binary(min_size=1, max_size=8))  # garbage after the message
    return data
