"""The core's state as a JSON value, and back: what lets gpuletd restart without forgetting its
leases and the models it placed.

A snapshot (version 1) is a dict of JSON values only (see `codec.py` for infinities):

    {"version": 1, "seq": n,
     "models": [record, ...],          # registry order, memory leases, then retired instances
     "leases": [lease, ...],           # grant order, every field including `secret`
     "gpus": [{"uuid", "pending": [[mb, at], ...], "last_release_at", "lost"}, ...],
     "ended": [[lease_id, why], ...],  # oldest first
     "preload_wanted": [model_id, ...]}

A model record carries the model's full registry definition (`definition`), every field of
its record and its reuse history (`usage`). Not saved: the pending requests (they belong to
live RPC streams, which die with the daemon; so the waiters of a load are not saved either),
the clock (`now`: restore is given the new one), and the per-pass caches.

The daemon stores it by parts (`snapshot_delta.py`: the head, one row per model record and per
lease, the ended leases), writing only what changed at each decision; the store assembles this
same dict again, so a restore cannot tell how it was written.

Restoring applies `shift` to every absolute time, so monotonic times from before a restart
land on the new monotonic clock; durations (ttl, load time, gaps) are not shifted. How the
saved models meet the registry the daemon now runs with: a model whose running instance the
new definition would not change keeps its record (with the new definition in place); one that
was removed or redefined keeps its instance as *retired* if it holds memory or leases (see
`reconfigure.py`), and otherwise is dropped or starts afresh under its new definition.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from gpuletd.probe.types import GpuSnapshot
from gpuletd.profiles import Profile, Strategy
from gpuletd.registry import Model
from gpuletd.scheduler.accounting import held_on
from gpuletd.scheduler.codec import (
    Json,
    SnapshotError,
    as_int,
    as_time,
    get_bool,
    get_dict,
    get_int,
    get_list,
    get_opt_int,
    get_opt_time,
    get_str,
    get_time,
    model_from_dict,
    model_to_dict,
    time_to_json,
)
from gpuletd.scheduler.decisions import ModelState
from gpuletd.scheduler.drain import inherit, instance_changes, redefined_reason, removed_reason
from gpuletd.scheduler.eviction import ReuseTally
from gpuletd.scheduler.records import LeaseRecord, ModelRecord, PendingFree
from gpuletd.scheduler.state import State, Tuning, advance_clock, model_record, new_state

__all__ = [
    "VERSION",
    "SnapshotError",
    "lease_json",
    "record_body",
    "restore_state",
    "snapshot_head",
    "snapshot_state",
]

VERSION = 1


# -- writing -------------------------------------------------------------------------------------


def record_body(r: ModelRecord) -> Json:
    """A model record without its definition, which `snapshot_delta` writes from a cache."""
    last_at, last_seq, mean_gap, mean_dev, gaps = r.usage.state()
    return {
        "retired": r.retired,
        "memory": r.memory,
        "heavy": r.heavy,
        "state": r.state.value,
        "gpu_uuids": list(r.gpu_uuids),
        "shares": dict(r.shares),
        "reserved_mb": r.reserved_mb,
        "load_started_at": time_to_json(r.load_started_at),
        "idle_since": time_to_json(r.idle_since),
        "after_unload": r.after_unload.value,
        "last_error": r.last_error,
        "measured_mb": r.measured_mb,
        "load_seconds": time_to_json(r.load_seconds),
        "consecutive_failures": r.consecutive_failures,
        "backoff_until": time_to_json(r.backoff_until),
        "healthy_since": time_to_json(r.healthy_since),
        "streak_at_success": r.streak_at_success,
        "keep_warm": r.keep_warm,
        "pinned": r.pinned,
        "endpoint": r.endpoint,
        "usage": {
            "last_at": time_to_json(last_at),
            "last_seq": last_seq,
            "mean_gap": time_to_json(mean_gap),
            "mean_dev": time_to_json(mean_dev),
            "gaps": gaps,
        },
    }


def lease_json(le: LeaseRecord) -> Json:
    return {
        "lease_id": le.lease_id,
        "model_id": le.model_id,
        "client": le.client,
        "priority": le.priority,
        "exclusive": le.exclusive,
        "gpu_uuids": list(le.gpu_uuids),
        "granted_at": time_to_json(le.granted_at),
        "expires_at": time_to_json(le.expires_at),
        "ttl_s": time_to_json(le.ttl_s),
        "secret": le.secret,
        "claim_by": None if le.claim_by is None else time_to_json(le.claim_by),
    }


def snapshot_head(st: State) -> Json:
    """Everything but the models, the leases and the ended leases: small, rewritten whole."""
    return {
        "version": VERSION,
        "seq": st.seq,
        "last_request_at": time_to_json(st.last_request_at),
        "pace_s": time_to_json(st.pace_s),
        "gpus": [
            {
                "uuid": g.uuid,
                "pending": [[p.mb, time_to_json(p.at)] for p in g.pending],
                "last_release_at": time_to_json(g.last_release_at),
                "lost": g.lost,
            }
            for g in st.gpus.values()
        ],
        "preload_wanted": list(st.preload_wanted),
    }


def snapshot_state(st: State) -> dict[str, Any]:
    snap = snapshot_head(st)
    snap["models"] = [
        {"definition": model_to_dict(r.model), **record_body(r)}
        for r in [*st.models.values(), *st.retired.values()]
    ]
    snap["leases"] = [lease_json(le) for le in st.leases.values()]
    snap["ended"] = [[lid, why] for lid, why in st.ended.items()]
    return snap


# -- reading -------------------------------------------------------------------------------------


def _strs(v: object, path: str) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise SnapshotError(f"snapshot: {path} must be a list of strings")
    return v


def _state(d: Json, key: str, path: str) -> ModelState:
    raw = get_str(d, key, path)
    try:
        return ModelState(raw)
    except ValueError:
        raise SnapshotError(f"snapshot: {path}.{key}: unknown model state {raw!r}") from None


def _read_record(d: object, path: str, tuning: Tuning, shift: float, seq: int) -> ModelRecord:
    if not isinstance(d, dict):
        raise SnapshotError(f"snapshot: {path} must be an object")
    rec = model_record(model_from_dict(d.get("definition"), f"{path}.definition"), tuning)
    rec.retired = get_str(d, "retired", path)
    # Absent from snapshots written before memory leases.
    rec.memory = get_bool(d, "memory", path) if "memory" in d else False
    # Absent from snapshots written before heavy models were counted.
    rec.heavy = get_bool(d, "heavy", path) if "heavy" in d else False
    rec.state = _state(d, "state", path)
    rec.gpu_uuids = tuple(_strs(d.get("gpu_uuids"), f"{path}.gpu_uuids"))
    shares = get_dict(d, "shares", path)
    rec.shares = {u: as_int(mb, f"{path}.shares.{u}") for u, mb in shares.items()}
    rec.reserved_mb = get_int(d, "reserved_mb", path)
    rec.load_started_at = _shifted(get_opt_time(d, "load_started_at", path), shift)
    rec.idle_since = _shifted(get_opt_time(d, "idle_since", path), shift)
    rec.after_unload = _state(d, "after_unload", path)
    rec.last_error = get_str(d, "last_error", path)
    rec.measured_mb = get_opt_int(d, "measured_mb", path)
    rec.load_seconds = get_opt_time(d, "load_seconds", path)
    rec.consecutive_failures = get_int(d, "consecutive_failures", path)
    rec.backoff_until = get_time(d, "backoff_until", path) + shift
    rec.healthy_since = get_time(d, "healthy_since", path) + shift
    rec.streak_at_success = get_int(d, "streak_at_success", path)
    rec.keep_warm = get_bool(d, "keep_warm", path)
    # Absent from snapshots written before the `pin` event.
    rec.pinned = get_bool(d, "pinned", path) if "pinned" in d else False
    rec.endpoint = get_str(d, "endpoint", path)
    _read_usage(rec, get_dict(d, "usage", path), f"{path}.usage", shift, seq)
    mid = rec.model.id
    if rec.holds_memory:
        if rec.reserved_mb <= 0 or set(rec.shares) != set(rec.gpu_uuids):
            raise SnapshotError(f"snapshot: {path} ({mid}) holds memory but its shares disagree")
        if rec.gpu_uuids and sum(rec.shares.values()) != rec.reserved_mb:
            raise SnapshotError(f"snapshot: {path} ({mid}) shares do not add up to reserved_mb")
    elif rec.reserved_mb or rec.shares or rec.gpu_uuids:
        raise SnapshotError(f"snapshot: {path} ({mid}) is {rec.state.value} but holds memory")
    return rec


def _shifted(t: float | None, shift: float) -> float | None:
    return None if t is None else t + shift


def _read_lease(d: object, path: str, shift: float) -> LeaseRecord:
    if not isinstance(d, dict):
        raise SnapshotError(f"snapshot: {path} must be an object")
    return LeaseRecord(
        lease_id=get_str(d, "lease_id", path),
        model_id=get_str(d, "model_id", path),
        client=get_str(d, "client", path),
        priority=get_int(d, "priority", path),
        exclusive=get_bool(d, "exclusive", path),
        gpu_uuids=tuple(_strs(d.get("gpu_uuids"), f"{path}.gpu_uuids")),
        granted_at=get_time(d, "granted_at", path) + shift,
        expires_at=get_time(d, "expires_at", path) + shift,
        ttl_s=get_time(d, "ttl_s", path),
        secret=get_str(d, "secret", path),
        claim_by=_shifted(get_opt_time(d, "claim_by", path), shift),
    )


def _read_usage(rec: ModelRecord, usage: Json, path: str, shift: float, seq: int) -> None:
    last_at = _shifted(get_opt_time(usage, "last_at", path), shift)
    if "last_seq" not in usage:
        # Written when gaps were counted in seconds: keep when it was last asked for, start
        # its pattern afresh.
        rec.usage.set_state(last_at, None if last_at is None else seq, None, 0.0, 0)
        return
    gaps = get_int(usage, "gaps", path)
    if not 0 <= gaps <= 2:
        raise SnapshotError(f"snapshot: {path}.gaps must be 0, 1 or 2")
    last_seq = get_opt_int(usage, "last_seq", path)
    if last_seq is not None and not 0 <= last_seq <= seq:
        raise SnapshotError(f"snapshot: {path}.last_seq must be between 0 and seq ({seq})")
    rec.usage.set_state(
        last_at,
        last_seq,
        _span(get_opt_time(usage, "mean_gap", path), f"{path}.mean_gap"),
        _span(get_time(usage, "mean_dev", path), f"{path}.mean_dev"),
        gaps,
    )


_Span = TypeVar("_Span", float, float | None)


def _span(v: _Span, path: str) -> _Span:
    """A count or a duration that is finite and not negative (None passes)."""
    if v is not None and not 0 <= v < math.inf:
        raise SnapshotError(f"snapshot: {path} must be a finite number >= 0, not {v}")
    return v


def _read_models(
    snap: Json, tuning: Tuning, shift: float, seq: int
) -> tuple[dict[str, ModelRecord], dict[str, ModelRecord]]:
    live: dict[str, ModelRecord] = {}
    retired: dict[str, ModelRecord] = {}
    for i, item in enumerate(get_list(snap, "models", "snapshot")):
        rec = _read_record(item, f"models[{i}]", tuning, shift, seq)
        bucket = retired if rec.retired else live
        if rec.model.id in bucket:
            raise SnapshotError(f"snapshot: model {rec.model.id} appears twice")
        bucket[rec.model.id] = rec
    for mid in retired:
        other = live.get(mid)
        if other is not None and other.holds_memory:
            raise SnapshotError(f"snapshot: model {mid} has two instances holding memory")
    return live, retired


def _attach_leases(
    st: State,
    snap: Json,
    shift: float,
    live: dict[str, ModelRecord],
    retired: dict[str, ModelRecord],
) -> None:
    for i, item in enumerate(get_list(snap, "leases", "snapshot")):
        le = _read_lease(item, f"leases[{i}]", shift)
        # A model's leases are on its retired instance while it has one.
        owner = retired.get(le.model_id) or live.get(le.model_id)
        if owner is None or owner.state is not ModelState.LOADED:
            raise SnapshotError(f"snapshot: lease {le.lease_id} on {le.model_id}, not loaded")
        if le.gpu_uuids != owner.gpu_uuids:
            raise SnapshotError(f"snapshot: lease {le.lease_id} is not on its model's GPUs")
        if le.lease_id in st.leases:
            raise SnapshotError(f"snapshot: lease {le.lease_id} appears twice")
        st.leases[le.lease_id] = le
        owner.leases[le.lease_id] = le


def _meet_registry(
    st: State,
    models: Mapping[str, Model],
    live: dict[str, ModelRecord],
    retired: dict[str, ModelRecord],
) -> None:
    for mid, rec in retired.items():
        if rec.holds_memory or rec.leases:
            st.retired[mid] = rec
    for mid, rec in live.items():
        busy = rec.holds_memory or bool(rec.leases)
        if rec.memory:
            # Saved with its definition; kept while it holds memory (its lease, or the stop
            # under way), never met with the registry.
            if busy:
                st.models[mid] = rec
            continue
        new = models.get(mid)
        diff = None if new is None else instance_changes(rec.model, new)
        if new is not None and not diff:
            rec.model = new
            st.models[mid] = rec
            continue
        if new is not None:
            # The fresh record under the new definition keeps the demand history.
            st.models[mid].usage = rec.usage
        if busy:
            rec.retired = removed_reason(mid) if new is None else redefined_reason(mid, diff or ())
            st.retired[mid] = rec


def _read_gpus(st: State, snap: Json, shift: float) -> None:
    for i, item in enumerate(get_list(snap, "gpus", "snapshot")):
        path = f"gpus[{i}]"
        if not isinstance(item, dict):
            raise SnapshotError(f"snapshot: {path} must be an object")
        pending = []
        for j, p in enumerate(get_list(item, "pending", path)):
            if not isinstance(p, list) or len(p) != 2:
                raise SnapshotError(f"snapshot: {path}.pending[{j}] must be [mb, at]")
            at = as_time(p[1], f"{path}.pending[{j}]")
            pending.append(PendingFree(as_int(p[0], f"{path}.pending[{j}]"), at + shift))
        last_release_at = get_time(item, "last_release_at", path) + shift
        # Checked but not applied: a restart is what clears a lost GPU (the ceiling's message
        # tells the user to restart after a GPU reset), so only the fresh reading decides.
        get_bool(item, "lost", path)
        g = st.gpus.get(get_str(item, "uuid", path))
        if g is None:
            # A GPU this machine no longer has (reset, or gone from the bus): nothing to place.
            continue
        g.pending = pending
        g.last_release_at = last_release_at
    for g in st.gpus.values():
        if g.total_mb is not None and g.free_mb is not None:
            # The fresh reading counts our own models' memory as used: it is not foreign.
            used = g.total_mb - g.free_mb
            g.foreign_mb = max(0, used - held_on(st, g.uuid) - sum(p.mb for p in g.pending))


def restore_state(
    snap: object,
    profile: Profile,
    models: Mapping[str, Model],
    gpus: Sequence[GpuSnapshot],
    *,
    now: float,
    shift: float,
    queue_limit: int,
    preload: Sequence[str],
    tuning: Tuning | None,
) -> State:
    if not isinstance(snap, dict):
        raise SnapshotError(f"snapshot must be an object, got {type(snap).__name__}")
    version = snap.get("version")
    if isinstance(version, bool) or version != VERSION:
        raise SnapshotError(f"unknown snapshot version {version!r}; this gpuletd reads {VERSION}")
    st = new_state(profile, models, gpus, queue_limit=queue_limit, preload=preload, tuning=tuning)
    advance_clock(st, now)
    try:
        st.seq = get_int(snap, "seq", "snapshot")
        live, retired = _read_models(snap, st.tuning, shift, st.seq)
        _attach_leases(st, snap, shift, live, retired)
        _meet_registry(st, models, live, retired)
        _read_gpus(st, snap, shift)
        ended = get_list(snap, "ended", "snapshot")
        for i, pair in enumerate(ended[-st.tuning.ended_lease_memory :]):
            if not (
                isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)
            ):
                raise SnapshotError(f"snapshot: ended[{i}] must be [lease_id, why]")
            st.ended[pair[0]] = pair[1]
        # Absent from snapshots written before reuse was counted in requests.
        st.last_request_at = _shifted(get_opt_time(snap, "last_request_at", "snapshot"), shift)
        st.pace_s = _span(get_opt_time(snap, "pace_s", "snapshot"), "snapshot.pace_s")
        wanted = _strs(snap.get("preload_wanted"), "snapshot.preload_wanted")
    except SnapshotError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise SnapshotError(f"malformed snapshot: {e}") from e
    # The configuration decides what is kept warm and preloaded; the snapshot can only confirm
    # it (`start` then adds what the configuration lists and the snapshot did not have).
    preloads = profile.strategy is Strategy.CONCURRENT_FULL
    # An administrator's pin (the `pin` event) is the snapshot's own, and is kept.
    for mid, rec in st.models.items():
        rec.keep_warm = rec.pinned or (rec.keep_warm and preloads and mid in preload)
    st.preload_wanted = [
        m for m in wanted if m in st.models and (st.models[m].pinned or (preloads and m in preload))
    ]
    st.reuse_tally = ReuseTally.of(r.usage for r in st.models.values())
    st.population_memo = None
    inherit(st)
    return st
