"""One drift test of one feature on one closed window."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DriftResult"]


@dataclass(frozen=True, slots=True)
class DriftResult:
    """Outcome of one (feature, test) pair on one closed window.

    Attributes
    ----------
    feature
        Feature name.
    test
        Test name (see :data:`~feedback_loop.drift.statistics.TESTS`).
    statistic
        The test's statistic, window against reference.
    threshold
        Calibrated threshold for this feature, test and window count.
    drifted
        ``statistic > threshold``.
    reference_size
        Number of reference values of the feature.
    window_size
        Number of values of the feature in the window (missing ones excluded).
    window_index
        0-based index of the closed window.
    alpha
        False-alarm level of this pair (the monitor's rate split by Bonferroni).
    extra
        The feature's other statistics on the same window, by test name
        (reported, never used to decide ``drifted``).

    Examples
    --------
    >>> r = DriftResult("age", "ks", 0.21, 0.09, True, 1000, 500, 3, 0.002, {"psi": 0.25})
    >>> r.drifted, r.extra["psi"]
    (True, 0.25)
    >>> DriftResult.from_dict(r.to_dict()) == r
    True

    """

    feature: str
    test: str
    statistic: float
    threshold: float
    drifted: bool
    reference_size: int
    window_size: int
    window_index: int
    alpha: float
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields."""
        return {
            "feature": self.feature,
            "test": self.test,
            "statistic": self.statistic,
            "threshold": self.threshold,
            "drifted": self.drifted,
            "reference_size": self.reference_size,
            "window_size": self.window_size,
            "window_index": self.window_index,
            "alpha": self.alpha,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DriftResult:
        """Rebuild a result from :meth:`to_dict` output."""
        return cls(
            feature=str(data["feature"]),
            test=str(data["test"]),
            statistic=float(data["statistic"]),
            threshold=float(data["threshold"]),
            drifted=bool(data["drifted"]),
            reference_size=int(data["reference_size"]),
            window_size=int(data["window_size"]),
            window_index=int(data["window_index"]),
            alpha=float(data["alpha"]),
            extra={str(k): float(v) for k, v in data.get("extra", {}).items()},
        )
