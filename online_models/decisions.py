"""Champion / challenger decisions: the tests behind a promotion and a rollback.

Promotion compares the champion and a challenger on the same outcomes (paired): of the last
``window`` outcomes, ``b`` were right for the champion only and ``c`` for the challenger only. The
**exact one-sided McNemar test** asks how likely ``c`` or more of the ``b + c`` disagreements would
favour the challenger if both were equally good (each disagreement a fair coin). A challenger is
promoted when that p-value is under ``alpha`` *and* it won by at least ``min_margin`` of the window.

Rollback watches the new champion over ``window`` outcomes after its promotion, against the
accuracy the previous champion had in the promotion window, ``p0``: an **exact one-sided binomial
test** asks how likely so few correct answers are if it were as good as ``p0``; it is rolled back
when that p-value is under ``alpha`` and it fell at least ``margin`` below ``p0``.

Examples
--------
>>> round(mcnemar_one_sided(b=10, c=30), 5)
0.00111
>>> round(binomial_lower_tail(k=70, n=100, p=0.8), 4)
0.0112
>>> promote_evidence([(True, True)] * 900 + [(False, True)] * 80 + [(True, False)] * 20, 0.01, 0.01)["p_value"] < 1e-9
True
"""

from __future__ import annotations

import math
from typing import Any, Iterable


def _log_binom_pmf(k: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 0.0 if k == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if k == n else -math.inf
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
            + k * math.log(p) + (n - k) * math.log1p(-p))


def binomial_lower_tail(k: int, n: int, p: float) -> float:
    """``P(X <= k)`` for ``X ~ Binomial(n, p)``."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return min(1.0, sum(math.exp(_log_binom_pmf(i, n, p)) for i in range(k + 1)))


def mcnemar_one_sided(b: int, c: int) -> float:
    """Exact one-sided McNemar p-value that the second model (``c`` wins) is better."""
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 1.0 - binomial_lower_tail(c - 1, n, 0.5)) if c > 0 else 1.0


def promote_evidence(pairs: Iterable[tuple[bool, bool]], alpha: float, min_margin: float) -> dict[str, Any]:
    """The evidence for promoting a challenger, from ``(champion_right, challenger_right)`` pairs;
    ``"promote"`` says whether both the test and the margin are met."""
    pairs = list(pairs)
    n = len(pairs)
    b = sum(1 for champ, chall in pairs if champ and not chall)
    c = sum(1 for champ, chall in pairs if chall and not champ)
    champion_acc = sum(1 for champ, _ in pairs if champ) / n if n else 0.0
    challenger_acc = sum(1 for _, chall in pairs if chall) / n if n else 0.0
    p_value = mcnemar_one_sided(b, c)
    margin = (c - b) / n if n else 0.0
    return {"test": "exact one-sided McNemar", "window": n, "champion_only_right": b,
            "challenger_only_right": c, "p_value": p_value, "alpha": alpha, "margin": margin,
            "min_margin": min_margin, "champion_accuracy": champion_acc,
            "challenger_accuracy": challenger_acc,
            "promote": n > 0 and p_value < alpha and margin >= min_margin}


def rollback_evidence(outcomes: Iterable[bool], previous_accuracy: float, alpha: float,
                      margin: float) -> dict[str, Any]:
    """The evidence for rolling back a champion from its outcomes since promotion."""
    outcomes = list(outcomes)
    n, k = len(outcomes), sum(outcomes)
    accuracy = k / n if n else 0.0
    p_value = binomial_lower_tail(k, n, previous_accuracy) if n else 1.0
    return {"test": "exact one-sided binomial vs the previous champion's accuracy", "window": n,
            "accuracy": accuracy, "previous_accuracy": previous_accuracy, "p_value": p_value,
            "alpha": alpha, "margin": margin,
            "rollback": n > 0 and p_value < alpha and previous_accuracy - accuracy >= margin}
