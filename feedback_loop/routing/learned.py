"""The learned routing policies: online River models fitted on the outcomes as they arrive.

:class:`ErrorModel` holds two models per model version:

* a **label model** (scaled one-vs-rest logistic regression) that learns the true class from the
  features. Its probability that the true class differs from the prediction is the ``shadow``
  score: an online second opinion that keeps up with drift the frozen model misses;
* an **error model** (scaled logistic regression) that learns whether a prediction was wrong from
  the producer's confidence, the label model's probability of the predicted class, the recent
  error rate and the predicted class. Its probability of "wrong" is the ``learned`` score.

Each outcome is learned test-then-train: the error model sees the inputs computed with the label
model as it was before that outcome, then both learn. Scores stay ``None`` until ``warmup``
outcomes were learned.

Examples
--------
>>> model = ErrorModel(warmup=2)
>>> model.scores({"x": 1.0}, "a", 0.9) is None
True
>>> for i in range(200):
...     model.learn({"x": float(i % 2)}, "a", 0.9, "a" if i % 2 else "b")
>>> learned, shadow = model.scores({"x": 0.0}, "a", 0.9)
>>> 0.0 <= learned <= 1.0 and shadow > 0.5   # x=0 was always "b": "a" is likely wrong
True
"""

from __future__ import annotations

from typing import Any, Mapping

from river import linear_model, multiclass, preprocessing

from feedback_loop.routing.vectorize import vectorize


class ErrorModel:
    """Online models of the true class and of "this prediction is wrong" (see module doc)."""

    def __init__(self, warmup: int = 100, error_halflife: int = 14) -> None:
        self.warmup = warmup
        self.decay = 0.5 ** (1.0 / error_halflife)
        self.labels = preprocessing.StandardScaler() | multiclass.OneVsRestClassifier(
            linear_model.LogisticRegression())
        self.errors = preprocessing.StandardScaler() | linear_model.LogisticRegression()
        self.learned = 0
        self.recent_error = 0.5
        self.classes: set[str] = set()

    def _inputs(self, x: dict[str, float], prediction: str, confidence: float | None) -> dict[str, float]:
        if len(self.classes) >= 2:
            # A class the labels never showed gets no support from the label model.
            agree = float(self.labels.predict_proba_one(x).get(prediction, 0.0))
        else:
            agree = 0.5
        z = {"agree": agree, "recent_error": self.recent_error,
             f"predicted={prediction}": 1.0}
        if confidence is not None:
            z["confidence"] = float(confidence)
        return z

    def scores(self, features: Mapping[str, Any], prediction: str,
               confidence: float | None) -> tuple[float, float] | None:
        """``(learned, shadow)`` for a new prediction, or ``None`` while warming up."""
        if self.learned < self.warmup:
            return None
        x = vectorize(features)
        z = self._inputs(x, prediction, confidence)
        wrong = float(self.errors.predict_proba_one(z).get(True, 0.0))
        return wrong, 1.0 - z["agree"]

    def learn(self, features: Mapping[str, Any], prediction: str, confidence: float | None,
              label: str) -> None:
        """Learn one outcome whose true class is ``label`` (class labels as canonical text)."""
        x = vectorize(features)
        wrong = label != prediction
        self.errors.learn_one(self._inputs(x, prediction, confidence), wrong)
        self.classes.add(label)
        self.labels.learn_one(x, label)
        self.recent_error = self.decay * self.recent_error + (1.0 - self.decay) * float(wrong)
        self.learned += 1
