"""The review consumer against the session's real broker and Redis (and a Redis of its own).

Each test has its own topic prefix, consumer group and Redis namespace.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis as redis_lib
import redis.asyncio as aredis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from test_review_queue import OwnRedis  # the queue tests' restartable redis-server

from consumers.review_queue import ReviewQueue
from consumers.reviews import ReviewConsumer, ReviewStats, run_reviews
from feedback_loop.events import Outcome, ReviewRequest
from feedback_loop.kafka_admin import ensure_topics
from feedback_loop.settings import Settings

pytestmark = pytest.mark.integration

SESSION_SECONDS = 2.0  # Tansu answers a JoinGroup after half the session timeout
T0 = datetime(2026, 11, 22, 10, 0, tzinfo=timezone.utc)


def request(pid: str, priority: float, at: float = 0.0) -> ReviewRequest:
    return ReviewRequest(prediction_id=pid, model="churn", model_version="v1", reason="margin",
                         priority=priority, prediction="yes", features={"age": 42},
                         requested_at=T0 + timedelta(seconds=at))


def outcome(pid: str, source: str = "label") -> Outcome:
    return Outcome(prediction_id=pid, model="churn", model_version="v1", prediction="yes", label="no",
                   correct=False, label_source=source, revision=1, predicted_at=T0,
                   labeled_at=T0 + timedelta(hours=1))


@pytest.fixture
def make_settings(kafka_bootstrap: str, redis_url: str) -> Iterator[Callable[..., Settings]]:
    """``make_settings(**overrides)``: fresh topics and namespace; the namespace is cleaned afterwards."""
    made: list[Settings] = []

    def make(**overrides: Any) -> Settings:
        uid = uuid.uuid4().hex[:10]
        values: dict[str, Any] = {
            "kafka_bootstrap": kafka_bootstrap, "redis_url": redis_url, "topic_prefix": f"reviews-{uid}.",
            "redis_namespace": f"reviews-test-{uid}", "app_id": f"reviews-test-{uid}", "partitions": 2,
            "broker_session_timeout": SESSION_SECONDS, "broker_heartbeat_interval": 0.5,
            "review_budget_burst": 1000.0}
        values.update(overrides)
        s = Settings(**values)
        ensure_topics(kafka_bootstrap, [s.topic("review-queue"), s.topic("outcomes"), s.topic("dead-letters")],
                      partitions=2, timeout=30)
        made.append(s)
        return s

    yield make
    for s in made:
        client = redis_lib.Redis.from_url(s.redis_url or redis_url)
        try:
            keys = list(client.scan_iter(match=f"{s.redis_namespace}:*"))
            if keys:
                client.delete(*keys)
        except redis_lib.ConnectionError:
            pass  # a test's own Redis, gone already
        finally:
            client.close()


@pytest.fixture
def publish(kafka_bootstrap: str) -> Iterator[Callable[..., None]]:
    """``publish(topic, *events_or_raw, key=None)``: send, keyed by prediction id, and wait for acks."""
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", request_timeout_ms=10_000)

    def send(topic: str, *messages: ReviewRequest | Outcome | bytes, key: bytes | None = None) -> None:
        for m in messages:
            if isinstance(m, bytes):
                producer.send(topic, key=key, value=m)
            else:
                producer.send(topic, key=m.prediction_id.encode(), value=m.to_json())
        producer.flush(timeout=10)

    yield send
    producer.close(timeout=5)


def queue_call(settings: Settings, fn: Callable[[ReviewQueue], Any]) -> Any:
    """Run ``fn(queue)`` (a coroutine) with a client of its own."""
    async def go() -> Any:
        client = aredis.Redis.from_url(settings.redis_url or "", socket_timeout=5)
        try:
            return await fn(ReviewQueue(client, settings))
        finally:
            await client.aclose()
    return asyncio.run(go())


def pending_ids(settings: Settings) -> list[str]:
    try:
        return [i["prediction_id"] for i in queue_call(settings, lambda q: q.pending(limit=1000))]
    except redis_lib.ConnectionError:
        return []


def offered(settings: Settings) -> int:
    return queue_call(settings, lambda q: q.stats(time.time()))["offered"]


def wait(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


class Background:
    """A consumer running in a thread until :meth:`stop`; ``total`` holds what ``run`` returned."""

    def __init__(self, consumer: ReviewConsumer) -> None:
        self.consumer, self.event, self.total = consumer, threading.Event(), ReviewStats()
        self.thread = threading.Thread(target=self._run, name="reviews-consumer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.total = self.consumer.run(self.event, max_seconds=60)

    def stop(self, bound: float = 5.0) -> float:
        started = time.monotonic()
        self.event.set()
        self.thread.join(bound + 5)
        took = time.monotonic() - started
        assert not self.thread.is_alive() and took < bound, f"took {took:.1f}s to stop"
        self.consumer.close()
        return took


def dead_letters(settings: Settings, expected: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False)
    try:
        topic = settings.topic("dead-letters")
        consumer.assign([TopicPartition(topic, p) for p in range(settings.partitions)])
        consumer.seek_to_beginning()
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(found) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=300).values():
                found.extend(json.loads(r.value) for r in records)
        return found
    finally:
        consumer.close()


# ----------------------------------------------------------------------------- the flow
def test_requests_are_queued_once_invalid_ones_dead_lettered_and_it_stops(make_settings, publish) -> None:
    s = make_settings()
    publish(s.topic("outcomes"), outcome("p-labeled"), outcome("p-reviewed", source="review"))
    runner = Background(ReviewConsumer(s))
    # outcomes and requests are separate topics with no order between them: label first
    wait(lambda: queue_call(s, lambda q: q.redis.zscore(s.key("review", "labeled"), "p-labeled")) is not None)

    publish(s.topic("review-queue"), request("p-1", 0.9), request("p-2", 0.5), request("p-1", 0.9, 60),
            request("p-3", 0.7), request("p-labeled", 0.8), request("p-2", 0.5))
    publish(s.topic("review-queue"), b"{not json", key=b"p-bad")
    bad_priority = json.loads(request("p-4", 0.5).to_json()) | {"priority": 2}
    publish(s.topic("review-queue"), json.dumps(bad_priority).encode(), key=b"p-4")
    wait(lambda: offered(s) == 6)
    letters = dead_letters(s, expected=2)

    took = runner.stop(bound=5.0)

    assert pending_ids(s) == ["p-1", "p-3", "p-2"]
    t = runner.total
    assert (t.queued, t.duplicate, t.labeled, t.labels, t.removed, t.skipped, t.dead_lettered) == (3, 2, 1, 1, 0, 1, 2)
    assert t.handled == 10 and took < 5.0
    by_key = {letter["key"]: letter for letter in letters}
    assert set(by_key) == {"p-bad", "p-4"}
    assert by_key["p-bad"]["reason"].startswith("invalid ReviewRequest: invalid JSON")
    assert by_key["p-4"]["reason"] == "invalid ReviewRequest: priority: Input should be less than or equal to 1"
    assert base64.b64decode(by_key["p-bad"]["payload"]) == b"{not json"
    assert {letter["source_topic"] for letter in letters} == {s.topic("review-queue")}


def test_a_label_after_queueing_removes_the_item(make_settings, publish) -> None:
    s = make_settings()
    publish(s.topic("review-queue"), request("a", 0.9), request("b", 0.4))
    runner = Background(ReviewConsumer(s))
    wait(lambda: pending_ids(s) == ["a", "b"])
    publish(s.topic("outcomes"), outcome("a"))
    wait(lambda: pending_ids(s) == ["b"])
    runner.stop()
    assert (runner.total.queued, runner.total.labels, runner.total.removed) == (2, 1, 1)


def consume_until(consumer: ReviewConsumer, handled: int, timeout: float = 20.0) -> ReviewStats:
    """Poll in this thread until ``handled`` messages are done."""
    total = ReviewStats()
    deadline = time.monotonic() + timeout
    while total.handled < handled:
        assert time.monotonic() < deadline, f"only {total} within {timeout}s"
        total.add(consumer.poll_once(timeout=0.3))
    return total


def test_a_restart_queues_nothing_twice(make_settings, publish) -> None:
    s = make_settings()
    publish(s.topic("outcomes"), outcome("gone"))
    publish(s.topic("review-queue"), request("a", 0.9), request("b", 0.4), request("a", 0.9), b"[1, 2]")
    with ReviewConsumer(s) as first:
        t = consume_until(first, 5)
    assert (t.labels, t.queued, t.duplicate, t.dead_lettered) == (1, 2, 1, 1)

    # Same group: the committed offsets hold; only the new messages are read.
    publish(s.topic("review-queue"), request("c", 0.6), request("gone", 0.99))
    with ReviewConsumer(s) as second:
        t = consume_until(second, 2)
        t.add(second.poll_once(timeout=1.0))  # and nothing else comes
    assert (t.handled, t.queued, t.labeled) == (2, 1, 1)

    # A new group reads everything again (as after lost commits): nothing changes in the queue.
    with ReviewConsumer(s, group_id=f"{s.app_id}-replay") as replay:
        t = consume_until(replay, 7)
    assert (t.queued, t.duplicate, t.labeled, t.labels, t.dead_lettered) == (0, 4, 1, 1, 1)
    assert pending_ids(s) == ["a", "c", "b"]
    stats = queue_call(s, lambda q: q.stats(time.time()))
    assert (stats["queued"], stats["offered"], stats["duplicates"]) == (3, 10, 5)


def test_run_reviews_returns_after_max_seconds_or_on_stop(make_settings) -> None:
    s = make_settings()
    started = time.monotonic()
    assert run_reviews(s, max_seconds=1.0, say=lambda line: None).handled == 0
    assert time.monotonic() - started < 15

    stop = threading.Event()
    result: dict[str, ReviewStats] = {}
    thread = threading.Thread(target=lambda: result.update(total=run_reviews(s, stop, say=lambda line: None)))
    thread.start()
    time.sleep(1.0)
    asked = time.monotonic()
    stop.set()
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - asked < 5
    assert result["total"].handled == 0


def test_closing_from_a_coroutine_still_closes_the_redis_client(make_settings, redis_url, caplog) -> None:
    """An application (or a test driving a browser) may close the consumer from a thread that runs an
    event loop, where the consumer's own loop cannot run: its Redis client closes all the same."""
    db = 14  # no other test uses this database: the consumer's connection is the only one in it
    s = make_settings(redis_url=urlsplit(redis_url)._replace(path=f"/{db}").geturl())
    admin = redis_lib.Redis.from_url(redis_url)

    def connections() -> int:
        return sum(1 for client in admin.client_list() if client["db"] == str(db))

    consumer = ReviewConsumer(s)
    try:
        consumer.ping()
        assert connections() == 1

        async def close_from_a_coroutine() -> None:
            consumer.close()

        with caplog.at_level(logging.WARNING, logger="consumers.reviews"):
            asyncio.run(close_from_a_coroutine())
        assert [r.getMessage() for r in caplog.records if r.name == "consumers.reviews"] == []
        wait(lambda: connections() == 0, timeout=5)
    finally:
        consumer.close()
        admin.close()


# ----------------------------------------------------------------------------- Redis restarts
def test_consumer_waits_out_a_redis_restart(make_settings, publish, tmp_path: Path) -> None:
    server = OwnRedis(tmp_path)
    server.start()
    try:
        s = make_settings(redis_url=server.url)
        publish(s.topic("review-queue"), request("r-1", 0.5))
        runner = Background(ReviewConsumer(s, redis_retry_seconds=0.3, max_pause_seconds=0.3))
        wait(lambda: pending_ids(s) == ["r-1"])

        server.stop()
        publish(s.topic("review-queue"), request("r-2", 0.9), request("r-3", 0.1), request("r-1", 0.5))
        time.sleep(2.0)  # the consumer fails, backs off, and leaves the messages uncommitted
        server.start()

        wait(lambda: pending_ids(s) == ["r-2", "r-1", "r-3"])
        wait(lambda: offered(s) == 4)
        runner.stop()
        t = runner.total
        assert (t.queued, t.duplicate) == (3, 1) and t.retried >= 1
    finally:
        server.stop()
