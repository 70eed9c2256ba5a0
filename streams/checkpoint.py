"""Partition checkpoints in Redis: join entries, aggregates, offsets, fenced by an owner token.

Layout (``ns`` is ``Settings.redis_namespace``)::

    {ns}:join:{p}     hash  prediction_id -> entry            (streams.join.Entry.to_list)
    {ns}:agg:{p}      hash  [model, version, tag, value] -> aggregate (streams.partition.Aggregate)
    {ns}:win:{p}      hash  [model, version, tag, value, predicted_at, id] -> rolling-window sample
    {ns}:meta:{p}     hash  offsets / watermark / counters
    {ns}:owner:{p}    string  token of the worker that owns the partition
    {ns}:partitions   set   partitions that have state
    {ns}:version      int   bumped by every checkpoint, so readers can skip unchanged state

A worker :meth:`~CheckpointStore.claim`\\ s a partition before loading it; every
:meth:`~CheckpointStore.save` is a MULTI/EXEC guarded by WATCH on the owner key, so a worker that
lost the partition in a rebalance cannot overwrite the new owner's state: it gets
:class:`~feedback_loop.errors.OwnershipLostError` instead and must drop its copy.
"""

from __future__ import annotations

import uuid

from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import WatchError

from feedback_loop.errors import OwnershipLostError
from feedback_loop.settings import Settings
from streams.partition import PartitionState


class CheckpointStore:
    """Loads and saves :class:`~streams.partition.PartitionState` in Redis."""

    def __init__(self, redis: Redis, settings: Settings, owner: str | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.owner = owner or uuid.uuid4().hex[:12]
        self._tokens: dict[int, bytes] = {}

    def _keys(self, p: int) -> tuple[str, str, str, str, str]:
        k = self.settings.key
        return k("join", p), k("agg", p), k("win", p), k("meta", p), k("owner", p)

    def new_state(self, partition: int) -> PartitionState:
        s = self.settings
        t = s.topics
        return PartitionState(
            partition=partition, ttl=s.prediction_ttl_seconds, retention=s.outcome_retention_seconds,
            window_size=s.rolling_window, max_event_bytes=s.max_event_bytes,
            idle_seconds=s.watermark_idle_seconds,
            topic_kinds={t.predictions: "predictions", t.labels: "labels",
                         t.review_flags: "review-flags"},
        )

    async def claim(self, partition: int, now: float) -> PartitionState:
        """Take ownership of ``partition`` and load its last checkpoint (``now``: wall time)."""
        join_key, agg_key, win_key, meta_key, owner_key = self._keys(partition)
        token = f"{self.owner}:{uuid.uuid4().hex[:8]}".encode()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(owner_key, token)
            pipe.sadd(self.settings.key("partitions"), partition)
            pipe.hgetall(join_key)
            pipe.hgetall(agg_key)
            pipe.hgetall(meta_key)
            pipe.hgetall(win_key)
            _, _, entries, aggregates, meta, windows = await pipe.execute()
        state = self.new_state(partition)
        state.restore(entries, aggregates, meta, windows, now)
        self._tokens[partition] = token
        return state

    def release(self, partition: int) -> None:
        """Forget the token of a partition this worker no longer owns."""
        self._tokens.pop(partition, None)

    async def save(self, state: PartitionState) -> None:
        """Write the state's changes atomically, if this worker still owns the partition."""
        p = state.partition
        token = self._tokens.get(p)
        join_key, agg_key, win_key, meta_key, owner_key = self._keys(p)
        changes = state.changes()
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                await pipe.watch(owner_key)
                if token is None or await pipe.get(owner_key) != token:
                    raise OwnershipLostError(f"partition {p} is owned by another worker now")
                pipe.multi()
                if changes.entries:
                    pipe.hset(join_key, mapping=changes.entries)
                if changes.removed:
                    pipe.hdel(join_key, *changes.removed)
                if changes.aggregates:
                    pipe.hset(agg_key, mapping=changes.aggregates)
                if changes.window_removed:
                    pipe.hdel(win_key, *changes.window_removed)
                if changes.window_set:
                    pipe.hset(win_key, mapping=changes.window_set)
                pipe.hset(meta_key, mapping=changes.meta)
                pipe.incr(self.settings.key("version"))
                await pipe.execute()
        except WatchError:
            raise OwnershipLostError(f"partition {p} was claimed by another worker during a save") from None
        state.mark_clean()


def reset_join_state(client: "SyncRedis", settings: Settings) -> int:
    """Delete every partition checkpoint and snapshot (the input topics were created anew)."""
    patterns = [settings.key(kind, "*") for kind in ("join", "agg", "win", "meta", "owner")]
    keys = [k for pattern in patterns for k in client.scan_iter(match=pattern, count=500)]
    keys += [settings.key("partitions"), settings.key("snapshots"), settings.key("version")]
    return int(client.delete(*keys)) if keys else 0
