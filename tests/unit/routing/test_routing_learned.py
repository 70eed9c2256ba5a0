"""The learned error model: warm-up, learning a separable rule (AUC of the learned and shadow
scores), inputs untouched, unseen or missing features, pickling and determinism."""

from __future__ import annotations

import copy
import pickle
import random

from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from feedback_loop.routing.learned import ErrorModel


def auc(positives: list[float], negatives: list[float]) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def item(rng: random.Random) -> tuple[dict, str, float, str]:
    """The truth is the sign of x1; the frozen model predicts the sign of x1 + x2, so it is wrong
    on a quarter of the inputs, and its confidence says nothing about when."""
    x1, x2 = rng.gauss(0, 1), rng.gauss(0, 1)
    truth = "a" if x1 > 0 else "b"
    prediction = "a" if x1 + x2 > 0 else "b"
    return {"x1": x1, "x2": x2, "noise": rng.gauss(0, 1), "segment": rng.choice("uvw")}, prediction, 0.8, truth


def trained(seed: int = 0, n: int = 2000, warmup: int = 50) -> ErrorModel:
    rng = random.Random(seed)
    model = ErrorModel(warmup=warmup)
    for _ in range(n):
        model.learn(*item(rng))
    return model


def test_scores_are_none_until_warmup_outcomes_are_learned():
    model = ErrorModel(warmup=3)
    rng = random.Random(1)
    for _ in range(3):
        assert model.scores({"x1": 0.0}, "a", 0.9) is None
        model.learn(*item(rng))
    assert model.learned == 3
    learned, shadow = model.scores({"x1": 0.0}, "a", 0.9)
    assert 0.0 <= learned <= 1.0 and 0.0 <= shadow <= 1.0


def test_learned_and_shadow_rank_wrong_predictions_above_right_ones():
    model = trained(seed=0)
    rng = random.Random(99)
    rows = [item(rng) for _ in range(600)]
    scored = [(model.scores(x, p, c), p != truth) for x, p, c, truth in rows]
    for index, name in enumerate(("learned", "shadow")):
        wrong = [s[index] for s, is_wrong in scored if is_wrong]
        right = [s[index] for s, is_wrong in scored if not is_wrong]
        assert len(wrong) > 50 and len(right) > 50
        assert auc(wrong, right) > 0.9, name


def test_learned_uses_the_confidence_when_it_tells_the_errors():
    rng = random.Random(2)
    model = ErrorModel(warmup=20)

    def outcome():
        confidence = rng.uniform(0.5, 1.0)
        return {}, "a", confidence, ("b" if confidence < 0.7 else "a")  # wrong iff unsure
    for _ in range(1500):
        model.learn(*outcome())
    rows = [outcome() for _ in range(400)]
    wrong = [model.scores(x, p, c)[0] for x, p, c, t in rows if t != p]
    right = [model.scores(x, p, c)[0] for x, p, c, t in rows if t == p]
    assert auc(wrong, right) > 0.9


def test_learn_and_scores_leave_the_features_unchanged():
    model = ErrorModel(warmup=1)
    features = {"x1": 1.5, "plan": "pro", "vip": True, "missing": None, "tags": ["a"]}
    before = copy.deepcopy(features)
    model.learn(features, "a", 0.7, "b")
    model.scores(features, "a", 0.7)
    assert features == before


def test_unseen_and_missing_features_are_tolerated():
    model = trained(n=300, warmup=10)
    for features in ({}, {"brand_new": 3.0}, {"segment": "never-seen"}, {"x1": None, "x2": "text"},
                     {"x1": float("nan")}, {"nested": {"a": 1}}):
        learned, shadow = model.scores(features, "a", None)
        assert 0.0 <= learned <= 1.0 and 0.0 <= shadow <= 1.0
        model.learn(features, "a", None, "b")


def test_an_unseen_predicted_class_is_tolerated():
    model = trained(n=300, warmup=10)
    learned, shadow = model.scores({"x1": 1.0}, "zzz", 0.6)
    assert 0.0 <= learned <= 1.0 and 0.0 <= shadow <= 1.0


def test_only_one_class_seen_gives_a_neutral_shadow():
    model = ErrorModel(warmup=5)
    for i in range(10):
        model.learn({"x1": float(i)}, "a", 0.9, "a")
    assert model.scores({"x1": 1.0}, "a", 0.9)[1] == 0.5  # no label model yet: agree defaults to 0.5


def test_pickle_round_trip_gives_the_same_scores():
    model = trained(n=500, warmup=10)
    clone = pickle.loads(pickle.dumps(model))
    rng = random.Random(7)
    rows = [item(rng) for _ in range(100)]
    assert [model.scores(x, p, c) for x, p, c, _ in rows] == [clone.scores(x, p, c) for x, p, c, _ in rows]
    for row in rows:  # and they keep learning alike
        model.learn(*row)
        clone.learn(*row)
    assert model.scores(*rows[0][:3]) == clone.scores(*rows[0][:3])
    assert (model.learned, model.recent_error) == (clone.learned, clone.recent_error)


def test_identically_fed_models_give_identical_scores():
    a, b = trained(seed=4, n=400, warmup=10), trained(seed=4, n=400, warmup=10)
    rng = random.Random(8)
    rows = [item(rng) for _ in range(50)]
    assert [a.scores(x, p, c) for x, p, c, _ in rows] == [b.scores(x, p, c) for x, p, c, _ in rows]


def test_recent_error_follows_the_error_rate_with_the_halflife():
    model = ErrorModel(warmup=1, error_halflife=10)
    for _ in range(10):
        model.learn({}, "a", 0.9, "b")  # ten errors: the 0.5 start moves half way to 1
    assert abs(model.recent_error - 0.75) < 1e-12


def _river_scores(model: ErrorModel, features: dict, prediction: str, confidence: float | None):
    """``ErrorModel.scores`` computed with River's own ``predict_proba_one`` calls."""
    from feedback_loop.routing.vectorize import vectorize

    x = vectorize(features)
    if len(model.classes) >= 2:
        agree = float(model.labels.predict_proba_one(x).get(prediction, 0.0))
    else:
        agree = 0.5
    z = {"agree": agree, "recent_error": model.recent_error, f"predicted={prediction}": 1.0}
    if confidence is not None:
        z["confidence"] = float(confidence)
    return float(model.errors.predict_proba_one(z).get(True, 0.0)), 1.0 - agree


feature_values = st.one_of(st.floats(-1e6, 1e6), st.integers(-1000, 1000), st.sampled_from(["u", "v", "w"]),
                           st.none(), st.booleans())


@hyp_settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 400), st.sampled_from(["a", "b", "c", "zzz"]),
       st.one_of(st.none(), st.floats(0, 1)),
       st.dictionaries(st.sampled_from(["x1", "x2", "noise", "segment", "new"]), feature_values, max_size=5))
def test_scores_equal_rivers_own_predictions_bit_for_bit(seed, n, prediction, confidence, features):
    """The direct evaluation of the scaler and logistic regressions gives River's floats exactly,
    and leaves the models in the state River's calls leave them in (its scaler records unseen
    features when it transforms them)."""
    rng = random.Random(seed)
    model = ErrorModel(warmup=0)
    for _ in range(n):
        x, p, c, truth = item(rng)
        model.learn(x, p, c if rng.random() < 0.8 else None, truth if rng.random() < 0.9 else "c")
    ours, theirs = pickle.loads(pickle.dumps(model)), pickle.loads(pickle.dumps(model))
    assert ours.scores(features, prediction, confidence) == _river_scores(theirs, features, prediction, confidence)
    assert pickle.dumps(ours) == pickle.dumps(theirs)


def test_predictions_in_rivers_learn_during_predict_mode_are_rivers_own():
    from river import compose

    model = trained(n=300, warmup=10)
    expected = _river_scores(pickle.loads(pickle.dumps(model)), {"x1": 0.3, "x2": -1.0}, "a", 0.6)
    with compose.learn_during_predict():  # River updates the scalers as it predicts: its calls do it
        clone = pickle.loads(pickle.dumps(model))
        assert clone.scores({"x1": 0.3, "x2": -1.0}, "a", 0.6) == _river_scores(
            pickle.loads(pickle.dumps(model)), {"x1": 0.3, "x2": -1.0}, "a", 0.6)
    assert model.scores({"x1": 0.3, "x2": -1.0}, "a", 0.6) == expected
