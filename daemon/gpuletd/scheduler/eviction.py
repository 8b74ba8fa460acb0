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

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from gpuletd.scheduler.placement import Need, best_fit

__all__ = [
    "Candidate",
    "FutureView",
    "Plan",
    "Population",
    "ReuseEstimator",
    "ReuseTally",
    "choose_victims",
    "plan_room",
    "reload_cost",
]


@dataclass(frozen=True)
class Population:
    """What the models asked for twice or more say about the rest (the prior for a model
    with little history): their typical gap between requests, counted in requests, and how
    irregular such gaps are (0: like clockwork, 1: as random as Poisson arrivals)."""

    mean_gap: float | None
    irregularity: float
    # Seconds per request lately, and how many requests' worth of time has passed since the
    # last one: a quiet spell ages every model alike.
    pace_s: float
    quiet: float = 0.0


# The mean absolute deviation of exponential gaps (Poisson arrivals) from their mean, as a
# fraction of it (2/e): what "as irregular as random arrivals" measures as.
_POISSON_DEVIATION = 2 / math.e


class ReuseEstimator:
    """When will this model be asked for next? Learnt from its requests, counted in requests
    to the daemon (the request number), not in seconds: a gap of "three other requests" stays
    the same whether those requests waited for loads or not, so a cyclic scan or a pipeline
    looks as regular as it is.

    Keeps a smoothed mean gap (frequency), a smoothed deviation of the gaps (regularity) and
    the requests since the last one (recency):

    - irregular requests (deviation ~ mean, as Poisson arrivals): expect the next one a mean
      gap from now, whatever the time since the last;
    - regular requests (deviation ~ 0, a pipeline stage or a cyclic scan): expect the next one
      a mean gap after the *last* one, so the model used longest ago is the one due soonest
      (the case where LRU evicts exactly the wrong model);
    - one gap says nothing about its own regularity: take the population's (`Population`);
    - asked once: the population's pattern, as far as the population is regular, else
      `unknown_s` after its request (also when no model was asked twice yet);
    - overdue well past the pattern: expect it no sooner than it has already been away.
    """

    __slots__ = ("_alpha", "_gaps", "_last_at", "_last_seq", "_mean_dev", "_mean_gap", "_unknown_s")

    def __init__(self, *, alpha: float = 0.3, unknown_s: float = 600.0) -> None:
        self._alpha = alpha
        self._unknown_s = unknown_s
        self._last_at: float | None = None
        self._last_seq: int | None = None
        self._mean_gap: float | None = None
        self._mean_dev = 0.0
        self._gaps = 0

    def observe(self, now: float, seq: int) -> None:
        if self._last_seq is not None:
            gap = float(max(0, seq - self._last_seq))
            if self._mean_gap is None:
                self._mean_gap, self._mean_dev = gap, 0.0
            else:
                a = self._alpha
                self._mean_dev = a * abs(gap - self._mean_gap) + (1 - a) * self._mean_dev
                self._mean_gap = a * gap + (1 - a) * self._mean_gap
            self._gaps = min(self._gaps + 1, 2)
        self._last_seq = seq if self._last_seq is None else max(self._last_seq, seq)
        self._last_at = now if self._last_at is None else max(self._last_at, now)

    def state(self) -> tuple[float | None, int | None, float | None, float, int]:
        """What it has learnt: (last request time, its request number, smoothed gap, smoothed
        deviation, gaps seen up to 2)."""
        return self._last_at, self._last_seq, self._mean_gap, self._mean_dev, self._gaps

    def set_state(
        self,
        last_at: float | None,
        last_seq: int | None,
        mean_gap: float | None,
        mean_dev: float,
        gaps: int,
    ) -> None:
        """Resume from `state()` (after a restart; times already on the new clock)."""
        self._last_at, self._last_seq = last_at, last_seq
        self._mean_gap, self._mean_dev, self._gaps = mean_gap, mean_dev, gaps

    def pattern(self) -> tuple[float, float] | None:
        """(mean gap, irregularity) once asked for three times or more: what the population
        prior is made of."""
        if self._gaps < 2 or self._mean_gap is None:
            return None
        return self._mean_gap, self._irregularity(self._mean_gap)

    def first_gap(self) -> float | None:
        return self._mean_gap if self._gaps == 1 else None

    def _irregularity(self, mean: float) -> float:
        return min(1.0, self._mean_dev / (_POISSON_DEVIATION * max(mean, 1e-3)))

    def requests_to_next(self, seq: int, pop: Population) -> float:
        """Requests to the daemon expected before this model's next one (`unknown_s` is
        turned into requests at the population's pace)."""
        unknown_n = self._unknown_s / pop.pace_s
        if self._last_seq is None:
            return unknown_n
        since = max(0, seq - self._last_seq) + pop.quiet
        if self._mean_gap is not None:
            mean = max(self._mean_gap, 1e-3)
            irregular = pop.irregularity if self._gaps < 2 else self._irregularity(mean)
            return _expected(mean, irregular, since)
        # Asked once. With nothing to go on, all such models look alike but for when they
        # were asked, and reading that as a shared long period keeps the ones due back
        # soonest.
        unknown = max(unknown_n - since, since)
        if pop.mean_gap is None:
            return unknown
        # Where models keep a rhythm (a scan), a newcomer likely keeps it too; where they do
        # not (a Zipf mix), one asked once is more likely one of the rare ones than one like
        # the models seen often, whose gaps make the prior: trust it only as far as the
        # population is regular.
        prior = _expected(pop.mean_gap, pop.irregularity, since)
        return (1 - pop.irregularity) * prior + pop.irregularity * unknown


def _expected(mean: float, irregular: float, since: float) -> float:
    """Requests until the next one, for a pattern of `mean` gap and `irregular`ity, `since`
    requests after the last."""
    if since > mean * (1.5 + 2 * irregular):
        return since
    return max(mean - (1 - irregular) * since, 0.05 * mean, 0.5)


@dataclass
class ReuseTally:
    """Running sums over every model's reuse pattern, kept as each request updates one, so
    that the population prior costs nothing per question.

    The prior for models with little history: the mean gap of the models asked for three
    times or more and their mean irregularity; failing two such models, the models asked
    twice, whose irregularity is read from how alike their gaps are (a scan's are all the
    same); failing two of those, none. One model is no population: its own habit says
    nothing about the others'."""

    patterns: int = 0
    pattern_gaps: float = 0.0
    pattern_irregularity: float = 0.0
    firsts: int = 0
    first_gaps: float = 0.0
    first_gaps_sq: float = 0.0

    @classmethod
    def of(cls, estimators: Iterable[ReuseEstimator]) -> ReuseTally:
        tally = cls()
        for e in estimators:
            tally.count(e, 1)
        return tally

    def count(self, e: ReuseEstimator, sign: int) -> None:
        """Add (1) or take away (-1) what `e` says now."""
        p = e.pattern()
        if p is not None:
            self.patterns += sign
            self.pattern_gaps += sign * p[0]
            self.pattern_irregularity += sign * p[1]
        elif (g := e.first_gap()) is not None:
            self.firsts += sign
            self.first_gaps += sign * g
            self.first_gaps_sq += sign * g * g

    def population(self, pace_s: float, quiet: float) -> Population:
        if self.patterns >= 2:
            n = self.patterns
            return Population(
                self.pattern_gaps / n, min(1.0, self.pattern_irregularity / n), pace_s, quiet
            )
        if self.firsts >= 2:
            # How alike they are: the spread of exponential gaps equals their mean.
            n = self.firsts
            gap = self.first_gaps / n
            spread = max(0.0, self.first_gaps_sq / n - gap * gap) ** 0.5
            return Population(gap, min(1.0, spread / max(gap, 1e-3)), pace_s, quiet)
        return Population(None, 1.0, pace_s, quiet)

    def differs(self, other: ReuseTally) -> bool:
        """Not the same counts, or sums apart by more than rounding."""
        if (self.patterns, self.firsts) != (other.patterns, other.firsts):
            return True
        pairs = (
            (self.pattern_gaps, other.pattern_gaps),
            (self.pattern_irregularity, other.pattern_irregularity),
            (self.first_gaps, other.first_gaps),
            (self.first_gaps_sq, other.first_gaps_sq),
        )
        return any(abs(a - b) > 1e-6 * max(1.0, abs(a), abs(b)) for a, b in pairs)


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
