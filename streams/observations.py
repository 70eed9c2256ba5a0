"""Compact observations for the drift monitor, on the internal ``monitor-input`` topic.

The join agent owns partitions by ``prediction_id``; drift detection needs every observation of
one model version in one place and in order. So the join publishes, per new prediction and per
outcome revision, a small JSON record keyed by model version (``model`` + US + ``version``), and
the monitor agent consumes that topic.

Examples
--------
>>> key, value = outcome_observation("p-1", "m", "1", 10.0, 20.0, True, 0.8, 1)
>>> key
b'm\\x1f1'
>>> decode(value)["ok"]
True
"""

from __future__ import annotations

from typing import Any

import orjson

SEPARATOR = "\x1f"


def monitor_key(model: str, version: str) -> bytes:
    return f"{model}{SEPARATOR}{version}".encode()


def prediction_observation(prediction_id: str, model: str, version: str, predicted_at: float,
                           features: dict[str, Any], prediction: Any, confidence: float | None) -> tuple[bytes, bytes]:
    """A new prediction: its features, predicted value and confidence."""
    return monitor_key(model, version), orjson.dumps(
        {"k": "p", "m": model, "v": version, "id": prediction_id, "t": predicted_at, "x": features,
         "y": prediction, "c": confidence})


def outcome_observation(prediction_id: str, model: str, version: str, predicted_at: float,
                        labeled_at: float, correct: bool | None, confidence: float | None,
                        revision: int) -> tuple[bytes, bytes]:
    """An outcome revision: whether the prediction was right, and the confidence it had."""
    return monitor_key(model, version), orjson.dumps(
        {"k": "o", "m": model, "v": version, "id": prediction_id, "t": labeled_at, "pt": predicted_at,
         "ok": correct, "c": confidence, "r": revision})


def decode(raw: bytes) -> dict[str, Any]:
    return orjson.loads(raw)
