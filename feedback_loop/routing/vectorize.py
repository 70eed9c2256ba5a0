"""Turn a prediction's features into the numeric dict River's linear models learn from.

Numbers pass through, booleans become 0/1, text becomes a one-hot ``name=value`` entry, and
anything else (``None``, lists, nested objects, NaN) is left out, so unseen or missing features
never stop a model.

>>> vectorize({"age": 42, "plan": "pro", "vip": True, "tags": [1], "x": None, "y": float("nan")})
{'age': 42.0, 'plan=pro': 1.0, 'vip': 1.0}
"""

from __future__ import annotations

import math
from typing import Any, Mapping


def vectorize(features: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in features.items():
        if isinstance(value, bool):
            out[name] = 1.0 if value else 0.0
        elif isinstance(value, (int, float)):
            if math.isfinite(value):
                out[name] = float(value)
        elif isinstance(value, str):
            out[f"{name}={value}"] = 1.0
    return out
