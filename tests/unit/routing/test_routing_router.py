"""The router of one model version: each policy on hand-built observations, the label-error and
drift events, thresholds, configuration checks, the ReviewRequest contract and when it learns."""

from __future__ import annotations

import hashlib
import math
from datetime import datetime, timezone

import pytest

from feedback_loop.errors import ConfigurationError
from feedback_loop.events import ReviewRequest
from feedback_loop.routing.learned import ErrorModel
from feedback_loop.routing.router import DEFAULT_POLICIES, POLICIES, Router, RoutingConfig

T0 = 1_700_000_000.0
UNSURE = {"a": 0.7, "b": 0.2, "c": 0.1}  # least confidence 0.45, margin 0.5


def prediction(ident: str, t: float, y="a", c=None, s=None, x=None, **extra) -> dict:
    obs = {"k": "p", "m": "m", "v": "1", "id": ident, "t": T0 + t, "x": x or {}, "y": y, "c": c}
    if s:
        obs["s"] = s
    obs.update(extra)
    return obs


def outcome(ident: str, label, y="a", c=0.95, ok=None, src="label", lf=True, t=500.0, pt=10.0,
            x=None) -> dict:
    obs = {"k": "o", "m": "m", "v": "1", "id": ident, "t": T0 + t, "pt": T0 + pt,
           "ok": (label == y) if ok is None else ok, "c": c, "r": 1, "l": label, "src": src, "y": y}
    if x:
        obs["x"] = x
    if lf:
        obs["lf"] = True
    return obs


def make(policies=DEFAULT_POLICIES, **kw) -> Router:
    return Router("m", "1", RoutingConfig(policies=tuple(policies), **kw))


def warm(router: Router, n: int = 25) -> None:
    """Fill the gate's history (min_history 20) with unscored predictions: nothing routed."""
    for i in range(n):
        assert router.on_prediction(prediction(f"w{i}", float(i))) == []


def routed(router: Router, obs: dict) -> dict:
    (request,) = router.on_prediction(obs)
    ReviewRequest.model_validate(request)  # every request honours the contract
    return request


def iso(t: float) -> datetime:
    return datetime.fromtimestamp(t, timezone.utc)


def entropy_ref(scores: dict) -> float:
    total = sum(scores.values())
    return -sum(v / total * math.log(v / total) for v in scores.values() if v > 0) / math.log(len(scores))


# -- the uncertainty policies -------------------------------------------------------------------

@pytest.mark.parametrize("policy, expected", [("least_confidence", 0.3 * 3 / 2), ("margin", 0.5),
                                              ("entropy", entropy_ref(UNSURE))])
def test_each_uncertainty_policy_alone_routes_with_its_score(policy, expected):
    router = make([policy])
    warm(router)
    request = routed(router, prediction("p1", 100.0, c=0.7, s=UNSURE, tg={"region": "eu"},
                                        x={"f": 1.0}))
    assert request["reason"] == policy
    assert math.isclose(request["priority"], expected, rel_tol=1e-12)
    assert request["policy_scores"] == {policy: round(expected, 6)}
    assert (request["prediction_id"], request["model"], request["model_version"]) == ("p1", "m", "1")
    assert (request["prediction"], request["confidence"], request["scores"]) == ("a", 0.7, UNSURE)
    assert (request["features"], request["tags"], request["label"]) == ({"f": 1.0}, {"region": "eu"}, None)
    assert iso(T0 + 100.0).isoformat() == request["requested_at"] == request["predicted_at"]
    assert router.routed == {policy: 1}


def test_least_confidence_uses_the_bare_confidence_without_scores():
    router = make(["least_confidence"])
    assert router.scores(prediction("p", 0.0, c=0.8)) == {"least_confidence": pytest.approx(0.4)}
    assert router.scores(prediction("p", 0.0)) == {}


def test_the_highest_score_gives_the_reason():
    router = make(["least_confidence", "margin"])
    warm(router)
    request = routed(router, prediction("p1", 100.0, s=UNSURE))
    assert (request["reason"], request["priority"]) == ("margin", pytest.approx(0.5))
    assert request["policy_scores"] == {"least_confidence": 0.45, "margin": 0.5}


def test_disabled_policies_are_not_scored():
    router = make(["margin"])
    assert set(router.scores(prediction("p", 0.0, c=0.6, s=UNSURE))) == {"margin"}


# -- learned and shadow ------------------------------------------------------------------------

def test_learned_stands_in_with_least_confidence_while_warming_up():
    router = make(["learned"], warmup=5)
    warm(router)
    request = routed(router, prediction("p1", 100.0, c=0.7, s=UNSURE))
    assert (request["reason"], request["priority"]) == ("learned", pytest.approx(0.45))


def test_shadow_alone_scores_nothing_while_warming_up():
    router = make(["shadow"], warmup=5)
    warm(router)
    assert router.scores(prediction("p1", 100.0, c=0.7, s=UNSURE, x={"f": 1.0})) == {}
    assert router.on_prediction(prediction("p1", 100.0, c=0.7, s=UNSURE, x={"f": 1.0})) == []


def test_learned_and_shadow_are_the_error_models_scores_after_warmup():
    router = make(["learned", "shadow"], warmup=5)
    reference = ErrorModel(warmup=5)
    for i in range(40):
        f = {"f": float(i % 2)}
        label = "a" if i % 2 else "b"
        router.on_outcome(outcome(f"o{i}", label, y="a", c=0.8, x=f))
        reference.learn(f, "a", 0.8, label)
    assert router.errors.learned == 40
    obs = prediction("p1", 100.0, c=0.8, x={"f": 0.0})
    learned, shadow = reference.scores({"f": 0.0}, "a", 0.8)
    assert router.scores(obs) == {"learned": learned, "shadow": shadow}
    assert shadow > 0.5  # f=0 was always "b"


# -- drift and disagreement ----------------------------------------------------------------------

def uniform(ident: str) -> float:
    return int.from_bytes(hashlib.blake2b(ident.encode(), digest_size=8).digest(), "big") / 2.0**64


def test_drift_scores_exactly_drift_samples_predictions_after_an_alert():
    router = make(["drift"], drift_samples=3)
    warm(router)
    assert router.scores(prediction("before", 30.0)) == {}
    router.on_alert()
    got = [router.scores(prediction(f"d{i}", 40.0 + i)) for i in range(5)]
    assert got[:3] == [{"drift": uniform(f"d{i}")} for i in range(3)]
    assert got[3:] == [{}, {}]


def test_drift_routes_sampled_predictions():
    router = make(["drift"], drift_samples=2)
    warm(router)
    router.on_alert()
    request = routed(router, prediction("d0", 100.0))
    assert (request["reason"], request["priority"]) == ("drift", uniform("d0"))
    assert router.drift_left == 1


def test_a_new_alert_restarts_the_sample():
    router = make(["drift"], drift_samples=2)
    router.on_alert()
    router.scores(prediction("d0", 0.0))
    router.on_alert()
    assert router.drift_left == 2


def test_disagreement_is_the_challengers_confidence_when_it_differs():
    router = make(["disagreement"])
    warm(router)
    request = routed(router, prediction("p1", 100.0, c=0.9, sh={"y": "b", "c": 0.7}))
    assert (request["reason"], request["priority"]) == ("disagreement", 0.7)


def test_disagreement_without_challenger_confidence_is_one_half():
    assert make(["disagreement"]).scores(prediction("p", 0.0, sh={"y": "b", "c": None})) == {"disagreement": 0.5}


def test_agreement_scores_zero_and_is_not_routed():
    router = make(["disagreement"])
    warm(router)
    obs = prediction("p1", 100.0, sh={"y": "a", "c": 0.99})
    assert router.scores(obs) == {"disagreement": 0.0}
    assert router.on_prediction(obs) == []


def test_disagreement_compares_canonical_text():
    router = make(["disagreement"])
    assert router.scores(prediction("p", 0.0, y="1", sh={"y": 1, "c": 0.9})) == {"disagreement": 0.0}


@pytest.mark.parametrize("shadow", [None, "b", {"c": 0.9}, ["b"]])
def test_no_usable_challenger_means_no_disagreement_score(shadow):
    assert make(["disagreement"]).scores(prediction("p", 0.0, sh=shadow)) == {}


# -- what is never routed -----------------------------------------------------------------------

def test_labeled_predictions_are_never_routed():
    router = make(list(POLICIES), drift_samples=10)
    warm(router)
    router.on_alert()
    for i in range(30):
        assert router.on_prediction(prediction(f"l{i}", 100.0 + i, c=0.5, s={"a": 0.5, "b": 0.5},
                                               sh={"y": "b", "c": 1.0}, lab=True)) == []
    assert router.routed == {}


def test_labeled_predictions_do_not_spend_the_budget():
    router = make(["least_confidence"])
    warm(router)
    for i in range(30):  # 30 uncertain predictions that arrived labeled, all at one instant
        router.on_prediction(prediction(f"l{i}", 100.0, c=0.5, lab=True))
    # an unlabeled, maximally uncertain prediction at that instant should find the budget unspent
    assert router.on_prediction(prediction("u", 100.0, c=0.5)) != []
    assert router.gate.admitted == 1


def test_regression_predictions_are_never_routed_nor_counted():
    router = make(list(POLICIES))
    warm(router)
    router.on_alert()
    seen = router.gate.seen
    assert router.on_prediction(prediction("r1", 100.0, y=0.3, c=0.5, sh={"y": 0.9, "c": 1.0})) == []
    assert router.gate.seen == seen and router.drift_left == router.config.drift_samples


def test_integer_class_labels_are_routed():
    router = make(["least_confidence"])
    warm(router)
    assert routed(router, prediction("p1", 100.0, y=1, c=0.6))["prediction"] == 1


def test_an_unwarmed_gate_routes_nothing():
    router = make(["least_confidence"])
    assert [router.on_prediction(prediction(f"p{i}", float(i), c=0.5)) for i in range(20)] == [[]] * 20


# -- thresholds ----------------------------------------------------------------------------------

def test_thresholds_filter_scores_below_them():
    router = make(["least_confidence"], thresholds={"least_confidence": 0.5})
    warm(router)
    assert router.scores(prediction("low", 100.0, c=0.775)) == {}      # 0.45
    assert router.on_prediction(prediction("low", 100.0, c=0.775)) == []
    assert router.scores(prediction("edge", 101.0, c=0.75)) == {"least_confidence": 0.5}
    assert routed(router, prediction("high", 102.0, c=0.6))["prediction_id"] == "high"


def test_a_threshold_only_applies_to_its_policy():
    router = make(["least_confidence", "margin"], thresholds={"margin": 0.9})
    assert router.scores(prediction("p", 0.0, s=UNSURE)) == {"least_confidence": pytest.approx(0.45)}


# -- label errors --------------------------------------------------------------------------------

def test_a_confident_prediction_contradicted_by_a_label_is_routed_at_the_label_time():
    router = make(["label_error"])
    (request,) = router.on_outcome(outcome("p9", "b", y="a", c=0.95, t=500.0, pt=10.0, x={"f": 2.0}))
    ReviewRequest.model_validate(request)
    assert (request["reason"], request["priority"], request["label"]) == ("label_error", 0.95, "b")
    assert request["prediction_id"] == "p9" and request["prediction"] == "a"
    assert request["requested_at"] == iso(T0 + 500.0).isoformat()
    assert request["predicted_at"] == iso(T0 + 10.0).isoformat()
    assert request["features"] == {"f": 2.0} and request["policy_scores"] == {"label_error": 0.95}
    assert router.routed == {"label_error": 1}


def test_label_errors_bypass_the_gate():
    router = make(["label_error"])
    assert router.gate.seen == 0  # no history at all
    assert len(router.on_outcome(outcome("p1", "b", c=0.9))) == 1  # confidence at the threshold
    assert router.gate.seen == 0


@pytest.mark.parametrize("change", [{"src": "review"}, {"c": 0.89}, {"c": None}, {"ok": True},
                                    {"ok": None}, {"l": None}, {"y": 0.5}])
def test_other_outcomes_are_not_label_errors(change):
    router = make(["label_error"])
    assert router.on_outcome({**outcome("p1", "b", c=0.95), **change}) == []


def test_label_error_confidence_is_configurable():
    router = make(["label_error"], label_error_confidence=0.8)
    assert len(router.on_outcome(outcome("p1", "b", c=0.85))) == 1


def test_label_error_needs_its_policy():
    assert make(["least_confidence"]).on_outcome(outcome("p1", "b", c=0.99)) == []


# -- learning ------------------------------------------------------------------------------------

def test_only_first_labels_are_learned():
    router = make(["learned"])
    first = outcome("p1", "b", y="a", c=0.6, lf=True)
    router.on_outcome(first)
    router.on_outcome({**first, "lf": False, "r": 2})
    router.on_outcome({k: v for k, v in first.items() if k != "lf"})
    assert router.errors.learned == 1


def test_outcomes_without_a_label_or_of_regressions_are_not_learned():
    router = make(["learned"])
    router.on_outcome(outcome("p1", None, c=0.6))
    router.on_outcome(outcome("p2", 1.5, y=1.2, c=None))
    assert router.errors.learned == 0


def test_labels_are_learned_as_canonical_text():
    router = make(["learned"])
    router.on_outcome(outcome("p1", 1, y=1, c=0.6))
    assert router.errors.classes == {"1"} and router.errors.recent_error < 0.5


# -- configuration -------------------------------------------------------------------------------

def test_unknown_policy_in_thresholds_is_refused():
    with pytest.raises(ConfigurationError, match="review_thresholds.*bogus"):
        RoutingConfig(thresholds={"bogus": 0.5})


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_out_of_range_threshold_is_refused(value):
    with pytest.raises(ConfigurationError, match="review_thresholds"):
        RoutingConfig(thresholds={"margin": value})


@pytest.mark.parametrize("value", [0.0, -5.0])
def test_non_positive_budget_is_refused(value):
    with pytest.raises(ConfigurationError, match="review_budgets"):
        RoutingConfig(budgets={"churn": value})


def test_thresholds_at_the_bounds_are_accepted():
    assert RoutingConfig(thresholds={"margin": 0.0, "entropy": 1.0}).thresholds["entropy"] == 1.0


def test_per_model_budgets_reach_the_gate():
    config = RoutingConfig(budget_per_hour=60.0, budgets={"m": 5.0})
    assert (config.budget_for("m"), config.budget_for("other")) == (5.0, 60.0)
    assert Router("m", "1", config).gate.budget_per_hour == 5.0
    assert Router("other", "1", config).gate.budget_per_hour == 60.0


def test_from_settings_copies_the_review_settings():
    from types import SimpleNamespace

    settings = SimpleNamespace(review_policies=["margin", "drift"], review_thresholds={"margin": 0.2},
                               review_budget_per_hour=12.0, review_budgets={"m": 3.0},
                               review_label_error_confidence=0.95, review_drift_samples=7,
                               review_budget_burst=4.0)
    config = RoutingConfig.from_settings(settings)
    assert (config.policies, config.thresholds, config.budget_per_hour, config.budgets,
            config.label_error_confidence, config.drift_samples, config.burst) == (
        ("margin", "drift"), {"margin": 0.2}, 12.0, {"m": 3.0}, 0.95, 7, 4.0)
