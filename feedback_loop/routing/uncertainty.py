"""Uncertainty scores of one prediction, each in ``[0, 1]``, higher meaning less sure.

All three read the class scores (class -> probability); least confidence also works from the
bare confidence of the predicted class when a producer sends no scores.

Examples
--------
>>> scores = {"yes": 0.7, "no": 0.2, "maybe": 0.1}
>>> round(least_confidence(scores), 6), round(margin(scores), 6), round(entropy(scores), 4)
(0.45, 0.5, 0.7298)
"""

from __future__ import annotations

import math
from typing import Mapping


def _normalised(scores: Mapping[str, float]) -> list[float]:
    values = [max(0.0, float(v)) for v in scores.values()]
    total = sum(values)
    return [v / total for v in values] if total > 0 else []


def least_confidence(scores: Mapping[str, float] | None, confidence: float | None = None) -> float | None:
    """``(1 - p_max) * K / (K - 1)``: 0 when certain, 1 when every class is equally likely.

    With no scores, ``2 * (1 - confidence)`` (the two-class scale). ``None`` when neither is known.

    >>> least_confidence({"a": 0.5, "b": 0.5}), round(least_confidence(None, 0.8), 6)
    (1.0, 0.4)
    """
    if scores:
        values = [max(0.0, float(v)) for v in scores.values()]
        total = sum(values)
        k = len(values)
        if k >= 2 and total > 0:  # (max(v / total) is max(v) / total: dividing keeps the order)
            return (1.0 - max(values) / total) * k / (k - 1)
    if confidence is None:
        return None
    return min(1.0, max(0.0, 2.0 * (1.0 - float(confidence)) if confidence >= 0.5 else 1.0))


def margin(scores: Mapping[str, float] | None) -> float | None:
    """``1 - (p_first - p_second)``: 1 when the two best classes tie.

    >>> margin({"a": 0.9, "b": 0.1}), margin({"a": 1.0})
    (0.19999999999999996, None)
    """
    probs = sorted(_normalised(scores) if scores else [], reverse=True)
    if len(probs) < 2:
        return None
    return 1.0 - (probs[0] - probs[1])


def entropy(scores: Mapping[str, float] | None) -> float | None:
    """Shannon entropy of the scores divided by ``log K``: 1 for a uniform distribution.

    >>> entropy({"a": 0.5, "b": 0.5}), entropy({"a": 1.0, "b": 0.0})
    (1.0, 0.0)
    """
    probs = _normalised(scores) if scores else []
    if len(probs) < 2:
        return None
    h = -sum(p * math.log(p) for p in probs if p > 0)
    return min(1.0, max(0.0, h / math.log(len(probs))))
