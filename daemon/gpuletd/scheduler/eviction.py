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

from collections.abc import Callable, Mapping, Sequence
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


@dataclass(frozen=True)
class FutureView:
    """The machine once every unload under way has finished and its memory is back."""

    room: Mapping[str, int]
    slots_used: int
    budget_used: int
    candidates: Sequence[Candidate]
    slot_limit: int
    budget_limit: int


@dataclass(frozen=True)
class Plan:
    victims: tuple[str, ...]
    gpu_uuids: tuple[str, ...]
    pinned_victims: frozenset[str] = field(default_factory=frozenset)


def _fit(need: Need, view: FutureView, chosen: Sequence[Candidate]) -> tuple[str, ...] | None:
    if view.slots_used - len(chosen) + 1 > view.slot_limit:
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
        for mask in range(1, 1 << len(cands)):
            chosen = tuple(c for i, c in enumerate(cands) if mask >> i & 1)
            key = (
                sum(c.pinned for c in chosen),
                sum(c.cost for c in chosen),
                sum(c.reserved_mb for c in chosen),
                tuple(c.model_id for c in chosen),
            )
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


def plan_room(
    need: Need, view: FutureView, *, allow_pinned: bool, exact_limit: int = 8
) -> Plan | None:
    """Make room for `need` in the future view, evicting idle candidates (and, if allowed,
    pretending pinned ones could go)."""
    cands = [c for c in view.candidates if allow_pinned or not c.pinned]
    found = choose_victims(cands, lambda chosen: _fit(need, view, chosen), exact_limit=exact_limit)
    if found is None:
        return None
    chosen, gpus = found
    return Plan(
        victims=tuple(sorted(c.model_id for c in chosen)),
        gpu_uuids=gpus,
        pinned_victims=frozenset(c.model_id for c in chosen if c.pinned),
    )
