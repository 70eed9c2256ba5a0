"""The learner of one model: test-then-train equals River's loop, each outcome learned once,
shadow pairs, promotion by the exact McNemar test, rollback, decisions by hand, checkpoints."""

from __future__ import annotations

import math
import pickle
import random

from online_models import decisions
from online_models.learner import LearnerConfig, ModelLearner
from online_models.specs import BUILTIN, build

SPEC = (("logreg", BUILTIN["logreg"]),)


def stream(n: int, seed: int = 1) -> list[tuple[dict[str, float], str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        x = {"a": rng.gauss(0, 1), "b": rng.gauss(0, 1)}
        out.append((x, "yes" if x["a"] + 0.3 * rng.gauss(0, 1) > 0 else "no"))
    return out


def pred(i: int, x: dict, y: str, t: float | None = None) -> dict:
    return {"k": "p", "m": "m", "v": "ext", "id": f"p{i}", "t": float(i if t is None else t), "x": x, "y": y}


def out(i: int, x: dict, label: str, y: str, first: bool = True) -> dict:
    return {"k": "o", "m": "m", "v": "ext", "id": f"p{i}", "t": float(i), "pt": float(i), "x": x, "y": y,
            "l": label, "src": "label", "lf": first, "ok": label == y, "r": 1}


def test_test_then_train_equals_rivers_loop_and_learns_each_outcome_once():
    data = stream(500)
    learner = ModelLearner("m", LearnerConfig(SPEC))
    reference = build(BUILTIN["logreg"])
    correct = 0
    for i, (x, y) in enumerate(data):
        learner.on_prediction(pred(i, x, "yes"))
        learner.on_outcome(out(i, x, y, "yes"))
        learner.on_outcome(out(i, x, y, "yes"))           # republished: ignored
        learner.on_outcome(out(i, x, y, "yes", first=False))  # a later revision: not learned again
        correct += reference.predict_one(x) == y
        reference.learn_one(x, y)
    report = learner.report()["challengers"]["logreg"]
    assert report["updates"] == 500 and report["prequential_n"] == 500
    assert math.isclose(report["prequential_accuracy"], correct / 500, rel_tol=1e-12)
    assert learner.report()["duplicates_ignored"] == 500


def test_promotion_needs_the_window_the_test_and_the_margin_and_names_a_version():
    data = stream(3000, seed=2)
    config = LearnerConfig(SPEC, window=200, alpha=0.01, min_margin=0.05, checkpoint_updates=10**9)
    learner = ModelLearner("m", config)
    updates = []
    for i, (x, y) in enumerate(data):
        learner.on_prediction(pred(i, x, "yes"))  # the external champion always says yes: ~50% right
        updates += learner.on_outcome(out(i, x, y, "yes"))
    promotions = [u for u in updates if u["action"] == "promote"]
    assert promotions, "a learned model beats a constant answer"
    first = promotions[0]
    ev = first["evidence"]
    assert first["previous_version"] == "ext" and first["version"].startswith("logreg-u")
    assert ev["window"] == 200 and ev["p_value"] < 0.01 and ev["margin"] >= 0.05
    assert math.isclose(ev["p_value"], decisions.mcnemar_one_sided(ev["champion_only_right"],
                                                                   ev["challenger_only_right"]))
    assert learner.champion.name == "logreg"
    assert ("logreg", first["version"]) in [(n, v) for n, v, _, _ in learner.due_checkpoints(0.0)]


def test_rollback_when_the_new_champion_falls_below_the_previous_accuracy():
    learner = ModelLearner("m", LearnerConfig(SPEC, rollback_window=100, alpha=0.01, rollback_margin=0.05))
    learner.on_control({"k": "c", "m": "m", "action": "promote", "version": "logreg-u0", "name": "logreg", "t": 0.0})
    learner.champion.previous_accuracy = 0.9  # what the previous champion scored
    updates = []
    data = stream(300, seed=3)
    for i, (x, y) in enumerate(data):
        learner.on_prediction(pred(i, x, "yes"))
        learner.challengers["logreg"] = _Constant("maybe")  # the champion is now always wrong
        updates += learner.on_outcome(out(i, x, y, "yes"))
        if updates:
            break
    assert [u["action"] for u in updates] == ["rollback"]
    assert updates[0]["version"] == "ext" or updates[0]["previous_version"] == "logreg-u0"


class _Constant:
    def __init__(self, y: str) -> None:
        self.y = y

    def predict_one(self, x: dict) -> str:
        return self.y

    def predict_proba_one(self, x: dict) -> dict:
        return {self.y: 1.0}

    def learn_one(self, x: dict, y: str) -> None:
        pass


def test_pickle_round_trip_keeps_learning_identically():
    data = stream(400, seed=4)
    a = ModelLearner("m", LearnerConfig(SPEC))
    for i, (x, y) in enumerate(data[:200]):
        a.on_prediction(pred(i, x, "yes"))
        a.on_outcome(out(i, x, y, "yes"))
    b = pickle.loads(pickle.dumps(a))
    for i, (x, y) in enumerate(data[200:], start=200):
        for learner in (a, b):
            learner.on_prediction(pred(i, x, "yes"))
            learner.on_outcome(out(i, x, y, "yes"))
    assert a.report() == b.report()


def test_checkpoints_every_n_updates():
    data = stream(250, seed=5)
    learner = ModelLearner("m", LearnerConfig(SPEC, checkpoint_updates=100, checkpoint_seconds=1e9))
    versions = []
    for i, (x, y) in enumerate(data):
        learner.on_prediction(pred(i, x, "yes"))
        learner.on_outcome(out(i, x, y, "yes"))
        versions += [v for _, v, _, _ in learner.due_checkpoints(0.0)]
    assert versions == ["logreg-u100", "logreg-u200"]


def test_shadow_records_of_never_labeled_predictions_leave_after_the_pending_ttl():
    config = LearnerConfig(challengers=(("lr", BUILTIN["logreg"]),), pending_ttl=100.0)
    learner = ModelLearner("m", config)
    for i in range(1000):  # one prediction per event-time second, none labeled
        learner.on_prediction(pred(i, {"a": float(i), "plan": "pro"}, "UP", t=float(i)))
    assert sorted(learner.pending) == [f"p{i}" for i in range(899, 1000)]  # t >= 999 - 100
    # a label still in time is learned; text features do not break the scaled model
    learner.on_outcome(out(950, {"a": 950.0, "plan": "pro"}, "UP", "UP"))
    assert learner.updates["lr"] == 1 and "p950" not in learner.pending
