"""One joined outcome, reduced to what the metrics need.

A :class:`Sample` is built once per outcome (prediction joined with its label or
reviewer verdict) by :func:`make_sample`; every metric container
(:class:`~feedback_loop.metrics.Accumulator`,
:class:`~feedback_loop.metrics.RollingWindow`) only ever reads samples, so a
revision of an outcome is "remove the old sample, add the new one".

"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Sample", "make_sample"]

_N_FIELDS = 8


@dataclass(frozen=True, slots=True)
class Sample:
    """One outcome's contribution to the metrics.

    Parameters
    ----------
    prediction_id
        Identifier of the prediction; unique key inside a rolling window.
    predicted_at
        Epoch seconds of the prediction. Rolling windows order samples by
        ``(predicted_at, prediction_id)``.
    prediction
        Canonical class key (``str``) for classification, ``float`` for
        regression. The type decides the task: a ``str`` prediction is a
        classification sample, anything else a regression sample.
    label
        True class / true value; ``None`` when unknown (a reviewer said
        "error" without giving the corrected label).
    correct
        Whether the prediction was right; ``None`` for regression.
    p_true
        Probability the scores gave the true class; ``None`` without scores or
        without a known label.
    brier
        Multi-class Brier score of this outcome,
        ``sum_k (p_k - 1[k == label])**2``; ``None`` without scores or without
        a known label.
    delay
        Label delay in seconds, ``>= 0``.

    Examples
    --------
    >>> s = Sample("p1", 10.0, "cat", "dog", False, 0.25, 1.125, 3.0)
    >>> s.to_list()
    ['p1', 10.0, 'cat', 'dog', False, 0.25, 1.125, 3.0]
    >>> Sample.from_list(s.to_list()) == s
    True

    """

    prediction_id: str
    predicted_at: float
    prediction: str | float
    label: str | float | None
    correct: bool | None
    p_true: float | None
    brier: float | None
    delay: float

    @property
    def key(self) -> tuple[float, str]:
        """Ordering key of rolling windows: ``(predicted_at, prediction_id)``."""
        return (self.predicted_at, self.prediction_id)

    @property
    def is_classification(self) -> bool:
        """``True`` when the prediction is a class key (a ``str``)."""
        return isinstance(self.prediction, str)

    def to_list(self) -> list[Any]:
        """Compact JSON-able form, in field order; inverted by :meth:`from_list`."""
        return [
            self.prediction_id,
            self.predicted_at,
            self.prediction,
            self.label,
            self.correct,
            self.p_true,
            self.brier,
            self.delay,
        ]

    @classmethod
    def from_list(cls, values: Sequence[Any]) -> Sample:
        """Rebuild a sample from :meth:`to_list` output.

        Raises
        ------
        ValueError
            If ``values`` does not have exactly 8 items.

        """
        if len(values) != _N_FIELDS:
            raise ValueError(f"a sample list has {_N_FIELDS} items, got {len(values)}")
        return cls(*values)


def _finite(name: str, value: float) -> float:
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return x


def make_sample(
    prediction_id: str,
    predicted_at: float,
    prediction: str | float,
    label: str | float | None,
    correct: bool | None,
    scores: Mapping[str, float] | None,
    delay: float,
) -> Sample:
    """Build the :class:`Sample` of one outcome.

    Parameters
    ----------
    prediction_id
        Identifier of the prediction.
    predicted_at
        Epoch seconds of the prediction (must be finite).
    prediction
        A ``str`` class key (classification) or a finite number (regression,
        stored as ``float``). ``bool`` is rejected.
    label
        The true class (``str``) or value (number); ``None`` when unknown.
    correct
        Classification verdict. When ``None`` for a classification sample it
        is derived as ``label is not None and prediction == label``. Always
        ``None`` for regression.
    scores
        Class probabilities by class key, or ``None``. Used only for
        classification with a known label: ``p_true = scores.get(label, 0.0)``
        and ``brier`` sums ``(p_k - 1[k == label])**2`` over the union of the
        score classes and the label (a label missing from the scores has
        ``p = 0``). Scores are taken as given (not renormalised). An empty
        mapping counts as "no scores".
    delay
        Label delay in seconds; negative values are clamped to ``0``.

    Returns
    -------
    Sample

    Raises
    ------
    TypeError
        On a ``bool`` prediction, or on a label whose type does not match the
        task (non-``str`` label for a ``str`` prediction).
    ValueError
        When ``predicted_at``, ``delay``, a score or a regression value is not
        finite.

    Examples
    --------
    >>> s = make_sample("p1", 100.0, "cat", "dog", None, {"cat": 0.75, "dog": 0.25}, 2.5)
    >>> s.correct, s.p_true, s.brier
    (False, 0.25, 1.125)

    A label absent from the scores has probability 0:

    >>> s = make_sample("p2", 100.0, "cat", "cow", False, {"cat": 0.75, "dog": 0.25}, -1.0)
    >>> s.p_true, s.brier, s.delay
    (0.0, 1.625, 0.0)

    Regression:

    >>> s = make_sample("p3", 100.0, 2, 3.5, None, None, 1.0)
    >>> s.prediction, s.label, s.correct, s.p_true
    (2.0, 3.5, None, None)

    """
    at = _finite("predicted_at", predicted_at)
    lag = _finite("delay", delay)
    if lag < 0.0:
        lag = 0.0
    if isinstance(prediction, str):
        if label is not None and not isinstance(label, str):
            raise TypeError(
                f"classification label must be a str or None, got {type(label).__name__}"
            )
        ok = (label is not None and prediction == label) if correct is None else bool(correct)
        if label is None or not scores:
            return Sample(prediction_id, at, prediction, label, ok, None, None, lag)
        p_true = float(scores.get(label, 0.0))
        brier = 0.0 if label in scores else 1.0
        for cls, p in scores.items():
            d = float(p) - 1.0 if cls == label else float(p)
            brier += d * d
        if not math.isfinite(brier):
            raise ValueError(f"scores must be finite, got {dict(scores)!r}")
        return Sample(prediction_id, at, prediction, label, ok, p_true, brier, lag)
    if isinstance(prediction, bool):
        raise TypeError("a bool prediction is neither a class key (str) nor a number")
    value = _finite("prediction", prediction)
    if label is not None:
        if isinstance(label, (str, bool)):
            raise TypeError(f"regression label must be a number or None, got {label!r}")
        label = _finite("label", label)
    return Sample(prediction_id, at, value, label, None, None, None, lag)
