"""Baseline models with River's verbs: the references any learned model must beat.

Examples
--------
>>> model = LastLabel()
>>> model.predict_one({"x": 1}) is None
True
>>> model.learn_one({"x": 1}, "UP")
>>> model.predict_one({"x": 2}), model.predict_proba_one({"x": 2})
('UP', {'UP': 1.0})
"""

from __future__ import annotations

import copy
from typing import Any, Hashable


class LastLabel:
    """Predicts the last label it learned (the "no-change" classifier).

    On streams with strong temporal dependence (Elec2) it is hard to beat.
    """

    def __init__(self) -> None:
        self.last: Hashable | None = None

    def learn_one(self, x: dict[str, Any], y: Hashable) -> None:
        self.last = y

    def predict_one(self, x: dict[str, Any]) -> Hashable | None:
        return self.last

    def predict_proba_one(self, x: dict[str, Any]) -> dict[Hashable, float]:
        return {} if self.last is None else {self.last: 1.0}


class Frozen:
    """A trained model that no longer learns: ``learn_one`` is a no-op.

    >>> frozen = Frozen(LastLabel())
    >>> frozen.learn_one({}, "DOWN")
    >>> frozen.predict_one({}) is None
    True
    """

    def __init__(self, model: Any) -> None:
        self.model = copy.deepcopy(model)

    def learn_one(self, x: dict[str, Any], y: Hashable) -> None:
        return None

    def predict_one(self, x: dict[str, Any]) -> Hashable | None:
        return self.model.predict_one(x)

    def predict_proba_one(self, x: dict[str, Any]) -> dict[Hashable, float]:
        return self.model.predict_proba_one(x)
