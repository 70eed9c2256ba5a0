"""Routing a run of predictions at once equals routing them one by one, in every configuration."""

from __future__ import annotations

import pickle
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feedback_loop.routing.router import Router, RoutingConfig

T0 = 1_700_000_000.0


@st.composite
def runs(draw: Any) -> list[dict[str, Any]]:
    out = []
    t = 0.0
    for i in range(draw(st.integers(1, 120))):
        t += draw(st.sampled_from([0.0, 1.0, 30.0, 600.0, -5.0]))
        c = draw(st.one_of(st.none(), st.floats(0, 1)))
        obs: dict[str, Any] = {"k": "p", "m": "m", "v": "1", "id": f"p{i}", "t": T0 + t, "x": {"f": i % 3},
                               "y": draw(st.sampled_from(["a", "b", 1, True, 0.5])), "c": c}
        scores = draw(st.sampled_from([None, {"a": 0.7, "b": 0.3}, {"a": 0.5, "b": 0.5}, {"a": 0.9},
                                       {"a": 0.2, "b": 0.2, "c": 0.6}, {"a": 0.0, "b": 0.0}]))
        if scores:
            obs["s"] = scores
        if draw(st.integers(0, 9)) == 0:
            obs["lab"] = True
        if draw(st.integers(0, 7)) == 0:
            obs["sh"] = {"y": draw(st.sampled_from(["a", "b"])), "c": draw(st.one_of(st.none(), st.floats(0, 1)))}
        if draw(st.integers(0, 40)) == 0:
            obs["s"] = {"a": "not a number"}  # malformed
        if draw(st.integers(0, 40)) == 0:
            del obs["id"]  # malformed, found once routed
        if draw(st.integers(0, 60)) == 0:
            obs["t"] = None  # malformed
        out.append(obs)
    return out


configs = st.sampled_from([
    RoutingConfig(budget_per_hour=60.0, burst=5.0),
    RoutingConfig(budget_per_hour=5000.0, burst=50.0),
    RoutingConfig(policies=("learned",), budget_per_hour=600.0),
    RoutingConfig(policies=("least_confidence", "margin", "entropy", "drift"), budget_per_hour=600.0,
                  drift_samples=5),
    RoutingConfig(thresholds={"learned": 0.3}, budget_per_hour=600.0),
])


def _state(router: Router) -> Any:
    g = router.gate
    return (g.tokens, list(g._recent), g._sorted, list(g._times), g.seen, g.admitted, router.routed,
            router.drift_left, pickle.dumps(router.errors))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs(), configs, st.sets(st.integers(0, 119), max_size=3), st.integers(0, 1))
def test_a_run_routes_as_its_predictions_one_by_one(run: list[dict[str, Any]], config: RoutingConfig,
                                                     alerted: set[int], warm: int) -> None:
    single, bulk = Router("m", "1", config), Router("m", "1", config)
    if warm:  # a warm error model scores with River instead of least confidence
        for r in (single, bulk):
            for i in range(120):
                r.errors.learn({"f": float(i % 3)}, "a", 0.8, "a" if i % 4 else "b")
    expected: dict[int, Any] = {}
    errors: dict[int, str] = {}
    for i, obs in enumerate(run):
        if i in alerted:
            single.on_alert()
        try:
            if requests := single.on_prediction(obs):
                expected[i] = requests
        except (ValueError, TypeError, KeyError) as exc:
            errors[i] = type(exc).__name__
    failed: dict[int, str] = {}
    got = bulk.on_predictions(run, alerted, lambda i, exc: failed.__setitem__(i, type(exc).__name__))
    assert got == expected and failed == errors
    assert _state(bulk) == _state(single)
