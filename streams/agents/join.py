"""The join: predictions, labels and review flags in; outcomes, dead letters and monitor
observations out.

Diverts, never crashes, on bad input: every undecodable, invalid, oversized or mis-keyed message
becomes a dead letter (see :meth:`streams.partition.PartitionState.apply`). It crashes (and the
worker stops, to be restarted from the last committed offsets) only when Kafka or Redis fail.

The join is the hot path, so it does not go through Faust's per-event stream machinery (an
``Event`` object, a channel queue and an ack per message cost more than joining the message):
:class:`JoinService` is a :class:`mode.Service` started with the Faust app that reads the three
input topics with its own ``aiokafka`` consumer in the group ``<app_id>-join``, in batches
(``getmany``), processes the batch's partitions concurrently, and publishes with its own
producer. Per partition and batch the steps are the ones of :mod:`streams.agents.partitioned`:
apply (a pure function), publish and wait for the acks, checkpoint in Redis, and only then
commit the offsets (every ``commit_interval`` seconds, on revocation and at stop).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any, Awaitable

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from mode import Service

from feedback_loop.kafka_security import aiokafka_kwargs
from feedback_loop.settings import Settings
from streams.agents import partitioned
from streams.checkpoint import CheckpointStore
from streams.partition import Record
from streams.topics import StreamTopics

log = logging.getLogger(__name__)

#: Seconds between offset commits while batches flow (the checkpoints make re-reads no-ops).
COMMIT_INTERVAL = 1.0


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, service: JoinService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.service.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.service.on_assigned(assigned)


class JoinService(Service):
    """Reads the join inputs in batches and applies them partition by partition (see module doc)."""

    def __init__(self, settings: Settings, topics: StreamTopics, states: partitioned.PartitionStates,
                 activity: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.topics = topics
        self.states = states
        self.activity = activity
        self.inputs = list(settings.topics[:3])
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self._uncommitted: dict[TopicPartition, int] = {}
        self._committed_at = 0.0
        self._revoked: set[int] = set()

    # ------------------------------------------------------------------ lifecycle
    async def on_start(self) -> None:
        s = self.settings
        self.producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, acks="all", linger_ms=5,
                                         client_id=f"{s.app_id}-join", **aiokafka_kwargs(s))
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap, group_id=s.join_group_id, client_id=f"{s.app_id}-join",
            enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=s.batch_max,
            fetch_max_wait_ms=s.broker_fetch_max_wait_ms,
            session_timeout_ms=int(s.broker_session_timeout * 1000),
            heartbeat_interval_ms=int(s.broker_heartbeat_interval * 1000),
            rebalance_timeout_ms=int(s.broker_rebalance_timeout * 1000), **aiokafka_kwargs(s))
        self.consumer.subscribe(self.inputs, listener=_Rebalance(self))
        await self.consumer.start()

    async def on_stop(self) -> None:
        bound = self.settings.shutdown_timeout_seconds / 2
        if self.consumer is not None:
            try:
                await asyncio.wait_for(self._commit(), bound)
            except Exception as exc:  # the next owner re-reads from the last commit: nothing is lost
                log.warning("join offsets not committed at stop (%r); the next owner re-reads them", exc)
            try:
                await asyncio.wait_for(self.consumer.stop(), bound)
            except asyncio.TimeoutError:
                log.warning("join consumer did not leave its group within %.1f s", bound)
        if self.producer is not None:
            try:
                await asyncio.wait_for(self.producer.stop(), bound)
            except asyncio.TimeoutError:
                log.warning("join producer did not stop within %.1f s", bound)

    def assigned(self) -> list[int]:
        """Partitions of the inputs this worker owns now."""
        if self.consumer is None:
            return []
        return sorted({tp.partition for tp in self.consumer.assignment()})

    def send(self, topic: str, key: bytes | None, value: bytes) -> Awaitable[Any]:
        assert self.producer is not None
        return self.producer.send(topic, value=value, key=key)

    # ------------------------------------------------------------------ the loop
    @Service.task
    async def _consume(self) -> None:
        assert self.consumer is not None
        within_ms = max(1, int(self.settings.batch_within_seconds * 1000))
        while not self.should_stop:
            batches = await self.consumer.getmany(timeout_ms=within_ms, max_records=self.settings.batch_max)
            if batches:
                by_partition: dict[int, list[Any]] = defaultdict(list)
                for tp, messages in batches.items():
                    by_partition[tp.partition].append((tp, messages))
                await asyncio.gather(*(self._process(p, parts) for p, parts in by_partition.items()))
                count = sum(len(m) for m in batches.values())
                self.activity["join_events"] = self.activity.get("join_events", 0) + count
                self.activity["last_event_at"] = asyncio.get_running_loop().time()
            if time.monotonic() - self._committed_at >= COMMIT_INTERVAL:
                await self._commit()

    async def _process(self, partition: int, parts: list[tuple[TopicPartition, list[Any]]]) -> None:
        assert self.consumer is not None
        records = [Record(m.topic, partition, m.offset, m.key, m.value) for _, messages in parts for m in messages]
        async with self.states.locks[partition]:
            owned = self.consumer.assignment()
            if partition in self._revoked or any(tp not in owned for tp, _ in parts):
                return  # revoked while this batch waited: the new owner reads it
            state = await self.states.get(partition)
            saved = await partitioned.publish_and_save(self.send, self.topics, self.states, state,
                                                       state.apply_all(records, time.time()))
        if saved:
            for tp, messages in parts:
                self._uncommitted[tp] = messages[-1].offset + 1
        else:  # ownership lost: read the batch again (the checkpoint skips what was applied)
            for tp, messages in parts:
                if tp in self.consumer.assignment():
                    self.consumer.seek(tp, messages[0].offset)

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        assert self.consumer is not None
        offsets = {tp: o for tp, o in self._uncommitted.items() if only is None or tp in only}
        self._committed_at = time.monotonic()
        if not offsets:
            return
        await self.consumer.commit(offsets)
        for tp, offset in offsets.items():
            if self._uncommitted.get(tp) == offset:
                del self._uncommitted[tp]

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._revoked -= {tp.partition for tp in assigned}
        log.info("join partitions assigned: %s", sorted({tp.partition for tp in assigned}))

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Finish the batch in flight, commit what was applied, drop the partitions' states."""
        partitions = {tp.partition for tp in revoked}
        self._revoked |= partitions
        for partition in sorted(partitions):
            async with self.states.locks[partition]:
                self.states.drop(partition)
        try:
            await self._commit(set(revoked))
        except Exception as exc:  # the next owner re-reads from the last commit: nothing is lost
            log.warning("join offsets of revoked partitions not committed (%r)", exc)
        for tp in revoked:
            self._uncommitted.pop(tp, None)
        if partitions:
            log.info("join partitions revoked: %s", sorted(partitions))


def register(app: faust.App, settings: Settings, topics: StreamTopics, store: CheckpointStore,
             activity: dict[str, Any]) -> JoinService:
    """Start the join with ``app`` and add its expiry timer; return the service."""
    states = partitioned.PartitionStates(store)
    service = JoinService(settings, topics, states, activity)
    app.service(service)  # type: ignore[arg-type]  # an instance is started as it is

    @app.timer(settings.expiry_interval_seconds)
    async def expire_idle() -> None:
        """Expiry also runs while no events arrive (idle inputs release the watermark)."""
        if service.producer is None:
            return
        for partition in states.owned():
            async with states.locks[partition]:
                state = states.loaded(partition)
                if state is not None and state.expire(time.time()):
                    await partitioned.publish_and_save(service.send, topics, states, state, [])

    return service
