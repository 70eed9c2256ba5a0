"""Model specs: the built-in list, what :func:`build` makes, custom specs, and the one-line errors
of :func:`resolve`, :func:`validate` and :func:`check_settings` (setting and bad name named)."""

from __future__ import annotations

from types import SimpleNamespace

import pydantic
import pytest
from river import compose, forest, linear_model, multiclass, naive_bayes, preprocessing, tree

from feedback_loop.errors import ConfigurationError
from feedback_loop.settings import Settings
from online_models import BUILTIN, LastLabel, ModelSpec, build, check_settings, resolve, validate


def settings(models: dict | None = None, specs: dict | None = None) -> SimpleNamespace:
    return SimpleNamespace(online_models=models or {}, online_model_specs=specs or {})


def test_the_builtin_specs():
    assert list(BUILTIN) == ["logreg", "softmax", "hat", "arf", "naive_bayes", "last_label"]
    assert all(spec.kind == name and spec.params == {} and spec.seed == 42 for name, spec in BUILTIN.items())
    assert [name for name, spec in BUILTIN.items() if spec.scaled] == ["logreg", "softmax"]


def test_what_the_builtin_specs_build():
    logreg = build(BUILTIN["logreg"])
    assert isinstance(logreg, compose.Pipeline)
    features, ovr = logreg.steps.values()
    numeric, text = features.transformers.values()
    assert [type(s) for s in numeric.steps.values()] == [compose.SelectType, preprocessing.StandardScaler]
    assert [type(s) for s in text.steps.values()] == [compose.SelectType, preprocessing.OneHotEncoder]
    assert isinstance(ovr, multiclass.OneVsRestClassifier)
    assert isinstance(ovr.classifier, linear_model.LogisticRegression)
    softmax = build(BUILTIN["softmax"])
    assert [type(s) for s in softmax.steps.values()] == [compose.TransformerUnion,
                                                         linear_model.SoftmaxRegression]
    hat = build(BUILTIN["hat"])
    assert isinstance(hat, tree.HoeffdingAdaptiveTreeClassifier) and hat.seed == 42
    arf = build(BUILTIN["arf"])
    assert isinstance(arf, forest.ARFClassifier) and arf.n_models == 10 and arf.seed == 42
    assert isinstance(build(BUILTIN["naive_bayes"]), naive_bayes.GaussianNB)
    assert isinstance(build(BUILTIN["last_label"]), LastLabel)


def test_params_seed_and_scale_reach_the_estimator():
    logreg = build(ModelSpec(kind="logreg", params={"l2": 0.5}, scale=False))
    assert isinstance(logreg, multiclass.OneVsRestClassifier) and logreg.classifier.l2 == 0.5
    arf = build(ModelSpec(kind="arf", params={"n_models": 3, "max_features": 2}, seed=7))
    assert (arf.n_models, arf.max_features, arf.seed) == (3, 2, 7)
    hat = build(ModelSpec(kind="hat", scale=True))
    assert isinstance(hat, compose.Pipeline)
    assert isinstance(list(hat.steps.values())[-1], tree.HoeffdingAdaptiveTreeClassifier)
    assert build(ModelSpec(kind="hat", seed=None)).seed is None


def test_a_spec_is_frozen_and_strict():
    spec = ModelSpec(kind="hat")
    with pytest.raises(pydantic.ValidationError):
        spec.seed = 1
    with pytest.raises(pydantic.ValidationError, match="param"):
        ModelSpec(kind="hat", param={"grace_period": 10})
    with pytest.raises(pydantic.ValidationError, match="seed"):
        ModelSpec(kind="arf", params={"seed": 1})
    with pytest.raises(pydantic.ValidationError, match="scale"):
        ModelSpec(kind="last_label", scale=True)
    with pytest.raises(pydantic.ValidationError, match="kind"):
        ModelSpec(kind="svm")


def test_resolve_builtin_and_custom_names():
    extra = {"arf20": {"kind": "arf", "params": {"n_models": 20}},
             "lr-fast": {"kind": "logreg", "params": {"l2": 0.01}}}
    assert resolve("hat", extra) is BUILTIN["hat"]
    assert resolve("arf20", extra) == ModelSpec(kind="arf", params={"n_models": 20})
    assert build(resolve("arf20", extra)).n_models == 20
    assert resolve("lr-fast", extra).scaled


def test_an_unknown_name_names_the_setting_the_name_and_the_known_names():
    with pytest.raises(ConfigurationError) as info:
        resolve("forest", {"arf20": {"kind": "arf"}}, model="churn")
    message = str(info.value)
    assert "setting online_models" in message and "'churn'" in message and "'forest'" in message
    assert "logreg, softmax, hat, arf, naive_bayes, last_label, arf20" in message
    assert "online_model_specs" in message and "\n" not in message


@pytest.mark.parametrize("fields, hint", [
    ({"kind": "svm"}, "kind"),
    ({"params": {}}, "kind"),
    ({"kind": "hat", "parms": {}}, "parms"),
    ({"kind": "arf", "params": {"seed": 3}}, "seed"),
    ({"kind": "hat", "seed": "abc"}, "seed"),
    ({"kind": "last_label", "scale": True}, "scale"),
    ("arf", "object"),
])
def test_an_invalid_custom_spec_names_the_setting_and_the_name(fields, hint):
    with pytest.raises(ConfigurationError) as info:
        resolve("mine", {"mine": fields})
    message = str(info.value)
    assert message.startswith("setting online_model_specs: spec 'mine'") and hint in message
    assert "\n" not in message


@pytest.mark.parametrize("fields", [
    {"kind": "naive_bayes", "params": {"var_smoothing": 1e-9}},     # unknown argument
    {"kind": "last_label", "params": {"window": 3}},                 # LastLabel takes none
    {"kind": "logreg", "params": {"l2": "strong"}},                  # wrong type, seen when learning
    {"kind": "softmax", "params": {"optimizer": "adam"}},            # a name, not an optimizer
    {"kind": "hat", "params": {"grace_period": "x"}},                # wrong type, seen when splitting
    {"kind": "arf", "params": {"max_features": "bogus"}},            # wrong value, seen when learning
    {"kind": "arf", "params": {"n_models": 0}},                      # builds, but predicts nothing
])
def test_invalid_estimator_params_fail_at_resolve_time(fields):
    with pytest.raises(ConfigurationError) as info:
        resolve("mine", {"mine": fields})
    message = str(info.value)
    assert message.startswith("setting online_model_specs: spec 'mine'") and fields["kind"] in message
    assert "\n" not in message


def test_validate_returns_a_good_spec_unchanged():
    spec = ModelSpec(kind="hat", params={"grace_period": 5, "max_depth": 3})
    assert validate(spec) is spec
    assert all(validate(spec, name) is spec for name, spec in BUILTIN.items())


@pytest.mark.parametrize("name", ["logreg", "arf"])
def test_a_custom_spec_cannot_shadow_a_builtin_name(name):
    with pytest.raises(ConfigurationError, match=f"online_model_specs: '{name}' is a built-in"):
        resolve(name, {name: {"kind": "hat"}})


@pytest.mark.parametrize("name", ["", "my model", "-arf", "arf/20"])
def test_a_custom_spec_name_is_a_plain_word(name):
    with pytest.raises(ConfigurationError, match="online_model_specs: spec name"):
        resolve(name, {name: {"kind": "hat"}})


def test_check_settings_resolves_every_model_in_order():
    resolved = check_settings(settings(
        {"churn": ["arf20", "logreg"], "fraud": ["hat"], "idle": []},
        {"arf20": {"kind": "arf", "params": {"n_models": 20}}}))
    assert list(resolved) == ["churn", "fraud", "idle"]
    assert resolved["churn"] == [("arf20", ModelSpec(kind="arf", params={"n_models": 20})),
                                 ("logreg", BUILTIN["logreg"])]
    assert resolved["fraud"] == [("hat", BUILTIN["hat"])] and resolved["idle"] == []
    assert check_settings(settings()) == {}


def test_check_settings_reads_the_real_settings(monkeypatch):
    monkeypatch.setenv("FEEDBACK_LOOP_ONLINE_MODELS", '{"churn": ["logreg", "arf5"]}')
    monkeypatch.setenv("FEEDBACK_LOOP_ONLINE_MODEL_SPECS",
                       '{"arf5": {"kind": "arf", "params": {"n_models": 5}}}')
    resolved = check_settings(Settings())
    assert [name for name, _ in resolved["churn"]] == ["logreg", "arf5"]
    assert build(resolved["churn"][1][1]).n_models == 5


def test_check_settings_rejects_unknown_names_with_the_model():
    with pytest.raises(ConfigurationError) as info:
        check_settings(settings({"churn": ["logreg", "hta"]}))
    message = str(info.value)
    assert message.startswith("setting online_models: model 'churn' names unknown spec 'hta'")
    assert "known specs: logreg, softmax, hat, arf, naive_bayes, last_label" in message


def test_check_settings_rejects_duplicates():
    with pytest.raises(ConfigurationError, match="online_models: model 'churn' names spec 'hat' twice"):
        check_settings(settings({"churn": ["hat", "logreg", "hat"]}))


def test_check_settings_rejects_a_string_instead_of_a_list():
    with pytest.raises(ConfigurationError, match="online_models: model 'churn' must map to a list"):
        check_settings(settings({"churn": "logreg"}))


def test_check_settings_validates_unused_custom_specs_too():
    with pytest.raises(ConfigurationError, match="online_model_specs: spec 'spare'"):
        check_settings(settings({"churn": ["logreg"]}, {"spare": {"kind": "hat", "params": {"depth": 3}}}))
