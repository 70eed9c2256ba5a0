"""Cumulative metrics as counts and sums: mergeable and subtractable.

Every metric of :data:`~feedback_loop.metrics.METRIC_FIELDS` is derived, in
:meth:`Accumulator.result`, from integer counts, exact fixed-point sums of
per-sample losses, a sparse confusion matrix and a
:class:`~feedback_loop.metrics.QuantileSketch` of label delays.
This module holds the only implementation of the metric formulas;
:class:`~feedback_loop.metrics.RollingWindow` reuses it.

"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from feedback_loop.metrics.exactsum import decode, encode, fixed, fixed_mean
from feedback_loop.metrics.sample import Sample
from feedback_loop.metrics.sketch import QuantileSketch

__all__ = ["EPS", "METRIC_FIELDS", "Accumulator"]

#: Probabilities are clipped to ``[EPS, 1 - EPS]`` before taking the log loss.
EPS = 1e-15

#: Keys of ``result()`` of both :class:`Accumulator` and ``RollingWindow``.
METRIC_FIELDS: tuple[str, ...] = (
    "count",
    "correct",
    "accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "log_loss",
    "brier",
    "mae",
    "rmse",
    "label_delay_p50",
    "label_delay_p95",
)


def _log_loss_term(p: float) -> float:
    return -math.log(min(max(p, EPS), 1.0 - EPS))


def _mean(total: int, n: int) -> float | None:
    return fixed_mean(total, n) if n else None


@dataclass(slots=True)
class Accumulator:
    """Cumulative metrics over a multiset of :class:`Sample`.

    Parameters
    ----------
    alpha
        Relative accuracy of the label-delay quantile sketch.

    Attributes
    ----------
    count
        Outcomes (classification and regression).
    classified
        Classification outcomes (``str`` prediction), the accuracy denominator.
    correct
        Classification outcomes with ``correct is True``.
    confusion
        Sparse confusion matrix ``{prediction: {label: n}}`` of classification
        outcomes whose label is known; zero cells are pruned.
    log_loss_sum, log_loss_n
        Sum and number of ``-log(clip(p_true, EPS, 1 - EPS))`` terms, over
        samples with ``p_true``.
    brier_sum, brier_n
        Sum and number of per-sample Brier scores.
    abs_err_sum, sq_err_sum, regression_n
        Sums of absolute and squared errors, and number, of regression samples
        with a known label.
    delays
        Label delays of all outcomes.

    Notes
    -----
    * Samples with an unknown label count in ``count``/``correct``/``accuracy``
      (they are wrong) but not in the confusion matrix, log loss or Brier.
    * ``accuracy = correct / classified``: regression outcomes are not in the
      denominator (for a pure classification stream it is ``correct / count``).
      ``None`` when there is no classification outcome.
    * Macro precision/recall/F1 average over the union of predicted and true
      classes seen in the confusion matrix, with 0 for undefined ratios, like
      ``sklearn.metrics.precision_recall_fscore_support(average="macro",
      zero_division=0)``.
    * ``log_loss`` clips probabilities to ``[EPS, 1 - EPS]`` with ``EPS = 1e-15``
      (so a label missing from the scores costs ``-log(1e-15) ~ 34.5``).
    * The ``*_sum`` attributes are exact fixed-point integers (the float sum
      times ``2**1074``, see :mod:`feedback_loop.metrics.exactsum`), so
      ``remove`` is the exact inverse of ``add`` and ``merge`` is exact and
      order-independent, for the sums as well as the counts; means are
      correctly rounded. ``to_dict`` writes them as compact exact strings.
    * ``remove`` never fails: removing a sample that was not added leaves
      negative counts, cancelled by a later ``add``/``merge`` (group semantics:
      per-partition deltas merge exactly).

    Examples
    --------
    >>> from feedback_loop.metrics.sample import make_sample
    >>> acc = Accumulator()
    >>> acc.add(make_sample("a", 1.0, "cat", "cat", True, {"cat": 0.5, "dog": 0.5}, 2.0))
    >>> acc.add(make_sample("b", 2.0, "dog", "cat", False, {"cat": 0.5, "dog": 0.5}, 4.0))
    >>> acc.add(make_sample("c", 3.0, "dog", None, False, None, 6.0))
    >>> r = acc.result()
    >>> r["count"], r["correct"], r["accuracy"]
    (3, 1, 0.3333333333333333)
    >>> r["precision_macro"], r["recall_macro"], r["brier"]
    (0.5, 0.25, 0.5)
    >>> round(r["log_loss"], 6)
    0.693147
    >>> acc.confusion
    {'cat': {'cat': 1}, 'dog': {'cat': 1}}
    >>> Accumulator.from_dict(acc.to_dict()) == acc
    True

    """

    alpha: float = 0.01
    count: int = field(default=0, init=False)
    classified: int = field(default=0, init=False)
    correct: int = field(default=0, init=False)
    confusion: dict[str, dict[str, int]] = field(default_factory=dict, init=False)
    log_loss_sum: int = field(default=0, init=False, repr=False)
    log_loss_n: int = field(default=0, init=False)
    brier_sum: int = field(default=0, init=False, repr=False)
    brier_n: int = field(default=0, init=False)
    abs_err_sum: int = field(default=0, init=False, repr=False)
    sq_err_sum: int = field(default=0, init=False, repr=False)
    regression_n: int = field(default=0, init=False)
    delays: QuantileSketch = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.delays = QuantileSketch(self.alpha)
        self.alpha = self.delays.alpha

    @classmethod
    def of(cls, samples: Iterable[Sample], alpha: float = 0.01) -> Accumulator:
        """Accumulator over ``samples``.

        Examples
        --------
        >>> from feedback_loop.metrics.sample import make_sample
        >>> Accumulator.of([make_sample("a", 1.0, 2.0, 3.0, None, None, 0.0)]).result()["mae"]
        1.0

        """
        acc = cls(alpha)
        for s in samples:
            acc.add(s)
        return acc

    def _tally(self, s: Sample, n: int) -> None:
        """Apply ``n`` (``+1``/``-1``) copies of ``s`` to everything but ``delays``."""
        self.count += n
        prediction, label = s.prediction, s.label
        if isinstance(prediction, str):
            self.classified += n
            if s.correct:
                self.correct += n
            if label is not None:
                row = self.confusion.get(prediction)
                if row is None:
                    row = self.confusion[prediction] = {}
                c = row.get(label, 0) + n  # type: ignore[arg-type]
                if c:
                    row[label] = c  # type: ignore[index]
                else:
                    del row[label]  # type: ignore[arg-type]
                    if not row:
                        del self.confusion[prediction]
            if s.p_true is not None:
                self.log_loss_sum += n * fixed(_log_loss_term(s.p_true))
                self.log_loss_n += n
            if s.brier is not None:
                self.brier_sum += n * fixed(s.brier)
                self.brier_n += n
        elif label is not None:
            err = prediction - label  # type: ignore[operator]
            self.abs_err_sum += n * fixed(abs(err))
            self.sq_err_sum += n * fixed(err * err)
            self.regression_n += n

    def add(self, s: Sample) -> None:
        """Add one sample."""
        self._tally(s, 1)
        self.delays.add(s.delay)

    def remove(self, s: Sample) -> None:
        """Remove one sample; the inverse of :meth:`add`."""
        self._tally(s, -1)
        self.delays.remove(s.delay)

    def merge(self, other: Accumulator) -> Accumulator:
        """Add ``other`` into this accumulator, in place; returns ``self``.

        Raises
        ------
        ValueError
            If the delay sketches have different ``alpha``.

        """
        self.delays.merge(other.delays)
        self.count += other.count
        self.classified += other.classified
        self.correct += other.correct
        confusion = self.confusion
        for pred, other_row in other.confusion.items():
            row = confusion.get(pred)
            if row is None:
                row = confusion[pred] = {}
            for label, n in other_row.items():
                c = row.get(label, 0) + n
                if c:
                    row[label] = c
                else:
                    del row[label]
            if not row:
                del confusion[pred]
        self.log_loss_sum += other.log_loss_sum
        self.log_loss_n += other.log_loss_n
        self.brier_sum += other.brier_sum
        self.brier_n += other.brier_n
        self.abs_err_sum += other.abs_err_sum
        self.sq_err_sum += other.sq_err_sum
        self.regression_n += other.regression_n
        return self

    def _macro_prf(self) -> tuple[float | None, float | None, float | None]:
        """Macro precision, recall and F1 from the confusion matrix."""
        tp: dict[str, int] = {}
        n_pred: dict[str, int] = {}
        n_true: dict[str, int] = {}
        for pred, row in self.confusion.items():
            for label, n in row.items():
                n_pred[pred] = n_pred.get(pred, 0) + n
                n_true[label] = n_true.get(label, 0) + n
                if pred == label:
                    tp[pred] = n
        classes = sorted(n_pred.keys() | n_true.keys())
        if not classes:
            return None, None, None
        p_sum = r_sum = f_sum = 0.0
        for k in classes:
            t, np_, nt = tp.get(k, 0), n_pred.get(k, 0), n_true.get(k, 0)
            if np_:
                p_sum += t / np_
            if nt:
                r_sum += t / nt
            if np_ + nt:
                f_sum += 2 * t / (np_ + nt)
        m = len(classes)
        return p_sum / m, r_sum / m, f_sum / m

    def result(self) -> dict[str, Any]:
        """Metrics, keyed by :data:`METRIC_FIELDS` (``None`` where undefined)."""
        precision, recall, f1 = self._macro_prf()
        mse = _mean(self.sq_err_sum, self.regression_n)
        return {
            "count": self.count,
            "correct": self.correct,
            "accuracy": self.correct / self.classified if self.classified else None,
            "precision_macro": precision,
            "recall_macro": recall,
            "f1_macro": f1,
            "log_loss": _mean(self.log_loss_sum, self.log_loss_n),
            "brier": _mean(self.brier_sum, self.brier_n),
            "mae": _mean(self.abs_err_sum, self.regression_n),
            "rmse": None if mse is None else math.sqrt(mse),
            "label_delay_p50": self.delays.quantile(0.5),
            "label_delay_p95": self.delays.quantile(0.95),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state (only ``str`` keys; round-trips through orjson)."""
        return {
            "alpha": self.alpha,
            "count": self.count,
            "classified": self.classified,
            "correct": self.correct,
            "confusion": {p: dict(row) for p, row in self.confusion.items()},
            "log_loss_sum": encode(self.log_loss_sum),
            "log_loss_n": self.log_loss_n,
            "brier_sum": encode(self.brier_sum),
            "brier_n": self.brier_n,
            "abs_err_sum": encode(self.abs_err_sum),
            "sq_err_sum": encode(self.sq_err_sum),
            "regression_n": self.regression_n,
            "delays": self.delays.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Accumulator:
        """Rebuild an accumulator from :meth:`to_dict` output."""
        acc = cls(data["alpha"])
        acc.count = int(data["count"])
        acc.classified = int(data["classified"])
        acc.correct = int(data["correct"])
        confusion: dict[str, dict[str, int]] = {}
        for pred, row in data["confusion"].items():
            cells = {label: int(n) for label, n in row.items() if int(n)}
            if cells:
                confusion[pred] = cells
        acc.confusion = confusion
        acc.log_loss_sum = decode(data["log_loss_sum"])
        acc.log_loss_n = int(data["log_loss_n"])
        acc.brier_sum = decode(data["brier_sum"])
        acc.brier_n = int(data["brier_n"])
        acc.abs_err_sum = decode(data["abs_err_sum"])
        acc.sq_err_sum = decode(data["sq_err_sum"])
        acc.regression_n = int(data["regression_n"])
        acc.delays = QuantileSketch.from_dict(data["delays"])
        return acc
