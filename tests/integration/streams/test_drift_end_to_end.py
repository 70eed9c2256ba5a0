"""Drift injected mid-stream, end to end: real broker and Redis, a worker process, the alert
consumer and a real local webhook.

Phase A is stationary (10% errors, f1 ~ N(0, 1)); phase B shifts f1 by two standard deviations
and makes half the predictions wrong. Exactly one alert per (kind, feature) must reach the
webhook: concept drift, data drift of f1, estimated performance. Then the worker is restarted and
phase C brings f1 back: the restored monitor resolves the data drift (a monitor that lost its
state would take the drifted data as its reference and fire again), and nothing is sent twice.
"""

from __future__ import annotations

import random
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from consumers.alerts import AlertConsumer
from consumers.sinks import WebhookSink
from e2e_worker import wait_for
from support.webhook import RecordingWebhook

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

START = datetime(2026, 11, 1, tzinfo=timezone.utc)
SETTINGS = {"drift_reference_size": 1000, "drift_window_size": 500, "drift_false_alarm_rate": 0.001,
            "estimate_window_size": 500, "estimate_min_drop": 0.1, "concept_resolve_samples": 100_000,
            "alert_cooldown_seconds": 1e9, "partitions": 4}


def phase(rng: random.Random, first: int, n: int, f1_mean: float, error_rate: float) -> list[tuple[str, bytes, bytes]]:
    out = []
    for i in range(first, first + n):
        pid = f"d-{i:06d}"
        ts = (START + timedelta(seconds=i)).isoformat()
        pred = rng.choice(["yes", "no"])
        conf = rng.uniform(0.6, 0.95)
        other = "no" if pred == "yes" else "yes"
        label = other if rng.random() < error_rate else pred
        out.append(("predictions", pid.encode(), orjson.dumps({
            "prediction_id": pid, "model": "m", "model_version": "1", "timestamp": ts,
            "features": {"f1": rng.gauss(f1_mean, 1.0), "f2": rng.choice("abc")},
            "prediction": pred, "scores": {pred: conf, other: 1 - conf}})))
        out.append(("labels", pid.encode(), orjson.dumps({"prediction_id": pid, "label": label, "timestamp": ts})))
    return out


def produce(settings: Any, messages: list[tuple[str, bytes, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5)
    for kind, key, value in messages:
        producer.send(settings.topic(kind), key=key, value=value)
    producer.flush()
    producer.close()


def topic_alerts(settings: Any) -> list[dict[str, Any]]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=3000)
    tps = [TopicPartition(settings.topics.drift_alerts, p) for p in range(settings.partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    alerts = [orjson.loads(m.value) for m in consumer]
    consumer.close()
    return alerts


def monitor_done(worker: Any, expected: int) -> bool:
    beat = worker.heartbeat() or {}
    return beat.get("events", {}).get("monitor_events", 0) >= expected


def pairs(alerts: list[dict[str, Any]], status: str) -> list[tuple[str, str | None]]:
    return sorted((a["kind"], a["feature"]) for a in alerts if a["status"] == status)


def test_one_alert_per_kind_and_feature_and_none_again_after_a_restart(make_settings, worker_factory) -> None:
    settings = make_settings(**SETTINGS)
    rng = random.Random(20261123)
    worker = worker_factory(settings)
    stop = threading.Event()
    with RecordingWebhook() as hook:
        consumer = AlertConsumer(settings, WebhookSink(hook.url, backoff=0.05, max_backoff=0.2),
                                 group_id="e2e-webhook")
        thread = threading.Thread(target=consumer.run, kwargs={"stop": stop}, daemon=True)
        thread.start()
        try:
            produce(settings, phase(rng, 0, 3000, 0.0, 0.1) + phase(rng, 3000, 3000, 2.0, 0.5))
            expected = {("concept", None), ("data", "f1"), ("estimated_performance", None)}
            wait_for("the three alerts at the webhook",
                     lambda: expected <= set(pairs(hook.received(), "firing")), timeout=120, interval=0.5)
            wait_for("the monitor to see every observation", lambda: monitor_done(worker, 2 * 6000),
                     timeout=60, interval=0.5)
            before_restart = pairs(hook.received(), "firing")
            estimate = orjson.loads(redis.Redis.from_url(settings.redis_url).hget(settings.key("estimates"), "m\x1f1"))
            assert abs(estimate["estimated_accuracy"] - 0.5) < 0.1  # phase B: half the predictions wrong
            assert estimate["reconciled"] and estimate["reconciled"][-1]["labeled"] > 0
            assert len(before_restart) == len(set(before_restart)), f"an alert reached the webhook twice: {before_restart}"

            assert worker.stop() == 0
            worker = worker_factory(settings)
            produce(settings, phase(rng, 6000, 1500, 0.0, 0.5))
            wait_for("the data drift of f1 to resolve",
                     lambda: ("data", "f1") in pairs(hook.received(), "resolved"), timeout=120, interval=0.5)
            time.sleep(2)
        finally:
            stop.set()
            thread.join(timeout=30)
            consumer.close()
        received = hook.received()
    firing = pairs(received, "firing")
    assert set(firing) >= expected
    assert len(firing) == len(set(firing)), f"duplicates reached the webhook: {firing}"
    assert len({a["alert_id"] for a in received}) == len(received)
    published = topic_alerts(settings)
    assert pairs(published, "firing").count(("data", "f1")) == 1, "the restarted monitor fired f1 again"
    assert [k for k, _ in hook.requests] == [a["alert_id"] for a in received]  # Idempotency-Key = alert_id
