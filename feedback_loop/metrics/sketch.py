"""Mergeable and subtractable quantile sketch with relative accuracy.

A DDSketch-like sketch over non-negative values: a positive value ``x`` goes to
the logarithmic bucket ``i = ceil(log(x) / log(gamma))`` with
``gamma = (1 + alpha) / (1 - alpha)``, i.e. ``gamma**(i-1) < x <= gamma**i``,
and bucket ``i`` is represented by ``2 * gamma**i / (gamma + 1)``, which is
within relative error ``alpha`` of every value of the bucket. Values below the
smallest normal float (in practice: ``0.0``) go to a separate zero bucket and
are represented by ``0.0``.

The state is only integer counts by bucket, so ``merge`` is bucket-wise
addition and ``remove`` is the exact inverse of ``add``.

"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["QuantileSketch"]

_MIN_POSITIVE = sys.float_info.min
_MAX_FLOAT = sys.float_info.max


@dataclass(slots=True)
class QuantileSketch:
    """Log-bucket quantile sketch for non-negative values.

    Parameters
    ----------
    alpha
        Relative accuracy, ``0 < alpha < 1``.

    Notes
    -----
    **Rank convention.** ``quantile(q)`` estimates the *lower* rank value: the
    element of 0-based index ``floor(q * (n - 1))`` of the sorted values, i.e.
    ``numpy.quantile(values, q, method="lower")``. The estimate ``v`` of that
    exact value ``x`` satisfies ``|v - x| <= alpha * x`` (up to floating-point
    rounding, ~1e-12 relative). Values below the smallest normal float
    (``0.0`` and subnormals, ``< 2.2e-308``) share the zero bucket and are
    reported as ``0.0``.

    **Group semantics.** ``remove`` never fails: removing a value that was not
    added leaves a negative bucket count, which a later ``add``/``merge`` can
    cancel (so per-partition deltas merge correctly). :meth:`quantile` raises
    ``ValueError`` while any bucket count is negative.

    Examples
    --------
    >>> sk = QuantileSketch()
    >>> for x in [0.0, 1.0, 2.0, 3.0, 100.0]:
    ...     sk.add(x)
    >>> sk.count
    5
    >>> sk.quantile(0.0)
    0.0
    >>> abs(sk.quantile(0.5) - 2.0) <= 0.01 * 2.0
    True
    >>> sk.remove(100.0)
    >>> abs(sk.quantile(1.0) - 3.0) <= 0.01 * 3.0
    True
    >>> QuantileSketch.from_dict(sk.to_dict()) == sk
    True

    """

    alpha: float = 0.01
    zero_count: int = field(default=0, init=False)
    buckets: dict[int, int] = field(default_factory=dict, init=False, repr=False)
    _count: int = field(default=0, init=False, repr=False)
    _log_gamma: float = field(default=0.0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        alpha = float(self.alpha)
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha!r}")
        self.alpha = alpha
        self._log_gamma = math.log1p(2.0 * alpha / (1.0 - alpha))

    @property
    def count(self) -> int:
        """Number of values added minus number removed."""
        return self._count

    def _index(self, x: float) -> int | None:
        """Bucket index of ``x``; ``None`` for the zero bucket."""
        if not x >= 0.0 or x == math.inf:
            raise ValueError(f"QuantileSketch takes finite values >= 0, got {x!r}")
        if x < _MIN_POSITIVE:
            return None
        return math.ceil(math.log(x) / self._log_gamma)

    def _shift(self, x: float, n: int) -> None:
        i = self._index(x)
        self._count += n
        if i is None:
            self.zero_count += n
            return
        c = self.buckets.get(i, 0) + n
        if c:
            self.buckets[i] = c
        else:
            del self.buckets[i]

    def add(self, x: float) -> None:
        """Add one value ``x >= 0`` (``ValueError`` on negative/NaN/inf)."""
        self._shift(x, 1)

    def remove(self, x: float) -> None:
        """Remove one value; the exact inverse of :meth:`add`."""
        self._shift(x, -1)

    def merge(self, other: QuantileSketch) -> QuantileSketch:
        """Add all of ``other``'s counts into this sketch, in place.

        Raises
        ------
        ValueError
            If the two sketches have different ``alpha``.

        """
        if other.alpha != self.alpha:
            raise ValueError(f"cannot merge sketches with alpha {self.alpha} and {other.alpha}")
        self.zero_count += other.zero_count
        self._count += other._count
        buckets = self.buckets
        for i, n in other.buckets.items():
            c = buckets.get(i, 0) + n
            if c:
                buckets[i] = c
            else:
                del buckets[i]
        return self

    def _value(self, i: int) -> float:
        # 2 * gamma**i / (gamma + 1), computed in log space to avoid overflow.
        lg = self._log_gamma
        log_v = i * lg + math.log(2.0) - math.log1p(math.exp(lg))
        return min(math.exp(log_v), _MAX_FLOAT)

    def quantile(self, q: float) -> float | None:
        """Estimate the lower-rank ``q``-quantile; ``None`` when empty.

        Parameters
        ----------
        q
            Quantile level in ``[0, 1]``.

        Raises
        ------
        ValueError
            If ``q`` is outside ``[0, 1]`` or a bucket count is negative.

        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q!r}")
        n = self._count
        if n == 0 and self.zero_count == 0 and not self.buckets:
            return None
        if self.zero_count < 0 or n <= 0 or any(c < 0 for c in self.buckets.values()):
            raise ValueError("sketch has negative counts (more removes than adds)")
        rank = math.floor(q * (n - 1))
        seen = self.zero_count
        if rank < seen:
            return 0.0
        for i in sorted(self.buckets):
            seen += self.buckets[i]
            if rank < seen:
                return self._value(i)
        raise AssertionError("unreachable: count is the sum of bucket counts")  # pragma: no cover

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state: ``{"alpha", "zero", "buckets": {str(index): count}}``."""
        return {
            "alpha": self.alpha,
            "zero": self.zero_count,
            "buckets": {str(i): n for i, n in self.buckets.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantileSketch:
        """Rebuild a sketch from :meth:`to_dict` output (zero buckets are dropped)."""
        sk = cls(alpha=data["alpha"])
        sk.zero_count = int(data["zero"])
        sk.buckets = {int(i): int(n) for i, n in data["buckets"].items() if int(n)}
        sk._count = sk.zero_count + sum(sk.buckets.values())
        return sk
