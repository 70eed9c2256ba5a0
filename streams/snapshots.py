"""Merge the partitions' aggregates into MetricsSnapshots.

Cumulative metrics add up across partitions (counts and sums, see
:class:`~feedback_loop.metrics.Accumulator`); the rolling window of the last N outcomes (by
prediction time) is the top N of the union of the partitions' windows, since each partition keeps
its own top N. Both are exact whatever worker owns which partition.

``predictions``, ``label_coverage``, ``expired_unlabeled`` and ``orphan_labels`` are totals in both
windows. Orphan labels have no prediction, hence no model: ``orphan_labels`` is the count for the
whole deployment, repeated in every snapshot.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone
from typing import Any

import orjson
from redis.asyncio import Redis

from feedback_loop.metrics import Accumulator, RollingWindow
from feedback_loop.settings import Settings
from streams.partition import AggKey, Aggregate, decode_agg_key


def merge_aggregates(
    partitions: list[dict[AggKey, Aggregate]], counters: list[dict[str, int]], window_size: int,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """The MetricsSnapshots (as dicts), cumulative then rolling, for every model version and segment."""
    by_key: dict[AggKey, list[Aggregate]] = defaultdict(list)
    for aggregates in partitions:
        for key, agg in aggregates.items():
            by_key[key].append(agg)
    orphans = sum(c.get("orphan_labels", 0) for c in counters)
    updated_at = (now or datetime.now(timezone.utc)).isoformat()
    out: list[dict[str, Any]] = []
    for key in sorted(by_key):
        model, version, tag, value = key
        aggs = by_key[key]
        cumulative = Accumulator()
        for agg in aggs:
            cumulative.merge(agg.cumulative)
        predictions = sum(a.predictions for a in aggs)
        common = {
            "model": model, "model_version": version, "segment": {tag: value} if tag else {},
            "predictions": predictions,
            "expired_unlabeled": sum(a.expired_unlabeled for a in aggs),
            "orphan_labels": orphans, "updated_at": updated_at,
        }
        totals = cumulative.result()
        common["label_coverage"] = totals["count"] / predictions if predictions else None
        rolling = RollingWindow.merged((a.rolling for a in aggs), window_size)
        for window, result in (("cumulative", totals), ("rolling", rolling.result())):
            snap = {**common, "window": window, **result}
            if window == "rolling":
                snap["window_size"] = window_size
            out.append(snap)
    return out


async def read_partitions(
    redis: Redis, settings: Settings,
) -> tuple[list[dict[AggKey, Aggregate]], list[dict[str, int]]]:
    """Every partition's aggregates and counters, as last checkpointed."""
    members = sorted(int(p) for p in await redis.smembers(settings.key("partitions")))
    async with redis.pipeline(transaction=False) as pipe:
        for p in members:
            pipe.hgetall(settings.key("agg", p))
            pipe.hget(settings.key("meta", p), "counters")
        replies = await pipe.execute()
    partitions, counters = [], []
    for raw_aggs, raw_counters in zip(replies[::2], replies[1::2]):
        partitions.append({decode_agg_key(k): Aggregate.from_dict(orjson.loads(v))
                           for k, v in raw_aggs.items()})
        counters.append(orjson.loads(raw_counters) if raw_counters else {})
    return partitions, counters


async def read_snapshots(redis: Redis, settings: Settings) -> list[dict[str, Any]]:
    """The live MetricsSnapshots of the deployment."""
    partitions, counters = await read_partitions(redis, settings)
    return merge_aggregates(partitions, counters, settings.rolling_window)


async def read_counters(redis: Redis, settings: Settings) -> dict[str, int]:
    """The partitions' counters summed (orphan labels, duplicates, dead letters, ...)."""
    members = sorted(int(p) for p in await redis.smembers(settings.key("partitions")))
    async with redis.pipeline(transaction=False) as pipe:
        for p in members:
            pipe.hget(settings.key("meta", p), "counters")
        replies = await pipe.execute()
    total: dict[str, int] = defaultdict(int)
    for c in (orjson.loads(r) for r in replies if r):
        for name, n in c.items():
            total[name] += n
    return dict(total)
