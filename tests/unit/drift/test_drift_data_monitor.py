"""Tests of feedback_loop.drift.data.FeatureDriftMonitor."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest

from feedback_loop.drift.data import MIN_COUNT, FeatureDriftMonitor
from feedback_loop.drift.result import DriftResult
from feedback_loop.errors import ConfigurationError

CATS = ["a", "b", "c", "d"]
P_CATS = [0.4, 0.3, 0.2, 0.1]


def rows(seed: int, count: int, shift_at: int | None = None, shift: float = 0.5) -> Iterator[dict[str, Any]]:
    """3 normal features, 1 discrete (Poisson) one, 1 categorical; x0's mean moves at ``shift_at``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count, 3))
    k = rng.poisson(3.0, size=count)
    c = rng.choice(len(CATS), p=P_CATS, size=count)
    for i in range(count):
        x0 = float(x[i, 0]) + (shift if shift_at is not None and i >= shift_at else 0.0)
        yield {"x0": x0, "x1": float(x[i, 1]), "x2": float(x[i, 2]), "k": int(k[i]), "c": CATS[c[i]]}


def feed(mon: FeatureDriftMonitor, stream: Iterator[dict[str, Any]]) -> list[DriftResult]:
    return [r for x in stream for r in mon.update(x)]


def window_alarms(results: list[DriftResult]) -> dict[int, bool]:
    alarms: dict[int, bool] = {}
    for r in results:
        alarms[r.window_index] = alarms.get(r.window_index, False) or r.drifted
    return alarms


@pytest.mark.parametrize(
    ("numeric_tests", "categorical_tests"), [(("ks",), ("chi2",)), (("ks", "psi", "wasserstein"), ("chi2", "js"))]
)
def test_stationary_false_alarm_rate_within_configured(
    numeric_tests: tuple[str, ...], categorical_tests: tuple[str, ...]
) -> None:
    """Windows of unchanged data alarm (any feature, any test) at most at the configured rate."""
    rate, windows = 0.1, 8
    seeds = 120 if numeric_tests == ("ks",) else 70
    per_seed = []
    for seed in range(seeds):
        mon = FeatureDriftMonitor(
            reference_size=200,
            window_size=100,
            false_alarm_rate=rate,
            numeric_tests=numeric_tests,
            categorical_tests=categorical_tests,
            seed=seed,
        )
        alarms = window_alarms(feed(mon, rows(seed, 200 + 100 * windows)))
        assert len(alarms) == windows
        per_seed.append(sum(alarms.values()) / windows)
    measured = float(np.mean(per_seed))
    se = float(np.std(per_seed)) / math.sqrt(seeds)  # references vary: seeds are the independent units
    assert measured <= rate + 2.5 * se, (measured, se)


def test_mean_shift_detected_in_first_full_window() -> None:
    for seed in range(5):
        mon = FeatureDriftMonitor(seed=seed)
        results = feed(mon, rows(seed, 1000 + 1500, shift_at=1000 + 500))
        drifted = {(r.window_index, r.feature) for r in results if r.drifted}
        assert (1, "x0") in drifted and (2, "x0") in drifted
        assert not any(f == "x0" for w, f in drifted if w == 0)


def test_categorical_shift_and_new_category_detected() -> None:
    rng = np.random.default_rng(0)
    mon = FeatureDriftMonitor(reference_size=1000, window_size=500)
    for c in rng.choice(CATS, p=P_CATS, size=1000):
        mon.update({"c": str(c)})
    shifted = [str(c) for c in rng.choice(CATS, p=[0.3, 0.3, 0.2, 0.2], size=500)]
    (res,) = [r for c in shifted for r in mon.update({"c": c})]
    assert res.drifted and res.test == "chi2" and res.statistic > res.threshold
    unseen = [str(c) for c in rng.choice(CATS, p=P_CATS, size=470)] + ["zz"] * 30
    (res,) = [r for c in unseen for r in mon.update({"c": c})]
    assert res.drifted and res.window_index == 1 and res.extra["js"] > 0


def test_missing_values_and_new_features_are_tolerated() -> None:
    rng = np.random.default_rng(1)
    ref = [
        {"x": float(v), "s": "ab"[i % 2], "few": 1.0 if i < MIN_COUNT - 1 else None}
        for i, v in enumerate(rng.normal(size=300))
    ]
    mon = FeatureDriftMonitor.with_reference(ref, window_size=100, features=None)
    assert mon.features == {"s": "categorical", "x": "numeric"}  # "few" has too few values
    window: list[dict[str, Any]] = []
    for i, v in enumerate(rng.normal(size=100)):
        row: dict[str, Any] = {"new_feature": 3.0}
        if i % 4 == 0:
            row["x"] = None
        elif i % 4 == 1:
            row["x"] = float("nan") if i % 8 == 1 else "not a number"
        else:
            row["x"] = float(v)
        if i < 5:
            row["s"] = "a"  # only 5 values: below MIN_COUNT, not judged
        window.append(row)
    results = feed(mon, iter(window))
    assert [(r.feature, r.window_size) for r in results] == [("x", 50)]
    (res,) = results
    assert res.reference_size == 300 and not res.drifted
    # thresholds for the partial count are calibrated for it, deterministically
    again = FeatureDriftMonitor.with_reference(ref, window_size=100)
    assert feed(again, iter(window)) == results
    assert res.threshold != mon.thresholds["x"]["ks"]


def test_bool_and_forced_categorical_features() -> None:
    ref = [{"flag": i % 3 == 0, "code": i % 4, "v": i % 7} for i in range(120)]
    mon = FeatureDriftMonitor.with_reference(ref, window_size=40, categorical_features=["code"])
    assert mon.features == {"code": "categorical", "flag": "categorical", "v": "numeric"}
    out = feed(mon, iter([{"flag": True, "code": 9, "v": 3} for _ in range(40)]))
    by_feature = {r.feature: r for r in out}
    assert by_feature["flag"].drifted and by_feature["code"].drifted and by_feature["v"].drifted


def test_features_filter() -> None:
    mon = FeatureDriftMonitor(reference_size=100, window_size=50, features=["x1", "c"])
    feed(mon, rows(0, 100))
    assert mon.features == {"c": "categorical", "x1": "numeric"}
    assert mon.alpha == pytest.approx(0.9 * 0.01 / 2)


def snapshot(mon: FeatureDriftMonitor) -> FeatureDriftMonitor:
    return FeatureDriftMonitor.from_dict(orjson.loads(orjson.dumps(mon.to_dict())))


def test_state_round_trip_resumes_identically() -> None:
    settings = {
        "reference_size": 300,
        "window_size": 100,
        "numeric_tests": ("ks", "psi"),
        "categorical_tests": ("chi2", "js"),
        "seed": 3,
    }
    stream = list(rows(5, 300 + 650, shift_at=600))
    for i, x in enumerate(stream):  # some missing values, so partial-count thresholds are exercised
        if i % 37 == 0:
            x["x1"] = None
    straight = FeatureDriftMonitor(**settings)
    expected = feed(straight, iter(stream))
    assert len({r.window_index for r in expected}) == 6
    resumed = FeatureDriftMonitor(**settings)
    got: list[DriftResult] = []
    for i, x in enumerate(stream):
        if i in (0, 150, 299, 300, 345, 400, 777):
            resumed = snapshot(resumed)
        got.extend(resumed.update(x))
    assert got == expected
    assert resumed.to_dict() == straight.to_dict()
    assert orjson.loads(orjson.dumps([r.to_dict() for r in got])) == [r.to_dict() for r in expected]
    assert [DriftResult.from_dict(r.to_dict()) for r in got] == got


def test_pinned_reference_equals_first_rows() -> None:
    stream = list(rows(2, 1300))
    first = FeatureDriftMonitor(reference_size=800, window_size=250)
    pinned = FeatureDriftMonitor.with_reference(stream[:800], window_size=250)
    assert pinned.reference_ready and not first.reference_ready
    assert feed(first, iter(stream)) == feed(pinned, iter(stream[800:]))
    assert first.thresholds == pinned.thresholds and first.to_dict() == pinned.to_dict()


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"window_size": 9}, "window_size"),
        ({"window_size": 10.0}, "window_size"),
        ({"reference_size": 400, "window_size": 500}, "reference_size"),
        ({"false_alarm_rate": 0.0}, "false_alarm_rate"),
        ({"false_alarm_rate": 0.5}, "false_alarm_rate"),
        ({"false_alarm_rate": -0.1}, "false_alarm_rate"),
        ({"numeric_tests": ("ks", "anderson")}, "numeric_tests"),
        ({"numeric_tests": ("chi2",)}, "numeric_tests"),
        ({"categorical_tests": ("psi",)}, "categorical_tests"),
        ({"numeric_tests": (), "categorical_tests": ()}, "numeric_tests"),
        ({"bootstrap": 0}, "bootstrap"),
        ({"seed": -1}, "seed"),
        ({"features": "age"}, "features"),
        ({"categorical_features": "plan"}, "categorical_features"),
    ],
)
def test_bad_settings_name_the_setting(kwargs: dict[str, Any], setting: str) -> None:
    with pytest.raises(ConfigurationError, match=f"^{setting}"):
        FeatureDriftMonitor(**kwargs)


def test_pinned_reference_too_small_names_reference_size() -> None:
    with pytest.raises(ConfigurationError, match="^reference_size"):
        FeatureDriftMonitor.with_reference([{"x": 1.0}] * 20, window_size=50)


def test_bad_state_version() -> None:
    state = FeatureDriftMonitor().to_dict()
    state["version"] = 99
    with pytest.raises(ConfigurationError, match="version"):
        FeatureDriftMonitor.from_dict(state)
