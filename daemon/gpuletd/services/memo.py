"""Answers the hot RPCs computed once and kept while everything they were computed from holds.

Clients call SelectByRole and GetActiveProfile in a loop, and their answers change only when
the configuration, the profile, a GPU reading or a reservation does. An entry is reused only
when each of its inputs is the same object as, or equal to, the one it was computed from, so a
reload (a new registry), a profile switch (a new profile), a probe reading (new GPU snapshots)
or a new reservation simply computes afresh: there is nothing to invalidate by hand, and
nothing to forget to invalidate.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["Memo"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _same(kept: tuple[object, ...], now: tuple[object, ...]) -> bool:
    return len(kept) == len(now) and all(a is b or a == b for a, b in zip(kept, now, strict=True))


class Memo(Generic[K, V]):
    """At most `size` answers, by key (the request's own fields); the oldest key goes first.
    The answers are shared between calls: callers must not change them."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: dict[K, tuple[tuple[object, ...], V]] = {}

    def get(self, key: K, inputs: tuple[object, ...], compute: Callable[[], V]) -> V:
        """The answer kept for `key` if it was computed from `inputs`, else `compute()` (kept
        unless it raises)."""
        entry = self._entries.get(key)
        if entry is not None and _same(entry[0], inputs):
            return entry[1]
        value = compute()
        if entry is None and len(self._entries) >= self._size:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = (inputs, value)
        return value

    def __len__(self) -> int:
        return len(self._entries)
