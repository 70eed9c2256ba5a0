"""The metrics publisher: every ``metrics_interval_seconds`` the leader merges the partitions'
checkpointed aggregates into MetricsSnapshots, keeps them in Redis (``{ns}:snapshots``) and
publishes the ones that changed on ``metrics``, keyed by model. Nothing is read when no checkpoint
happened since the last tick, and a tick that took long spaces out the next ones (the merge reads
every partition's window samples), so publishing never starves the join.

Crashes only when Redis or Kafka fail (the timer then runs again at the next tick)."""

from __future__ import annotations

from typing import Any

import faust
import orjson
from redis.asyncio import Redis

from feedback_loop.settings import Settings
from streams.snapshots import SnapshotReader
from streams.topics import StreamTopics

_VOLATILE = ("updated_at",)


def register(app: faust.App, settings: Settings, topics: StreamTopics, redis: Redis) -> Any:
    """Add the leader-only publishing timer to ``app``."""
    last: dict[str, bytes] = {}
    reader = SnapshotReader(redis, settings)
    pace = {"next_at": 0.0}

    @app.timer(settings.metrics_interval_seconds, on_leader=True)
    async def publish_metrics() -> None:
        started = app.loop.time()
        if started < pace["next_at"]:
            return
        snapshots, changed = await reader.read()
        pace["next_at"] = started + 4 * (app.loop.time() - started)
        if not changed:
            return
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
