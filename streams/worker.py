"""Wire one worker: the Faust app, its topics, agents, timers and Redis client."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import faust
import orjson
from redis.asyncio import Redis

from feedback_loop.settings import Settings
from streams.agents import join, metrics
from streams.app import create_app
from streams.checkpoint import CheckpointStore
from streams.topics import declare

HEARTBEAT_SECONDS = 1.0


def build_app(settings: Settings) -> faust.App:
    """The worker's Faust app for ``settings`` (a Kafka bootstrap and a Redis URL must be set)."""
    assert settings.kafka_bootstrap and settings.redis_url, "resolve the servers before building a worker"
    app = create_app(settings)
    topics = declare(app, settings)
    redis = Redis.from_url(settings.redis_url)
    store = CheckpointStore(redis, settings)
    states = join.PartitionStates(store)
    activity: dict[str, Any] = {"events": 0, "last_event_at": None}
    join.register(app, settings, topics, states, activity)
    metrics.register(app, settings, topics, redis)
    started = time.time()

    @app.timer(HEARTBEAT_SECONDS)
    async def heartbeat() -> None:
        """Liveness for /healthz: which worker holds which partitions and when it last worked."""
        loop_now = app.loop.time()
        last = activity["last_event_at"]
        inputs = set(settings.topics[:3])
        assigned = sorted({tp.partition for tp in app.consumer.assignment() if tp.topic in inputs})
        beat = {"worker": store.owner, "pid": os.getpid(), "host": socket.gethostname(),
                "started_at": started, "at": time.time(), "partitions": assigned,
                "loaded_partitions": states.owned(),
                "events": activity["events"],
                "idle_seconds": None if last is None else round(loop_now - last, 3)}
        await redis.set(settings.key("workers", store.owner), orjson.dumps(beat),
                        ex=int(max(5, 5 * HEARTBEAT_SECONDS)))

    return app


def run_worker(settings: Settings) -> None:
    """Run one worker until SIGINT/SIGTERM (blocking)."""
    app = build_app(settings)
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True)
    worker.execute_from_commandline()
