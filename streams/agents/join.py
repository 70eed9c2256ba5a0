"""The join agent: predictions, labels and review flags in, outcomes and dead letters out.

Diverts, never crashes, on bad input: every undecodable, invalid, oversized or mis-keyed message
becomes a dead letter (see :meth:`streams.partition.PartitionState.apply`). It crashes (and the
worker restarts it from the last committed offsets) only when Kafka or Redis fail.

Per batch and partition: apply the records to the partition's state (a pure function), publish
the outcomes and dead letters and wait for the broker's acks, checkpoint the state with its
offsets in Redis, and only then ack the records so Faust commits their offsets. A crash anywhere
replays the batch; the per-topic offsets in the checkpoint make the replay a no-op for the state,
and outcomes published twice carry the same ``(prediction_id, revision)``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any

import faust

from feedback_loop.errors import OwnershipLostError
from feedback_loop.settings import Settings
from streams.checkpoint import CheckpointStore
from streams.partition import PartitionState, Record
from streams.topics import StreamTopics

log = logging.getLogger(__name__)


class PartitionStates:
    """The partition states this worker owns, loaded from their checkpoint on first use.

    Each partition has a lock: a batch and the expiry timer never interleave on one state
    between computing its changes and marking them stored.
    """

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store
        self._states: dict[int, PartitionState] = {}
        self.locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def get(self, partition: int) -> PartitionState:
        state = self._states.get(partition)
        if state is None:
            state = self._states[partition] = await self.store.claim(partition, time.time())
        return state

    def loaded(self, partition: int) -> PartitionState | None:
        return self._states.get(partition)

    def drop(self, partition: int) -> None:
        self._states.pop(partition, None)
        self.store.release(partition)

    def owned(self) -> list[int]:
        return sorted(self._states)


def register(app: faust.App, settings: Settings, topics: StreamTopics, states: PartitionStates,
             activity: dict[str, Any]) -> Any:
    """Add the join agent to ``app``; ``activity`` receives liveness counters."""

    @app.on_partitions_revoked.connect
    async def _on_revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        for partition in {tp.partition for tp in revoked if tp.topic in settings.topics[:3]}:
            states.drop(partition)

    @app.agent(topics.join_sources, name="join", concurrency=1)
    async def join_agent(stream: faust.StreamT) -> None:
        async for events in stream.noack_take(settings.batch_max, settings.batch_within_seconds):
            by_partition: dict[int, list[Any]] = defaultdict(list)
            for event in events:
                by_partition[event.message.partition].append(event)
            for partition, batch in by_partition.items():
                if await _process(partition, batch):
                    for event in batch:
                        await stream.ack(event)
            activity["events"] = activity.get("events", 0) + len(events)
            activity["last_event_at"] = asyncio.get_running_loop().time()

    async def _process(partition: int, batch: list[Any]) -> bool:
        records = [Record(e.message.topic, partition, e.message.offset, e.message.key, e.message.value)
                   for e in batch]
        async with states.locks[partition]:
            state = await states.get(partition)
            return await _publish_and_save(state, state.apply_all(records, time.time()))

    async def _publish_and_save(state: PartitionState, emits: list[Any]) -> bool:
        if emits:
            pending = [await topics.for_kind(m.kind).send(key=m.key, value=m.value) for m in emits]
            await asyncio.gather(*pending)
        try:
            await states.store.save(state)
        except OwnershipLostError as exc:
            log.warning("%s: dropping its state; the new owner replays the batch", exc)
            states.drop(state.partition)
            return False
        return True

    @app.timer(settings.expiry_interval_seconds)
    async def expire_idle() -> None:
        """Expiry also runs while no events arrive (idle inputs release the watermark)."""
        for partition in states.owned():
            async with states.locks[partition]:
                state = states.loaded(partition)
                if state is not None and state.expire(time.time()):
                    await _publish_and_save(state, [])

    return join_agent
