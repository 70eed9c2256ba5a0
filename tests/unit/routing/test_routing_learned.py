"""The learned error model: warm-up, learning a separable rule (AUC of the learned and shadow
scores), inputs untouched, unseen or missing features, pickling and determinism."""

from __future__ import annotations

import copy
import pickle
import random

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
