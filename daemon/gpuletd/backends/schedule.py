"""When to ask a starting backend's health URL again: fast where readiness is likely.

Every interval between two health checks is, on average, half an interval of lag between the
backend being ready and its lease being granted, and that lag is also counted in the load time
the scheduler learns (and so in what it thinks an eviction costs). Polling fast all the time
would load a slow engine with requests for minutes, so the schedule is fast only where the
backend is likely to become ready:

- for the first `early_s` after the spawn (small models, and an engine that fails at once);
- in a band around the expected load time, when one is known (the load time learnt for this
  model: `expected_s`), from `(1 - band) * expected_s` to `(1 + band) * expected_s`, and at
  least `min_band_s` either side;

and away from them it backs off in proportion to the distance to the nearest fast stretch
(`backoff` of it, so a check never sleeps past the start of the band), never slower than
`max_s`. Readiness that comes outside the fast stretches is therefore seen within about a
tenth of how far off the expectation was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["PollSchedule"]


@dataclass(frozen=True)
class PollSchedule:
    # The fastest interval: at most one check per 25 ms, i.e. 40 requests/s, and only one
    # request is ever in flight (the next waits for the answer of the last).
    fast_s: float = 0.025
    max_s: float = 1.0
    early_s: float = 1.0
    expected_s: float | None = None
    band: float = 0.25
    min_band_s: float = 1.0
    # Must stay below 1: then a sleep that starts before the band ends before it starts.
    backoff: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.fast_s <= self.max_s:
            raise ValueError(f"need 0 < fast_s <= max_s, got {self.fast_s}, {self.max_s}")
        if not 0 < self.backoff < 1:
            raise ValueError(f"backoff must be in (0, 1), got {self.backoff}")

    def with_expected(self, expected_s: float | None) -> PollSchedule:
        """This schedule around `expected_s`; a value that is not a positive finite number
        (nothing learnt yet, a corrupt record) means no expectation."""
        ok = expected_s is not None and math.isfinite(expected_s) and expected_s > 0
        return PollSchedule(
            self.fast_s,
            self.max_s,
            self.early_s,
            expected_s if ok else None,
            self.band,
            self.min_band_s,
            self.backoff,
        )

    @property
    def fast_band(self) -> tuple[float, float] | None:
        """Seconds after the spawn between which checks are fast because of the expectation."""
        if self.expected_s is None:
            return None
        half = max(self.band * self.expected_s, self.min_band_s)
        return max(0.0, self.expected_s - half), self.expected_s + half

    def interval(self, elapsed_s: float) -> float:
        """How long to wait before the next check, `elapsed_s` after the spawn."""
        distance = max(0.0, elapsed_s - self.early_s)
        band = self.fast_band
        if band is not None:
            start, end = band
            if elapsed_s < start:
                distance = min(distance, start - elapsed_s)
            elif elapsed_s <= end:
                distance = 0.0
            else:
                distance = min(distance, elapsed_s - end)
        return min(self.max_s, max(self.fast_s, self.backoff * distance))
