"""The router of one model version: scores every prediction with the configured policies and
routes the best through the budget gate; checks every ground-truth label against a confident
prediction; learns the error model from the outcomes.

Policies (each scores ``0..1``; an item's priority is the highest score and its reason that policy):

``least_confidence``, ``margin``, ``entropy``
    uncertainty of the class scores (:mod:`feedback_loop.routing.uncertainty`);
``learned``
    probability that the prediction is wrong, from an online River model trained on the outcomes
    (until ``warmup`` outcomes are learned, the least-confidence score stands in);
``shadow``
    probability, under an online label model, that the true class differs from the prediction
    (both in :mod:`feedback_loop.routing.learned`);
``drift``
    a uniform random sample (by a hash of the prediction id) of the next ``drift_samples``
    predictions after a drift alert fired for the version: the new concept needs fresh labels;
``disagreement``
    the challenger's confidence when its shadow prediction (observation field ``sh``) differs
    from the champion's: the online models' hook;
``label_error``
    a ground-truth label contradicting a prediction made with confidence at least
    ``label_error_confidence``: the label may be wrong. Routed when the label arrives, outside the
    gate (such items are rare); every other policy only routes items not yet labeled.

Regression predictions are not routed. Observations are the ``monitor-input`` records of
:mod:`streams.observations`; requests are ReviewRequest dicts.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable, Collection

from feedback_loop.errors import ConfigurationError
from feedback_loop.events import utc_iso
from feedback_loop.routing import uncertainty
from feedback_loop.routing.gate import BudgetGate
from feedback_loop.routing.learned import ErrorModel

POLICIES = ("least_confidence", "margin", "entropy", "learned", "shadow", "label_error", "drift",
            "disagreement")
#: The default: the learned error model ranks; a challenger's disagreement adds its items.
#: ``drift`` is opt-in: its random samples serve estimating a new concept, and on Elec2 they cost
#: the live champion half a point of accuracy (benchmarks/online.py: 0.8003 with it, 0.8055
#: without). ``label_error`` is opt-in: next to a drifting model most confident contradictions are
#: the model's errors, not the labels'.
DEFAULT_POLICIES = ("learned", "disagreement")
#: What a malformed observation raises (see :meth:`Router.on_predictions`); the monitors make a
#: dead letter of it.
MALFORMED_OBSERVATION = (KeyError, TypeError, ValueError, AttributeError, OverflowError)


@dataclass(frozen=True)
class RoutingConfig:
    """Routing settings, checked once at startup."""

    policies: tuple[str, ...] = DEFAULT_POLICIES
    thresholds: dict[str, float] = field(default_factory=dict)
    budget_per_hour: float = 60.0
    budgets: dict[str, float] = field(default_factory=dict)
    label_error_confidence: float = 0.9
    drift_samples: int = 200
    burst: float = 50.0
    warmup: int = 100
    window: int = 500

    def __post_init__(self) -> None:
        unknown = sorted(set(self.thresholds) - set(POLICIES))
        if unknown:
            raise ConfigurationError(
                f"review_thresholds names unknown policies {unknown}; known: {', '.join(POLICIES)}")
        bad = {k: v for k, v in self.thresholds.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ConfigurationError(f"review_thresholds must lie in [0, 1]; got {bad}")
        low = {k: v for k, v in self.budgets.items() if not v > 0 or math.isinf(v)}
        if low:
            raise ConfigurationError(f"review_budgets must be positive, finite items per hour; got {low}")
        if not 0 < self.budget_per_hour < math.inf:
            raise ConfigurationError(f"review_budget_per_hour must be positive and finite; got {self.budget_per_hour}")
        unknown_policies = sorted(set(self.policies) - set(POLICIES))
        if unknown_policies:
            raise ConfigurationError(
                f"review_policies names unknown policies {unknown_policies}; known: {', '.join(POLICIES)}")

    @classmethod
    def from_settings(cls, settings: Any) -> RoutingConfig:
        return cls(tuple(settings.review_policies), dict(settings.review_thresholds),
                   settings.review_budget_per_hour, dict(settings.review_budgets),
                   settings.review_label_error_confidence, settings.review_drift_samples,
                   settings.review_budget_burst)

    def budget_for(self, model: str) -> float:
        return self.budgets.get(model, self.budget_per_hour)




def _uniform(prediction_id: str) -> float:
    """A repeatable uniform number in ``[0, 1)`` from the prediction id."""
    digest = hashlib.blake2b(prediction_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class Router:
    """Routing state of one model version (pickled into the monitor checkpoints)."""

    def __init__(self, model: str, version: str, config: RoutingConfig) -> None:
        self.model, self.version, self.config = model, version, config
        self.gate = BudgetGate(config.budget_for(model), window=config.window, burst=config.burst)
        self.errors = ErrorModel(warmup=config.warmup)
        self.drift_left = 0
        self.routed: dict[str, int] = {}

    def on_alert(self) -> None:
        """A drift alert fired for this version: sample the next predictions."""
        self.drift_left = self.config.drift_samples

    def scores(self, obs: dict[str, Any]) -> dict[str, float]:
        """Every enabled policy's score of a prediction observation (policies that cannot tell are left out)."""
        enabled, prediction, confidence = self.config.policies, str(obs["y"]), obs.get("c")
        found: dict[str, float | None] = {}
        scores = obs.get("s")
        if "least_confidence" in enabled:
            found["least_confidence"] = uncertainty.least_confidence(scores, confidence)
        if "margin" in enabled:
            found["margin"] = uncertainty.margin(scores)
        if "entropy" in enabled:
            found["entropy"] = uncertainty.entropy(scores)
        if "learned" in enabled or "shadow" in enabled:
            learned = self.errors.scores(obs.get("x") or {}, prediction, confidence)
            if learned is not None:
                found["learned"], found["shadow"] = learned
            elif "learned" in enabled:  # warming up: rank by least confidence meanwhile
                found["learned"] = uncertainty.least_confidence(scores, confidence)
        if "drift" in enabled and self.drift_left > 0 and not obs.get("lab"):
            self.drift_left -= 1
            found["drift"] = _uniform(obs["id"])
        shadow = obs.get("sh")
        if "disagreement" in enabled and isinstance(shadow, dict) and "y" in shadow:
            disagree = str(shadow["y"]) != prediction
            found["disagreement"] = float(shadow.get("c") or 0.5) if disagree else 0.0
        thresholds = self.config.thresholds
        return {k: v for k, v in found.items()
                if v is not None and k in enabled and v >= thresholds.get(k, 0.0)}

    def on_prediction(self, obs: dict[str, Any]) -> list[dict[str, Any]]:
        """Route a new prediction, or not; at most one request."""
        if type(obs["y"]) is float:
            return []
        scored = self.scores(obs)
        reason = max(scored, key=lambda k: (scored[k], k)) if scored else None
        priority = None if reason is None else scored[reason]
        # An item labeled on arrival still counts in the gate's view of the priorities and the
        # rate, but competes for nothing.
        t = obs["t"]
        if not self.gate.admit(None if obs.get("lab") else priority, t) or reason is None:
            return []
        self._count(reason)
        return [self._request(obs, reason, min(1.0, max(0.0, priority or 0.0)), t, scored)]

    def on_predictions(self, run: list[dict[str, Any]], alerted: Collection[int] = (),
                       on_error: Callable[[int, Exception], None] | None = None) -> dict[int, list[dict[str, Any]]]:
        """:meth:`on_prediction` of each observation of ``run`` in turn (:meth:`on_alert` first for
        the indices in ``alerted``); the requests, by index into ``run``. ``on_error(index,
        exception)`` receives a malformed observation's error and the others go on (without it,
        the error is raised).

        With the default policies (``learned``, ``disagreement``) and no thresholds, the
        ``learned`` score is the only one (the error model's, or the least-confidence score while
        it warms up; predictions do not change the error model, so a run is scored by one model)
        and the gate takes the priorities of a stretch of predictions at once; otherwise, and for
        an observation carrying a challenger's shadow prediction, :meth:`on_prediction` does it.
        """
        out: dict[int, list[dict[str, Any]]] = {}
        enabled = self.config.policies
        plain = not self.config.thresholds and "learned" in enabled and set(enabled) <= {"learned", "disagreement"}
        score = self.errors.scorer() if plain else None
        # plain: the gate takes the priorities of a stretch of predictions at once
        pending: list[tuple[int, dict[str, Any], float | None, float]] = []

        def flush() -> None:
            admitted = self.gate.admit_many([None if obs.get("lab") else p for _, obs, p, _ in pending],
                                            [t for _, _, _, t in pending])
            for (i, obs, priority, t), ok in zip(pending, admitted):
                if ok and priority is not None:
                    self._count("learned")
                    try:
                        out[i] = [self._request(obs, "learned", min(1.0, max(0.0, priority)), t,
                                                {"learned": priority})]
                    except MALFORMED_OBSERVATION as exc:
                        if on_error is None:
                            raise
                        on_error(i, exc)
            pending.clear()

        least_confidence = uncertainty.least_confidence
        for i, obs in enumerate(run):
            try:
                if i in alerted:
                    self.on_alert()
                if not plain or "sh" in obs:
                    if pending:
                        flush()
                    if requests := self.on_prediction(obs):
                        out[i] = requests
                elif type(obs["y"]) is not float:
                    if score is not None:  # (the checks and the order of on_prediction's reads)
                        priority = score(obs.get("x") or {}, str(obs["y"]), obs.get("c"))[0]
                    else:
                        priority = least_confidence(obs.get("s"), obs.get("c"))
                    t = obs["t"]
                    if type(t) is not float and type(t) is not int:
                        raise TypeError(f"event time {t!r} is not a number")  # (as admit says)
                    pending.append((i, obs, priority, t))
            except MALFORMED_OBSERVATION as exc:
                if on_error is None:
                    raise
                on_error(i, exc)
        if pending:
            flush()
        return out

    def on_outcome(self, obs: dict[str, Any]) -> list[dict[str, Any]]:
        """Learn from an outcome with a newly known true class; route a suspect label."""
        if isinstance(obs.get("y"), float) or obs.get("l") is None:
            return []
        label, prediction, confidence = str(obs["l"]), str(obs["y"]), obs.get("c")
        if obs.get("lf"):
            self.errors.learn(obs.get("x") or {}, prediction, confidence, label)
        threshold = self.config.label_error_confidence
        if ("label_error" in self.config.policies and obs.get("src") == "label" and obs.get("ok") is False
                and confidence is not None and confidence >= threshold):
            self._count("label_error")
            return [self._request({**obs, "t": obs["pt"]}, "label_error", float(confidence), obs["t"],
                                  {"label_error": float(confidence)}, label=obs["l"])]
        return []

    def _count(self, reason: str) -> None:
        self.routed[reason] = self.routed.get(reason, 0) + 1

    def _request(self, obs: dict[str, Any], reason: str, priority: float, requested_at: float,
                 scored: dict[str, float], label: Any = None) -> dict[str, Any]:
        return {"prediction_id": obs["id"], "model": self.model, "model_version": self.version,
                "reason": reason, "priority": priority, "prediction": obs["y"],
                "features": obs.get("x") or {}, "scores": obs.get("s"), "confidence": obs.get("c"),
                "label": label, "requested_at": utc_iso(requested_at), "predicted_at": utc_iso(obs["t"]),
                "tags": obs.get("tg") or {}, "policy_scores": {k: round(v, 6) for k, v in scored.items()}}
