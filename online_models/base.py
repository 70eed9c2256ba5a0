"""The contract every online model honours, in River's verbs.

A model learns one labelled sample at a time and predicts one sample at a time. River
classifiers and pipelines satisfy it as they are, and so do the baselines of
:mod:`online_models.baselines`: nothing needs to inherit from :class:`OnlineModel`.

Examples
--------
>>> from river import linear_model, preprocessing
>>> model = preprocessing.StandardScaler() | linear_model.SoftmaxRegression()
>>> isinstance(model, OnlineModel)
True
>>> isinstance(object(), OnlineModel)
False
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol, runtime_checkable


@runtime_checkable
class OnlineModel(Protocol):
    """A classifier that learns and predicts one sample at a time.

    ``x`` maps feature names to values. Implementations must leave ``x`` unchanged, tolerate
    features missing from ``x`` and features never seen before, and pickle: a loaded copy
    predicts, and keeps learning, exactly like the original.

    ``isinstance(obj, OnlineModel)`` only checks that the three methods exist.

    Examples
    --------
    >>> class Majority:
    ...     def __init__(self):
    ...         self.counts = {}
    ...     def learn_one(self, x, y):
    ...         self.counts[y] = self.counts.get(y, 0) + 1
    ...     def predict_proba_one(self, x):
    ...         total = sum(self.counts.values())
    ...         return {c: n / total for c, n in self.counts.items()}
    ...     def predict_one(self, x):
    ...         proba = self.predict_proba_one(x)
    ...         return max(proba, key=proba.get) if proba else None
    >>> model = Majority()
    >>> isinstance(model, OnlineModel)
    True
    >>> model.predict_one({"f": 1.0}) is None
    True
    >>> for y in ["UP", "DOWN", "UP"]:
    ...     model.learn_one({"f": 1.0}, y)
    >>> model.predict_one({"f": 0.0})
    'UP'
    """

    def learn_one(self, x: dict, y: Hashable) -> None:
        """Update the model with one sample ``x`` whose true class is ``y``.

        Parameters
        ----------
        x : dict
            Feature name to value; left unchanged.
        y : Hashable
            The true class, for example ``"UP"``.
        """

    def predict_one(self, x: dict) -> Hashable | None:
        """The most likely class of ``x``.

        Parameters
        ----------
        x : dict
            Feature name to value; left unchanged.

        Returns
        -------
        Hashable or None
            ``None`` before the model learned any sample.
        """

    def predict_proba_one(self, x: dict) -> dict[Hashable, float]:
        """The probability of each class the model knows, for ``x``.

        Parameters
        ----------
        x : dict
            Feature name to value; left unchanged.

        Returns
        -------
        dict
            Class to probability in ``[0, 1]``, summing to 1; empty before the model learned
            any sample.
        """
