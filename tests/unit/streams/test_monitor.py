"""The drift monitor of one model version: alerts, dedup, resolution, cooldown, checkpoints."""

from __future__ import annotations

import math
import random

import orjson
import pytest

from feedback_loop.errors import ConfigurationError
from feedback_loop.events import DriftAlert
from feedback_loop.signing import Signer
from streams.monitor import ModelMonitor, MonitorConfig
from streams.monitor_state import MonitorPartition
from streams.partition import Record

SIGNER = Signer(b"k" * 32)


def config(**kw) -> MonitorConfig:
    base = dict(resolve_samples=500, reference_size=200, window_size=100, estimate_window=200, cooldown=3600.0)
    return MonitorConfig(**{**base, **kw})


def prediction(i: int, x: float, conf: float = 0.9, y: str = "a") -> dict:
    return {"k": "p", "m": "m", "v": "1", "id": f"p{i}", "t": float(i), "x": {"f": x, "g": "u"},
            "y": y, "c": conf}


def outcome(i: int, ok: bool, conf: float = 0.9, revision: int = 1) -> dict:
    return {"k": "o", "m": "m", "v": "1", "id": f"p{i}", "t": float(i), "pt": float(i), "ok": ok,
            "c": conf, "r": revision}


def feed_errors(monitor: ModelMonitor, rates: list[tuple[int, float]], seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    alerts, i = [], 0
    for n, rate in rates:
        for _ in range(n):
            alerts += monitor.observe(outcome(i, rng.random() >= rate))
            i += 1
    return alerts


def test_one_concept_alert_per_episode_then_resolved():
    monitor = ModelMonitor("m", "1", config(), epoch="e1")
    alerts = feed_errors(monitor, [(3000, 0.05), (3000, 0.6)])
    firing = [a for a in alerts if a["status"] == "firing"]
    assert len(firing) == 1 and firing[0]["kind"] == "concept" and firing[0]["outcomes_seen"] > 3000
    assert firing[0]["severity"] == "critical"
    resolved = [a for a in alerts if a["status"] == "resolved"]
    assert len(resolved) == 1 and resolved[0]["alert_id"] == firing[0]["alert_id"] + "-resolved"
    for alert in alerts:
        DriftAlert.model_validate(alert)  # the contract's schema


def test_alert_ids_are_stable_and_epoch_scoped():
    ids = []
    for epoch in ("e1", "e1", "e2"):
        monitor = ModelMonitor("m", "1", config(), epoch=epoch)
        ids.append([a["alert_id"] for a in feed_errors(monitor, [(3000, 0.05), (3000, 0.6)])])
    assert ids[0] == ids[1] != ids[2]


def test_cooldown_suppresses_a_new_episode():
    monitor = ModelMonitor("m", "1", config(resolve_samples=200), epoch="e")
    alerts = feed_errors(monitor, [(2000, 0.05), (1500, 0.6), (1500, 0.05)])
    assert [a["status"] for a in alerts if a["kind"] == "concept"][:2] == ["firing", "resolved"]
    assert sum(a["status"] == "firing" for a in alerts) == 1  # the drift back came within the cooldown


def test_revisions_and_regressions_do_not_feed_the_error_stream():
    monitor = ModelMonitor("m", "1", config(), epoch="e")
    assert monitor.observe(outcome(1, False, revision=2)) == []
    assert monitor.observe({**outcome(2, True), "ok": None}) == []
    assert monitor.outcomes == 0


def test_data_drift_alerts_once_per_feature_and_resolves():
    monitor = ModelMonitor("m", "1", config(), epoch="e")
    rng = random.Random(1)
    alerts = []
    for i in range(600):
        alerts += monitor.observe(prediction(i, rng.gauss(0, 1)))
    assert alerts == []
    for i in range(600, 1200):
        alerts += monitor.observe(prediction(i, rng.gauss(3, 1)))
    firing = [a for a in alerts if a["status"] == "firing"]
    assert [(a["kind"], a["feature"]) for a in firing] == [("data", "f")]
    assert firing[0]["threshold"] < firing[0]["statistic"]
    for i in range(1200, 1800):
        alerts += monitor.observe(prediction(i, rng.gauss(0, 1)))
    assert [a["status"] for a in alerts if a["feature"] == "f"] == ["firing", "resolved"]


def test_bad_settings_fail_naming_the_setting():
    with pytest.raises(ConfigurationError, match="concept_detector"):
        config(detector="nope").validate()
    with pytest.raises(ConfigurationError, match="concept_detector_params"):
        config(detector_params={"bogus": 1}).validate()
    with pytest.raises(ConfigurationError, match="concept_detectors\\['churn'\\]"):
        config(per_model={"churn": "nope"}).validate()
    with pytest.raises(ConfigurationError, match="drift_reference_size"):
        config(reference_size=50, window_size=100).validate()


def test_checkpoint_round_trip_continues_identically():
    a = ModelMonitor("m", "1", config(), epoch="e")
    feed_errors(a, [(1500, 0.05)])
    rng = random.Random(4)
    for i in range(300):
        a.observe(prediction(i, rng.gauss(0, 1)))
    b, refused = ModelMonitor.from_bytes(a.to_bytes(SIGNER), config(), SIGNER, a.references_bytes())
    assert refused is None and b.references_state() == a.references_state() == (True, True)
    rest = [(1500, 0.05), (2000, 0.6)]
    assert feed_errors(a, rest, seed=9) == feed_errors(b, rest, seed=9)
    drifted = [prediction(i, rng.gauss(2, 1)) for i in range(300, 600)]
    assert [a.observe(o) for o in drifted] == [b.observe(o) for o in drifted]


def test_a_tampered_detector_is_replaced_not_loaded():
    a = ModelMonitor("m", "1", config(), epoch="e")
    feed_errors(a, [(500, 0.05)])
    data = orjson.loads(a.to_bytes(SIGNER))
    data["detector"] = data["detector"][:-8] + "AAAAAAA="
    b, refused = ModelMonitor.from_bytes(orjson.dumps(data), config(), SIGNER)
    assert refused is not None and b.outcomes == 500
    assert b.detector is not a.detector


def test_partition_applies_each_offset_once_and_dead_letters_garbage():
    part = MonitorPartition(0, config(), "e")
    records = [Record("monitor-input", 0, i, b"m\x1f1", orjson.dumps(outcome(i, True))) for i in range(5)]
    part.apply_all(records)
    part.apply_all(records)
    assert part.monitors[("m", "1")].outcomes == 5
    (letter,) = part.apply_all([Record("monitor-input", 0, 5, b"k", b"{oops")])
    assert letter.kind == "dead-letters"


def test_packed_observations_apply_in_order_and_a_bad_one_alone_is_a_dead_letter():
    from streams.observations import pack
    from streams.partition import Emit

    single = MonitorPartition(0, config(), "e")
    single.apply_all([Record("monitor-input", 0, i, b"m", orjson.dumps(outcome(i, i % 3 != 0))) for i in range(9)])
    (packed,) = pack([Emit("monitor-input", b"m", orjson.dumps(outcome(i, i % 3 != 0))) for i in range(9)])
    part = MonitorPartition(0, config(), "e")
    assert part.apply_all([Record("monitor-input", 0, 0, packed.key, packed.value)]) == []
    assert part.monitors[("m", "1")].to_bytes(SIGNER) == single.monitors[("m", "1")].to_bytes(SIGNER)
    # the same packed record again is a no-op; a pack with one broken observation diverts only it
    assert part.apply_all([Record("monitor-input", 0, 0, packed.key, packed.value)]) == []
    broken = b"[" + orjson.dumps(outcome(9, True)) + b',{"k":"o"},' + orjson.dumps(outcome(10, True)) + b"]"
    (letter,) = part.apply_all([Record("monitor-input", 0, 1, b"m", broken)])
    assert letter.kind == "dead-letters"
    body = orjson.loads(letter.value)
    assert "item 1 of 3" in body["reason"] and "KeyError" in body["reason"]
    assert part.monitors[("m", "1")].outcomes == 11
    (letter,) = part.apply_all([Record("monitor-input", 0, 2, b"m", b"[1")])
    assert letter.kind == "dead-letters"
    (letter,) = part.apply_all([Record("monitor-input", 0, 3, b"m", b"7")])
    assert "JSON object or an array" in orjson.loads(letter.value)["reason"]


def test_a_pinned_reference_file_is_the_reference(tmp_path):
    from streams.monitor import load_reference

    path = tmp_path / "ref.csv"
    rng = random.Random(3)
    path.write_text("f,g\n" + "\n".join(f"{rng.gauss(5, 1)},u" for _ in range(300)))
    cfg = config(references={"m": load_reference("m", path)})
    monitor = ModelMonitor("m", "1", cfg, epoch="e")
    alerts = []
    for i in range(200):  # N(0, 1) is far from the pinned N(5, 1): the first window already drifts
        alerts += monitor.observe(prediction(i, rng.gauss(0, 1)))
    assert [(a["kind"], a["feature"]) for a in alerts] == [("data", "f")]
    with pytest.raises(ConfigurationError, match="drift_reference_files\\['m'\\]"):
        load_reference("m", tmp_path / "missing.csv")


def test_bad_detector_settings_stop_the_worker_command(monkeypatch, capsys):
    from feedback_loop import cli

    monkeypatch.setenv("FEEDBACK_LOOP_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("FEEDBACK_LOOP_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("FEEDBACK_LOOP_CONCEPT_DETECTOR_PARAMS", '{"bogus": 1}')
    assert cli.main(["worker"]) == 1
    assert "concept_detector_params" in capsys.readouterr().err
    monkeypatch.setenv("FEEDBACK_LOOP_CONCEPT_DETECTOR", "nope")
    assert cli.main(["worker"]) == 1
    assert "concept_detector" in capsys.readouterr().err


def test_estimates_are_reconciled_with_the_labels_that_land():
    monitor = ModelMonitor("m", "1", config(estimate_window=100), epoch="e")
    rng = random.Random(5)
    for i in range(100):  # window 0 closes before any label
        monitor.observe(prediction(i, rng.gauss(0, 1)))
    assert monitor.last_estimate["window"] == 0 and monitor.last_estimate["reconciled"] == []
    for i in range(100):  # its labels land: 70 right
        monitor.observe(outcome(i, i < 70))
    for i in range(100, 200):  # window 1 closes: window 0 is reconciled
        monitor.observe(prediction(i, rng.gauss(0, 1)))
    (rec,) = monitor.last_estimate["reconciled"]
    assert (rec["window"], rec["labeled"], rec["labeled_at_close"], rec["realized_accuracy"]) == (0, 100, 0, 0.7)
    assert math.isclose(rec["estimated_accuracy"], 0.9)
    restored, _ = ModelMonitor.from_bytes(monitor.to_bytes(SIGNER), config(estimate_window=100), SIGNER,
                                          monitor.references_bytes())
    assert list(restored.reconciled) == list(monitor.reconciled) and restored.closed_ids == monitor.closed_ids


def test_a_number_past_the_float_range_costs_only_its_own_observation():
    """orjson reads no such integer; the message is read by msgspec then, and only the observation
    holding it becomes a dead letter."""
    from streams.observations import waiting_observation

    def event(i: int, f: object) -> bytes:
        return (b'{"prediction_id":"p-%d","model":"m","model_version":"1","timestamp":"2026-11-22T10:00:00Z",'
                b'"features":{"f":%b},"prediction":"yes","scores":{"yes":0.75,"no":0.25}}' % (i, str(f).encode()))

    packed = b"[" + b",".join(waiting_observation(1795341600.0 + i, event(i, 10**400 if i == 1 else i))
                              for i in range(3)) + b"]"
    part = MonitorPartition(0, config(), "e")
    (letter,) = part.apply_all([Record("monitor-input", 0, 0, b"m", packed)])
    body = orjson.loads(letter.value)
    assert letter.kind == "dead-letters" and "item 1 of 3" in body["reason"] and "OverflowError" in body["reason"]
    assert part.observed == 3 and part.monitors[("m", "1")].features.rows_in_window == 2
