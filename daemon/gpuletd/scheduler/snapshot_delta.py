"""The snapshot by parts: what changed since the last save, as JSON texts ready to store.

Writing the whole snapshot before every decision costs in proportion to everything the core
remembers (every model's definition, up to `ended_lease_memory` ended leases), so a Renew would
pay for the history of the node. A `SnapshotWriter` remembers what it last produced and hands
out only the difference: the small head (seq, GPUs, preloads) when it changed, one row per
model record or lease that changed, the ended leases added since, and how many old ones to
forget. The store keeps those rows (`store.py`) and gives back the very same snapshot dict
that `snapshot_state` would build, so restoring does not know how it was written.

What is compared is everything a row is written from, so a change is never missed: a model
record's fields (containers by content, the usage estimator by its `state()`) and all of a
lease's fields. A definition is serialised once per Model object, since models are frozen.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import MISSING, dataclass, fields
from operator import attrgetter
from typing import Any

from gpuletd.registry import Model
from gpuletd.scheduler.codec import model_to_dict
from gpuletd.scheduler.records import LeaseRecord, ModelRecord
from gpuletd.scheduler.snapshot import lease_json, record_body, snapshot_head
from gpuletd.scheduler.state import State

__all__ = ["Row", "SnapshotDelta", "SnapshotWriter"]

# (key, position, JSON text); rows of a part are read back in position order.
Row = tuple[str, int, str]

# As `StateStore.save_core` writes a whole snapshot.
_dumps = json.JSONEncoder(separators=(",", ":")).encode

# Fields a model's row is not written from: its leases have rows of their own, its waiters
# die with the daemon, and its usage is compared through `state()`. Fields declared with
# compare=False are derived caches (`accounting`'s memos), never saved.
_NOT_IN_ROW = frozenset({"leases", "waiters", "usage"})
_MODEL_FIELDS = [f for f in fields(ModelRecord) if f.compare and f.name not in _NOT_IN_ROW]
# Containers are compared by content, copied: the record keeps mutating the same object.
_MODEL_CONTAINERS = tuple(f.name for f in _MODEL_FIELDS if f.default_factory is not MISSING)
_model_values = attrgetter(*(f.name for f in _MODEL_FIELDS if f.name not in _MODEL_CONTAINERS))
# Every field of a lease is an immutable value, so the tuple of them is its fingerprint.
_lease_values = attrgetter(*(f.name for f in fields(LeaseRecord) if f.compare))


def _model_print(r: ModelRecord) -> tuple[Any, ...]:
    held = [_frozen(getattr(r, name)) for name in _MODEL_CONTAINERS]
    return (_model_values(r), held, r.usage.state())


def _frozen(v: object) -> object:
    if isinstance(v, dict):
        return tuple(v.items())
    if isinstance(v, list | set):
        return tuple(v)
    return v


@dataclass(frozen=True, slots=True)
class SnapshotDelta:
    # The rows below are all there is: the store drops every row it holds first.
    full: bool
    # The head as JSON text; None when unchanged.
    head: str | None
    # Rows to insert or replace (by key), and keys whose rows go.
    models: tuple[Row, ...]
    models_gone: tuple[str, ...]
    leases: tuple[Row, ...]
    leases_gone: tuple[str, ...]
    # Ended leases to add as (position, lease id, why), and the position below which the
    # stored ones are forgotten (None: none are).
    ended: tuple[tuple[int, str, str], ...]
    ended_from: int | None


@dataclass(slots=True)
class _ModelRow:
    fingerprint: tuple[Any, ...]
    text: str
    definition: Model
    definition_text: str


class SnapshotWriter:
    """One per store. Its first delta is full; `forget()` makes the next one full again (the
    caller does so whenever a delta may not have reached the disk)."""

    def __init__(self) -> None:
        self.forget()

    def forget(self) -> None:
        self._fresh = True
        self._head: str | None = None
        self._models: dict[str, _ModelRow] = {}
        self._model_keys: list[str] = []
        self._model_ids: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        # Lease id -> (fingerprint, position); positions only grow, so grant order holds.
        self._leases: dict[str, tuple[tuple[Any, ...], int]] = {}
        self._lease_keys: list[str] = []
        self._next_lease = 0
        # The ended lease ids as stored, oldest first, and the next position to give out.
        self._ended: deque[str] = deque()
        self._next_ended = 0

    def delta(self, st: State) -> SnapshotDelta:
        full = self._fresh
        try:
            if full:
                self.forget()
            head = _dumps(snapshot_head(st))
            changed_head = head if head != self._head else None
            self._head = head
            models, models_gone = self._model_rows(st)
            leases, leases_gone = self._lease_rows(st)
            ended, ended_from = self._ended_rows(st)
        except BaseException:
            # Half-updated memory of what was written would make later deltas wrong.
            self.forget()
            raise
        self._fresh = False
        return SnapshotDelta(
            full, changed_head, models, models_gone, leases, leases_gone, ended, ended_from
        )

    def _model_rows(self, st: State) -> tuple[tuple[Row, ...], tuple[str, ...]]:
        ids = (tuple(st.models), tuple(st.retired))
        records = [*st.models.values(), *st.retired.values()]
        old = self._models
        puts: list[Row] = []
        if ids == self._model_ids:
            # The usual case (no model came, went or moved): rewrite only what changed.
            for pos, (key, r) in enumerate(zip(self._model_keys, records, strict=True)):
                row = old[key]
                fp = _model_print(r)
                if row.fingerprint != fp:
                    old[key] = row = self._model_row(r, fp, row)
                    puts.append((key, pos, row.text))
            return tuple(puts), ()
        keys = [f"m/{mid}" for mid in ids[0]] + [f"r/{mid}" for mid in ids[1]]
        new: dict[str, _ModelRow] = {}
        for pos, (key, r) in enumerate(zip(keys, records, strict=True)):
            fp = _model_print(r)
            cached = old.get(key)
            if cached is None or cached.fingerprint != fp:
                cached = self._model_row(r, fp, cached)
            new[key] = cached
            # Positions moved: every row is written again, from its cached text if unchanged.
            puts.append((key, pos, cached.text))
        gone = tuple(k for k in old if k not in new)
        self._models = new
        self._model_keys = keys
        self._model_ids = ids
        return tuple(puts), gone

    @staticmethod
    def _model_row(r: ModelRecord, fp: tuple[Any, ...], old: _ModelRow | None) -> _ModelRow:
        if old is not None and old.definition is r.model:
            definition = old.definition_text
        else:
            definition = _dumps(model_to_dict(r.model))
        # The same text `json.dumps(snapshot_state(...))` gives: the definition comes first.
        text = f'{{"definition":{definition},{_dumps(record_body(r))[1:]}'
        return _ModelRow(fp, text, r.model, definition)

    def _lease_rows(self, st: State) -> tuple[tuple[Row, ...], tuple[str, ...]]:
        old = self._leases
        keys = list(st.leases)
        gone: tuple[str, ...] = ()
        moved: set[str] = set()
        if keys != self._lease_keys:
            gone = tuple(k for k in old if k not in st.leases)
            for k in gone:
                del old[k]
            if not _in_order(keys, old):
                # The order changed other than by grants at the end: number them all anew.
                moved = set(keys)
            self._lease_keys = keys
        puts: list[Row] = []
        for k, le in st.leases.items():
            fp = _lease_values(le)
            entry = old.get(k)
            if entry is None or k in moved:
                pos = self._next_lease
                self._next_lease += 1
            elif entry[0] == fp:
                continue
            else:
                pos = entry[1]
            old[k] = (fp, pos)
            puts.append((k, pos, _dumps(lease_json(le))))
        return tuple(puts), gone

    def _ended_rows(self, st: State) -> tuple[tuple[tuple[int, str, str], ...], int | None]:
        ended, kept = st.ended, self._ended
        new: list[str] = []
        tracked = not ended
        if kept and ended:
            last = kept[-1]
            for lid in reversed(ended):
                if lid == last:
                    tracked = True
                    break
                new.append(lid)
        new.reverse()
        kept.extend(new)
        trimmed = len(kept) > len(ended)
        while len(kept) > len(ended):
            kept.popleft()
        if not tracked or len(kept) != len(ended) or (kept and kept[0] != next(iter(ended))):
            # Lost track (more ended since the last save than are remembered, an entry gone
            # from the middle, the first save): write them all.
            kept.clear()
            kept.extend(ended)
            new = list(ended)
            trimmed = True
        first = self._next_ended
        self._next_ended += len(new)
        rows = tuple((first + i, lid, ended[lid]) for i, lid in enumerate(new))
        # Only the newest len(kept) rows are remembered; they hold the highest positions.
        return rows, (self._next_ended - len(kept) if trimmed else None)


def _in_order(keys: list[str], known: dict[str, tuple[tuple[Any, ...], int]]) -> bool:
    """Whether giving the unknown keys the next positions keeps `keys` in position order: the
    known ones are in increasing position, and all of them come before any new one."""
    last = -1
    seen_new = False
    for k in keys:
        entry = known.get(k)
        if entry is None:
            seen_new = True
        elif seen_new or entry[1] < last:
            return False
        else:
            last = entry[1]
    return True
