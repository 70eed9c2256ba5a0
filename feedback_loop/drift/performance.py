"""Accuracy of a window of predictions at its close: realized where labeled, CBPE elsewhere.

Confidence-based performance estimation (CBPE, as in NannyML): if ``P(correct | confidence)``
is known, the expected accuracy of a batch of predictions is the mean of that probability over
the batch -- no label needed. Models are rarely calibrated, so the map is learned *online* from
the labeled outcomes that did arrive, over a sliding window of the most recent ones: when the
relation between confidence and correctness drifts, the map follows as the delayed labels land.

When a window closes, the labels of some of its predictions have usually landed already. The
published estimate is the *hybrid* one: the realized correctness of those, plus the calibrated
``P(correct | confidence)`` of the ones still unlabeled, over the window's count. The pure CBPE
estimate of the whole window is kept next to it for comparison.

* :class:`PerformanceEstimator` -- the calibration map and the open estimation window.
* :class:`WindowEstimate` -- the estimate of a closed window, reconciled later with the
  realized accuracy.

Examples
--------
>>> est = PerformanceEstimator(window_size=3, calibration_size=100, bins=10, prior_strength=2.0)
>>> for pid, conf in [("p1", 0.95), ("p2", 0.9), ("p3", 0.62)]:
...     _ = est.observe_prediction(pid, conf)
>>> round(est.estimate(), 4)  # no outcome yet: the mean raw confidence
0.8233
>>> for _ in range(10):  # labels say: right 2 times out of 3 at confidence 0.94
...     for correct in (True, True, False):
...         est.observe_outcome(0.94, correct)
>>> round(est.calibrated(0.95), 4)  # over-confident model: shrunk toward 2/3
0.6844
>>> round(est.estimate(), 4)  # 0.62 lies in a bin without outcomes: kept as it is
0.6619
>>> est.observe_outcome(0.95, True, prediction_id="p1")  # p1's own label lands: it was right
>>> est.window_labeled, round(est.estimate(), 4), round(est.cbpe_estimate(), 4)
(1, 0.7703, 0.6683)
>>> w = est.close_window()
>>> w.index, w.count, w.labeled_at_close, round(w.estimated_accuracy, 4), round(w.cbpe_accuracy, 4)
(0, 3, 1, 0.7703, 0.6683)
>>> w = w.reconcile(correct=2, labeled=3)  # later, when all the labels have landed
>>> round(w.realized_accuracy, 4), round(w.error, 4)
(0.6667, 0.1036)

"""

from __future__ import annotations

import math
import operator
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from feedback_loop.errors import ConfigurationError

__all__ = ["PerformanceEstimator", "WindowEstimate"]

_STATE_VERSION = 2  # 2: the open window keeps its predictions' ids and labeled outcomes


def _check_int(name: str, value: object, minimum: int) -> int:
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = None
    if isinstance(value, bool) or number is None or number < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(number)


def _check_confidence(value: float) -> float:
    c = float(value)
    if not 0.0 <= c <= 1.0:  # also rejects NaN
        raise ValueError(f"confidence must be in [0, 1], got {value!r}")
    return c


class _Outcome:
    """A calibration outcome, mutable so that a revision can replace it in place."""

    __slots__ = ("confidence", "correct")

    def __init__(self, confidence: float, correct: bool) -> None:
        self.confidence = confidence
        self.correct = correct


@dataclass(frozen=True, slots=True)
class WindowEstimate:
    """The accuracy estimate of one closed window, and its realized accuracy once known.

    Parameters
    ----------
    index
        Sequence number of the window (0, 1, ...), as returned by
        :meth:`PerformanceEstimator.observe_prediction` for each of its predictions.
    count
        Number of predictions in the window.
    estimated_accuracy
        The hybrid estimate at close: the realized correctness of the ``labeled_at_close``
        predictions whose outcome had landed, plus the calibrated ``P(correct | confidence)``
        of the others (with the calibration map of the moment the window closed), over
        ``count``.
    mean_confidence
        Mean raw confidence over the window (the uncalibrated CBPE estimate).
    calibration_outcomes
        Labeled outcomes behind the calibration map at close; ``0`` means the estimate of the
        unlabeled predictions is the raw-confidence fallback.
    first_prediction_id, last_prediction_id
        The first and the last prediction observed in the window.
    correct, labeled
        Realized tallies attached by :meth:`reconcile` (``0`` until then).
    labeled_at_close
        Predictions of the window whose outcome had been observed, by id, when it closed;
        ``0`` makes ``estimated_accuracy`` equal to ``cbpe_accuracy``.
    cbpe_accuracy
        The pure CBPE estimate: mean calibrated ``P(correct | confidence)`` over *all* the
        window's predictions, labeled or not (``None`` when not given).

    Examples
    --------
    >>> w = WindowEstimate(4, 1000, 0.81, 0.9, 2000, "p-4000", "p-4999", labeled_at_close=952,
    ...                    cbpe_accuracy=0.84)
    >>> w.realized_accuracy is None, w.error is None
    (True, True)
    >>> r = w.reconcile(correct=760, labeled=950)
    >>> round(r.realized_accuracy, 4), round(r.error, 4), r.label_coverage
    (0.8, 0.01, 0.95)
    >>> WindowEstimate.from_dict(r.to_dict()) == r
    True

    """

    index: int
    count: int
    estimated_accuracy: float
    mean_confidence: float
    calibration_outcomes: int
    first_prediction_id: str
    last_prediction_id: str
    correct: int = 0
    labeled: int = 0
    labeled_at_close: int = 0
    cbpe_accuracy: float | None = None

    @property
    def realized_accuracy(self) -> float | None:
        """``correct / labeled``, or ``None`` before any label of the window is known."""
        return self.correct / self.labeled if self.labeled else None

    @property
    def error(self) -> float | None:
        """``estimated_accuracy - realized_accuracy`` (``None`` without labels)."""
        realized = self.realized_accuracy
        return None if realized is None else self.estimated_accuracy - realized

    @property
    def label_coverage(self) -> float:
        """Share of the window's predictions whose outcome is known."""
        return self.labeled / self.count if self.count else 0.0

    def reconcile(self, correct: int, labeled: int) -> WindowEstimate:
        """A copy with the realized tallies: ``correct`` right out of ``labeled`` known outcomes.

        Tallies are totals, not increments: call again with the new totals as more labels land.
        """
        correct, labeled = int(correct), int(labeled)
        if not 0 <= correct <= labeled <= self.count:
            raise ValueError(
                f"need 0 <= correct <= labeled <= count={self.count}, "
                f"got correct={correct}, labeled={labeled}"
            )
        return replace(self, correct=correct, labeled=labeled)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields, with ``realized_accuracy`` and ``error`` for publishing."""
        out = asdict(self)
        out["realized_accuracy"] = self.realized_accuracy
        out["error"] = self.error
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WindowEstimate:
        """Rebuild from :meth:`to_dict` output (derived fields are ignored)."""
        cbpe = data.get("cbpe_accuracy")
        return cls(
            index=int(data["index"]),
            count=int(data["count"]),
            estimated_accuracy=float(data["estimated_accuracy"]),
            mean_confidence=float(data["mean_confidence"]),
            calibration_outcomes=int(data["calibration_outcomes"]),
            first_prediction_id=str(data["first_prediction_id"]),
            last_prediction_id=str(data["last_prediction_id"]),
            correct=int(data.get("correct", 0)),
            labeled=int(data.get("labeled", 0)),
            labeled_at_close=int(data.get("labeled_at_close", 0)),
            cbpe_accuracy=None if cbpe is None else float(cbpe),
        )


class PerformanceEstimator:
    """Estimated accuracy of the current window of predictions: realized where labeled, CBPE elsewhere.

    Parameters
    ----------
    window_size
        Predictions per estimation window; :attr:`is_full` turns true at this count and the
        caller then calls :meth:`close_window`. ``>= 1``.
    calibration_size
        The calibration map is learned from the most recent ``calibration_size`` labeled
        outcomes (a sliding window, so it follows drift as delayed labels arrive). ``>= 1``.
    bins
        Equal-width confidence bins over ``[0, 1]`` (a binary model, whose confidence is at
        least 0.5, uses the upper half). ``>= 1``.
    prior_strength
        Weight, in pseudo-outcomes, of the prior that each prediction is right with probability
        its own confidence (a Beta prior toward the identity map). ``>= 0``; ``0`` is plain
        histogram binning, falling back to the raw confidence in empty bins only.

    Notes
    -----
    * Calibration: for a confidence ``c`` in bin ``b`` holding ``n_b`` calibration outcomes of
      which ``k_b`` were correct, ``P(correct | c) = (k_b + s * c) / (n_b + s)`` with
      ``s = prior_strength`` -- the posterior mean under ``Beta(s * c, s * (1 - c))``. Without
      outcomes it is the raw confidence ``c``; as outcomes accumulate it moves to the bin's
      observed accuracy.
    * Hybrid estimate (:meth:`estimate`, :meth:`close_window`): an outcome observed with the
      ``prediction_id`` of a prediction of the *open* window marks that prediction labeled, and
      ``estimate = (correct labeled + sum of P(correct | c) over the unlabeled) / count``, with
      the map at the time of the call. It equals the realized accuracy once every prediction is
      labeled and the pure CBPE estimate (:meth:`cbpe_estimate`, the mean of the map over all
      the predictions) while none is. Every outcome also feeds the calibration, whatever its
      window; outcomes of closed windows *only* feed it (the caller tallies their realized
      accuracy, see :meth:`WindowEstimate.reconcile`).
    * Revisions: a second outcome for a prediction already labeled in the open window
      *replaces* the first -- in the window's tally and, while it is still among the last
      ``calibration_size``, in the calibration map; it is not counted twice. The ids of closed
      windows are forgotten: an outcome observed again after its window closed, or observed
      without ``prediction_id``, counts again in the calibration. A prediction id repeated
      within a window counts as another prediction, and the id then names the latest one.
    * The map is linear in ``c`` inside a bin, so the window keeps a count and a confidence sum
      per bin, for all its predictions and for the unlabeled ones; and a dict from the id of
      each of its predictions to its bin and confidence (unlabeled) or to its outcome (labeled).
    * Cost: :meth:`observe_prediction` and :meth:`observe_outcome` are ``O(1)`` (bin counts
      are updated as outcomes enter and leave the sliding window, nothing is rebuilt);
      :meth:`estimate`, :meth:`cbpe_estimate` and :meth:`close_window` are ``O(bins)``.
      Memory: ``O(calibration_size + window + bins)``.
    * CBPE assumes ``P(correct | confidence)`` holds between the labeled outcomes and the
      window. Under concept drift it does not; the sliding window only catches up as the
      labels arrive. On Elec2 (``benchmarks/estimate.py``, labels one day late), whose drift is
      mostly concept drift (confidence rises while accuracy falls), calibration removes most of
      the over-confidence (window error 15 points uncalibrated, 4.3 calibrated) but does not
      beat the plain accuracy of the last labeled outcomes (3.2 points). The hybrid estimate
      at close errs by 0.7 point on average, but only because 952 of each window's 1,000
      predictions are labeled by then. The honest measures of the estimate before labels are
      the error on the 48 still unlabeled (15 points, against about 4 of sampling noise and 13
      for the last known accuracy) and the error when no label of the window is known at close
      (8 points; last known accuracy 5.7).

    Examples
    --------
    >>> est = PerformanceEstimator(window_size=2, calibration_size=4, bins=2, prior_strength=0.0)
    >>> est.observe_prediction("a", 0.8), est.observe_prediction("b", 0.6)
    (0, 0)
    >>> est.is_full, est.estimate()
    (True, 0.7)
    >>> for correct in (True, False, False, True, False):  # the first leaves the window
    ...     est.observe_outcome(0.9, correct)
    >>> est.calibration_count, est.last_known_accuracy, est.calibrated(0.7)
    (4, 0.25, 0.25)
    >>> est.estimate()  # no outcome of "a" or "b" yet: the pure CBPE estimate
    0.25
    >>> est.observe_outcome(0.8, True, prediction_id="a")  # "a" was right; the map is now 2/4
    >>> est.window_labeled, est.estimate(), est.cbpe_estimate()  # (1 + 0.5) / 2, (0.5 + 0.5) / 2
    (1, 0.75, 0.5)
    >>> est.observe_outcome(0.8, False, prediction_id="a")  # revised: "a" was wrong after all
    >>> est.window_labeled, est.calibration_count, est.calibrated(0.7), est.estimate()
    (1, 4, 0.25, 0.125)
    >>> w = est.close_window()
    >>> w.labeled_at_close, w.estimated_accuracy, w.cbpe_accuracy
    (1, 0.125, 0.25)
    >>> est.estimate() is None, est.close_window() is None, est.window_index
    (True, True, 1)

    """

    __slots__ = (
        "_bin_correct",
        "_bin_n",
        "_cal_seq",
        "_calibration",
        "_first_id",
        "_index",
        "_lab_correct",
        "_lab_n",
        "_labeled",
        "_last_id",
        "_n_correct",
        "_unl_conf",
        "_unl_n",
        "_unlabeled",
        "_win_conf",
        "_win_count",
        "_win_n",
        "bins",
        "calibration_size",
        "prior_strength",
        "window_size",
    )

    def __init__(
        self,
        *,
        window_size: int = 1000,
        calibration_size: int = 2000,
        bins: int = 20,
        prior_strength: float = 2.0,
    ) -> None:
        self.window_size = _check_int("window_size", window_size, 1)
        self.calibration_size = _check_int("calibration_size", calibration_size, 1)
        self.bins = _check_int("bins", bins, 1)
        numeric = isinstance(prior_strength, (int, float)) and not isinstance(prior_strength, bool)
        s = float(prior_strength) if numeric else math.nan
        if not (math.isfinite(s) and s >= 0.0):
            raise ConfigurationError(
                f"prior_strength must be a finite number >= 0, got {prior_strength!r}"
            )
        self.prior_strength = s
        # Calibration: the sliding window of outcomes and its per-bin tallies; _cal_seq counts
        # the outcomes ever appended (the oldest one still held is number _cal_seq - len).
        self._calibration: deque[_Outcome] = deque()
        self._bin_n = [0] * self.bins
        self._bin_correct = [0] * self.bins
        self._n_correct = 0
        self._cal_seq = 0
        # The open estimation window.
        self._index = 0
        self._first_id = ""
        self._last_id = ""
        self._reset_window()

    def _reset_window(self) -> None:
        # All predictions: count, per-bin counts and confidence sums.
        self._win_count = 0
        self._win_n = [0] * self.bins
        self._win_conf = [0.0] * self.bins
        # Unlabeled predictions: id -> (bin, confidence), and per-bin counts and sums.
        self._unlabeled: dict[str, tuple[int, float]] = {}
        self._unl_n = [0] * self.bins
        self._unl_conf = [0.0] * self.bins
        # Labeled predictions: id -> (calibration sequence number, outcome), and tallies.
        self._labeled: dict[str, tuple[int, _Outcome]] = {}
        self._lab_n = 0
        self._lab_correct = 0

    def __repr__(self) -> str:
        return (
            f"PerformanceEstimator(window_size={self.window_size}, "
            f"calibration_size={self.calibration_size}, bins={self.bins}, "
            f"prior_strength={self.prior_strength}, window_index={self._index}, "
            f"window_count={self._win_count}, window_labeled={self._lab_n}, "
            f"calibration_count={len(self._calibration)})"
        )

    def _bin(self, confidence: float) -> int:
        return min(int(confidence * self.bins), self.bins - 1)

    def _tally(self, outcome: _Outcome, sign: int) -> None:
        b = self._bin(outcome.confidence)
        k = sign * outcome.correct
        self._bin_n[b] += sign
        self._bin_correct[b] += k
        self._n_correct += k

    def _calibrate_with(self, confidence: float, correct: bool) -> _Outcome:
        cal = self._calibration
        if len(cal) >= self.calibration_size:
            self._tally(cal.popleft(), -1)
        outcome = _Outcome(confidence, correct)
        cal.append(outcome)
        self._tally(outcome, 1)
        self._cal_seq += 1
        return outcome

    # -- hot path -------------------------------------------------------------------------

    def observe_prediction(self, prediction_id: str, confidence: float) -> int:
        """Add a prediction to the open window; return the window's :attr:`window_index`.

        ``confidence`` is the score of the predicted class. The prediction counts as unlabeled
        until :meth:`observe_outcome` names its ``prediction_id`` while the window is open. Keep
        the returned index with the prediction to tally the window's realized accuracy when its
        label lands (see :meth:`WindowEstimate.reconcile`). A window past ``window_size`` keeps
        growing until :meth:`close_window`.
        """
        self.observe_predictions((prediction_id,), (confidence,))
        return self._index

    def observe_predictions(self, prediction_ids: Sequence[str], confidences: Sequence[float]) -> None:
        """:meth:`observe_prediction` of each pair in turn (the caller closes full windows; a
        confidence outside ``[0, 1]`` raises when its turn comes).

        >>> one, many = PerformanceEstimator(window_size=4), PerformanceEstimator(window_size=4)
        >>> for pid, c in [("a", 0.9), ("b", 0.55), ("c", 1.0)]:
        ...     _ = one.observe_prediction(pid, c)
        >>> many.observe_predictions(["a", "b", "c"], [0.9, 0.55, 1.0])
        >>> many.to_dict() == one.to_dict()
        True
        """
        win_n, win_conf = self._win_n, self._win_conf
        unl_n, unl_conf, unlabeled = self._unl_n, self._unl_conf, self._unlabeled
        last = None
        for pid, confidence in zip(prediction_ids, confidences):
            c = _check_confidence(confidence)
            b = self._bin(c)
            win_n[b] += 1
            win_conf[b] += c
            unl_n[b] += 1
            unl_conf[b] += c
            last = str(pid)
            unlabeled[last] = (b, c)
            if self._win_count == 0:
                self._first_id = last
            self._win_count += 1
        if last is not None:
            self._last_id = last

    def observe_outcome(
        self, confidence: float, correct: bool, prediction_id: str | None = None
    ) -> None:
        """Add a labeled outcome: the prediction's confidence, and whether it was right.

        Every outcome updates the calibration map. With the ``prediction_id`` of a prediction of
        the open window, that prediction also counts as labeled, with this correctness, in the
        hybrid :meth:`estimate`; a second outcome for it replaces the first (see the Notes of
        the class). Ids of closed windows, unknown ids and ``None`` only feed the calibration.
        """
        c = _check_confidence(confidence)
        ok = bool(correct)
        if prediction_id is not None:
            pid = str(prediction_id)
            pending = self._unlabeled.pop(pid, None)
            if pending is not None:  # first outcome of an unlabeled prediction of the window
                b, pc = pending
                left = self._unl_n[b] - 1
                self._unl_n[b] = left
                self._unl_conf[b] = self._unl_conf[b] - pc if left else 0.0
                self._labeled[pid] = (self._cal_seq, self._calibrate_with(c, ok))
                self._lab_n += 1
                self._lab_correct += ok
                return
            known = self._labeled.get(pid)
            if known is not None:  # a revision: replaces the outcome, counted once
                seq, outcome = known
                self._lab_correct += ok - outcome.correct
                held = seq >= self._cal_seq - len(self._calibration)
                if held:
                    self._tally(outcome, -1)
                outcome.confidence, outcome.correct = c, ok
                if held:
                    self._tally(outcome, 1)
                return
        self._calibrate_with(c, ok)

    # -- reading --------------------------------------------------------------------------

    @property
    def window_index(self) -> int:
        """Sequence number of the open window (0 for the first)."""
        return self._index

    @property
    def window_count(self) -> int:
        """Predictions in the open window."""
        return self._win_count

    @property
    def window_labeled(self) -> int:
        """Predictions of the open window whose outcome has been observed by id."""
        return self._lab_n

    @property
    def is_full(self) -> bool:
        """``True`` once the open window holds ``window_size`` predictions."""
        return self._win_count >= self.window_size

    @property
    def calibration_count(self) -> int:
        """Labeled outcomes behind the calibration map (at most ``calibration_size``)."""
        return len(self._calibration)

    @property
    def last_known_accuracy(self) -> float | None:
        """Accuracy of the calibration outcomes (``None`` before any)."""
        n = len(self._calibration)
        return self._n_correct / n if n else None

    def calibrated(self, confidence: float) -> float:
        """Calibrated ``P(correct | confidence)`` under the current map."""
        c = _check_confidence(confidence)
        b = self._bin(c)
        den = self._bin_n[b] + self.prior_strength
        return (self._bin_correct[b] + self.prior_strength * c) / den if den > 0 else c

    def _expected_correct(self, counts: list[int], confidence_sums: list[float]) -> float:
        """Sum of the calibrated ``P(correct | c)`` over a per-bin histogram of predictions."""
        s = self.prior_strength
        total = 0.0
        for b in range(self.bins):
            m = counts[b]
            if m == 0:
                continue
            den = self._bin_n[b] + s
            if den > 0:
                total += (self._bin_correct[b] * m + s * confidence_sums[b]) / den
            else:
                total += confidence_sums[b]
        return total

    def estimate(self) -> float | None:
        """Hybrid estimated accuracy of the open window (``None`` when it is empty).

        ``(correct labeled + sum of calibrated P(correct | c) over the unlabeled) / count``.
        """
        if self._win_count == 0:
            return None
        expected = self._lab_correct + self._expected_correct(self._unl_n, self._unl_conf)
        return min(1.0, max(0.0, expected / self._win_count))

    def cbpe_estimate(self) -> float | None:
        """Pure CBPE estimate of the open window: the calibrated map over all its predictions.

        Labeled or not; ``None`` when the window is empty.
        """
        if self._win_count == 0:
            return None
        expected = self._expected_correct(self._win_n, self._win_conf)
        return min(1.0, max(0.0, expected / self._win_count))

    def close_window(self) -> WindowEstimate | None:
        """Close the open window and return its estimate; ``None`` (nothing closed) if empty.

        Usually called once :attr:`is_full`; a partial window may be closed too (a timer, a
        shutdown). The window's ids are forgotten: later outcomes for them only feed the
        calibration. The next prediction opens window ``index + 1``.
        """
        estimated = self.estimate()
        cbpe = self.cbpe_estimate()
        if estimated is None or cbpe is None:
            return None
        out = WindowEstimate(
            index=self._index,
            count=self._win_count,
            estimated_accuracy=estimated,
            mean_confidence=min(1.0, sum(self._win_conf) / self._win_count),
            calibration_outcomes=len(self._calibration),
            first_prediction_id=self._first_id,
            last_prediction_id=self._last_id,
            labeled_at_close=self._lab_n,
            cbpe_accuracy=cbpe,
        )
        self._index += 1
        self._first_id = self._last_id = ""
        self._reset_window()
        return out

    # -- checkpoints ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state: settings, calibration outcomes (oldest first), open window.

        The open window lists its unlabeled predictions as ``[id, confidence]`` and its labeled
        ones as ``[id, confidence, correct, age]``, ``age`` counting calibration outcomes back
        from the newest (``1``) to the one that labeled it (more than the calibration holds:
        no longer in it).
        """
        return {
            "version": _STATE_VERSION,
            "window_size": self.window_size,
            "calibration_size": self.calibration_size,
            "bins": self.bins,
            "prior_strength": self.prior_strength,
            "calibration": [[o.confidence, o.correct] for o in self._calibration],
            "window": {
                "index": self._index,
                "count": self._win_count,
                "bin_counts": list(self._win_n),
                "bin_confidence_sums": list(self._win_conf),
                "first_prediction_id": self._first_id,
                "last_prediction_id": self._last_id,
                "unlabeled": [[pid, c] for pid, (_, c) in self._unlabeled.items()],
                "unlabeled_bin_counts": list(self._unl_n),
                "unlabeled_bin_confidence_sums": list(self._unl_conf),
                "labeled": [
                    [pid, o.confidence, o.correct, self._cal_seq - seq]
                    for pid, (seq, o) in self._labeled.items()
                ],
                "labeled_count": self._lab_n,
                "labeled_correct": self._lab_correct,
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PerformanceEstimator:
        """Rebuild an estimator from :meth:`to_dict` output; it continues identically.

        A version-1 state (no prediction ids) loads with every prediction of its open window
        unlabeled, for good: outcomes cannot name them.

        Examples
        --------
        >>> import orjson
        >>> est = PerformanceEstimator(window_size=10)
        >>> est.observe_outcome(0.7, True)
        >>> est.observe_prediction("p1", 0.7), est.observe_prediction("p2", 0.8)
        (0, 0)
        >>> est.observe_outcome(0.8, False, prediction_id="p2")
        >>> back = PerformanceEstimator.from_dict(orjson.loads(orjson.dumps(est.to_dict())))
        >>> back.to_dict() == est.to_dict(), back.estimate() == est.estimate()
        (True, True)

        """
        version = data.get("version")
        if version not in (1, _STATE_VERSION):
            raise ValueError(
                f"unknown PerformanceEstimator state version {version!r}, expected {_STATE_VERSION}"
            )
        est = cls(
            window_size=data["window_size"],
            calibration_size=data["calibration_size"],
            bins=data["bins"],
            prior_strength=data["prior_strength"],
        )
        for c, ok in data["calibration"][-est.calibration_size :]:
            est._calibrate_with(_check_confidence(c), bool(ok))
        win = data["window"]
        per_bin = ["bin_counts", "bin_confidence_sums"]
        if version != 1:
            per_bin += ["unlabeled_bin_counts", "unlabeled_bin_confidence_sums"]
        for key in per_bin:
            if len(win[key]) != est.bins:
                raise ValueError(f"window state has {len(win[key])} {key}, expected {est.bins}")
        est._index = int(win["index"])
        est._win_count = int(win["count"])
        est._win_n = [int(v) for v in win["bin_counts"]]
        est._win_conf = [float(v) for v in win["bin_confidence_sums"]]
        est._first_id = str(win["first_prediction_id"])
        est._last_id = str(win["last_prediction_id"])
        if version == 1:
            est._unl_n, est._unl_conf = list(est._win_n), list(est._win_conf)
            return est
        est._unl_n = [int(v) for v in win["unlabeled_bin_counts"]]
        est._unl_conf = [float(v) for v in win["unlabeled_bin_confidence_sums"]]
        for pid, c in win["unlabeled"]:
            c = _check_confidence(c)
            est._unlabeled[str(pid)] = (est._bin(c), c)
        held = len(est._calibration)
        for pid, c, ok, age in win["labeled"]:
            age = int(age)
            if 1 <= age <= held:
                outcome = est._calibration[-age]
            else:
                outcome = _Outcome(_check_confidence(c), bool(ok))
            est._labeled[str(pid)] = (est._cal_seq - age, outcome)
        est._lab_n = int(win["labeled_count"])
        est._lab_correct = int(win["labeled_correct"])
        return est
