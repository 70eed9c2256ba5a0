"""The metrics publisher: every ``metrics_interval_seconds`` the leader merges the partitions'
checkpointed aggregates into MetricsSnapshots, keeps them in Redis (``{ns}:snapshots``) and
publishes the ones that changed on ``metrics``, keyed by model. Nothing is read when no checkpoint
happened since the last tick, and a tick that took long spaces out the next ones (the merge reads
every partition's window samples), so publishing never starves the join.

Crashes only when Redis or Kafka fail (the timer then runs again at the next tick)."""

from __future__ import annotations

import time
from typing import Any

import faust
import orjson
from redis.asyncio import Redis

from feedback_loop.settings import Settings
from streams.snapshots import SnapshotReader
from streams.topics import StreamTopics

_VOLATILE = ("updated_at",)
#: Dashboard history: points older than this are trimmed.
HISTORY_SECONDS = 7 * 24 * 3600.0
HISTORY_POINTS = 50_000


def history_points(snapshots: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """One point per model version (its whole-version snapshots) for the dashboard's charts."""
    points: dict[tuple[str, str], dict[str, Any]] = {}
    for snap in snapshots:
        if snap["segment"]:
            continue
        point = points.setdefault((snap["model"], snap["model_version"]), {
            "t": now, "model": snap["model"], "model_version": snap["model_version"]})
        if snap["window"] == "cumulative":
            point.update(accuracy=snap.get("accuracy"), label_coverage=snap.get("label_coverage"),
                         count=snap.get("count"), predictions=snap.get("predictions"),
                         estimated_accuracy=snap.get("estimated_accuracy"))
        else:
            point["rolling_accuracy"] = snap.get("accuracy")
    return list(points.values())


async def record_history(redis: Redis, settings: Settings, snapshots: list[dict[str, Any]], now: float) -> None:
    """Append the points to ``{ns}:history`` (a sorted set by time) and trim old ones."""
    points = history_points(snapshots, now)
    if not points:
        return
    key = settings.key("history")
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zadd(key, {orjson.dumps(p, option=orjson.OPT_SORT_KEYS): now for p in points})
        pipe.zremrangebyscore(key, "-inf", now - HISTORY_SECONDS)
        pipe.zremrangebyrank(key, 0, -HISTORY_POINTS - 1)
        await pipe.execute()


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
        await record_history(redis, settings, snapshots, time.time())
        for snap in snapshots:
            ident = orjson.dumps([snap["model"], snap["model_version"], snap["segment"], snap["window"]],
                                 option=orjson.OPT_SORT_KEYS).decode()
            body = orjson.dumps({k: v for k, v in snap.items() if k not in _VOLATILE},
                                option=orjson.OPT_SORT_KEYS)
            if last.get(ident) != body:
                await topics.metrics.send(key=snap["model"].encode(), value=orjson.dumps(snap))
                last[ident] = body

    return publish_metrics
