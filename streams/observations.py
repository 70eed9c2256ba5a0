"""Compact observations for the drift monitor, on the internal ``monitor-input`` topic.

The join agent owns partitions by ``prediction_id``; drift detection, review routing and online
learning need every observation of one model in one place and in order. So the join publishes, per
new prediction and per outcome revision, a small JSON record keyed by model, and the monitor agent
consumes that topic (monitors and routers per model version, learners per model).

Examples
--------
>>> key, value = outcome_observation("p-1", "m", "1", 10.0, 20.0, True, 0.8, 1)
>>> key
b'm'
>>> decode(value)["ok"]
True
"""

from __future__ import annotations

from typing import Any

import orjson

SEPARATOR = "\x1f"


def monitor_key(model: str, version: str) -> bytes:
    """Observations are keyed by model: every version of a model, and the model's online learners,
    see its observations in one partition, in order."""
    return model.encode()


def prediction_observation(prediction_id: str, model: str, version: str, predicted_at: float,
                           features: dict[str, Any], prediction: Any, confidence: float | None,
                           scores: dict[str, float] | None = None, tags: dict[str, str] | None = None,
                           labeled: bool = False, challenger: Any = None) -> tuple[bytes, bytes]:
    """A new prediction: its features, predicted value, confidence and scores; ``labeled`` when
    its truth was already known on arrival; ``challenger`` a shadow prediction, if the producer
    sent one (``{"prediction": ..., "confidence": ...}``)."""
    obs: dict[str, Any] = {"k": "p", "m": model, "v": version, "id": prediction_id, "t": predicted_at,
                           "x": features, "y": prediction, "c": confidence}
    if scores:
        obs["s"] = scores
    if tags:
        obs["tg"] = tags
    if labeled:
        obs["lab"] = True
    if isinstance(challenger, dict) and "prediction" in challenger:
        obs["sh"] = {"y": challenger["prediction"], "c": challenger.get("confidence")}
    return monitor_key(model, version), orjson.dumps(obs)


def outcome_observation(prediction_id: str, model: str, version: str, predicted_at: float,
                        labeled_at: float, correct: bool | None, confidence: float | None,
                        revision: int, label: Any = None, source: str = "label",
                        features: dict[str, Any] | None = None, prediction: Any = None,
                        scores: dict[str, float] | None = None,
                        first_label: bool = False) -> tuple[bytes, bytes]:
    """An outcome revision: whether the prediction was right, the confidence it had, the true
    class (``label``, canonical text; ``None`` when unknown) and its source, the prediction's
    features, and ``first_label`` when this revision is the first to know the true class."""
    obs: dict[str, Any] = {"k": "o", "m": model, "v": version, "id": prediction_id, "t": labeled_at,
                           "pt": predicted_at, "ok": correct, "c": confidence, "r": revision,
                           "l": label, "src": source, "y": prediction}
    if features:
        obs["x"] = features
    if scores:
        obs["s"] = scores
    if first_label:
        obs["lf"] = True
    return monitor_key(model, version), orjson.dumps(obs)


def decode(raw: bytes) -> dict[str, Any]:
    return orjson.loads(raw)
