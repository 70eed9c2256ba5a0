"""Rolling window of the most recent outcomes, with exact metrics.

The window keeps, among the samples upserted into it, the ``size`` with the
largest key ``(predicted_at, prediction_id)`` -- the most recent predictions,
whatever the order their labels arrived in.

"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Iterable, Mapping
from typing import Any

from feedback_loop.metrics.accumulator import Accumulator
from feedback_loop.metrics.sample import Sample

__all__ = ["RollingWindow"]


def _key(s: Sample) -> tuple[float, str]:
    return (s.predicted_at, s.prediction_id)


def linear_quantile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of the non-empty ascending ``ordered``, bit for bit what
    ``numpy.percentile(ordered, 100 * q)`` returns (its default, ``method="linear"``).

    Numpy interpolates between the two neighbours of the virtual index ``(n - 1) * q`` as
    ``a + (b - a) * g`` below ``g = 0.5`` and ``b - (b - a) * (1 - g)`` from it on; the same
    float operations in the same order give the same result.

    >>> import numpy as np
    >>> xs = [0.5, 1.0, 1.75, 10.0, 11.0]
    >>> [linear_quantile(xs, q) == float(np.percentile(xs, 100 * q)) for q in (0.5, 0.95, 0.25)]
    [True, True, True]
    """
    n = len(ordered)
    at = (n - 1) * q
    if at >= n - 1:
        return ordered[-1]
    below = math.floor(at)
    gamma = at - below
    a, b = ordered[below], ordered[below + 1]
    diff = b - a
    if gamma >= 0.5:
        return b - diff * (1 - gamma)
    return a + diff * gamma


class RollingWindow:
    """The ``size`` samples with the largest ``(predicted_at, prediction_id)``.

    Parameters
    ----------
    size
        Capacity, ``>= 1``.

    Notes
    -----
    * :meth:`upsert` replaces the sample of the same ``prediction_id`` (a
      revision: new label or verdict) or inserts it, then drops the smallest
      keys beyond ``size``; a new sample whose key is below the minimum of a
      full window is therefore not kept. Cost: ``O(log size)`` amortised
      (dict by ``prediction_id`` + min-heap of keys with lazy deletion).
    * Exactness assumes ``predicted_at`` is stable per ``prediction_id`` (it is
      a property of the prediction). With stable keys, the window after any
      sequence of upserts holds the top ``size`` keys of the latest version of
      every ``prediction_id`` upserted, which is also what :meth:`merged`
      computes. If a revision changes ``predicted_at``, the latest version
      replaces the old one in place and samples evicted earlier are not
      brought back.
    * :meth:`result`: counts, sums and the confusion matrix through
      :class:`~feedback_loop.metrics.Accumulator`, label-delay quantiles exact
      as ``numpy.percentile`` (linear interpolation) computes them. The first
      call computes them from the samples; from then on every upsert keeps them
      up to date (the accumulator's sums are exact, so adding and removing
      samples gives what a recount gives, bit for bit; the delays are kept
      sorted), so a window that is read often, as a metrics reader's merged
      windows are, pays ``O(log size)`` per upsert instead of a recount per
      read. A window that is never read (a partition's) keeps nothing extra.

    Examples
    --------
    >>> from feedback_loop.metrics.sample import make_sample
    >>> w = RollingWindow(2)
    >>> w.upsert(make_sample("a", 1.0, "x", "x", True, None, 1.0))
    >>> w.upsert(make_sample("b", 2.0, "x", "y", False, None, 2.0))
    >>> w.upsert(make_sample("c", 3.0, "y", "y", True, None, 3.0))  # evicts "a"
    'a'
    >>> [s.prediction_id for s in w.samples()]
    ['b', 'c']
    >>> w.upsert(make_sample("a", 1.0, "x", "y", False, None, 9.0))  # too old: not kept
    'a'
    >>> w.upsert(make_sample("b", 2.0, "x", "x", True, None, 5.0))  # revision
    >>> r = w.result()
    >>> r["count"], r["accuracy"], r["label_delay_p50"]
    (2, 1.0, 4.0)
    >>> RollingWindow.from_dict(w.to_dict()).samples() == w.samples()
    True

    """

    __slots__ = ("_by_id", "_delays", "_heap", "_result", "_tally", "size")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size!r}")
        self.size = int(size)
        self._by_id: dict[str, Sample] = {}
        self._heap: list[tuple[float, str]] = []
        self._result: dict[str, Any] | None = None
        # kept up to date from the first result() on (None until then)
        self._tally: Accumulator | None = None
        self._delays: list[float] = []

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, prediction_id: object) -> bool:
        return prediction_id in self._by_id

    def __repr__(self) -> str:
        return f"RollingWindow(size={self.size}, len={len(self)})"

    def get(self, prediction_id: str) -> Sample | None:
        """The sample held for ``prediction_id``, or ``None``."""
        return self._by_id.get(prediction_id)

    def _clean_top(self) -> None:
        """Pop stale heap entries (evicted ids or superseded keys)."""
        heap, by_id = self._heap, self._by_id
        while heap:
            at, pid = heap[0]
            s = by_id.get(pid)
            if s is not None and s.predicted_at == at:
                return
            heapq.heappop(heap)

    def upsert(self, s: Sample) -> str | None:
        """Insert ``s`` or replace the sample of the same ``prediction_id``.

        Returns the ``prediction_id`` that left the window to make room (``s``'s own when it
        was not kept), or ``None``.
        """
        by_id, heap = self._by_id, self._heap
        pid = s.prediction_id
        gone = by_id.get(pid)  # the sample s replaces, or the one it evicts
        evicted: str | None = None
        if gone is not None:
            by_id[pid] = s
            if gone.predicted_at != s.predicted_at:
                heapq.heappush(heap, _key(s))
                if len(heap) > 2 * len(by_id) + 16:
                    self._heap = [_key(x) for x in by_id.values()]
                    heapq.heapify(self._heap)
        else:
            key = _key(s)
            if len(by_id) >= self.size:
                self._clean_top()
                if key < heap[0]:
                    return pid
                # Key above the minimum: insert and evict the minimum.
                _, evicted = heapq.heapreplace(heap, key)
                gone = by_id.pop(evicted)
            else:
                heapq.heappush(heap, key)
            by_id[pid] = s
        if self._tally is not None:
            if gone is not None:
                self._count(gone, -1)
            self._count(s, 1)
        self._result = None
        return evicted

    def _count(self, s: Sample, n: int) -> None:
        """Add (``n = 1``) or remove (``n = -1``) ``s`` in the kept-up-to-date metrics."""
        assert self._tally is not None
        self._tally._tally(s, n)
        delays = self._delays
        if n > 0:
            bisect.insort(delays, float(s.delay))
        else:
            del delays[bisect.bisect_left(delays, float(s.delay))]

    def samples(self) -> list[Sample]:
        """The samples, sorted ascending by ``(predicted_at, prediction_id)``."""
        return sorted(self._by_id.values(), key=_key)

    def result(self) -> dict[str, Any]:
        """Exact metrics of the samples, keyed by ``METRIC_FIELDS``."""
        if self._result is None:
            if self._tally is None:
                self._tally = Accumulator()
                for s in self._by_id.values():
                    self._tally._tally(s, 1)  # everything but the delay sketch
                self._delays = sorted(float(s.delay) for s in self._by_id.values())
            res = self._tally.result()
            delays = self._delays
            res["label_delay_p50"] = linear_quantile(delays, 0.5) if delays else None
            res["label_delay_p95"] = linear_quantile(delays, 0.95) if delays else None
            self._result = res
        return dict(self._result)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state: ``{"size", "samples": [Sample.to_list(), ...]}``."""
        return {"size": self.size, "samples": [s.to_list() for s in self.samples()]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RollingWindow:
        """Rebuild a window from :meth:`to_dict` output."""
        w = cls(data["size"])
        for values in data["samples"]:
            w.upsert(Sample.from_list(values))
        return w

    @classmethod
    def merged(cls, windows: Iterable[RollingWindow], size: int) -> RollingWindow:
        """Top ``size`` samples of the union of ``windows``.

        For a ``prediction_id`` present in several windows, the version of the
        last such window wins (as if their samples were upserted in order).

        Examples
        --------
        >>> from feedback_loop.metrics.sample import make_sample
        >>> a, b = RollingWindow(2), RollingWindow(2)
        >>> for i, w in enumerate([a, b, a, b]):
        ...     w.upsert(make_sample(f"p{i}", float(i), "x", "x", True, None, 0.0))
        >>> [s.prediction_id for s in RollingWindow.merged([a, b], 3).samples()]
        ['p1', 'p2', 'p3']

        """
        pool: dict[str, Sample] = {}
        for w in windows:
            pool.update(w._by_id)
        out = cls(size)
        top = heapq.nlargest(out.size, pool.values(), key=_key)
        out._by_id = {s.prediction_id: s for s in top}
        out._heap = [_key(s) for s in top]
        heapq.heapify(out._heap)
        return out
