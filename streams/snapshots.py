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
import time
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


def top_window(candidates: list[tuple[float, str, Any]], window_size: int) -> RollingWindow:
    """The rolling window of the newest ``window_size`` of the partitions' window samples,
    given as ``(predicted_at, prediction_id, sample)``, the sample as stored (JSON bytes) or
    decoded (its list)."""
    rolling = RollingWindow(window_size)
    for _, _, raw in heapq.nlargest(window_size, candidates, key=lambda t: (t[0], t[1])):
        rolling.upsert(Sample.from_list(raw if isinstance(raw, list) else orjson.loads(raw)))
    return rolling


def merge_key(key: AggKey, parts: list[dict[str, Any]], rolling: RollingWindow,
              window_size: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """One aggregate key over the partitions that have it: (common fields, cumulative, rolling).

    ``parts`` are the partitions' aggregates (:meth:`streams.partition.Aggregate.to_dict`),
    ``rolling`` the merged window (:func:`top_window`).
    The deployment-wide fields (``orphan_labels``, ``updated_at``, estimates) are added by
    :func:`finish`.
    """
    model, version, tag, value = key
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
    }
    return common, {"window": "cumulative", **totals}, {"window": "rolling", **rolling.result(),
                                                       "window_size": window_size}


def finish(merged: list[tuple[AggKey, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]], orphans: int,
           now: datetime | None = None,
           estimates: dict[tuple[str, str], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The snapshots of :func:`merge_key` results (in key order), with the deployment-wide fields."""
    updated_at = (now or datetime.now(timezone.utc)).isoformat()
    out: list[dict[str, Any]] = []
    for (model, version, tag, _), (common, cumulative, rolling) in merged:
        common = {**common, "orphan_labels": orphans, "updated_at": updated_at}
        if not tag and estimates and (model, version) in estimates:
            latest = estimates[(model, version)]
            common["estimated_accuracy"] = latest["estimated_accuracy"]
            if latest.get("reconciled"):
                common["estimate_reconciled"] = latest["reconciled"][-1]
        out.append({**common, **cumulative})
        out.append({**common, **rolling})
    return out


def merge(views: list[PartitionView], window_size: int, now: datetime | None = None,
          estimates: dict[tuple[str, str], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The MetricsSnapshots (as dicts), cumulative then rolling, for every model version and segment.

    ``estimates`` (model, version) -> the drift monitor's latest estimate: shown on the
    whole-version snapshots as ``estimated_accuracy`` (latest window) and ``estimate_reconciled``
    (the latest window whose labels have landed since: its estimate next to its realized accuracy).
    """
    keys = sorted({k for v in views for k in v.cumulative})
    orphans = sum(v.counters.get("orphan_labels", 0) for v in views)
    merged = [(key, merge_key(key, [v.cumulative[key] for v in views if key in v.cumulative],
                              top_window([item for v in views for item in v.window.get(key, ())], window_size),
                              window_size))
              for key in keys]
    return finish(merged, orphans, now, estimates)


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


def log_entry(partition: int, aggregates: dict[bytes, bytes], window_set: dict[bytes, bytes],
              window_removed: list[bytes], counters: bytes) -> dict[str, bytes]:
    """The ``{ns}:agglog`` stream entry of one join checkpoint: what readers need of its changes.

    Keys and values are JSON already; they are spliced into JSON arrays, not re-encoded.

    >>> entry = log_entry(3, {b'["m","1","",""]': b'{"n":1}'}, {}, [b'["m"]'], b'{"orphan_labels":0}')
    >>> orjson.loads(entry["a"]), orjson.loads(entry["wr"]), entry["p"]
    ([[['m', '1', '', ''], {'n': 1}]], [['m']], b'3')
    """
    def pairs(d: dict[bytes, bytes]) -> bytes:
        return b"[" + b",".join(b"[" + k + b"," + v + b"]" for k, v in d.items()) + b"]"
    return {"p": str(partition).encode(), "a": pairs(aggregates), "ws": pairs(window_set),
            "wr": b"[" + b",".join(window_removed) + b"]", "c": counters}


class _Replica:
    """A reader's copy of one partition's aggregates and counters."""

    __slots__ = ("cumulative", "counters")

    def __init__(self) -> None:
        self.cumulative: dict[AggKey, dict[str, Any]] = {}
        self.counters: dict[str, int] = {}


class SnapshotReader:
    """Reads the live snapshots, keeping a replica of the partitions' aggregates up to date.

    The first read loads every partition's checkpoint and the id of the last entry of the
    ``{ns}:agglog`` stream in one transaction; later reads apply only the stream entries added
    since (each join checkpoint adds one, in the same transaction as its state, with the
    aggregates and window samples it changed) and merge only the aggregate keys they touched.

    The merged rolling window of a key is kept up to date by upserting the samples the entries
    set; the samples they remove need nothing: a partition drops a sample from its window only
    when it holds ``rolling_window`` newer ones, so the sample is out of the merged top N too.
    A reader that did not catch up for half of ``snapshot_log_seconds`` (entries older than that
    are trimmed), or that finds the stream gone (state reset), loads everything again. Nothing is read when ``{ns}:version`` did
    not move.
    """

    #: Stream entries fetched per round trip.
    BATCH = 500

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis, self.settings = redis, settings
        self._version: bytes | None = None
        self._snapshots: list[dict[str, Any]] = []
        self._replicas: dict[int, _Replica] = {}
        self._last_id: bytes | None = None  # None: nothing loaded yet
        self._merged: dict[AggKey, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {}
        self._windows: dict[AggKey, RollingWindow] = {}
        self._dirty: set[AggKey] = set()
        self.full_loads = 0
        self._caught_up_at = float("-inf")

    async def read(self) -> tuple[list[dict[str, Any]], bool]:
        """The snapshots, and whether they were recomputed since the last call."""
        version = await self.redis.get(self.settings.key("version"))
        if version is not None and version == self._version:
            return self._snapshots, False
        # Entries are trimmed snapshot_log_seconds after they were added (by the workers' clocks):
        # a reader that last caught up more than half that ago may have missed some.
        fresh = time.monotonic() - self._caught_up_at < self.settings.snapshot_log_seconds / 2
        if self._last_id is None or not fresh or not await self._follow():
            await self._load()
        self._caught_up_at = time.monotonic()
        for key in self._dirty:
            parts = [r.cumulative[key] for r in self._replicas.values() if key in r.cumulative]
            if parts:
                window = self._windows.setdefault(key, RollingWindow(self.settings.rolling_window))
                self._merged[key] = merge_key(key, parts, window, self.settings.rolling_window)
            else:
                self._merged.pop(key, None)
        self._dirty.clear()
        orphans = sum(r.counters.get("orphan_labels", 0) for r in self._replicas.values())
        estimates = await read_estimates(self.redis, self.settings)
        self._snapshots = finish(sorted(self._merged.items()), orphans, estimates=estimates)
        self._version = version
        return self._snapshots, True

    async def _load(self) -> None:
        """Every partition's checkpoint and the log position, read in one transaction."""
        k = self.settings.key
        members: list[int] = await _members(self.redis, self.settings)
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.smembers(k("partitions"))
                pipe.xrevrange(k("agglog"), count=1)
                for p in members:
                    pipe.hgetall(k("agg", p))
                    pipe.hgetall(k("win", p))
                    pipe.hget(k("meta", p), "counters")
                replies = await pipe.execute()
            now_members = sorted(int(p) for p in replies[0])
            if now_members == members:
                break
            members = now_members  # a partition got its first checkpoint meanwhile: read it too
        last = replies[1]
        self._last_id = last[0][0] if last else b"0-0"
        self._replicas = {}
        candidates: dict[AggKey, list[tuple[float, str, bytes]]] = {}
        for i, p in enumerate(members):
            raw_aggs, raw_win, raw_counters = replies[2 + 3 * i:5 + 3 * i]
            replica = self._replicas[p] = _Replica()
            replica.cumulative = {decode_agg_key(key): orjson.loads(v) for key, v in raw_aggs.items()}
            replica.counters = orjson.loads(raw_counters) if raw_counters else {}
            for field_raw, raw in raw_win.items():
                key, predicted_at, pid = decode_window_field(field_raw)
                candidates.setdefault(key, []).append((predicted_at, pid, raw))
        self._windows = {key: top_window(items, self.settings.rolling_window) for key, items in candidates.items()}
        self._merged = {}
        self._dirty = {key for r in self._replicas.values() for key in r.cumulative}
        self.full_loads += 1

    async def _follow(self) -> bool:
        """Apply the log entries after the last one seen; False when a full load is needed."""
        log_key = self.settings.key("agglog")
        assert self._last_id is not None
        while True:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xrange(log_key, count=1)
                pipe.xrange(log_key, min=b"(" + self._last_id, count=self.BATCH)
                first, entries = await pipe.execute()
            if not first and self._replicas:
                return False  # the stream is gone: the state was reset
            for entry_id, fields in entries:
                self._apply(fields)
                self._last_id = entry_id
            if len(entries) < self.BATCH:
                return True

    def _apply(self, fields: dict[bytes, bytes]) -> None:
        replica = self._replicas.setdefault(int(fields[b"p"]), _Replica())
        for raw_key, agg in orjson.loads(fields[b"a"]):
            key = (raw_key[0], raw_key[1], raw_key[2], raw_key[3])
            replica.cumulative[key] = agg
            self._dirty.add(key)
        for raw_field, sample in orjson.loads(fields[b"ws"]):  # removals: see the class doc
            key = (raw_field[0], raw_field[1], raw_field[2], raw_field[3])
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = RollingWindow(self.settings.rolling_window)
            window.upsert(Sample.from_list(sample))
            self._dirty.add(key)
        replica.counters = orjson.loads(fields[b"c"])


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
