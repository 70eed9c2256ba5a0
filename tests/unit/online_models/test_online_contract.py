"""The :class:`~online_models.base.OnlineModel` contract, on every built-in spec and baseline.

One suite, parametrized over the models: pickle round-trip (same predictions, same learning
afterwards), the input dict left unchanged, missing and new features tolerated, same seed same
predictions, string class labels with two and three classes, and well-formed probabilities; and
exactly the same outputs in another process (another string hash seed), loaded or retrained.
"""

from __future__ import annotations

import copy
import math
import os
import pickle
import random
import subprocess
import sys
from collections.abc import Callable, Hashable, Iterator, Sequence
from pathlib import Path

import pytest

from online_models import BUILTIN, Frozen, LastLabel, ModelSpec, OnlineModel, build
from online_models.specs import SEEDED_KINDS

BINARY = ("UP", "DOWN")
THREE = ("UP", "FLAT", "DOWN")
FEATURES = 5


def stream(n: int, seed: int, classes: Sequence[Hashable] = BINARY) -> Iterator[tuple[dict, Hashable]]:
    """``n`` samples of 5 gaussian features; the class follows a linear score (three bands)."""
    rng = random.Random(seed)
    for _ in range(n):
        x = {f"f{i}": rng.gauss(0.0, 1.0) for i in range(FEATURES)}
        score = x["f0"] + 0.5 * x["f1"] - x["f2"]
        if len(classes) == 2:
            y = classes[0] if score > 0 else classes[1]
        else:
            y = classes[0] if score > 0.5 else classes[1] if score > -0.5 else classes[2]
        yield x, y


def frozen_logreg(classes: Sequence[Hashable], seed: int | None) -> Frozen:
    """A scaled logistic regression trained on 200 samples, then frozen."""
    model = build(BUILTIN["logreg"])
    for x, y in stream(200, 99, classes):
        model.learn_one(x, y)
    return Frozen(model)


def from_spec(name: str) -> Callable[[Sequence[Hashable], int | None], OnlineModel]:
    def make(classes: Sequence[Hashable], seed: int | None) -> OnlineModel:
        spec = BUILTIN[name]
        return build(spec.model_copy(update={"seed": seed}) if seed is not None else spec)
    return make


#: Every supported model: name -> make(classes, seed). ``seed=None`` keeps the spec's seed.
CASES: dict[str, Callable[[Sequence[Hashable], int | None], OnlineModel]] = {
    **{name: from_spec(name) for name in BUILTIN},
    "LastLabel": lambda classes, seed: LastLabel(),
    "Frozen(logreg)": frozen_logreg,
}
#: Models that learn nothing from the features: no accuracy bar for them.
BASELINES = {"last_label", "LastLabel"}
#: Models that come pre-trained.
PRETRAINED = {"Frozen(logreg)"}

models = pytest.mark.parametrize("name", list(CASES))
labels = pytest.mark.parametrize("classes", [BINARY, THREE], ids=["UP-DOWN", "three-classes"])


def make(name: str, classes: Sequence[Hashable] = BINARY, seed: int | None = None) -> OnlineModel:
    return CASES[name](classes, seed)


def outputs(model: OnlineModel, x: dict) -> tuple[Hashable | None, dict]:
    return model.predict_one(x), dict(model.predict_proba_one(x))


def trained(name: str, classes: Sequence[Hashable] = BINARY, n: int = 200) -> OnlineModel:
    model = make(name, classes)
    for x, y in stream(n, 1, classes):
        model.learn_one(x, y)
    return model


def assert_well_formed(prediction: Hashable | None, proba: dict, classes: Sequence[Hashable]) -> None:
    assert set(proba) <= set(classes)
    assert all(0.0 <= p <= 1.0 for p in proba.values()), proba
    if proba:
        assert math.isclose(sum(proba.values()), 1.0, abs_tol=1e-6), proba
        assert prediction in proba
    else:
        assert prediction is None


@models
def test_every_model_is_an_online_model(name):
    assert isinstance(make(name), OnlineModel)


@pytest.mark.parametrize("name", [n for n in CASES if n not in PRETRAINED])
def test_a_fresh_model_predicts_nothing_and_builds_are_independent(name):
    first, second = make(name), make(name)
    first.learn_one({"f0": 1.0}, "UP")
    assert first.predict_one({"f0": 1.0}) == "UP"
    assert second.predict_one({"f0": 1.0}) is None
    assert dict(second.predict_proba_one({"f0": 1.0})) == {}


@models
@labels
def test_pickle_round_trip_predicts_and_keeps_learning_identically(name, classes):
    model = trained(name, classes)
    loaded = pickle.loads(pickle.dumps(model))
    for x, _ in stream(100, 2, classes):
        assert outputs(loaded, x) == outputs(model, x)
    for x, y in stream(100, 3, classes):
        assert outputs(loaded, x) == outputs(model, x)
        model.learn_one(x, y)
        loaded.learn_one(x, y)
    for x, _ in stream(20, 4, classes):
        assert outputs(loaded, x) == outputs(model, x)


@models
def test_the_input_dict_is_left_unchanged(name):
    model = make(name)
    samples = [*stream(60, 5), ({"f0": 0.3}, "UP"), ({"f0": 0.1, "new": 2.0, "other": -1.0}, "DOWN")]
    for x, y in samples:
        before = copy.deepcopy(x)
        model.predict_one(x)
        model.predict_proba_one(x)
        model.learn_one(x, y)
        assert x == before and list(x) == list(before)


@models
def test_missing_and_new_features_are_tolerated(name):
    model = trained(name, n=100)
    rng = random.Random(6)
    for i, (x, y) in enumerate(stream(60, 7)):
        dropped = {k: v for k, v in x.items() if rng.random() < 0.5}    # some keys missing
        extra = {**x, f"new{i % 7}": rng.gauss(0.0, 1.0), "never_seen": 1.0}  # keys never seen
        for sample in (dropped, extra, {}):
            assert_well_formed(*outputs(model, sample), BINARY)
        model.learn_one(dropped, y)
        model.learn_one(extra, y)
    for x, _ in stream(20, 8):
        assert_well_formed(*outputs(model, x), BINARY)


@models
@labels
def test_same_seed_same_predictions(name, classes):
    runs = []
    for _ in range(2):
        model = make(name, classes)
        run = []
        for x, y in stream(300, 9, classes):
            run.append(outputs(model, x))
            model.learn_one(x, y)
        runs.append(run)
    assert runs[0] == runs[1]


@pytest.mark.parametrize("name", sorted(n for n, spec in BUILTIN.items() if spec.kind in SEEDED_KINDS))
def test_another_seed_or_no_seed_still_learns(name):
    """A different seed may change the predictions: only check they are well-formed."""
    for spec in (BUILTIN[name].model_copy(update={"seed": 7}), ModelSpec(kind=BUILTIN[name].kind, seed=None)):
        model = build(spec)
        for x, y in stream(150, 10):
            assert_well_formed(*outputs(model, x), BINARY)
            model.learn_one(x, y)


@models
@labels
def test_string_classes_are_learned_with_well_formed_probabilities(name, classes):
    model = trained(name, classes, n=300)
    hits = 0
    test = list(stream(200, 11, classes))
    for x, y in test:
        prediction, proba = outputs(model, x)
        assert_well_formed(prediction, proba, classes)
        hits += prediction == y
    if name not in BASELINES:
        assert hits / len(test) > 1.0 / len(classes) + 0.15, hits


#: Run in a child process: train every case, pickle it, and the outputs of both the loaded and
#: a freshly trained copy, so that runs under different string hash seeds can be compared.
CHILD = """
import pickle, sys
sys.path.insert(0, sys.argv[1])
from test_online_contract import CASES, THREE, outputs, stream
mode, path = sys.argv[2], sys.argv[3]
if mode == "train":
    models = {name: make(THREE, None) for name, make in CASES.items()}
    for model in models.values():
        for x, y in stream(200, 1, THREE):
            model.learn_one(x, y)
    result = {"models": pickle.dumps(models)}
else:
    with open(path, "rb") as f:
        result = pickle.load(f)
    models = pickle.loads(result["models"])
tests = list(stream(100, 2, THREE))
result["outputs"] = {name: [outputs(model, x) for x, _ in tests] for name, model in models.items()}
with open(path, "wb") as f:
    pickle.dump(result, f)
"""


def test_pickles_and_seeds_agree_across_processes_with_other_hash_seeds(tmp_path):
    """A checkpoint loaded by another worker (another ``PYTHONHASHSEED``) predicts exactly alike."""
    here, path = str(Path(__file__).parent), tmp_path / "run.pickle"
    runs = []
    for hash_seed, mode in (("1", "train"), ("2", "load"), ("3", "train")):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run([sys.executable, "-c", CHILD, here, mode, str(path)], env=env, check=True, timeout=120)
        with open(path, "rb") as f:
            runs.append(pickle.load(f)["outputs"])
    assert list(runs[0]) == list(CASES)
    for name in CASES:
        assert runs[1][name] == runs[0][name], f"{name}: loaded in another process"
        assert runs[2][name] == runs[0][name], f"{name}: trained in another process"
        assert [list(p) for _, p in runs[2][name]] == [list(p) for _, p in runs[0][name]], name
