"""The HTTP API (aiohttp): health, Prometheus metrics and live model metrics.

Routes
------
``GET /healthz``      200 when Kafka and Redis answer and at least one worker beat recently, else 503
``GET /metrics``      Prometheus text format of the live snapshots and the join counters
``GET /api/models``   the live MetricsSnapshots (JSON list), merged from the partitions on read
``GET /api/alerts``   recent drift alerts (JSON list), newest first (``?limit=N``, default 100)
``GET /api/alerts/undeliverable``  alerts an alert consumer could not deliver, with the error
``GET /api/history``  rolling / cumulative / estimated accuracy and label coverage per model version
                      over time (``?minutes=N``, default 60), oldest first

The dashboard, the reviewer page and the review routes are in :mod:`feedback_loop.web_review`.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from typing import Any, Iterable

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from consumers.review_queue import ReviewQueue
from feedback_loop import web_review
from feedback_loop.errors import BrokerUnavailableError
from feedback_loop.events import ReviewFlag
from feedback_loop.kafka_admin import wait_for_kafka
from feedback_loop.kafka_security import aiokafka_kwargs, kafka_python_kwargs, redis_kwargs
from feedback_loop.settings import Settings
from feedback_loop.webauth import Authenticator
from streams.snapshots import SnapshotReader, read_counters

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", Redis)
SNAPSHOTS = web.AppKey("snapshots", SnapshotReader)

_GAUGES = ("count", "correct", "accuracy", "predictions", "label_coverage", "expired_unlabeled",
           "precision_macro", "recall_macro", "f1_macro", "log_loss", "brier", "mae", "rmse",
           "label_delay_p50", "label_delay_p95", "estimated_accuracy")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def workers(redis: Redis, settings: Settings) -> list[dict[str, Any]]:
    """The heartbeats of the workers seen in the last few seconds."""
    keys = [k async for k in redis.scan_iter(match=settings.key("workers", "*"), count=100)]
    raws = await redis.mget(keys) if keys else []
    return [orjson.loads(r) for r in raws if r]


async def healthz(request: web.Request) -> web.Response:
    settings, redis = request.app[SETTINGS], request.app[REDIS]
    checks: dict[str, Any] = {}
    try:
        await asyncio.wait_for(redis.ping(), 2.0)
        checks["redis"] = "ok"
        beats = await workers(redis, settings)
        checks["workers"] = len(beats)
        checks["partitions"] = sorted(p for b in beats for p in b["partitions"])
    except Exception as exc:  # noqa: BLE001 - any failure is reported as unhealthy, with its text
        checks["redis"] = f"unreachable: {exc}"
    try:
        await asyncio.to_thread(wait_for_kafka, settings.kafka_bootstrap or "", 2.0,
                                security=kafka_python_kwargs(settings))
        checks["kafka"] = "ok"
    except BrokerUnavailableError as exc:
        checks["kafka"] = f"unreachable: {exc}"
    healthy = checks["redis"] == "ok" and checks["kafka"] == "ok" and checks.get("workers", 0) > 0
    checks["status"] = "ok" if healthy else "unhealthy"
    return _json(checks, 200 if healthy else 503)


async def api_alerts(request: web.Request) -> web.Response:
    settings, redis = request.app[SETTINGS], request.app[REDIS]
    try:
        limit = int(request.query.get("limit", "100"))
        if not 1 <= limit <= 1000:
            raise ValueError
    except ValueError:
        return _json({"error": "limit must be an integer from 1 to 1000"}, 400)
    raw = await redis.lrange(settings.key("alerts", "recent"), 0, 4 * limit)
    seen: set[str] = set()
    alerts = []
    for item in raw:
        alert = orjson.loads(item)
        if alert["alert_id"] not in seen:  # a replayed batch may have stored an alert twice
            seen.add(alert["alert_id"])
            alerts.append(alert)
    return _json(alerts[:limit])


async def api_alerts_undeliverable(request: web.Request) -> web.Response:
    settings, redis = request.app[SETTINGS], request.app[REDIS]
    out = []
    for item in await redis.lrange(settings.key("alerts", "undeliverable"), 0, 999):
        try:
            out.append(orjson.loads(item))
        except orjson.JSONDecodeError:
            out.append({"error": "unreadable entry", "raw": item.decode("utf-8", "replace")})
    return _json(out)


async def api_history(request: web.Request) -> web.Response:
    settings, redis = request.app[SETTINGS], request.app[REDIS]
    try:
        minutes = float(request.query.get("minutes", "60"))
        if not 0 < minutes <= 7 * 24 * 60:
            raise ValueError
    except ValueError:
        return _json({"error": "minutes must be a number from 0 to 10080"}, 400)
    since = time.time() - 60.0 * minutes
    raw = await redis.zrangebyscore(settings.key("history"), since, "+inf")
    return _json({"points": [orjson.loads(item) for item in raw]})


async def api_models(request: web.Request) -> web.Response:
    snapshots, _ = await request.app[SNAPSHOTS].read()
    return _json(snapshots)


class _SnapshotCollector:
    """Exposes already-read snapshots and counters to prometheus_client."""

    def __init__(self, snapshots: list[dict[str, Any]], counters: dict[str, int],
                 beats: list[dict[str, Any]]) -> None:
        self.snapshots, self.counters, self.beats = snapshots, counters, beats

    def collect(self) -> Iterable[GaugeMetricFamily]:
        labels = ["model", "model_version", "window", "segment"]
        for name in _GAUGES:
            family = GaugeMetricFamily(f"feedback_loop_{name}", f"Live {name} per model version and segment",
                                       labels=labels)
            for s in self.snapshots:
                value = s.get(name)
                if value is not None:
                    segment = ",".join(f"{k}={v}" for k, v in s["segment"].items())
                    family.add_metric([s["model"], s["model_version"], s["window"], segment], float(value))
            yield family
        for name, value in sorted(self.counters.items()):
            yield GaugeMetricFamily(f"feedback_loop_{name}", f"Join counter {name}, all partitions",
                                    value=float(value))
        yield GaugeMetricFamily("feedback_loop_workers", "Workers with a recent heartbeat",
                                value=float(len(self.beats)))
        idle = [b["idle_seconds"] for b in self.beats if b.get("idle_seconds") is not None]
        if idle:
            yield GaugeMetricFamily("feedback_loop_worker_idle_seconds_max",
                                    "Longest time since a worker last processed an event", value=max(idle))


async def prometheus(request: web.Request) -> web.Response:
    settings, redis = request.app[SETTINGS], request.app[REDIS]
    (snapshots, _), counters, beats = await asyncio.gather(
        request.app[SNAPSHOTS].read(), read_counters(redis, settings), workers(redis, settings))
    registry = CollectorRegistry()
    registry.register(_SnapshotCollector(snapshots, counters, beats))  # type: ignore[arg-type]
    return web.Response(body=generate_latest(registry),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def create_web_app(settings: Settings) -> web.Application:
    """The aiohttp application; needs ``settings.redis_url`` and ``settings.kafka_bootstrap``."""
    assert settings.redis_url, "resolve the servers before building the web app"
    app = web.Application()
    app[SETTINGS] = settings
    # Retries ride out a Redis restart (the review queue lives there; AOF keeps it).
    app[REDIS] = Redis.from_url(settings.redis_url, retry=Retry(ExponentialBackoff(cap=2.0), 5),
                                retry_on_error=[RedisConnectionError, RedisTimeoutError], **redis_kwargs(settings))
    app[SNAPSHOTS] = SnapshotReader(app[REDIS], settings)

    tokens = {name: token.get_secret_value() for name, token in settings.reviewer_tokens.items()}
    secret = (hashlib.sha256(b"web-sessions" + settings.signing_key.get_secret_value().encode()).digest()
              if settings.signing_key is not None else secrets.token_bytes(32))
    app[web_review.AUTH] = Authenticator(tokens, secret, settings.web_session_seconds)
    app[web_review.QUEUE] = ReviewQueue(app[REDIS], settings)
    publisher = FlagPublisher(settings)
    app[web_review.PUBLISH] = publisher.publish

    async def _close(app: web.Application) -> None:
        await publisher.close()
        await app[REDIS].aclose()

    app.on_cleanup.append(_close)
    web_review.add_routes(app)
    app.router.add_get("/api/history", api_history)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/api/models", api_models)
    app.router.add_get("/api/alerts", api_alerts)
    app.router.add_get("/api/alerts/undeliverable", api_alerts_undeliverable)
    return app


class FlagPublisher:
    """Publishes reviewers' verdicts on ``review-flags`` (started on first use, waits for the ack)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: Any = None
        self._lock = asyncio.Lock()

    async def publish(self, flag: ReviewFlag) -> None:
        from aiokafka import AIOKafkaProducer

        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap,
                                            request_timeout_ms=10_000, **aiokafka_kwargs(self.settings))
                await asyncio.wait_for(producer.start(), 15.0)
                self._producer = producer
        await asyncio.wait_for(self._producer.send_and_wait(
            self.settings.topic("review-flags"), flag.to_json(), key=flag.prediction_id.encode()), 15.0)

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()


async def start_web(settings: Settings, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve the API on ``host:port`` (0 picks a free port); return the runner and the bound port."""
    runner = web.AppRunner(create_web_app(settings), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, bound

