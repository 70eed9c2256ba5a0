"""Drift monitoring of one model version: pure logic over the ``monitor-input`` observations.

Per model version a :class:`ModelMonitor` runs

* **concept drift**: a River detector (ADWIN by default; DDM, PageHinkley or KSWIN per model) on
  the error stream (1 = wrong) of first outcomes (revision 1), in arrival order;
* **data drift**: a :class:`~feedback_loop.drift.data.FeatureDriftMonitor` on the features against
  the model version's first predictions (or a pinned reference file), its thresholds calibrated
  on the reference so unchanged data alerts at the configured rate;
* **prediction drift**: the same on the predicted value and on the confidence;
* **estimated performance**: confidence-based expected accuracy per window, calibrated online by
  the outcomes that did arrive; an alert when it drops by ``estimate_min_drop`` below the first
  window's estimate.

Alerts are deduplicated per (kind, feature): one ``firing`` alert per episode, a ``resolved`` event
when the condition clears (a data window back under its threshold, ``concept_resolve_samples``
outcomes without a new change, the estimate recovered half-way), and no new episode within
``alert_cooldown_seconds`` (event time) of a resolution. Alert ids are derived from the model
version, kind, feature and episode number, so an alert replayed after a crash has the id it had:
consumers use it as the idempotency key.
"""

from __future__ import annotations

import base64
import hashlib
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import orjson
from river import drift

from feedback_loop.drift.data import FeatureDriftMonitor
from feedback_loop.drift.performance import PerformanceEstimator
from feedback_loop.errors import CheckpointIntegrityError, ConfigurationError
from feedback_loop.events import utc_iso
from feedback_loop.settings import Settings
from feedback_loop.signing import Signer

DETECTORS: dict[str, Callable[..., Any]] = {
    "adwin": drift.ADWIN,
    "ddm": drift.binary.DDM,
    "page_hinkley": drift.PageHinkley,
    "kswin": drift.KSWIN,
}


def make_detector(name: str, params: dict[str, Any], setting: str = "concept_detector") -> Any:
    """A fresh River detector; bad names or parameters raise a ConfigurationError naming ``setting``."""
    if name not in DETECTORS:
        raise ConfigurationError(f"{setting}: unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
    try:
        return DETECTORS[name](**params)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"concept_detector_params (FEEDBACK_LOOP_CONCEPT_DETECTOR_PARAMS) do not fit {name}: {exc}") from None


@dataclass(frozen=True)
class MonitorConfig:
    """The monitoring settings, checked once at startup (:meth:`from_settings`)."""

    detector: str = "adwin"
    detector_params: dict[str, Any] = field(default_factory=dict)
    per_model: dict[str, str] = field(default_factory=dict)
    resolve_samples: int = 1000
    reference_size: int = 1000
    window_size: int = 500
    false_alarm_rate: float = 0.01
    estimate_window: int = 1000
    estimate_min_drop: float = 0.05
    cooldown: float = 3600.0
    references: dict[str, tuple[dict[str, Any], ...]] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, s: Settings) -> MonitorConfig:
        references = {model: load_reference(model, path) for model, path in s.drift_reference_files.items()}
        config = cls(s.concept_detector, dict(s.concept_detector_params), dict(s.concept_detectors),
                     s.concept_resolve_samples, s.drift_reference_size, s.drift_window_size,
                     s.drift_false_alarm_rate, s.estimate_window_size, s.estimate_min_drop,
                     s.alert_cooldown_seconds, references)
        config.validate()
        return config

    def validate(self) -> None:
        """Build every configured detector once, so bad settings fail at startup."""
        make_detector(self.detector, self.detector_params)
        for model, name in self.per_model.items():
            make_detector(name, self.detector_params if name == self.detector else {},
                          setting=f"concept_detectors[{model!r}] (FEEDBACK_LOOP_CONCEPT_DETECTORS)")
        if self.reference_size < self.window_size:
            raise ConfigurationError(
                f"drift_reference_size ({self.reference_size}) must be at least drift_window_size "
                f"({self.window_size})")
        self.feature_monitor()
        for model in self.references:
            self.feature_monitor(model)

    def detector_for(self, model: str) -> tuple[str, Any]:
        name = self.per_model.get(model, self.detector)
        return name, make_detector(name, self.detector_params if name == self.detector else {})

    def feature_monitor(self, model: str | None = None) -> FeatureDriftMonitor:
        """A data-drift monitor; with ``model`` and a pinned reference for it, already calibrated."""
        if model is not None and model in self.references:
            try:
                return FeatureDriftMonitor.with_reference(
                    self.references[model], window_size=self.window_size, false_alarm_rate=self.false_alarm_rate)
            except ConfigurationError as exc:
                raise ConfigurationError(f"drift_reference_files[{model!r}]: {exc}") from None
        return FeatureDriftMonitor(reference_size=self.reference_size, window_size=self.window_size,
                                   false_alarm_rate=self.false_alarm_rate)


def load_reference(model: str, path: Path) -> tuple[dict[str, Any], ...]:
    """Feature rows of a pinned reference file (CSV or JSONL; a JSONL row may nest them in "features")."""
    from feedback_loop.errors import FeedbackLoopError
    from feedback_loop.replay import parse_cell, read_file

    setting = f"drift_reference_files[{model!r}] (FEEDBACK_LOOP_DRIFT_REFERENCE_FILES)"
    try:
        rows = []
        for row in read_file(Path(path)):
            features = row.get("features", row) if isinstance(row, dict) else row
            rows.append({k: parse_cell(v) for k, v in features.items()})
    except FeedbackLoopError as exc:
        raise ConfigurationError(f"{setting}: {exc}") from None
    if not rows:
        raise ConfigurationError(f"{setting}: {path} has no rows")
    return tuple(rows)


@dataclass
class AlertState:
    """Where one (kind, feature) stands."""

    firing: bool = False
    episode: int = 0
    resolved_at: float | None = None




class ModelMonitor:
    """All the detectors of one model version, and the alerts they raise."""

    def __init__(self, model: str, version: str, config: MonitorConfig, epoch: str = "") -> None:
        self.model, self.version, self.config, self.epoch = model, version, config, epoch
        self.detector_name, self.detector = config.detector_for(model)
        self.features = config.feature_monitor(model)
        self.predictions = config.feature_monitor()
        self.estimator = PerformanceEstimator(window_size=config.estimate_window)
        self.baseline: float | None = None
        self.last_estimate: dict[str, Any] | None = None
        #: ids of the open estimation window; of the last closed one, with their truth once known
        self.open_ids: list[str] = []
        self.closed_ids: dict[str, bool | None] = {}
        self.closed_window: dict[str, Any] | None = None
        self.reconciled: deque[dict[str, Any]] = deque(maxlen=20)
        self.outcomes = 0
        self.last_change = -1
        self.alerts: dict[str, AlertState] = {}
        self.recent_times: deque[float] = deque(maxlen=20_000)

    # ------------------------------------------------------------------ observations
    def observe(self, obs: dict[str, Any]) -> list[dict[str, Any]]:
        """Feed one observation; return the alerts (firing or resolved) it raises."""
        if obs["k"] == "p":
            return self._on_prediction(obs)
        return self._on_outcome(obs)

    def observe_predictions(self, run: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
        """:meth:`observe` of each prediction observation of ``run`` in turn, a pass per detector;
        the alerts raised, by index into ``run`` (the same alerts, in the same order per
        observation).

        The observations are read before anything changes: if one is malformed (a time that is
        not a number, features that are not an object, a confidence outside ``[0, 1]``) this
        raises and the monitor is as it was, so the caller can take the observations one by one.
        """
        times = [obs["t"] for obs in run]
        rows = [obs["x"] or {} for obs in run]
        values = [obs["y"] for obs in run]
        rated = [(i, obs["id"], obs["c"]) for i, obs in enumerate(run) if obs["c"] is not None]
        if (not all(type(x) is dict for x in rows) or not all(0.0 <= c <= 1.0 for _, _, c in rated)
                or not all(type(t) is float or type(t) is int for t in times)):
            raise ValueError("malformed prediction observation")
        raised: dict[int, list[dict[str, Any]]] = {}
        for i, results in self.features.update_many(rows):
            for result in results:
                if alerts := self._judge("data", result, times[i]):
                    raised.setdefault(i, []).extend(alerts)
        estimator, done = self.estimator, 0
        while done < len(rated):
            chunk = rated[done:done + max(1, estimator.window_size - estimator.window_count)]
            ids = [pid for _, pid, _ in chunk]
            estimator.observe_predictions(ids, [c for _, _, c in chunk])
            self.open_ids.extend(ids)
            done += len(chunk)
            if estimator.is_full:
                window = estimator.close_window()
                if window is not None and (alerts := self._on_estimate(window, times[chunk[-1][0]])):
                    raised.setdefault(chunk[-1][0], []).extend(alerts)
        confidences = [obs["c"] for obs in run]
        rows = [{"prediction": y} if c is None else {"prediction": y, "confidence": c}
                for y, c in zip(values, confidences)]
        for i, results in self.predictions.update_many(rows):
            for result in results:
                if alerts := self._judge("prediction", result, times[i]):
                    raised.setdefault(i, []).extend(alerts)
        return raised

    def _on_prediction(self, obs: dict[str, Any]) -> list[dict[str, Any]]:
        at = obs["t"]
        out: list[dict[str, Any]] = []
        for result in self.features.update(obs["x"] or {}):
            out += self._judge("data", result, at)
        pred = {"prediction": obs["y"]}
        if obs["c"] is not None:
            pred["confidence"] = obs["c"]
            self.estimator.observe_prediction(obs["id"], obs["c"])
            self.open_ids.append(obs["id"])
            if self.estimator.is_full:
                window = self.estimator.close_window()
                if window is not None:
                    out += self._on_estimate(window, at)
        for result in self.predictions.update(pred):
            out += self._judge("prediction", result, at)
        return out

    def _on_outcome(self, obs: dict[str, Any]) -> list[dict[str, Any]]:
        if obs["r"] != 1 or obs["ok"] is None:
            return []  # revisions and regressions do not feed the error-stream detectors
        correct = bool(obs["ok"])
        if obs["c"] is not None:
            self.estimator.observe_outcome(obs["c"], correct, obs["id"])
        if self.closed_ids.get(obs["id"], True) is None:
            self.closed_ids[obs["id"]] = correct
        self.outcomes += 1
        self.recent_times.append(obs["pt"])
        self.detector.update(0 if correct else 1)
        key = "concept"
        state = self.alerts.get(key)
        if getattr(self.detector, "drift_detected", False):
            self.last_change = self.outcomes
            width = int(getattr(self.detector, "width", 0) or 0)
            first = (self.recent_times[-width] if 0 < width <= len(self.recent_times) else obs["pt"])
            stat = getattr(self.detector, "estimation", None)
            return self._fire("concept", None, self.detector_name, stat, self.config.detector_params.get("delta"),
                              None, width or None, "critical", obs["t"], first,
                              f"error rate changed (now {stat:.3f})" if isinstance(stat, float)
                              else "error rate changed")
        if state and state.firing and self.outcomes - self.last_change >= self.config.resolve_samples:
            return self._resolve("concept", None, obs["t"],
                                 f"no change in the last {self.config.resolve_samples} outcomes")
        return []

    def _reconcile(self) -> None:
        """The window closed before the one closing now: its estimate next to what the labels said."""
        if self.closed_window is not None:
            known = [ok for ok in self.closed_ids.values() if ok is not None]
            self.reconciled.append({**self.closed_window, "labeled": len(known),
                                    "realized_accuracy": sum(known) / len(known) if known else None})

    def _on_estimate(self, window: Any, at: float) -> list[dict[str, Any]]:
        estimate = float(window.estimated_accuracy)
        self._reconcile()
        self.closed_window = {"window": int(window.index), "estimated_accuracy": estimate,
                              "count": int(window.count), "labeled_at_close": int(window.labeled_at_close)}
        self.closed_ids = dict.fromkeys(self.open_ids)
        self.open_ids = []
        self.last_estimate = {"estimated_accuracy": estimate, "window": int(window.index), "at": at,
                              "reconciled": list(self.reconciled)[-5:]}
        if self.baseline is None:
            self.baseline = estimate
            return []
        drop = self.baseline - estimate
        limit = self.config.estimate_min_drop
        if drop >= limit:
            severity = "critical" if drop >= 2 * limit else "warning"
            return self._fire("estimated_performance", None, "cbpe", estimate, self.baseline - limit,
                              self.config.estimate_window, self.config.estimate_window, severity, at, None,
                              f"estimated accuracy {estimate:.3f} is {drop:.3f} below its first window's "
                              f"{self.baseline:.3f}")
        state = self.alerts.get("estimated_performance")
        if state and state.firing and drop < limit / 2:
            return self._resolve("estimated_performance", None, at, f"estimated accuracy back to {estimate:.3f}")
        return []

    def _judge(self, kind: str, result: Any, at: float) -> list[dict[str, Any]]:
        if result.drifted:
            severity = "critical" if result.statistic >= 2 * result.threshold else "warning"
            return self._fire(kind, result.feature, result.test, result.statistic, result.threshold,
                              result.reference_size, result.window_size, severity, at, None,
                              f"{result.feature}: {result.test} {result.statistic:.4g} above its calibrated "
                              f"threshold {result.threshold:.4g}")
        if self.alerts.get(f"{kind}:{result.feature}", AlertState()).firing:
            return self._resolve(kind, result.feature, at, f"{result.feature}: back under its threshold")
        return []

    # ------------------------------------------------------------------ alerts
    def _alert_id(self, kind: str, feature: str | None, episode: int) -> str:
        raw = orjson.dumps([self.epoch, self.model, self.version, kind, feature, episode])
        return hashlib.sha256(raw).hexdigest()[:24]

    def _fire(self, kind: str, feature: str | None, detector: str, statistic: Any, threshold: Any,
              reference_size: int | None, window_size: int | None, severity: str, at: float,
              first_at: float | None, message: str) -> list[dict[str, Any]]:
        key = kind if feature is None else f"{kind}:{feature}"
        state = self.alerts.setdefault(key, AlertState())
        if state.firing:
            return []
        if state.resolved_at is not None and at - state.resolved_at < self.config.cooldown:
            return []
        state.firing, state.episode = True, state.episode + 1
        return [{
            "alert_id": self._alert_id(kind, feature, state.episode), "kind": kind, "detector": detector,
            "model": self.model, "model_version": self.version, "feature": feature,
            "statistic": None if statistic is None else float(statistic),
            "threshold": None if threshold is None else float(threshold),
            "reference_size": reference_size, "window_size": window_size, "severity": severity,
            "status": "firing", "detected_at": utc_iso(at),
            "first_offending_at": None if first_at is None else utc_iso(first_at),
            "message": f"{self.model} {self.version}: {message}", "outcomes_seen": self.outcomes,
        }]

    def _resolve(self, kind: str, feature: str | None, at: float, message: str) -> list[dict[str, Any]]:
        key = kind if feature is None else f"{kind}:{feature}"
        state = self.alerts[key]
        state.firing, state.resolved_at = False, at
        return [{
            "alert_id": self._alert_id(kind, feature, state.episode) + "-resolved", "kind": kind,
            "detector": self.detector_name if kind == "concept" else kind, "model": self.model,
            "model_version": self.version, "feature": feature, "severity": "warning", "status": "resolved",
            "detected_at": utc_iso(at), "message": f"{self.model} {self.version}: resolved: {message}",
            "outcomes_seen": self.outcomes,
        }]

    # ------------------------------------------------------------------ checkpoints
    def to_bytes(self, signer: Signer) -> bytes:
        """JSON state without the data-drift references (see :meth:`references_bytes`); the River
        detector inside as a signed pickle."""
        return orjson.dumps({
            "model": self.model, "version": self.version, "epoch": self.epoch,
            "detector_name": self.detector_name,
            "detector": base64.b64encode(signer.dumps(self.detector)).decode(),
            "features": _without_references(self.features.to_dict()),
            "predictions": _without_references(self.predictions.to_dict()),
            "estimator": self.estimator.to_dict(), "baseline": self.baseline,
            "last_estimate": self.last_estimate, "outcomes": self.outcomes, "last_change": self.last_change,
            "alerts": {k: asdict(v) for k, v in self.alerts.items()},
            "recent_times": list(self.recent_times)[-5000:],
            "open_ids": self.open_ids, "closed_ids": self.closed_ids, "closed_window": self.closed_window,
            "reconciled": list(self.reconciled),
        })

    def references_state(self) -> tuple[bool, bool]:
        """Which references are complete: they are stored once, when this changes."""
        return self.features.reference_ready, self.predictions.reference_ready

    def references_bytes(self) -> bytes:
        """The calibrated data-drift references: large, and fixed once complete."""
        return orjson.dumps({"features": self.features.to_dict()["references"],
                             "predictions": self.predictions.to_dict()["references"]})

    @classmethod
    def from_bytes(cls, raw: bytes, config: MonitorConfig, signer: Signer,
                   references: bytes | None = None) -> tuple[ModelMonitor, CheckpointIntegrityError | None]:
        """Restore a monitor from :meth:`to_bytes` and :meth:`references_bytes`. A detector whose
        signature or versions do not check out is replaced by a fresh one, and the refusal is
        returned for the caller to report."""
        data = orjson.loads(raw)
        refs = orjson.loads(references) if references else {"features": None, "predictions": None}
        data["features"]["references"] = refs["features"]
        data["predictions"]["references"] = refs["predictions"]
        monitor = cls(data["model"], data["version"], config, data["epoch"])
        refused: CheckpointIntegrityError | None = None
        try:
            monitor.detector = signer.loads(base64.b64decode(data["detector"]))
            monitor.detector_name = data["detector_name"]
        except CheckpointIntegrityError as exc:
            refused = exc
        monitor.features = FeatureDriftMonitor.from_dict(data["features"])
        monitor.predictions = FeatureDriftMonitor.from_dict(data["predictions"])
        monitor.estimator = PerformanceEstimator.from_dict(data["estimator"])
        monitor.baseline, monitor.last_estimate = data["baseline"], data["last_estimate"]
        monitor.outcomes, monitor.last_change = data["outcomes"], data["last_change"]
        monitor.alerts = {k: AlertState(**v) for k, v in data["alerts"].items()}
        monitor.recent_times.extend(data["recent_times"])
        monitor.open_ids, monitor.closed_ids = data["open_ids"], data["closed_ids"]
        monitor.closed_window = data["closed_window"]
        monitor.reconciled.extend(data["reconciled"])
        return monitor, refused


def _without_references(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if k != "references"}
