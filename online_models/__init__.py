"""Online River models: the :class:`OnlineModel` contract and models built from specs.

* :mod:`online_models.base`: :class:`OnlineModel`, ``learn_one`` / ``predict_one`` /
  ``predict_proba_one`` as in River;
* :mod:`online_models.specs`: :class:`ModelSpec`, the :data:`BUILTIN` specs, :func:`resolve`,
  :func:`validate`, :func:`build` and :func:`check_settings` (the settings ``online_models``
  and ``online_model_specs``);
* :mod:`online_models.baselines`: :class:`LastLabel` and :class:`Frozen`.

Examples
--------
>>> model = build(resolve("naive_bayes", {}))
>>> model.learn_one({"f": 1.0}, "UP")
>>> isinstance(model, OnlineModel), model.predict_one({"f": 1.0})
(True, 'UP')
"""

from online_models.base import OnlineModel
from online_models.baselines import Frozen, LastLabel
from online_models.specs import BUILTIN, ModelSpec, build, check_settings, resolve, validate

__all__ = [
    "BUILTIN",
    "Frozen",
    "LastLabel",
    "ModelSpec",
    "OnlineModel",
    "build",
    "check_settings",
    "resolve",
    "validate",
]
