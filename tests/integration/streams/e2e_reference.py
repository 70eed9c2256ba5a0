"""The offline reference of the join and its metrics, written from DESIGN.md, not from ``streams``.

Rules (``DESIGN.md`` "Join semantics" and the acceptance brief):

* only valid messages count; the first valid prediction of an id is the prediction, an identical
  copy is ignored (a different one is a dead letter, never applied);
* class labels compare by canonical text (``True`` -> ``"true"``, ``1`` -> ``"1"``); a float
  prediction is a regression (``correct`` is ``None``);
* the truth is the last label produced, or, when no label was ever received, the last verdict:
  ``"correct"`` -> the prediction; ``"error"`` with a corrected label -> that label; ``"error"``
  without -> label ``None``, wrong;
* truth that arrives again and agrees changes nothing: the outcome keeps the first truth of the
  final run of agreeing truths (its time and its spelling of the label);
* with a TTL longer than the stream and far-future sentinels at the end, every prediction without
  truth expires (``expired_unlabeled`` of its version and each of its tag segments) and every id
  with truth but no prediction is one orphan (``orphan_labels``, deployment-wide).

Metrics per (model, model_version, segment): ``cumulative`` over all outcomes, ``rolling`` over
the ``window_size`` outcomes with the largest ``(predicted_at, prediction_id)``; ``predictions``,
``label_coverage``, ``expired_unlabeled`` and ``orphan_labels`` are totals in both windows.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_fscore_support

EPS = 1e-15

SegKey = tuple[str, str, tuple[tuple[str, str], ...]]  # model, version, sorted segment items


def class_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_ts(text: str) -> datetime:
    dt = datetime.fromisoformat(text)
    assert dt.tzinfo is not None, text
    return dt


def is_regression(prediction: Any) -> bool:
    return isinstance(prediction, float)


@dataclass(frozen=True)
class Expected:
    """The final outcome of one prediction id."""

    prediction_id: str
    model: str
    model_version: str
    prediction: Any
    label: Any
    correct: bool | None
    label_source: str
    predicted_at: datetime
    labeled_at: datetime
    tags: dict[str, str]
    #: cases whose outcome a join could get wrong by depending on the interleaving of the three
    #: input topics (a label processed before or after its prediction or a verdict); diagnostics only
    ambiguity: tuple[str, ...] = ()


@dataclass
class Reference:
    predictions: dict[str, dict[str, Any]]          # valid predictions by id (first one)
    outcomes: dict[str, Expected]
    orphans: set[str]
    truths: dict[str, list[tuple[str, dict[str, Any]]]] = field(default_factory=dict)

    @property
    def unlabeled(self) -> set[str]:
        return set(self.predictions) - set(self.outcomes)


def _correct(prediction: Any, label: Any) -> bool | None:
    if is_regression(prediction):
        return None
    if label is None:
        return False
    return class_text(label) == class_text(prediction)


def _truth(prediction: Any, kind: str, event: Mapping[str, Any]) -> tuple[Any, bool | None]:
    """(label, correct) that one label or verdict stands for."""
    if kind == "label":
        label = event["label"]
    elif event["verdict"] == "correct":
        label = prediction
    else:
        label = event.get("corrected_label")
    return label, _correct(prediction, label)


def _agree_key(prediction: Any, label: Any, correct: bool | None) -> Any:
    if label is None:
        return (None, correct)
    if is_regression(prediction):
        return (float(label), correct)
    return (class_text(label), correct)


def build(messages: Iterable[Any]) -> Reference:
    """The reference of the valid messages of a stream (``e2e_stream.Msg``), in production order."""
    preds: dict[str, dict[str, Any]] = {}
    raw_pred: dict[str, bytes] = {}
    labels: dict[str, list[dict[str, Any]]] = defaultdict(list)
    reviews: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for seq, m in enumerate(messages):
        if m.bad:
            continue
        obj = json.loads(m.value)
        obj = {**obj, "_seq": seq}  # production order, for diagnostics
        pid = obj["prediction_id"]
        assert m.key == pid.encode(), f"valid message keyed {m.key!r} for {pid}"
        if m.kind == "predictions":
            if pid in preds:
                assert raw_pred[pid] == m.value, f"unmarked conflicting prediction {pid}"
                continue
            preds[pid] = obj
            raw_pred[pid] = m.value
        elif m.kind == "labels":
            labels[pid].append(obj)
        else:
            reviews[pid].append(obj)

    outcomes: dict[str, Expected] = {}
    for pid, pred in preds.items():
        p = pred["prediction"]
        if labels.get(pid):
            source, events = "label", labels[pid]
        elif reviews.get(pid):
            source, events = "review", reviews[pid]
        else:
            continue
        truths = [_truth(p, source, e) for e in events]
        last = _agree_key(p, *truths[-1])
        start = len(truths) - 1
        while start > 0 and _agree_key(p, *truths[start - 1]) == last:
            start -= 1
        label, correct = truths[start]
        ambiguity: list[str] = []
        run = list(zip(events[start:], truths[start:]))
        if len({parse_ts(e["timestamp"]) for e, _ in run}) > 1 or len({json.dumps(t[0]) for _, t in run}) > 1:
            ambiguity.append("agreeing truths with different times or spellings")
        agreeing = [r for r in reviews.get(pid, []) if source == "label" and _agree_key(p, *_truth(p, "review", r)) == last]
        if any(r["_seq"] < events[start]["_seq"] for r in agreeing):
            ambiguity.append("a verdict produced before a ground-truth label that agrees with it")
        elif agreeing:
            ambiguity.append("a verdict produced after a ground-truth label that agrees with it")
        outcomes[pid] = Expected(
            pid, pred["model"], pred["model_version"], p, label, correct, source,
            parse_ts(pred["timestamp"]), parse_ts(events[start]["timestamp"]), dict(pred.get("tags") or {}),
            tuple(ambiguity))
    orphans = (set(labels) | set(reviews)) - set(preds)
    truths_by_id = {pid: [("label", e) for e in labels.get(pid, [])] + [("review", e) for e in reviews.get(pid, [])]
                    for pid in set(labels) | set(reviews)}
    return Reference(preds, outcomes, orphans, truths_by_id)


# --------------------------------------------------------------------------- metrics
@dataclass(frozen=True)
class Sample:
    prediction_id: str
    predicted_at: float
    prediction: Any            # class text, or float
    label: Any                 # class text, float, or None
    correct: bool | None
    scores: dict[str, float] | None
    delay: float

    @property
    def classification(self) -> bool:
        return isinstance(self.prediction, str)


def sample(pred: Mapping[str, Any], pid: str, label: Any, correct: bool | None, labeled_at: datetime) -> Sample:
    p = pred["prediction"]
    predicted_at = parse_ts(pred["timestamp"]).timestamp()
    delay = max(0.0, labeled_at.timestamp() - predicted_at)
    if is_regression(p):
        return Sample(pid, predicted_at, float(p), None if label is None else float(label), None, None, delay)
    return Sample(pid, predicted_at, class_text(p), None if label is None else class_text(label),
                  bool(correct), pred.get("scores") or None, delay)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def compute(samples: list[Sample]) -> dict[str, Any]:
    """count, correct, accuracy, macro P/R/F1, log loss, Brier, MAE, RMSE and label delays."""
    cls = [s for s in samples if s.classification]
    correct = sum(1 for s in cls if s.correct)
    out: dict[str, Any] = {"count": len(samples), "correct": correct,
                           "accuracy": correct / len(cls) if cls else None}
    known = [s for s in cls if s.label is not None]
    if known:
        y_true = [s.label for s in known]
        y_pred = [s.prediction for s in known]
        classes = sorted(set(y_true) | set(y_pred))
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=classes, average="macro",
                                                     zero_division=0)
        out.update(precision_macro=float(p), recall_macro=float(r), f1_macro=float(f))
    else:
        out.update(precision_macro=None, recall_macro=None, f1_macro=None)
    scored = [s for s in known if s.scores]
    out["log_loss"] = _mean([-math.log(min(max(float(s.scores.get(s.label, 0.0)), EPS), 1 - EPS))
                             for s in scored])
    out["brier"] = _mean([sum((float(s.scores.get(k, 0.0)) - (1.0 if k == s.label else 0.0)) ** 2
                              for k in set(s.scores) | {s.label}) for s in scored])
    reg = [s for s in samples if not s.classification and s.label is not None]
    out["mae"] = _mean([abs(s.prediction - s.label) for s in reg])
    mse = _mean([(s.prediction - s.label) ** 2 for s in reg])
    out["rmse"] = None if mse is None else math.sqrt(mse)
    delays = np.array([s.delay for s in samples], dtype=float)
    if len(delays):
        out["delay_lower"] = (float(np.quantile(delays, 0.5, method="lower")),
                              float(np.quantile(delays, 0.95, method="lower")))
        out["delay_linear"] = (float(np.percentile(delays, 50)), float(np.percentile(delays, 95)))
    else:
        out["delay_lower"] = out["delay_linear"] = (None, None)
    return out


def segments_of(pred: Mapping[str, Any]) -> list[SegKey]:
    tags = pred.get("tags") or {}
    base = (pred["model"], pred["model_version"])
    return [(*base, ())] + [(*base, ((k, v),)) for k, v in tags.items()]


def metrics(predictions: Mapping[str, Mapping[str, Any]], outcomes: Mapping[str, Any], orphans: int,
            window_size: int, skip_models: Iterable[str] = ()) -> dict[tuple[SegKey, str], dict[str, Any]]:
    """Expected snapshots by ((model, version, segment), window).

    ``outcomes`` maps a prediction id to anything with ``label``, ``correct`` and ``labeled_at``
    (a datetime), e.g. :class:`Expected`; predictions without an outcome are expired.
    """
    skip = set(skip_models)
    n_preds: dict[SegKey, int] = defaultdict(int)
    expired: dict[SegKey, int] = defaultdict(int)
    samples: dict[SegKey, list[Sample]] = defaultdict(list)
    for pid, pred in predictions.items():
        if pred["model"] in skip:
            continue
        o = outcomes.get(pid)
        s = None if o is None else sample(pred, pid, o.label, o.correct, o.labeled_at)
        for seg in segments_of(pred):
            n_preds[seg] += 1
            if s is None:
                expired[seg] += 1
            else:
                samples[seg].append(s)
    out: dict[tuple[SegKey, str], dict[str, Any]] = {}
    for seg, n in n_preds.items():
        all_samples = samples.get(seg, [])
        common = {"predictions": n, "expired_unlabeled": expired.get(seg, 0), "orphan_labels": orphans,
                  "label_coverage": len(all_samples) / n if n else None}
        out[(seg, "cumulative")] = {**common, **compute(all_samples)}
        top = sorted(all_samples, key=lambda s: (s.predicted_at, s.prediction_id))[-window_size:]
        out[(seg, "rolling")] = {**common, **compute(top), "window_size": window_size}
    return out


def snapshot_key(snap: Mapping[str, Any]) -> tuple[SegKey, str]:
    return ((snap["model"], snap["model_version"], tuple(sorted(snap["segment"].items()))), snap["window"])
