"""The metrics publisher: every ``metrics_interval_seconds`` the leader merges the partitions'
checkpointed aggregates into MetricsSnapshots, keeps them in Redis (``{ns}:snapshots``) and
publishes the ones that changed on ``metrics``, keyed by model.

Crashes only when Redis or Kafka fail (the timer then runs again at the next tick)."""

from __future__ import annotations

from typing import Any

import faust
import orjson
from redis.asyncio import Redis

from feedback_loop.settings import Settings
from streams.snapshots import read_snapshots
from streams.topics import StreamTopics

_VOLATILE = ("updated_at",)


def register(app: faust.App, settings: Settings, topics: StreamTopics, redis: Redis) -> Any:
    """Add the leader-only publishing timer to ``app``."""
    last: dict[str, bytes] = {}

    @app.timer(settings.metrics_interval_seconds, on_leader=True)
    async def publish_metrics() -> None:
        snapshots = await read_snapshots(redis, settings)
        await redis.set(settings.key("snapshots"), orjson.dumps(snapshots))
        for snap in snapshots:
            ident = orjson.dumps([snap["model"], snap["model_version"], snap["segment"], snap["window"]],
                                 option=orjson.OPT_SORT_KEYS).decode()
            body = orjson.dumps({k: v for k, v in snap.items() if k not in _VOLATILE},
                                option=orjson.OPT_SORT_KEYS)
            if last.get(ident) != body:
                await topics.metrics.send(key=snap["model"].encode(), value=orjson.dumps(snap))
                last[ident] = body

    return publish_metrics
