"""Serving for producer services against the session's real broker and Redis.

:class:`PredictionClient` events are read back from Kafka with kafka-python; :class:`ModelHandle`
loads champions from a real :class:`ModelRegistry` and follows real ``model-updates`` messages.
Each test has its own topic prefix and Redis namespace (deleted afterwards).
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
import redis as redis_lib
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from river import linear_model, preprocessing

from feedback_loop.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    InvalidEventError,
)
from feedback_loop.events import LabelEvent, ModelUpdate, PredictionEvent
from feedback_loop.kafka_admin import ensure_topics
from feedback_loop.settings import Settings
from feedback_loop.signing import Signer
from online_models.baselines import LastLabel
from online_models.registry import ModelRegistry
from online_models.serving import ModelHandle, ModelUnavailableError, PredictionClient

pytestmark = pytest.mark.integration

KEY = "serving-test-signing-key-0123456789"
MODEL = "churn"
PARTITIONS = 2
PROBE = {"a": 1.0, "b": 5.0}
T0 = datetime(2026, 11, 22, 10, 0, tzinfo=timezone.utc)


# ----------------------------------------------------------------------------- fixtures and helpers
@pytest.fixture
def make_settings(kafka_bootstrap: str, redis_url: str) -> Iterator[Callable[..., Settings]]:
    """``make_settings(topics=True)``: a fresh topic prefix (topics created) and Redis namespace."""
    client = redis_lib.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    made: list[Settings] = []

    def make(topics: bool = True) -> Settings:
        uid = uuid.uuid4().hex[:10]
        settings = Settings(kafka_bootstrap=kafka_bootstrap, redis_url=redis_url, topic_prefix=f"serving-{uid}.",
                            redis_namespace=f"serving-test-{uid}", partitions=PARTITIONS, signing_key=KEY)
        if topics:
            ensure_topics(kafka_bootstrap, list(settings.topics), PARTITIONS, 1)
        made.append(settings)
        return settings

    yield make
    for settings in made:
        keys = list(client.scan_iter(match=f"{settings.redis_namespace}:*"))
        if keys:
            client.delete(*keys)
    client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis_lib.Redis]:
    client = redis_lib.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    yield client
    client.close()


def registry_for(client: redis_lib.Redis, settings: Settings) -> ModelRegistry:
    return ModelRegistry(client, settings, Signer(settings.signing_key.get_secret_value().encode()))


def trained(sign: float, seed: int = 7, n: int = 300) -> Any:
    """A logistic regression that learned ``sign * a > 0``: opposite signs disagree on :data:`PROBE`."""
    rng = random.Random(seed)
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    for _ in range(n):
        x = {"a": rng.gauss(0, 1), "b": rng.gauss(5, 2)}
        model.learn_one(x, sign * x["a"] > 0)
    return model


def publish_update(settings: Settings, action: str, version: str, previous: str | None = None,
                   **evidence: Any) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", request_timeout_ms=10_000)
    try:
        update = ModelUpdate(model=MODEL, action=action, version=version, previous_version=previous,
                             evidence=evidence, at=datetime.now(timezone.utc))
        producer.send(settings.topic("model-updates"), key=MODEL.encode(), value=update.to_json())
        producer.flush(timeout=10)
    finally:
        producer.close(timeout=5)


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


def read_topic(settings: Settings, name: str, expected: int, timeout: float = 10.0,
               settle: float = 0.5) -> list[Any]:
    """Every record of a topic from the beginning: waits for ``expected``, then ``settle`` s for more."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False)
    try:
        topic = settings.topic(name)
        consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        consumer.seek_to_beginning()
        found: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(found) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                found.extend(records)
        settle_until = time.monotonic() + settle
        while time.monotonic() < settle_until:
            for records in consumer.poll(timeout_ms=100).values():
                found.extend(records)
        return found
    finally:
        consumer.close()


# ----------------------------------------------------------------------------- PredictionClient
def test_client_sends_contract_fields_keyed_by_prediction_id(make_settings) -> None:
    s = make_settings()
    with PredictionClient(s) as client:
        sent = client.predict(
            "p-1", MODEL, "logreg-3", {"age": 42, "plan": "pro", "tenure_days": 380.5}, "yes",
            scores={"yes": 0.81, "no": 0.19}, confidence=0.81, tags={"region": "eu"}, timestamp=T0,
            challenger={"prediction": "no", "confidence": 0.6})
        plain = client.predict("p-2", MODEL, "logreg-3", {"age": 7}, 1.5)  # regression, defaults
        label = client.label("p-1", "no", timestamp="2026-11-25T08:00:00Z", source="crm-export")
        client.flush()
        assert client.sent == 3 and client.failed == 0

    predictions = read_topic(s, "predictions", 2)
    labels = read_topic(s, "labels", 1)
    by_key = {r.key: json.loads(r.value) for r in predictions}
    assert set(by_key) == {b"p-1", b"p-2"} and len(predictions) == 2
    first = by_key[b"p-1"]
    assert first == {
        "prediction_id": "p-1", "model": MODEL, "model_version": "logreg-3", "timestamp": "2026-11-22T10:00:00Z",
        "features": {"age": 42, "plan": "pro", "tenure_days": 380.5}, "prediction": "yes",
        "scores": {"yes": 0.81, "no": 0.19}, "confidence": 0.81, "tags": {"region": "eu"},
        "challenger": {"prediction": "no", "confidence": 0.6}}
    assert PredictionEvent.model_validate(first) == sent
    second = PredictionEvent.model_validate(by_key[b"p-2"])
    assert second == plain and second.prediction == 1.5 and second.tags == {} and second.scores is None
    age = datetime.now(timezone.utc) - second.timestamp
    assert second.timestamp.tzinfo is not None and 0 <= age.total_seconds() < 60  # default: now, UTC

    assert [r.key for r in labels] == [b"p-1"]
    assert json.loads(labels[0].value) == {"prediction_id": "p-1", "label": "no",
                                           "timestamp": "2026-11-25T08:00:00Z", "source": "crm-export"}
    assert LabelEvent.model_validate_json(labels[0].value) == label


def test_client_refuses_invalid_events_naming_the_field_and_sends_nothing(make_settings) -> None:
    s = make_settings()
    good = {"prediction_id": "p-ok", "model": MODEL, "model_version": "v1", "features": {"age": 1},
            "prediction": "yes"}
    bad_calls: list[tuple[str, dict[str, Any]]] = [
        ("confidence", {"confidence": 1.5}),
        ("timestamp", {"timestamp": datetime(2026, 11, 22, 10, 0)}),  # no zone
        ("prediction", {"prediction": ["yes"]}),
        ("prediction_id", {"prediction_id": ""}),
        ("scores.yes", {"scores": {"yes": 3.0}}),
        ("tags.region", {"tags": {"region": 5}}),
        ("features", {"features": {"blob": object()}}),  # not JSON
        ("challenger", {"challenger": "no"}),
    ]
    with PredictionClient(s) as client:
        for field, override in bad_calls:
            kwargs = {**good, **override}
            with pytest.raises(InvalidEventError) as info:
                client.predict(kwargs.pop("prediction_id"), kwargs.pop("model"), kwargs.pop("model_version"),
                               kwargs.pop("features"), kwargs.pop("prediction"), **kwargs)
            assert re.match(rf"{re.escape(field)}[.:]", info.value.reason), (field, info.value.reason)
        for field, call in [("label", lambda: client.label("p-x", {"a": 1})),
                            ("timestamp", lambda: client.label("p-x", "no", timestamp="yesterday")),
                            ("prediction_id", lambda: client.label("", "no"))]:
            with pytest.raises(InvalidEventError) as info:
                call()
            assert re.match(rf"{re.escape(field)}[.:]", info.value.reason), (field, info.value.reason)
        assert client.sent == 0
        client.predict(**good)  # a marker: everything before it would be read first
        client.flush()
    found = read_topic(s, "predictions", 1)
    assert [r.key for r in found] == [b"p-ok"]
    assert read_topic(s, "labels", 0, timeout=0.0, settle=0.3) == []


def test_client_configuration_errors(kafka_bootstrap: str) -> None:
    with pytest.raises(ConfigurationError, match="FEEDBACK_LOOP_KAFKA_BOOTSTRAP"):
        PredictionClient(Settings())
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match="127.0.0.1:1"):
        PredictionClient(Settings(kafka_bootstrap="127.0.0.1:1"), timeout=1.0)
    assert time.monotonic() - started < 10


# ----------------------------------------------------------------------------- ModelHandle
@pytest.fixture
def two_versions(make_settings, redis_client) -> tuple[Settings, ModelRegistry, dict[str, Any]]:
    """Topics, a registry with v1 and v2 of spec ``logreg`` (they disagree on the probe), champion v1.

    Returns the settings, the registry and each version's expected prediction on :data:`PROBE`.
    """
    s = make_settings()
    reg = registry_for(redis_client, s)
    v1 = reg.save(MODEL, "logreg", trained(+1.0), updates=300)
    v2 = reg.save(MODEL, "logreg", trained(-1.0, seed=8), updates=300)
    expected = {v: reg.load(MODEL, v).estimator.predict_one(PROBE) for v in (v1, v2)}
    assert expected[v1] != expected[v2]
    reg.set_champion(MODEL, v1, previous=None, reason="first")
    return s, reg, expected


def test_handle_serves_champion_and_swaps_on_promote(two_versions) -> None:
    s, reg, expected = two_versions
    v1, v2 = expected
    with ModelHandle(reg, MODEL).follow(s) as handle:
        assert handle.following and handle.version == v1 and handle.name == "logreg"
        assert handle.predict_one(PROBE) == (expected[v1], v1)
        proba, version = handle.predict_proba_one(PROBE)
        assert version == v1 and max(proba, key=proba.get) == expected[v1]

        reg.set_champion(MODEL, v2, previous=v1, reason="test")
        publish_update(s, "promote", v2, v1)
        wait_for(lambda: handle.version == v2, what=f"the swap to {v2}")
        assert handle.predict_one(PROBE) == (expected[v2], v2)
        assert handle.swaps == 2 and handle.served == 3  # the first load, then the promotion

        publish_update(s, "promote", v2, v1, model_note="the same again")  # same record: no reload
        publish_update(s, "checkpoint", "other-9", name="other")  # another spec: ignored
        time.sleep(0.5)
        assert handle.version == v2 and handle.swaps == 2

        # the champion's spec got fresher weights: the handle serves that checkpoint
        v3 = reg.save(MODEL, "logreg", trained(+1.0, seed=9), updates=600)
        publish_update(s, "checkpoint", v3, name="logreg")
        wait_for(lambda: handle.version == v3, what=f"the checkpoint {v3}")
        assert handle.predict_one(PROBE) == (reg.load(MODEL, v3).estimator.predict_one(PROBE), v3)
        started = time.monotonic()
    assert time.monotonic() - started < 5 and not handle.following
    assert handle.predict_one(PROBE)[1] == v3  # still serves after close()


def test_no_request_is_dropped_or_mixed_during_swaps(two_versions) -> None:
    s, reg, expected = two_versions
    v1, v2 = expected
    handle = ModelHandle(reg, MODEL).follow(s)
    stop = threading.Event()
    calls = [0] * 4
    answers: list[list[tuple[Any, str]]] = [[] for _ in range(4)]
    errors: list[BaseException] = []
    slowest = [0.0] * 4

    def serve(i: int) -> None:
        while not stop.is_set():
            calls[i] += 1
            started = time.perf_counter()
            try:
                answers[i].append(handle.predict_one(PROBE))
            except BaseException as exc:  # noqa: BLE001 - every failure is a dropped request
                errors.append(exc)
            slowest[i] = max(slowest[i], time.perf_counter() - started)

    threads = [threading.Thread(target=serve, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    try:
        current = v1
        for n in range(6):  # promote v2, roll back to v1, alternately
            target, action = (v2, "promote") if current == v1 else (v1, "rollback")
            reg.set_champion(MODEL, target, previous=current, reason=action)
            publish_update(s, action, target, current)
            wait_for(lambda target=target: handle.version == target, what=f"swap {n + 1} to {target}")
            time.sleep(0.05)  # let requests run on this version
            current = target
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        handle.close()

    assert not errors, errors[:3]
    flat = [a for per_thread in answers for a in per_thread]
    assert sum(calls) == len(flat) == handle.served
    assert len(flat) > 100  # requests really ran across the swaps
    assert all(prediction == expected[version] for prediction, version in flat), \
        [a for a in flat if a[0] != expected[a[1]]][:5]
    assert {version for _, version in flat} == {v1, v2}
    assert handle.swaps == 7  # the first load and six swaps
    assert max(slowest) < 1.0, f"a request waited {max(slowest):.3f}s"


def test_tampered_champion_blob_keeps_the_current_model(two_versions, redis_client, caplog) -> None:
    s, reg, expected = two_versions
    v1, v2 = expected
    blob_key = s.key("registry", MODEL, "blob")
    blob = redis_client.hget(blob_key, v2)
    redis_client.hset(blob_key, v2, blob[:-1] + bytes([blob[-1] ^ 1]))
    caplog.set_level(logging.ERROR, logger="online_models.serving")
    with ModelHandle(reg, MODEL).follow(s) as handle:
        assert handle.version == v1
        reg.set_champion(MODEL, v2, previous=v1, reason="test")
        publish_update(s, "promote", v2, v1)
        wait_for(lambda: any(r.name == "online_models.serving" and v2 in r.getMessage() for r in caplog.records),
                 what="the error log")
        error = next(r for r in caplog.records if r.name == "online_models.serving" and v2 in r.getMessage())
        assert error.levelno == logging.ERROR and "signature" in error.getMessage() and v1 in error.getMessage()
        assert handle.version == v1 and handle.predict_one(PROBE) == (expected[v1], v1)
        assert handle.swaps == 1

    # a new handle with nothing current takes the newest spec version that loads
    fresh = ModelHandle(reg, MODEL)
    assert fresh.predict_one(PROBE) == (expected[v1], v1)


def test_external_champion_serves_the_fallback_under_its_version(make_settings, redis_client) -> None:
    s = make_settings(topics=False)
    reg = registry_for(redis_client, s)
    rules = LastLabel()
    rules.learn_one({}, "rules-say-no")

    with pytest.raises(ModelUnavailableError, match=MODEL):
        ModelHandle(reg, MODEL).predict_one(PROBE)  # nothing at all
    handle = ModelHandle(reg, MODEL, fallback=rules, fallback_version="rules-1")
    assert handle.predict_one(PROBE) == ("rules-say-no", "rules-1")  # no champion yet

    reg.set_champion(MODEL, "frozen-5000", previous=None, reason="the producer's own model")
    assert handle.refresh() is True
    assert handle.predict_one(PROBE) == ("rules-say-no", "frozen-5000")
    assert handle.predict_proba_one(PROBE) == ({"rules-say-no": 1.0}, "frozen-5000")
    assert handle.name is None and handle.swaps == 2

    # a registry champion replaces it; an external one again brings the fallback back
    v1 = reg.save(MODEL, "logreg", trained(+1.0), updates=300)
    reg.set_champion(MODEL, v1, previous="frozen-5000", reason="promoted")
    assert handle.refresh() and handle.version == v1
    reg.set_champion(MODEL, "frozen-6000", previous=v1, reason="rollback")
    assert handle.refresh() and handle.predict_one(PROBE) == ("rules-say-no", "frozen-6000")


def test_follow_needs_the_topic(make_settings, redis_client) -> None:
    s = make_settings(topics=False)
    handle = ModelHandle(registry_for(redis_client, s), MODEL, fallback=LastLabel())
    with pytest.raises(ConfigurationError, match="model-updates"):
        handle.follow(s, timeout=5)
    with pytest.raises(ConfigurationError, match="FEEDBACK_LOOP_KAFKA_BOOTSTRAP"):
        handle.follow(Settings())
    assert not handle.following
