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

from typing import Any, Callable, Mapping

from river import compose, linear_model, multiclass, optim, preprocessing
from river.utils.math import sigmoid

from feedback_loop.routing.vectorize import vectorize


#: ``score(features, prediction, confidence) -> (learned, shadow)``, see :meth:`ErrorModel.scorer`
Scorer = Callable[[Mapping[str, Any], str, "float | None"], tuple[float, float]]


def _logistic(model: Any) -> tuple[Any, float] | None:
    """The weights and intercept of a plain logistic regression (log loss), else ``None``."""
    if type(model) is linear_model.LogisticRegression and type(model.loss) is optim.losses.Log:
        return model._weights, model.intercept
    return None


def _scaled(pipeline: compose.Pipeline) -> tuple[Any, Any]:
    """The scaler and the model of ``StandardScaler() | model``; ``(None, None)`` for another shape."""
    steps = list(pipeline.steps.values())
    if len(steps) == 2 and type(steps[0]) is preprocessing.StandardScaler:
        return steps[0], steps[1]
    return None, None


def _learns_during_predict() -> bool:
    """River's ``learn_during_predict()`` is on: its pipelines update their scalers as they predict."""
    return bool(compose.Pipeline._LEARN_UNSUPERVISED_DURING_PREDICT)


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
        score = self.scorer()
        return None if score is None else score(features, prediction, confidence)

    def _river_scores(self, features: Mapping[str, Any], prediction: str,
                      confidence: float | None) -> tuple[float, float]:
        z = self._inputs(vectorize(features), prediction, confidence)
        return float(self.errors.predict_proba_one(z).get(True, 0.0)), 1.0 - z["agree"]

    def scorer(self) -> Scorer | None:
        """:meth:`scores` as a function bound to the models as they are now, for a run of
        predictions (predicting changes no model; learning does: take a new scorer after it);
        ``None`` while warming up.

        It evaluates the scalers and logistic regressions directly: River's operations in River's
        order, so River's floats, without the cost of its call layers per prediction
        (``tests/unit/routing/test_routing_learned.py`` checks them bit for bit). Models of
        another shape, or River's ``learn_during_predict()`` mode, go through River's calls.

        >>> model = ErrorModel(warmup=10)
        >>> for i in range(50):
        ...     model.learn({"x": float(i % 2)}, "a", 0.9, "a" if i % 2 else "b")
        >>> model.scorer()({"x": 1.0}, "a", 0.9) == model._river_scores({"x": 1.0}, "a", 0.9)
        True
        """
        if self.learned < self.warmup:
            return None
        label_scaler, ovr = _scaled(self.labels)
        error_scaler, error_model = _scaled(self.errors)
        errors = _logistic(error_model)
        labels = ([(label, _logistic(model)) for label, model in ovr.classifiers.items()]
                  if type(ovr) is multiclass.OneVsRestClassifier else [])
        if (errors is None or not labels or any(m is None for _, m in labels) or label_scaler is None
                or error_scaler is None or _learns_during_predict()):
            return self._river_scores
        two = len(self.classes) >= 2
        recent_error = self.recent_error
        label_transform, error_transform = label_scaler.transform_one, error_scaler.transform_one
        label_models = [(label, *model) for label, model in labels]
        error_weights, error_intercept = errors

        def score(features: Mapping[str, Any], prediction: str, confidence: float | None) -> tuple[float, float]:
            x = vectorize(features)
            if two:  # OneVsRestClassifier.predict_proba_one(x).get(prediction, 0.0)
                z = label_transform(x)
                y_pred, total = {}, 0.0
                for label, weights, intercept in label_models:
                    y_pred[label] = yp = sigmoid(weights.dot(z) + intercept)
                    total += yp
                if prediction not in y_pred:
                    agree = 0.0
                else:
                    agree = float(y_pred[prediction] / total if total else 1 / len(y_pred))
            else:
                agree = 0.5
            inputs = {"agree": agree, "recent_error": recent_error, f"predicted={prediction}": 1.0}
            if confidence is not None:
                inputs["confidence"] = float(confidence)
            wrong = sigmoid(error_weights.dot(error_transform(inputs)) + error_intercept)
            return float(wrong), 1.0 - agree

        return score

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
