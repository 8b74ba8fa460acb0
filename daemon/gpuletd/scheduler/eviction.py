"""Which models to unload to make room: the victim choice, as a pure function.

The cost of evicting an idle model is what we expect to pay to load it again:

    cost = reload time x expected requests per second (= 1 / expected time to its next use)

*Reload time* is the model's measured load time (StartBackend to healthy, smoothed), or 2 s per
GiB of reservation when it was never measured. *Expected time to next use* comes from the
model's request history (`ReuseEstimator`: frequency, recency and regularity), so that a model
used forty times an hour outweighs one used once a minute ago, and a model in a regular cycle
is kept when it is about to come round again. Requests already waiting for a model make its
reuse certain.

The cheapest *set* of victims that makes the placement feasible wins (exactly, by enumeration,
when there are few candidates; greedily by cost per MiB freed otherwise). Models that are
leased or loading are "pinned": they are never evicted, but the same search may include them
(at a price above any idle set) to answer "what would this request be waiting for", which the
scheduler uses to protect the head of the queue from being starved. See docs/scheduling.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from gpuletd.scheduler.placement import Need, best_fit

__all__ = [
    "Candidate",
    "FutureView",
    "Plan",
    "ReuseEstimator",
    "choose_victims",
    "plan_room",
    "reload_cost",
]


class ReuseEstimator:
    """When will this model be asked for next? Learnt from the times of its requests.

    Keeps a smoothed mean gap between requests (frequency) and a smoothed deviation of the
    gaps (regularity), and the time since the last request (recency):

    - irregular requests (deviation ~ mean, as Poisson arrivals): expect the next one a mean
      gap from now, whatever the time since the last;
    - regular requests (deviation ~ 0, a pipeline stage or a cyclic scan): expect the next one
      a mean gap after the *last* one, so the model used longest ago is the one due soonest
      (the case where LRU evicts exactly the wrong model);
    - overdue well past the pattern, or asked for only once: expect it no sooner than it has
      already been away (and, never seen twice, no sooner than `unknown_s`).
    """

    __slots__ = ("_alpha", "_last_at", "_mean_dev", "_mean_gap", "_unknown_s")

    def __init__(self, *, alpha: float = 0.3, unknown_s: float = 600.0) -> None:
        self._alpha = alpha
        self._unknown_s = unknown_s
        self._last_at: float | None = None
        self._mean_gap: float | None = None
        self._mean_dev = 0.0

    def observe(self, now: float) -> None:
        if self._last_at is not None:
            gap = max(0.0, now - self._last_at)
            if self._mean_gap is None:
                # One gap says nothing about regularity: start by assuming none.
                self._mean_gap, self._mean_dev = gap, gap
            else:
                a = self._alpha
                self._mean_dev = a * abs(gap - self._mean_gap) + (1 - a) * self._mean_dev
                self._mean_gap = a * gap + (1 - a) * self._mean_gap
        self._last_at = now if self._last_at is None else max(self._last_at, now)

    def state(self) -> tuple[float | None, float | None, float]:
        """What it has learnt: (last request time, smoothed gap, smoothed deviation)."""
        return self._last_at, self._mean_gap, self._mean_dev

    def set_state(self, last_at: float | None, mean_gap: float | None, mean_dev: float) -> None:
        """Resume from `state()` (after a restart; times already on the new clock)."""
        self._last_at, self._mean_gap, self._mean_dev = last_at, mean_gap, mean_dev

    def seconds_to_next(self, now: float) -> float:
        if self._last_at is None:
            return self._unknown_s
        since = max(0.0, now - self._last_at)
        if self._mean_gap is None:
            return max(since, self._unknown_s)
        mean = max(self._mean_gap, 1e-3)
        irregular = min(1.0, self._mean_dev / mean)
        if since > mean * (1.5 + 2 * irregular):
            return since
        return max(mean - (1 - irregular) * since, 0.05 * mean, 0.5)


def reload_cost(load_seconds: float, reuse_per_s: float) -> float:
    """Expected reload seconds per second the model is away: what evicting it costs."""
    return load_seconds * reuse_per_s


@dataclass(frozen=True)
class Candidate:
    model_id: str
    gpu_shares: Mapping[str, int]
    reserved_mb: int
    cost: float
    # Leased or loading: never actually evicted; only considered to explain a wait.
    pinned: bool
    # Counted against the profile's `max_heavy_models`.
    heavy: bool = False
    # The two factors of `cost`, for the look-ahead (`_knock_on`): reload seconds, and
    # expected requests per second.
    load_s: float = 0.0
    rate: float = 0.0


@dataclass(frozen=True)
class FutureView:
    """The machine once every unload under way has finished and its memory is back."""

    room: Mapping[str, int]
    slots_used: int
    budget_used: int
    candidates: Sequence[Candidate]
    slot_limit: int
    budget_limit: int
    heavy_used: int = 0
    # None: no cap on heavy models.
    heavy_limit: int | None = None


@dataclass(frozen=True)
class Plan:
    victims: tuple[str, ...]
    gpu_uuids: tuple[str, ...]
    pinned_victims: frozenset[str] = field(default_factory=frozenset)


def _fit(need: Need, view: FutureView, chosen: Sequence[Candidate]) -> tuple[str, ...] | None:
    if view.slots_used - len(chosen) + 1 > view.slot_limit:
        return None
    if (
        need.heavy
        and view.heavy_limit is not None
        and view.heavy_used - sum(c.heavy for c in chosen) + 1 > view.heavy_limit
    ):
        return None
    freed_total = sum(c.reserved_mb for c in chosen)
    if view.budget_used - freed_total + need.total_mb > view.budget_limit:
        return None
    room = dict(view.room)
    for c in chosen:
        for uuid, mb in c.gpu_shares.items():
            if uuid in room:
                room[uuid] += mb
    return best_fit(need, room)


def choose_victims(
    candidates: Sequence[Candidate],
    fits: Callable[[Sequence[Candidate]], tuple[str, ...] | None],
    *,
    exact_limit: int = 8,
) -> tuple[tuple[Candidate, ...], tuple[str, ...]] | None:
    """The cheapest set of candidates whose removal makes `fits` succeed, and where it fits.

    Order of preference: fewest pinned models, then least total cost, then least memory freed,
    then model ids (so the answer never depends on input order)."""
    cands = sorted(candidates, key=lambda c: c.model_id)
    placed = fits(())
    if placed is not None:
        return (), placed
    if len(cands) <= exact_limit:
        best: tuple[tuple[int, float, int, tuple[str, ...]], tuple[Candidate, ...]] | None = None
        best_gpus: tuple[str, ...] = ()
        for chosen in _subsets(cands):
            key = _set_key(chosen)
            if best is not None and key >= best[0]:
                continue
            gpus = fits(chosen)
            if gpus is not None:
                best, best_gpus = (key, chosen), gpus
        return None if best is None else (best[1], best_gpus)
    # Greedy: cheapest per MiB freed first, then drop any that turned out not to be needed.
    order = sorted(cands, key=lambda c: (c.pinned, c.cost / max(c.reserved_mb, 1), c.model_id))
    chosen_list: list[Candidate] = []
    gpus_found: tuple[str, ...] | None = None
    for c in order:
        chosen_list.append(c)
        gpus_found = fits(chosen_list)
        if gpus_found is not None:
            break
    if gpus_found is None:
        return None
    for c in sorted(chosen_list, key=lambda c: (-c.pinned, -c.cost, c.model_id)):
        trial = [x for x in chosen_list if x is not c]
        g = fits(trial)
        if g is not None:
            chosen_list, gpus_found = trial, g
    return tuple(chosen_list), gpus_found


_LOOKAHEAD_SETS = 4


def _returns(
    view: FutureView, need: Need, gpus: tuple[str, ...], gone: Sequence[Candidate], c: Candidate
) -> Callable[[Candidate | None], bool]:
    """Once `need` is placed on `gpus` and `gone` evicted: would `c` fit back after also
    evicting `extra` (None: nothing more)?"""
    room = dict(view.room)
    for g in gone:
        for u, mb in g.gpu_shares.items():
            if u in room:
                room[u] += mb
    for u in gpus:
        room[u] = room.get(u, 0) - need.share_mb
    slots = view.slots_used - len(gone) + 1
    budget = view.budget_used - sum(g.reserved_mb for g in gone) + need.total_mb
    heavies = view.heavy_used - sum(g.heavy for g in gone) + need.heavy
    n = len(c.gpu_shares)
    share = max(c.gpu_shares.values(), default=c.reserved_mb)
    back = Need(c.model_id, c.reserved_mb, n, share, tuple(sorted(room)))

    def fits(extra: Candidate | None) -> bool:
        r, s, b, h = room, slots, budget, heavies
        if extra is not None:
            r = dict(room)
            for u, mb in extra.gpu_shares.items():
                if u in r:
                    r[u] += mb
            s, b, h = s - 1, b - extra.reserved_mb, h - extra.heavy
        if s + 1 > view.slot_limit or b + c.reserved_mb > view.budget_limit:
            return False
        if c.heavy and view.heavy_limit is not None and h + 1 > view.heavy_limit:
            return False
        return best_fit(back, r) is not None

    return fits


def _knock_on(
    view: FutureView,
    need: Need,
    gpus: tuple[str, ...],
    chosen: Sequence[Candidate],
    added_load_s: float,
) -> float:
    """What evicting `chosen` costs beyond their own reloads: a victim asked for again may
    not fit back beside what stays, and then forces out another model (the cheapest to
    reload of those that would make room, the newcomer included), at its expected rate."""
    ids = {c.model_id for c in chosen}
    stay = [c for c in view.candidates if c.model_id not in ids and not c.pinned]
    newcomer = Candidate(
        need.model_id,
        dict.fromkeys(gpus, need.share_mb),
        need.total_mb,
        0.0,
        False,
        need.heavy,
        added_load_s,
    )
    extra = 0.0
    for c in chosen:
        if c.rate <= 0:
            continue
        fits = _returns(view, need, gpus, chosen, c)
        if fits(None):
            continue
        forced = [o.load_s for o in (*stay, newcomer) if fits(o)]
        if forced:
            extra += c.rate * min(forced)
    return extra


def _lookahead(
    need: Need,
    view: FutureView,
    cands: Sequence[Candidate],
    added_load_s: float,
    exact_limit: int,
) -> tuple[tuple[Candidate, ...], tuple[str, ...]] | None:
    """The few cheapest feasible sets (by their own cost), then the best of them counting the
    knock-on evictions their victims' return would force."""
    ordered = sorted(cands, key=lambda c: c.model_id)
    top: list[
        tuple[tuple[int, float, int, tuple[str, ...]], tuple[Candidate, ...], tuple[str, ...]]
    ]
    top = []
    for chosen in _subsets(ordered):
        key = _set_key(chosen)
        if len(top) == _LOOKAHEAD_SETS and key >= top[-1][0]:
            continue
        gpus = _fit(need, view, chosen)
        if gpus is None:
            continue
        top.append((key, chosen, gpus))
        top.sort(key=lambda t: t[0])
        del top[_LOOKAHEAD_SETS:]
    if not top:
        return None
    best = min(
        top,
        key=lambda t: (
            t[0][0],
            t[0][1] + _knock_on(view, need, t[2], t[1], added_load_s),
            t[0][2],
            t[0][3],
        ),
    )
    return best[1], best[2]


def _subsets(cands: Sequence[Candidate]) -> Iterator[tuple[Candidate, ...]]:
    """Every non-empty subset, in the same order each time (the exact searches' tie-break)."""
    for mask in range(1, 1 << len(cands)):
        yield tuple(c for i, c in enumerate(cands) if mask >> i & 1)


def _set_key(chosen: tuple[Candidate, ...]) -> tuple[int, float, int, tuple[str, ...]]:
    """How an eviction set ranks: fewest pinned, then cheapest, then least memory, then ids."""
    return (
        sum(c.pinned for c in chosen),
        sum(c.cost for c in chosen),
        sum(c.reserved_mb for c in chosen),
        tuple(c.model_id for c in chosen),
    )


def plan_room(
    need: Need,
    view: FutureView,
    *,
    allow_pinned: bool,
    exact_limit: int = 8,
    lookahead: bool = False,
    added_load_s: float = 0.0,
) -> Plan | None:
    """Make room for `need` in the future view, evicting idle candidates (and, if allowed,
    pretending pinned ones could go). `lookahead`: among the cheapest few sets, prefer the one
    whose victims can come back without forcing out another (see `_knock_on`); only when the
    candidates are few enough for the exact search. `added_load_s`: the newcomer's reload time."""
    cands = [c for c in view.candidates if allow_pinned or not c.pinned]
    found: tuple[tuple[Candidate, ...], tuple[str, ...]] | None
    placed = _fit(need, view, ())
    if placed is not None:
        found = ((), placed)
    elif lookahead and len(cands) <= exact_limit:
        found = _lookahead(need, view, cands, added_load_s, exact_limit)
    else:
        found = choose_victims(
            cands, lambda chosen: _fit(need, view, chosen), exact_limit=exact_limit
        )
    if found is None:
        return None
    chosen, gpus = found
    return Plan(
        victims=tuple(sorted(c.model_id for c in chosen)),
        gpu_uuids=gpus,
        pinned_victims=frozenset(c.model_id for c in chosen if c.pinned),
    )
