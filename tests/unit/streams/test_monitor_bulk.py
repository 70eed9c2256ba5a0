"""A run of predictions taken a detector at a time gives the alerts and state of one by one."""

from __future__ import annotations

import random
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feedback_loop.routing.router import RoutingConfig
from feedback_loop.signing import Signer
from streams.monitor import ModelMonitor, MonitorConfig
from streams.monitor_state import MonitorPartition
from streams.observations import pack
from streams.partition import Emit, Record

SIGNER = Signer(b"k" * 32)
CONFIG = MonitorConfig(reference_size=40, window_size=20, estimate_window=15, cooldown=0.0, resolve_samples=30)


def _observations(seed: int, n: int, shift_at: int, outcomes: bool, malformed: bool = False) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(n):
        shifted = i >= shift_at
        x: dict[str, Any] = {"f": rng.gauss(3.0 if shifted else 0.0, 1.0), "g": rng.choice("uv" if not shifted else "w"),
                             "n": rng.randint(0, 5)}
        if rng.random() < 0.1:
            x["f"] = rng.choice([None, "text", 7])
        if rng.random() < 0.05:
            del x["g"]
        c = None if rng.random() < 0.1 else round(rng.uniform(0.5, 0.7 if shifted else 1.0), 3)
        y = rng.choice(["a", "b"] if not shifted else ["b"])
        out.append({"k": "p", "m": "m", "v": "1", "id": f"p{i}", "t": 1_700_000_000.0 + i, "x": x, "y": y, "c": c,
                    "s": None if c is None else {y: c, "z": round(1 - c, 3)}})
        if malformed and rng.random() < 0.02:
            out[-1].update(rng.choice([{"x": [1, 2]}, {"c": 1.5}, {"s": {"a": "b"}}, {"t": None}]))
        if outcomes and rng.random() < 0.3 and i:
            j = rng.randrange(i)
            out.append({"k": "o", "m": "m", "v": "1", "id": f"p{j}", "t": 1_700_000_000.0 + i, "pt": 1_700_000_000.0 + j,
                        "ok": rng.random() < 0.5, "c": 0.8, "r": 1, "l": "a", "src": "label", "y": "a", "lf": True})
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10**6), st.integers(1, 200), st.integers(0, 200), st.lists(st.integers(1, 60), max_size=8))
def test_monitor_takes_a_run_as_one_by_one(seed: int, n: int, shift_at: int, cuts: list[int]) -> None:
    run = _observations(seed, n, shift_at, outcomes=False)
    single, bulk = ModelMonitor("m", "1", CONFIG, "e"), ModelMonitor("m", "1", CONFIG, "e")
    expected = {i: alerts for i, obs in enumerate(run) if (alerts := single.observe(obs))}
    got: dict[int, list] = {}
    start = 0
    for cut in [*cuts, n]:  # in pieces, as messages bring them
        end = min(n, start + cut) if cut != n else n
        got.update({start + i: a for i, a in bulk.observe_predictions(run[start:end]).items()})
        start = end
    assert got == expected
    assert orjson.loads(bulk.to_bytes(SIGNER)) == orjson.loads(single.to_bytes(SIGNER))
    assert bulk.references_bytes() == single.references_bytes()


def _emits(part: MonitorPartition, records: list[Record]) -> list[tuple[str, bytes | None, Any]]:
    out = []
    for e in part.apply_all(records):
        body = orjson.loads(e.value)
        if e.kind == "dead-letters":  # where it was read differs: packed or alone
            body = (body["payload"], body["reason"].split(": ", 1)[1])
        else:
            body.pop("at", None)
        out.append((e.kind, e.key, body))
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10**6), st.integers(1, 150), st.integers(0, 150))
def test_packed_or_one_by_one_the_partition_emits_the_same(seed: int, n: int, shift_at: int) -> None:
    observations = _observations(seed, n, shift_at, outcomes=True, malformed=True)
    routing = RoutingConfig(budget_per_hour=3600.0, burst=5.0)
    one = MonitorPartition(0, CONFIG, "e", routing)
    singles = _emits(one, [Record("monitor-input", 0, i, b"m", orjson.dumps(obs)) for i, obs in enumerate(observations)])
    packed = pack([Emit("monitor-input", b"m", orjson.dumps(obs)) for obs in observations])
    many = MonitorPartition(0, CONFIG, "e", routing)
    together = _emits(many, [Record("monitor-input", 0, i, e.key, e.value) for i, e in enumerate(packed)])
    assert together == singles
    a, b = one.changes(SIGNER), many.changes(SIGNER)
    assert {k: orjson.loads(v) for k, v in a.monitors.items()} == {k: orjson.loads(v) for k, v in b.monitors.items()}
    assert a.references == b.references and a.estimates == b.estimates
    assert {k: SIGNER.loads(v).gate.__dict__ for k, v in a.routers.items()} == {
        k: SIGNER.loads(v).gate.__dict__ for k, v in b.routers.items()}
