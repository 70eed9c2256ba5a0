"""Online models built from a spec named in the settings.

A :class:`ModelSpec` says which estimator (``kind``), its keyword arguments (``params``), its
random seed and whether a :class:`~river.preprocessing.StandardScaler` goes in front (numeric
features scaled, text features one-hot encoded).
:data:`BUILTIN` holds one spec per kind; the setting ``online_model_specs`` adds more names, and
``online_models`` says which spec names learn online for each model. :func:`check_settings`
resolves and validates them all once, at startup, so a typo fails there with a one-line
:class:`~feedback_loop.errors.ConfigurationError` instead of in a worker.

Examples
--------
>>> model = build(BUILTIN["logreg"])
>>> for i in range(40):
...     model.learn_one({"f": float(i % 2)}, "UP" if i % 2 else "DOWN")
>>> model.predict_one({"f": 1.0}), model.predict_one({"f": 0.0})
('UP', 'DOWN')
>>> resolve("arf20", {"arf20": {"kind": "arf", "params": {"n_models": 20}}})
ModelSpec(kind='arf', params={'n_models': 20}, seed=42, scale=None)
"""

from __future__ import annotations

import numbers
import random
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from river import compose, forest, linear_model, multiclass, naive_bayes, preprocessing, tree

from feedback_loop.errors import ConfigurationError
from online_models.base import OnlineModel
from online_models.baselines import LastLabel

if TYPE_CHECKING:
    from feedback_loop.settings import Settings

Kind = Literal["logreg", "softmax", "hat", "arf", "naive_bayes", "last_label"]

#: Kinds whose estimator takes a ``seed``.
SEEDED_KINDS = frozenset({"hat", "arf"})
#: Kinds scaled by default (``scale=None``).
SCALED_KINDS = frozenset({"logreg", "softmax"})

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_VALIDATION_SAMPLES = 24


class ModelSpec(BaseModel):
    """How to build one online model.

    Parameters
    ----------
    kind : {"logreg", "softmax", "hat", "arf", "naive_bayes", "last_label"}
        ``logreg``: one-vs-rest :class:`~river.linear_model.LogisticRegression` (any class
        labels, two or more classes); ``softmax``: :class:`~river.linear_model.SoftmaxRegression`;
        ``hat``: :class:`~river.tree.HoeffdingAdaptiveTreeClassifier`; ``arf``:
        :class:`~river.forest.ARFClassifier` (10 trees unless ``params`` says otherwise);
        ``naive_bayes``: :class:`~river.naive_bayes.GaussianNB`; ``last_label``:
        :class:`~online_models.baselines.LastLabel`.
    params : dict
        Keyword arguments of the main estimator (not of the scaler). ``seed`` is not one of
        them: use the ``seed`` field.
    seed : int or None
        Seed of the kinds that take one (``hat``, ``arf``); ignored by the others. ``None``
        means a different model each time.
    scale : bool or None
        Put a :class:`~river.preprocessing.StandardScaler` in front. ``None``: yes for
        ``logreg`` and ``softmax``, no otherwise (see :attr:`scaled`). ``last_label`` ignores
        the features and cannot be scaled.

    Examples
    --------
    >>> spec = ModelSpec(kind="hat", params={"grace_period": 50})
    >>> spec.seed, spec.scaled
    (42, False)
    >>> ModelSpec(kind="softmax").scaled
    True
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Kind
    params: dict[str, Any] = {}
    seed: int | None = 42
    scale: bool | None = None

    @field_validator("params")
    @classmethod
    def _no_seed_in_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        if "seed" in params:
            raise ValueError("put the seed in the spec's 'seed' field, not in 'params'")
        return params

    @model_validator(mode="after")
    def _last_label_is_not_scaled(self) -> ModelSpec:
        if self.kind == "last_label" and self.scale:
            raise ValueError("kind 'last_label' ignores the features: 'scale' cannot be true")
        return self

    @property
    def scaled(self) -> bool:
        """Whether a StandardScaler goes in front (``scale``, or the kind's default)."""
        return self.kind in SCALED_KINDS if self.scale is None else self.scale


#: The built-in spec names: one per kind, with River's defaults (ARF: 10 trees).
BUILTIN: dict[str, ModelSpec] = {
    "logreg": ModelSpec(kind="logreg"),
    "softmax": ModelSpec(kind="softmax"),
    "hat": ModelSpec(kind="hat"),
    "arf": ModelSpec(kind="arf"),
    "naive_bayes": ModelSpec(kind="naive_bayes"),
    "last_label": ModelSpec(kind="last_label"),
}


def _logreg(params: dict[str, Any], seed: int | None) -> Any:
    return multiclass.OneVsRestClassifier(linear_model.LogisticRegression(**params))


def _softmax(params: dict[str, Any], seed: int | None) -> Any:
    return linear_model.SoftmaxRegression(**params)


class _Classes(dict):
    """An insertion-ordered set of class labels, for River's trees.

    River's trees record the classes in a ``set``; :class:`~river.tree.HoeffdingAdaptiveTreeClassifier`
    sums its probabilities in that set's order, which changes with the string hash seed and
    after unpickling, and so do the last bits of its probabilities. A dict's order does not.
    """

    def add(self, label: Any) -> None:
        self[label] = None


def _hat(params: dict[str, Any], seed: int | None) -> Any:
    model = tree.HoeffdingAdaptiveTreeClassifier(**params, seed=seed)
    model.classes = _Classes()
    return model


def _arf(params: dict[str, Any], seed: int | None) -> Any:
    return forest.ARFClassifier(**{"n_models": 10, **params}, seed=seed)


def _naive_bayes(params: dict[str, Any], seed: int | None) -> Any:
    return naive_bayes.GaussianNB(**params)


def _last_label(params: dict[str, Any], seed: int | None) -> Any:
    return LastLabel(**params)


_ESTIMATORS: dict[str, Callable[[dict[str, Any], int | None], Any]] = {
    "logreg": _logreg,
    "softmax": _softmax,
    "hat": _hat,
    "arf": _arf,
    "naive_bayes": _naive_bayes,
    "last_label": _last_label,
}


def build(spec: ModelSpec) -> OnlineModel:
    """A fresh, untrained model for ``spec``.

    Parameters
    ----------
    spec : ModelSpec
        What to build.

    Returns
    -------
    OnlineModel
        A River estimator or pipeline (or a baseline); two builds of one seeded spec learn
        and predict identically.

    Examples
    --------
    >>> [type(step).__name__ for step in build(BUILTIN["softmax"]).steps.values()]
    ['TransformerUnion', 'SoftmaxRegression']
    >>> model = build(BUILTIN["logreg"])
    >>> for i in range(20):
    ...     model.learn_one({"tenure": float(i), "plan": "pro" if i % 2 else "free"}, i % 2 == 0)
    >>> model.predict_one({"tenure": 3.0, "plan": "team"}) in (True, False)
    True
    >>> model = build(ModelSpec(kind="hat", params={"grace_period": 20}, seed=7))
    >>> model.grace_period, model.seed
    (20, 7)
    """
    estimator = _ESTIMATORS[spec.kind](dict(spec.params), spec.seed)
    if spec.scaled:
        # numbers scaled, text one-hot encoded (a StandardScaler alone fails on text features)
        numeric = compose.SelectType(numbers.Number) | preprocessing.StandardScaler()
        text = compose.SelectType(str) | preprocessing.OneHotEncoder()
        return (numeric + text) | estimator
    return estimator


def _smoke_stream() -> list[tuple[dict[str, float], str]]:
    rng = random.Random(0)
    samples = []
    for _ in range(_VALIDATION_SAMPLES):
        x = {"a": rng.gauss(0.0, 1.0), "b": rng.gauss(0.0, 1.0), "c": rng.gauss(0.0, 1.0)}
        samples.append((x, "UP" if x["a"] + x["b"] > 0 else "DOWN"))
    return samples


def validate(spec: ModelSpec, name: str = "?") -> ModelSpec:
    """Check that ``spec`` builds a model that learns and predicts; return it unchanged.

    River checks most estimator arguments only when the model first learns, so the model is
    built once and fed a few synthetic samples of two classes.

    Parameters
    ----------
    spec : ModelSpec
        The spec to try.
    name : str
        The spec's name, for the error message.

    Returns
    -------
    ModelSpec
        ``spec``.

    Raises
    ------
    ConfigurationError
        The estimator refused its ``params`` (unknown argument, wrong type or value), or the
        model predicts nothing after learning.

    Examples
    --------
    >>> validate(ModelSpec(kind="logreg", params={"l2": 0.01}))
    ModelSpec(kind='logreg', params={'l2': 0.01}, seed=42, scale=None)
    >>> validate(ModelSpec(kind="naive_bayes", params={"var_smoothing": 1e-9}), "nb")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    feedback_loop.errors.ConfigurationError: setting online_model_specs: spec 'nb' (kind 'naive_bayes') \
has invalid params {'var_smoothing': 1e-09}: TypeError: ...
    """
    samples = _smoke_stream()
    try:
        model = build(spec)
        for x, y in samples:
            model.predict_proba_one(x)
            model.learn_one(x, y)
        predicted = model.predict_one(samples[0][0])
    except (TypeError, ValueError, AttributeError, ArithmeticError, KeyError) as exc:
        raise ConfigurationError(
            f"setting online_model_specs: spec {name!r} (kind {spec.kind!r}) has invalid params "
            f"{spec.params!r}: {type(exc).__name__}: {' '.join(str(exc).split())}") from exc
    if predicted not in {"UP", "DOWN"}:
        raise ConfigurationError(
            f"setting online_model_specs: spec {name!r} (kind {spec.kind!r}) with params "
            f"{spec.params!r} predicts nothing after learning {len(samples)} samples")
    return spec


def _known(extra: Mapping[str, Any]) -> str:
    return ", ".join([*BUILTIN, *sorted(n for n in extra if n not in BUILTIN)])


def resolve(name: str, extra: Mapping[str, Mapping[str, Any]], *, model: str | None = None) -> ModelSpec:
    """The spec called ``name``: a built-in one or one of ``extra``.

    Parameters
    ----------
    name : str
        A name of :data:`BUILTIN` or a key of ``extra``.
    extra : Mapping
        The setting ``online_model_specs``: spec name to the fields of a :class:`ModelSpec`.
        Its names must not reuse a built-in name.
    model : str, optional
        The model whose setting named ``name``, for the error message.

    Returns
    -------
    ModelSpec
        The spec; one from ``extra`` is validated (:func:`validate`).

    Raises
    ------
    ConfigurationError
        Unknown name, an ``extra`` entry that shadows a built-in name, is not a valid
        :class:`ModelSpec`, or whose params the estimator refuses.

    Examples
    --------
    >>> resolve("hat", {})
    ModelSpec(kind='hat', params={}, seed=42, scale=None)
    >>> resolve("lr", {"lr": {"kind": "logreg", "params": {"l2": 0.1}, "scale": False}}).scaled
    False
    >>> resolve("forest", {"arf20": {"kind": "arf"}}, model="churn")
    Traceback (most recent call last):
    ...
    feedback_loop.errors.ConfigurationError: setting online_models: model 'churn' names unknown spec \
'forest'; known specs: logreg, softmax, hat, arf, naive_bayes, last_label, arf20 (more in setting \
online_model_specs)
    """
    if name in BUILTIN:
        if name in extra:
            raise ConfigurationError(
                f"setting online_model_specs: {name!r} is a built-in spec name; give the custom "
                f"spec another name (built-in: {', '.join(BUILTIN)})")
        return BUILTIN[name]
    if name not in extra:
        where = f"model {model!r} names" if model is not None else "names"
        raise ConfigurationError(
            f"setting online_models: {where} unknown spec {name!r}; known specs: {_known(extra)} "
            "(more in setting online_model_specs)")
    if not _NAME.match(name):
        raise ConfigurationError(
            f"setting online_model_specs: spec name {name!r} must be letters, digits, '_', '.' "
            "or '-', starting with a letter or digit")
    fields = extra[name]
    if not isinstance(fields, Mapping):
        raise ConfigurationError(
            f"setting online_model_specs: spec {name!r} must be an object with 'kind' and "
            f"optionally 'params', 'seed', 'scale', not {fields!r}")
    try:
        spec = ModelSpec.model_validate(dict(fields))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors())
        raise ConfigurationError(
            f"setting online_model_specs: spec {name!r} is invalid: {problems} "
            f"(kinds: {', '.join(_ESTIMATORS)})") from exc
    return validate(spec, name)


def check_settings(settings: Settings) -> dict[str, list[tuple[str, ModelSpec]]]:
    """Resolve ``settings.online_models`` against ``settings.online_model_specs``, at startup.

    Every spec of ``online_model_specs`` is validated, named or not, so a broken one fails
    now rather than when somebody starts using it.

    Parameters
    ----------
    settings : Settings
        Any object with the attributes ``online_models`` (model name to a list of spec names)
        and ``online_model_specs`` (spec name to :class:`ModelSpec` fields).

    Returns
    -------
    dict
        Model name to its ``(spec name, spec)`` pairs, in the settings' order.

    Raises
    ------
    ConfigurationError
        Unknown or duplicate spec names, invalid specs or params.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> settings = SimpleNamespace(online_models={"churn": ["logreg", "tree"]},
    ...                            online_model_specs={"tree": {"kind": "hat", "seed": 1}})
    >>> check_settings(settings)["churn"]
    [('logreg', ModelSpec(kind='logreg', params={}, seed=42, scale=None)), \
('tree', ModelSpec(kind='hat', params={}, seed=1, scale=None))]
    >>> check_settings(SimpleNamespace(online_models={"churn": ["arf", "arf"]}, online_model_specs={}))
    Traceback (most recent call last):
    ...
    feedback_loop.errors.ConfigurationError: setting online_models: model 'churn' names spec 'arf' twice
    """
    extra: Mapping[str, Any] = getattr(settings, "online_model_specs", None) or {}
    models: Mapping[str, Any] = getattr(settings, "online_models", None) or {}
    specs = {name: resolve(name, extra) for name in extra}
    resolved: dict[str, list[tuple[str, ModelSpec]]] = {}
    for model, names in models.items():
        if isinstance(names, str) or not isinstance(names, (list, tuple)):
            raise ConfigurationError(
                f"setting online_models: model {model!r} must map to a list of spec names, "
                f"not {names!r}")
        pairs: list[tuple[str, ModelSpec]] = []
        for name in names:
            if any(name == seen for seen, _ in pairs):
                raise ConfigurationError(
                    f"setting online_models: model {model!r} names spec {name!r} twice")
            spec = specs[name] if name in specs else resolve(name, extra, model=model)
            pairs.append((name, spec))
        resolved[model] = pairs
    return resolved
