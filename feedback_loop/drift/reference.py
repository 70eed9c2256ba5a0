"""The reference sample of one feature, scored against windows.

A numeric feature keeps its sorted reference values; a categorical one, its
counts by category (categories are canonical text: ``True`` is ``"true"``,
``1`` is ``"1"``, like class labels in the join). :meth:`FeatureReference.score`
computes every statistic of the feature's kind on a window in one vectorised
pass; :meth:`FeatureReference.calibrate` computes the thresholds.

"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from feedback_loop.drift.calibration import calibrate
from feedback_loop.drift.statistics import (
    CATEGORICAL_TESTS,
    NUMERIC_TESTS,
    PSI_EPS,
    chi2_from_counts,
    js_from_counts,
    ks_from_counts,
    numeric_counts,
    psi_edges,
    psi_from_counts,
    wasserstein_from_counts,
)

__all__ = ["FeatureReference", "Kind", "category_key"]

Kind = Literal["numeric", "categorical"]


def category_key(value: object) -> str:
    """Canonical text of a categorical value.

    Examples
    --------
    >>> category_key(True), category_key(1), category_key("1"), category_key("pro")
    ('true', '1', '1', 'pro')

    """
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


class FeatureReference:
    """Reference values of one feature.

    Parameters
    ----------
    kind
        ``"numeric"`` or ``"categorical"``.
    values
        Numeric: the reference numbers (finite). Categorical: the reference
        categories (canonicalised by :func:`category_key`), or a mapping
        ``{category: count}``.

    Examples
    --------
    >>> ref = FeatureReference("numeric", [3.0, 1.0, 2.0, 4.0])
    >>> ref.size, ref.tests
    (4, ('ks', 'psi', 'wasserstein'))
    >>> ref.score([3.0, 4.0, 5.0, 6.0])["ks"]
    0.5
    >>> cat = FeatureReference("categorical", ["a"] * 10 + ["b"] * 10 + [True])
    >>> cat.counts
    {'a': 10, 'b': 10, 'true': 1}
    >>> round(cat.score(["a", "a", "b", "c"])["js"], 4)  # "true" and "c" pooled into other
    0.2837
    >>> FeatureReference.from_dict(cat.to_dict()).counts == cat.counts
    True

    """

    __slots__ = ("_bins", "_edges", "_ref_counts", "counts", "kind", "size", "values")

    def __init__(self, kind: Kind, values: Iterable[Any] | Mapping[str, int]) -> None:
        self.kind: Kind = kind
        self.values: NDArray[np.float64] | None = None
        self.counts: dict[str, int] = {}
        if kind == "numeric":
            arr = np.sort(np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64))
            if arr.size == 0 or not np.isfinite(arr).all():
                raise ValueError("numeric reference values must be non-empty and finite")
            self.values = arr
            self.size = int(arr.size)
            self._edges = psi_edges(arr)
            self._bins = self._edges.size + 1
            self._ref_counts = np.bincount(np.searchsorted(self._edges, arr, side="right"), minlength=self._bins)
        elif kind == "categorical":
            if isinstance(values, Mapping):
                raw = {category_key(k): int(v) for k, v in values.items()}
            else:
                raw = Counter(category_key(v) for v in values)
            self.counts = {k: raw[k] for k in sorted(raw) if raw[k] > 0}
            self.size = sum(self.counts.values())
            if not self.size:
                raise ValueError("categorical reference is empty")
            self._ref_counts = np.array([*self.counts.values(), 0], dtype=np.int64)
        else:
            raise ValueError(f"kind must be 'numeric' or 'categorical', got {kind!r}")

    @property
    def tests(self) -> tuple[str, ...]:
        """Every test of this kind of feature."""
        return NUMERIC_TESTS if self.kind == "numeric" else CATEGORICAL_TESTS

    def score(self, window: Sequence[Any]) -> dict[str, float]:
        """Every statistic of :attr:`tests` on ``window`` (non-empty; numbers or categories by kind)."""
        if self.kind == "numeric":
            w = np.asarray(window, dtype=np.float64)
            support, rc, wc = numeric_counts(self.values, w)  # type: ignore[arg-type]
            bins = np.bincount(np.searchsorted(self._edges, w, side="right"), minlength=self._bins)
            return {
                "ks": float(ks_from_counts(rc, wc)),
                "psi": float(psi_from_counts(self._ref_counts, bins, PSI_EPS)),
                "wasserstein": float(wasserstein_from_counts(support, rc, wc)),
            }
        seen = Counter(window)
        if not seen:
            raise ValueError("window is empty")
        wc = np.array([seen.pop(k, 0) for k in self.counts] + [sum(seen.values())], dtype=np.int64)
        return {
            "chi2": float(chi2_from_counts(self._ref_counts, wc)),
            "js": float(js_from_counts(self._ref_counts, wc)),
        }

    def calibrate(
        self,
        window_size: int,
        tests: Sequence[str],
        alpha: float,
        n_resamples: int,
        rng: np.random.Generator | int | Sequence[int] | None,
        memo: MutableMapping[tuple[int, int, float], float] | None = None,
    ) -> dict[str, float]:
        """Thresholds of ``tests`` for windows of ``window_size`` values (see :func:`~feedback_loop.drift.calibration.calibrate`)."""
        ref: Any = self.values if self.kind == "numeric" else self.counts
        return calibrate(ref, window_size, tests, alpha, n_resamples, rng, memo=memo)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state."""
        if self.kind == "numeric":
            return {"kind": "numeric", "values": self.values.tolist()}  # type: ignore[union-attr]
        return {"kind": "categorical", "counts": dict(self.counts)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureReference:
        """Rebuild a reference from :meth:`to_dict` output."""
        if data["kind"] == "numeric":
            return cls("numeric", data["values"])
        return cls("categorical", data["counts"])
