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

import heapq
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson
from redis.asyncio import Redis

from feedback_loop.metrics import Accumulator, RollingWindow, Sample
from feedback_loop.settings import Settings
from streams.observations import SEPARATOR
from streams.partition import AggKey, decode_agg_key, decode_window_field


@dataclass
class PartitionView:
    """What a reader needs of one partition's checkpoint."""

    cumulative: dict[AggKey, dict[str, Any]] = field(default_factory=dict)
    #: per aggregate: (predicted_at, prediction_id, raw sample) of the window's samples
    window: dict[AggKey, list[tuple[float, str, bytes]]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)


def merge(views: list[PartitionView], window_size: int, now: datetime | None = None,
          estimates: dict[tuple[str, str], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The MetricsSnapshots (as dicts), cumulative then rolling, for every model version and segment.

    ``estimates`` (model, version) -> the drift monitor's latest estimate: shown on the
    whole-version snapshots as ``estimated_accuracy`` (latest window) and ``estimate_reconciled``
    (the latest window whose labels have landed since: its estimate next to its realized accuracy).
    """
    keys = sorted({k for v in views for k in v.cumulative})
    orphans = sum(v.counters.get("orphan_labels", 0) for v in views)
    updated_at = (now or datetime.now(timezone.utc)).isoformat()
    out: list[dict[str, Any]] = []
    for key in keys:
        model, version, tag, value = key
        parts = [v.cumulative[key] for v in views if key in v.cumulative]
        cumulative = Accumulator()
        for part in parts:
            cumulative.merge(Accumulator.from_dict(part["cumulative"]))
        predictions = sum(p["predictions"] for p in parts)
        totals = cumulative.result()
        common = {
            "model": model, "model_version": version, "segment": {tag: value} if tag else {},
            "predictions": predictions,
            "label_coverage": totals["count"] / predictions if predictions else None,
            "expired_unlabeled": sum(p["expired_unlabeled"] for p in parts),
            "orphan_labels": orphans, "updated_at": updated_at,
        }
        if not tag and estimates and (model, version) in estimates:
            latest = estimates[(model, version)]
            common["estimated_accuracy"] = latest["estimated_accuracy"]
            if latest.get("reconciled"):
                common["estimate_reconciled"] = latest["reconciled"][-1]
        candidates = [item for v in views for item in v.window.get(key, ())]
        rolling = RollingWindow(window_size)
        for _, _, raw in heapq.nlargest(window_size, candidates, key=lambda t: (t[0], t[1])):
            rolling.upsert(Sample.from_list(orjson.loads(raw)))
        out.append({**common, "window": "cumulative", **totals})
        out.append({**common, "window": "rolling", **rolling.result(), "window_size": window_size})
    return out


async def _members(redis: Redis, settings: Settings) -> list[int]:
    return sorted(int(p) for p in await redis.smembers(settings.key("partitions")))


async def read_views(redis: Redis, settings: Settings) -> list[PartitionView]:
    """Every partition's aggregates, window samples and counters, as last checkpointed."""
    members = await _members(redis, settings)
    async with redis.pipeline(transaction=False) as pipe:
        for p in members:
            pipe.hgetall(settings.key("agg", p))
            pipe.hgetall(settings.key("win", p))
            pipe.hget(settings.key("meta", p), "counters")
        replies = await pipe.execute()
    views = []
    for i in range(0, len(replies), 3):
        raw_aggs, raw_win, raw_counters = replies[i:i + 3]
        view = PartitionView(
            cumulative={decode_agg_key(k): orjson.loads(v) for k, v in raw_aggs.items()},
            counters=orjson.loads(raw_counters) if raw_counters else {})
        for field_raw, raw in raw_win.items():
            key, predicted_at, pid = decode_window_field(field_raw)
            view.window.setdefault(key, []).append((predicted_at, pid, raw))
        views.append(view)
    return views


async def read_estimates(redis: Redis, settings: Settings) -> dict[tuple[str, str], dict[str, Any]]:
    """The latest estimate per model version (written by the drift monitor)."""
    raw = await redis.hgetall(settings.key("estimates"))
    out = {}
    for field_raw, value in raw.items():
        model, version = field_raw.decode().split(SEPARATOR, 1)
        out[(model, version)] = orjson.loads(value)
    return out


async def read_snapshots(redis: Redis, settings: Settings) -> list[dict[str, Any]]:
    """The live MetricsSnapshots of the deployment."""
    views = await read_views(redis, settings)
    return merge(views, settings.rolling_window, estimates=await read_estimates(redis, settings))


class SnapshotReader:
    """Reads the live snapshots, recomputing them only when a checkpoint changed the state."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis, self.settings = redis, settings
        self._version: bytes | None = None
        self._snapshots: list[dict[str, Any]] = []

    async def read(self) -> tuple[list[dict[str, Any]], bool]:
        """The snapshots, and whether they were recomputed since the last call."""
        version = await self.redis.get(self.settings.key("version"))
        if version is not None and version == self._version:
            return self._snapshots, False
        self._snapshots = await read_snapshots(self.redis, self.settings)
        self._version = version
        return self._snapshots, True


async def read_counters(redis: Redis, settings: Settings) -> dict[str, int]:
    """The partitions' counters summed (orphan labels, duplicates, dead letters, ...)."""
    members = await _members(redis, settings)
    async with redis.pipeline(transaction=False) as pipe:
        for p in members:
            pipe.hget(settings.key("meta", p), "counters")
        replies = await pipe.execute()
    total: dict[str, int] = defaultdict(int)
    for c in (orjson.loads(r) for r in replies if r):
        for name, n in c.items():
            total[name] += n
    return dict(total)
