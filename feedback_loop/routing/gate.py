"""The budget gate: route about ``budget_per_hour`` items per hour of event time, and the most
deserving ones, without knowing the future.

A stream cannot sort tomorrow's predictions, so the gate compares each priority with the recent
ones: it keeps the last ``window`` priorities and event times, estimates the prediction rate from
how far the latest event time moved over them, turns the budget into the fraction ``f = budget / rate`` of predictions it may route,
and admits a priority in the top ``f`` of the recent ones. A token bucket filled by ``f`` per
prediction seen (``burst`` items at most saved up) keeps the count on budget when priorities trend
(a run of uncertain hours would otherwise admit more than the top ``f``); it is filled per
prediction rather than by event time so that predictions read out of time order (several join
partitions interleaved) neither lose nor gain budget. The review queue's token bucket is the hard cap
across versions and partitions (:mod:`consumers.review_queue`); the gate makes the budget go to
the highest priorities.

Examples
--------
>>> gate = BudgetGate(budget_per_hour=0.2, window=100, min_history=10)   # 10% of 2 rows per hour
>>> admitted = [gate.admit(i % 10 / 10, t=i * 1800.0) for i in range(1000)]
>>> top = sum(ok for i, ok in enumerate(admitted) if i % 10 == 9)
>>> sum(admitted), top    # about 100 routed, nearly all of them the highest priority
(111, 99)
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Sequence


class BudgetGate:
    """Admit the top ``budget / rate`` fraction of recent priorities (see module doc)."""

    def __init__(self, budget_per_hour: float, window: int = 500, min_history: int = 20,
                 burst: float = 20.0) -> None:
        self.budget_per_hour = budget_per_hour
        self.burst = burst
        self.tokens = burst
        self.window = window
        self.min_history = min_history
        self._recent: deque[float] = deque()
        self._sorted: list[float] = []
        self._times: deque[float] = deque(maxlen=window)
        self.seen = 0
        self.admitted = 0

    def fraction(self) -> float:
        """The share of predictions the budget allows at the recent rate (1 while unknown).

        A full window over which the latest time seen did not move (a partition read far ahead
        of the others: the rest of a backlog arrives behind it) is no time at all: no budget
        accrues until the time moves again, rather than an unknown rate that admits everything.
        """
        times = self._times
        if len(times) < 2:
            return 1.0
        span = times[-1] - times[0]  # progress of the latest time seen
        if span <= 0:
            return 0.0 if len(times) == times.maxlen else 1.0
        per_hour = (len(times) - 1) * 3600.0 / span
        return min(1.0, self.budget_per_hour / per_hour)

    def threshold(self, fraction: float | None = None) -> float:
        """The least priority admitted now (``inf`` before ``min_history`` priorities); ``fraction``:
        :meth:`fraction` if already known.

        The top fraction widens (up to twice ``f``) while unspent budget piles up and narrows (down
        to half) as it runs out, so the budget is spent, on the highest priorities.
        """
        n = len(self._sorted)
        if n < self.min_history:
            return float("inf")
        half = self.burst / 2.0
        fraction = min(1.0, (self.fraction() if fraction is None else fraction) * 2.0 ** ((self.tokens - half) / half))
        k = int((1.0 - fraction) * n)
        return self._sorted[k] if k < n else float("inf")

    def admit(self, priority: float | None, t: float) -> bool:
        """Whether to route an item of ``priority`` (``None``: no policy scored it) at event time ``t``."""
        return self.admit_many((priority,), (t,))[0]

    def admit_many(self, priorities: Sequence[float | None], times: Sequence[float]) -> list[bool]:
        """:meth:`admit` of each ``(priority, t)`` in turn; an event time that is not a number is
        refused before anything changes."""
        if not all(type(t) is float or type(t) is int for t in times):
            raise TypeError(f"event times must be numbers, got {[t for t in times if type(t) not in (float, int)]!r}")
        seen, ordered, recent = self._times, self._sorted, self._recent
        insort, bisect_left = bisect.insort, bisect.bisect_left
        out = []
        for priority, t in zip(priorities, times):
            # The latest event time seen, per arrival: its progress over the window measures the
            # rate even when partitions read in turns deliver times out of order (a steady skew
            # cancels).
            if seen:
                last = seen[-1]
                seen.append(last if last >= t else t)
            else:
                seen.append(t)
            fraction = self.fraction()
            self.tokens = min(self.burst, self.tokens + fraction)
            value = 0.0 if priority is None else priority
            ok = priority is not None and value > 0.0 and self.tokens >= 1.0 and value >= self.threshold(fraction)
            if ok:
                self.tokens -= 1.0
            insort(ordered, value)
            recent.append(value)
            if len(recent) > self.window:
                del ordered[bisect_left(ordered, recent.popleft())]
            out.append(ok)
        self.seen += len(out)
        self.admitted += sum(out)
        return out
