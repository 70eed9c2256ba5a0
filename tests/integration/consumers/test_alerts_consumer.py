"""The alert consumer against the session's real broker and Redis, and a real local webhook.

Each test has its own topic prefix, consumer group and Redis namespace. The webhook is an
``http.server`` on 127.0.0.1 (port 0) in a thread: it records every request and can be told to
answer 503 to the first N requests or a fixed status to given alert ids.
"""

from __future__ import annotations

import io
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis as redis_lib
from kafka import KafkaProducer

from consumers.alerts import (
    AlertConsumer,
    PollStats,
    delivered_key,
    undeliverable,
    undeliverable_key,
)
from consumers.sinks import (
    PrintSink,
    RedisSink,
    Sink,
    WebhookSink,
    format_alert,
    pushed_alerts,
)
from feedback_loop.events import DriftAlert
from feedback_loop.kafka_admin import ensure_topics
from feedback_loop.settings import Settings

pytestmark = pytest.mark.integration

# Tansu answers a JoinGroup after half the session timeout: keep it short so a join takes ~1 s.
SESSION_SECONDS = 2.0


# ----------------------------------------------------------------------------- helpers
def make_alert(alert_id: str, **overrides: Any) -> DriftAlert:
    values: dict[str, Any] = {
        "alert_id": alert_id, "kind": "data", "detector": "psi", "model": "churn",
        "model_version": "2026-11-01", "feature": "age", "statistic": 0.31, "threshold": 0.2,
        "severity": "critical", "detected_at": "2026-11-22T10:00:00Z",
        "message": f"PSI 0.31 above 0.20 ({alert_id})",
    }
    values.update(overrides)
    return DriftAlert(**values)


class Hook:
    """A recording webhook on 127.0.0.1. ``fail_first`` requests get ``fail_status``;
    ``status_by_id[alert_id]`` overrides the answer for that alert; everything else gets 200."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail_first = 0
        self.fail_status = 503
        self.status_by_id: dict[str, int] = {}
        self._failed = 0
        self._lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                alert_id = self.headers.get("Idempotency-Key")
                with hook._lock:
                    if alert_id in hook.status_by_id:
                        status = hook.status_by_id[alert_id]
                    elif hook._failed < hook.fail_first:
                        hook._failed += 1
                        status = hook.fail_status
                    else:
                        status = 200
                    hook.requests.append({"at": time.monotonic(), "path": self.path, "status": status,
                                          "headers": dict(self.headers.items()), "body": body})
                reply = b'{"ok": true}' if status < 300 else b'{"error": "nope"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/alerts"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="test-webhook", daemon=True)
        self._thread.start()

    def delivered_ids(self) -> list[str]:
        with self._lock:
            return [r["headers"]["Idempotency-Key"] for r in self.requests if r["status"] < 300]

    def attempts(self, alert_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r["headers"].get("Idempotency-Key") == alert_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook()
    yield server
    server.close()


@pytest.fixture
def redis(redis_url: str) -> Iterator[redis_lib.Redis]:
    client = redis_lib.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    yield client
    client.close()


@pytest.fixture
def settings(kafka_bootstrap: str, redis_url: str, redis: redis_lib.Redis) -> Iterator[Settings]:
    uid = uuid.uuid4().hex[:10]
    s = Settings(kafka_bootstrap=kafka_bootstrap, redis_url=redis_url, topic_prefix=f"alerts-{uid}.",
                 redis_namespace=f"alerts-test-{uid}", partitions=2,
                 broker_session_timeout=SESSION_SECONDS, broker_heartbeat_interval=0.5)
    ensure_topics(kafka_bootstrap, [s.topics.drift_alerts], partitions=2, timeout=30)
    yield s
    keys = list(redis.scan_iter(match=f"{s.redis_namespace}:*"))
    if keys:
        redis.delete(*keys)


@pytest.fixture
def publish(kafka_bootstrap: str) -> Iterator[Callable[..., None]]:
    """``publish(settings, *alerts_or_raw_bytes, key=None)``: send and wait for the broker's acks."""
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", request_timeout_ms=10_000)

    def send(settings: Settings, *messages: DriftAlert | bytes, key: bytes | None = None) -> None:
        for message in messages:
            if isinstance(message, DriftAlert):
                producer.send(settings.topics.drift_alerts, key=message.model.encode(), value=message.to_json())
            else:
                producer.send(settings.topics.drift_alerts, key=key or b"churn", value=message)
        producer.flush(timeout=10)

    yield send
    producer.close(timeout=5)


@pytest.fixture
def consumer_factory(redis: redis_lib.Redis) -> Iterator[Callable[..., AlertConsumer]]:
    """``consumer_factory(settings, sink, group_id=None)``: a consumer closed at teardown."""
    made: list[AlertConsumer] = []

    def make(settings: Settings, sink: Sink, group_id: str | None = None, **kwargs: Any) -> AlertConsumer:
        consumer = AlertConsumer(settings, sink, group_id=group_id or f"{settings.redis_namespace}-group",
                                 redis=redis, **kwargs)
        made.append(consumer)
        return consumer

    yield make
    for consumer in made:
        consumer.close()


def consume_until(consumer: AlertConsumer, done: Callable[[PollStats], bool], timeout: float = 25.0,
                  quiet: float = 0.0) -> PollStats:
    """Poll until ``done(totals)``; then keep polling ``quiet`` seconds to catch anything extra."""
    total = PollStats()
    deadline = time.monotonic() + timeout
    while not done(total):
        assert time.monotonic() < deadline, f"not done within {timeout}s: {total}"
        total.add(consumer.poll_once(timeout=0.3))
    quiet_until = time.monotonic() + quiet
    while time.monotonic() < quiet_until:
        total.add(consumer.poll_once(timeout=0.2))
    return total


def fast_webhook(url: str, **kwargs: Any) -> WebhookSink:
    values: dict[str, Any] = {"timeout": 2.0, "retries": 3, "backoff": 0.05, "max_backoff": 0.2}
    values.update(kwargs)
    return WebhookSink(url, **values)


def members(redis: redis_lib.Redis, key: str) -> set[str]:
    return {m.decode() for m in redis.smembers(key)}


# ----------------------------------------------------------------------------- webhook: once
def test_duplicate_alert_is_delivered_once(settings, hook, publish, consumer_factory, redis) -> None:
    a, b = make_alert("a-1"), make_alert("a-2", model="fraud", kind="concept", feature=None)
    publish(settings, a, a, b, a)
    consumer = consumer_factory(settings, fast_webhook(hook.url))

    total = consume_until(consumer, lambda t: t.handled >= 4, quiet=1.0)

    assert sorted(hook.delivered_ids()) == ["a-1", "a-2"]
    assert (total.delivered, total.duplicates, total.parked, total.invalid) == (2, 2, 0, 0)
    request = hook.attempts("a-1")[0]
    assert request["path"] == "/hooks/alerts"
    assert request["headers"]["Content-Type"] == "application/json"
    assert DriftAlert.model_validate_json(request["body"]) == a
    assert members(redis, delivered_key(settings, "webhook")) == {"a-1", "a-2"}
    assert undeliverable(redis, settings) == []


def test_redelivery_after_restart_does_not_page_again(settings, hook, publish, consumer_factory,
                                                       redis, monkeypatch) -> None:
    group = f"{settings.redis_namespace}-restart"
    publish(settings, make_alert("r-1"))
    first = consumer_factory(settings, fast_webhook(hook.url), group_id=group)
    # The process dies after delivering, before its offset commit reaches the broker.
    monkeypatch.setattr(first, "_commit", lambda tp, offset: None)
    consume_until(first, lambda t: t.delivered == 1)
    first.close()
    assert hook.delivered_ids() == ["r-1"]

    publish(settings, make_alert("r-2"))
    second = consumer_factory(settings, fast_webhook(hook.url), group_id=group)
    total = consume_until(second, lambda t: t.handled >= 2, quiet=0.5)

    assert (total.duplicates, total.delivered) == (1, 1)  # r-1 came again and was recognised
    assert hook.delivered_ids() == ["r-1", "r-2"]
    second.close()

    # Offsets are committed now: a third start of the group sees nothing.
    third = consumer_factory(settings, fast_webhook(hook.url), group_id=group)
    assert consume_until(third, lambda t: True, quiet=1.5 * SESSION_SECONDS).handled == 0
    assert len(hook.requests) == 2


# ----------------------------------------------------------------------------- webhook: failures
def test_503s_are_retried_with_backoff_then_delivered(settings, hook, publish, consumer_factory, redis) -> None:
    hook.fail_first = 2
    publish(settings, make_alert("b-1"))
    consumer = consumer_factory(settings, fast_webhook(hook.url, retries=3, backoff=0.1, max_backoff=1.0))

    total = consume_until(consumer, lambda t: t.handled >= 1)

    attempts = hook.attempts("b-1")
    assert [r["status"] for r in attempts] == [503, 503, 200]
    gaps = [later["at"] - earlier["at"] for earlier, later in itertools.pairwise(attempts)]
    # equal jitter: at least half of the nominal 0.1 s, then 0.2 s
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1, gaps
    assert total.delivered == 1
    assert members(redis, delivered_key(settings, "webhook")) == {"b-1"}
    assert undeliverable(redis, settings) == []


def test_400_is_parked_without_retry_and_the_consumer_goes_on(settings, hook, publish, consumer_factory,
                                                             redis) -> None:
    hook.status_by_id["bad-1"] = 400
    bad, good = make_alert("bad-1"), make_alert("good-1")
    publish(settings, bad, good)
    consumer = consumer_factory(settings, fast_webhook(hook.url))

    total = consume_until(consumer, lambda t: t.handled >= 2)

    assert (total.parked, total.delivered) == (1, 1)
    assert len(hook.attempts("bad-1")) == 1  # a 4xx is final
    assert hook.delivered_ids() == ["good-1"]
    [entry] = undeliverable(redis, settings)
    assert entry["sink"] == "webhook"
    assert entry["alert"]["alert_id"] == "bad-1"
    assert DriftAlert.model_validate(entry["alert"]) == bad
    assert "HTTP 400" in entry["error"] and "not retried" in entry["error"]
    assert entry["source"]["topic"] == settings.topics.drift_alerts and entry["source"]["key"] == "churn"
    assert datetime.fromisoformat(entry["at"].replace("Z", "+00:00")).tzinfo is not None
    assert "bad-1" not in members(redis, delivered_key(settings, "webhook"))


def test_exhausted_retries_are_parked(settings, hook, publish, consumer_factory, redis) -> None:
    hook.fail_first = 1000
    publish(settings, make_alert("x-1"))
    consumer = consumer_factory(settings, fast_webhook(hook.url, retries=2))

    total = consume_until(consumer, lambda t: t.handled >= 1)

    assert total.parked == 1
    assert [r["status"] for r in hook.attempts("x-1")] == [503, 503, 503]
    [entry] = undeliverable(redis, settings)
    assert entry["alert"]["alert_id"] == "x-1"
    assert "gave up after 3 attempts" in entry["error"] and "HTTP 503" in entry["error"]
    assert members(redis, delivered_key(settings, "webhook")) == set()


def test_unreachable_webhook_is_retried_then_parked(settings, publish, consumer_factory, redis) -> None:
    closed = Hook()  # bind a loopback port, then free it: nothing listens there any more
    url = closed.url
    closed.close()
    publish(settings, make_alert("u-1"))
    consumer = consumer_factory(settings, fast_webhook(url, retries=1))

    consume_until(consumer, lambda t: t.handled >= 1)

    [entry] = undeliverable(redis, settings)
    assert "gave up after 2 attempts" in entry["error"] and "cannot reach 127.0.0.1" in entry["error"]


# ----------------------------------------------------------------------------- invalid messages
def test_malformed_messages_are_parked_and_the_consumer_keeps_going(settings, hook, publish,
                                                                    consumer_factory, redis) -> None:
    publish(settings, b"{not json", key=b"churn")
    publish(settings, json.dumps({"alert_id": "m-1", "model": "churn"}).encode(), key=b"churn")
    publish(settings, make_alert("ok-1"))
    consumer = consumer_factory(settings, fast_webhook(hook.url))

    total = consume_until(consumer, lambda t: t.handled >= 3)

    assert (total.invalid, total.delivered) == (2, 1)
    assert hook.delivered_ids() == ["ok-1"]
    entries = undeliverable(redis, settings)
    assert len(entries) == 2
    by_payload = {e["payload"]: e for e in entries}
    assert set(by_payload) == {"{not json", '{"alert_id": "m-1", "model": "churn"}'}
    assert all(e["alert"] is None and e["sink"] == "webhook" for e in entries)
    assert by_payload["{not json"]["error"].startswith("invalid alert: invalid JSON")
    missing = by_payload['{"alert_id": "m-1", "model": "churn"}']["error"]
    assert "kind: Field required" in missing and "detected_at: Field required" in missing
    assert redis.llen(undeliverable_key(settings)) == 2


# ----------------------------------------------------------------------------- other sinks
def test_redis_sink_pushes_newest_first_and_trims(settings, publish, consumer_factory, redis, redis_url) -> None:
    key = settings.key("alerts", "inbox")
    sink = RedisSink(redis_url, key, max_length=2)
    publish(settings, make_alert("q-1"), make_alert("q-2"), make_alert("q-3"), make_alert("q-2"))
    consumer = consumer_factory(settings, sink)

    total = consume_until(consumer, lambda t: t.handled >= 4)

    assert (total.delivered, total.duplicates) == (3, 1)
    assert [json.loads(raw)["alert_id"] for raw in redis.lrange(key, 0, -1)] == ["q-3", "q-2"]
    assert [a["alert_id"] for a in pushed_alerts(redis, key, limit=1)] == ["q-3"]
    assert members(redis, delivered_key(settings, "redis")) == {"q-1", "q-2", "q-3"}


def test_print_sink_through_the_consumer(settings, publish, consumer_factory) -> None:
    out = io.StringIO()
    alerts = [make_alert("p-1"), make_alert("p-2", severity="warning", status="resolved", feature=None,
                                              message="back to normal\nafter retraining")]
    publish(settings, *alerts)
    consumer = consumer_factory(settings, PrintSink(out))

    consume_until(consumer, lambda t: t.handled >= 2)

    lines = out.getvalue().splitlines()
    assert sorted(lines) == sorted(format_alert(a) for a in alerts)
    assert "2026-11-22T10:00:00Z CRITICAL data drift  churn/2026-11-01  feature=age  " \
           "PSI 0.31 above 0.20 (p-1)  [alert p-1]" in lines
    assert "2026-11-22T10:00:00Z WARNING  data drift RESOLVED  churn/2026-11-01  feature=-  " \
           "back to normal after retraining  [alert p-2]" in lines


# ----------------------------------------------------------------------------- run / stop
def test_run_stops_on_event_and_leaves_an_interrupted_retry_uncommitted(settings, hook, publish,
                                                                        consumer_factory, redis) -> None:
    hook.fail_first = 1000
    publish(settings, make_alert("s-1"))
    group = f"{settings.redis_namespace}-stop"
    consumer = consumer_factory(settings, fast_webhook(hook.url, retries=50, backoff=0.2, max_backoff=0.2),
                                group_id=group)
    stop = threading.Event()
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(total=consumer.run(stop, max_seconds=30)))
    thread.start()
    assert wait(lambda: len(hook.attempts("s-1")) >= 2, 20)
    started = time.monotonic()
    stop.set()
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - started < 5
    assert result["total"].handled == 0 and result["total"].retried == 1
    assert undeliverable(redis, settings) == []  # neither delivered nor parked ...
    consumer.close()

    hook.fail_first = 0  # ... so the next start delivers it
    again = consumer_factory(settings, fast_webhook(hook.url), group_id=group)
    assert consume_until(again, lambda t: t.delivered >= 1).delivered == 1
    assert hook.delivered_ids() == ["s-1"]


def test_run_returns_after_max_seconds(settings, hook, consumer_factory) -> None:
    consumer = consumer_factory(settings, fast_webhook(hook.url))
    started = time.monotonic()
    assert consumer.run(max_seconds=1.5).handled == 0
    assert 1.4 <= time.monotonic() - started < 4


def wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_print_line_uses_utc_and_one_line() -> None:
    alert = make_alert("t-1", detected_at=datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc).isoformat(),
                       model_version="v\n2", message="line one\r\nline two\tend")
    line = format_alert(alert)
    assert "\n" not in line and "\r" not in line and "\t" not in line
    assert line == ("2026-11-22T12:00:00Z CRITICAL data drift  churn/v 2  feature=age  "
                    "line one line two end  [alert t-1]")
    out = io.StringIO()
    PrintSink(out, json_lines=True).deliver(alert)
    assert json.loads(out.getvalue()) == json.loads(alert.to_json())
    assert out.getvalue().count("\n") == 1


# ----------------------------------------------------------------------------- outages and bugs
class FlakyRedis:
    """The real client, except that the first ``failures`` SISMEMBER calls raise ConnectionError."""

    def __init__(self, client: redis_lib.Redis, failures: int) -> None:
        self._client = client
        self.failures = failures

    def sismember(self, *args: Any) -> Any:
        if self.failures > 0:
            self.failures -= 1
            raise redis_lib.ConnectionError("simulated outage")
        return self._client.sismember(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_redis_outage_leaves_the_alert_for_later_then_delivers_once(settings, hook, publish, redis) -> None:
    flaky = FlakyRedis(redis, failures=2)
    publish(settings, make_alert("o-1"))
    consumer = AlertConsumer(settings, fast_webhook(hook.url), group_id=f"{settings.redis_namespace}-flaky",
                             redis=flaky, redis_retry_seconds=0.0)  # type: ignore[arg-type]
    try:
        total = consume_until(consumer, lambda t: t.delivered >= 1, quiet=0.5)
    finally:
        consumer.close()
    assert total.retried == 2 and total.delivered == 1 and total.handled == 1
    assert hook.delivered_ids() == ["o-1"]
    assert undeliverable(redis, settings) == []


class BuggySink(Sink):
    name = "buggy"

    def __init__(self) -> None:
        self.calls = 0

    def deliver(self, alert: DriftAlert, *, cancel: threading.Event | None = None) -> None:
        self.calls += 1
        raise RuntimeError("bug in the sink")


def test_a_sink_that_keeps_failing_is_parked_after_some_tries(settings, publish, consumer_factory, redis) -> None:
    sink = BuggySink()
    publish(settings, make_alert("k-1"))
    consumer = consumer_factory(settings, sink, sink_failures_before_parking=2, max_pause_seconds=0.1)

    total = consume_until(consumer, lambda t: t.handled >= 1)

    assert sink.calls == 2 and total.retried == 1 and total.parked == 1
    [entry] = undeliverable(redis, settings)
    assert entry["sink"] == "buggy" and entry["error"] == "sink failed 2 times: RuntimeError: bug in the sink"


def test_429_is_retried(hook) -> None:
    hook.fail_first, hook.fail_status = 1, 429
    fast_webhook(hook.url).deliver(make_alert("l-1"))
    assert [r["status"] for r in hook.attempts("l-1")] == [429, 200]


def test_undeliverable_lists_newest_first_with_a_limit(settings, redis) -> None:
    key = undeliverable_key(settings)
    redis.lpush(key, json.dumps({"alert": None, "error": "first"}))
    redis.lpush(key, b"\xffnot json")
    redis.lpush(key, json.dumps({"alert": None, "error": "third"}))
    assert [e["error"] for e in undeliverable(redis, settings)] == ["third", "unreadable entry", "first"]
    assert undeliverable(redis, settings, limit=1) == [{"alert": None, "error": "third"}]
    assert undeliverable(redis, settings, limit=0) == []
    assert undeliverable(redis, settings)[1]["raw"] == "\\xffnot json"
