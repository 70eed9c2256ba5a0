"""``run_alerts``, the entry point of ``feedback-loop alerts``: flag checks, and a real process
that consumes from the session's broker and stops cleanly (exit 0) on SIGTERM and SIGINT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import redis as redis_lib
from kafka import KafkaProducer

from consumers.alerts import build_sink, delivered_key, run_alerts
from consumers.sinks import PrintSink, RedisSink, WebhookSink
from feedback_loop.errors import ConfigurationError, StoreUnavailableError
from feedback_loop.events import DriftAlert
from feedback_loop.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
ARGS: dict[str, Any] = {"sink": "print", "url": None, "redis_key": None, "json_lines": False,
                        "group_id": "feedback-loop-alerts"}


def call(settings: Settings, **overrides: Any) -> int:
    return run_alerts(settings, **{**ARGS, **overrides})


# ----------------------------------------------------------------------------- flag checks
def test_needs_kafka_and_redis() -> None:
    with pytest.raises(ConfigurationError, match=r"--kafka .* and --redis"):
        call(Settings(kafka_bootstrap=None, redis_url=None))
    with pytest.raises(ConfigurationError, match=r"needs --redis") as info:
        call(Settings(kafka_bootstrap="127.0.0.1:9", redis_url=None))
    assert "--kafka" not in str(info.value)


@pytest.mark.parametrize(("overrides", "flag"), [
    ({"sink": "webhook"}, "--url"),
    ({"sink": "webhook", "url": "ftp://example.com/x"}, "--url"),
    ({"sink": "webhook", "url": "http:///no-host"}, "--url"),
    ({"sink": "webhook", "url": "http://127.0.0.1:99999/"}, "--url"),
    ({"sink": "email"}, "--sink"),
    ({"sink": "print", "url": "http://127.0.0.1/"}, "--url"),
    ({"sink": "webhook", "url": "http://127.0.0.1/", "json_lines": True}, "--json"),
    ({"sink": "print", "redis_key": "k"}, "--redis-key"),
    ({"group_id": " "}, "--group-id"),
])
def test_wrong_flags_are_named_before_any_server_is_contacted(overrides: dict[str, Any], flag: str) -> None:
    # Nothing listens on port 9 (discard) of loopback: a connection attempt would fail differently.
    settings = Settings(kafka_bootstrap="127.0.0.1:9", redis_url="redis://127.0.0.1:9/0")
    with pytest.raises(ConfigurationError, match=flag):
        call(settings, **overrides)


def test_unreachable_redis_is_reported() -> None:
    settings = Settings(kafka_bootstrap="127.0.0.1:9", redis_url="redis://:secret@127.0.0.1:9/0")
    with pytest.raises(StoreUnavailableError, match=r"--redis") as info:
        call(settings)
    assert "secret" not in str(info.value)


def test_build_sink_kinds(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url, redis_namespace="ns")
    assert isinstance(build_sink(settings, sink="print", json_lines=True), PrintSink)
    hook = build_sink(settings, sink="webhook", url="https://hooks.example.com/a?token=s3cret")
    assert isinstance(hook, WebhookSink) and "s3cret" not in hook.describe()
    sink = build_sink(settings, sink="redis")
    assert isinstance(sink, RedisSink) and sink.key == "ns:alerts:inbox" and sink.name == "redis"
    sink.close()
    named = build_sink(settings, sink="redis", redis_key="ops:alerts", sink_name="ops-list")
    assert (named.key, named.name) == ("ops:alerts", "ops-list")
    named.close()


# ----------------------------------------------------------------------------- a real process
class _Recorder(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]]  # set per server by the fixture

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.received.append({"key": self.headers.get("Idempotency-Key"), "body": json.loads(body)})
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []
    handler = type("Recorder", (_Recorder,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts", received
    server.shutdown()
    server.server_close()
    thread.join(5)


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.parametrize(("sink", "sig"), [("print", signal.SIGTERM), ("webhook", signal.SIGINT)])
def test_process_delivers_and_stops_cleanly_on_signal(sink: str, sig: int, kafka_bootstrap: str, redis_url: str,
                                                      tmp_path: Path, webhook: Any) -> None:
    url, received = webhook
    uid = uuid.uuid4().hex[:10]
    settings = Settings(kafka_bootstrap=kafka_bootstrap, redis_url=redis_url, topic_prefix=f"alerts-cli-{uid}.",
                        redis_namespace=f"alerts-cli-{uid}", partitions=2, broker_session_timeout=2.0,
                        broker_heartbeat_interval=0.5)
    alert = DriftAlert(alert_id=f"cli-{uid}", kind="prediction", detector="ks", model="churn",
                       model_version="v1", severity="warning", detected_at="2026-11-22T10:00:00Z",
                       message="prediction mix moved")
    script = (
        "import sys\n"
        "from consumers.alerts import run_alerts\n"
        "from feedback_loop.settings import Settings\n"
        "sys.exit(run_alerts(Settings(), sink=sys.argv[1], url=sys.argv[2] or None, redis_key=None,\n"
        "                    json_lines=False, group_id='cli-test'))\n"
    )
    env = {**os.environ, **settings.to_env()}
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", script, sink, url if sink == "webhook" else ""],
                                cwd=ROOT, env=env, stdout=stdout, stderr=stderr)
    redis = redis_lib.Redis.from_url(redis_url, socket_timeout=5)
    producer = None
    try:
        # run_alerts creates the topic; publish once it is consuming.
        assert _wait(lambda: b"Ctrl-C to stop" in err.read_bytes() or proc.poll() is not None, 30), err.read_text()
        assert proc.poll() is None, err.read_text()
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        producer.send(settings.topics.drift_alerts, key=b"churn", value=alert.to_json())
        producer.send(settings.topics.drift_alerts, key=b"churn", value=alert.to_json())
        producer.flush(timeout=10)
        key = delivered_key(settings, sink)
        assert _wait(lambda: redis.sismember(key, alert.alert_id), 30), err.read_text()
        time.sleep(0.5)  # give a (wrong) second delivery the chance to happen

        proc.send_signal(sig)
        assert proc.wait(timeout=15) == 0, err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if producer is not None:
            producer.close(timeout=5)
        keys = list(redis.scan_iter(match=f"{settings.redis_namespace}:*"))
        if keys:
            redis.delete(*keys)
        redis.close()

    status = err.read_text()
    assert "alerts: stopped (1 delivered, 1 duplicates skipped, 0 parked)" in status, status
    if sink == "print":
        expected = ("2026-11-22T10:00:00Z WARNING  prediction drift  churn/v1  feature=-  "
                    f"prediction mix moved  [alert {alert.alert_id}]")
        assert out.read_text().splitlines() == [expected]
    else:
        assert [(r["key"], r["body"]["alert_id"]) for r in received] == [(alert.alert_id, alert.alert_id)]
