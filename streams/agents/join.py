"""The join: predictions, labels and review flags in; outcomes, dead letters and monitor
observations out.

Diverts, never crashes, on bad input: every undecodable, invalid, oversized or mis-keyed message
becomes a dead letter (see :meth:`streams.partition.PartitionState.apply`). It crashes (and the
worker stops, to be restarted from the last committed offsets) only when Kafka or Redis fail.

The join is the hot path, so it does not go through Faust's per-event stream machinery (an
``Event`` object, a channel queue and an ack per message cost more than joining the message):
:class:`JoinService` is a :class:`mode.Service` started with the Faust app that reads the three
input topics with its own ``aiokafka`` consumer in the group ``<app_id>-join``, in batches
(``getmany``), and publishes with its own producer. A fetch is cut into batches of at most
``batch_max`` records in produced order (:func:`produced_batches`). Per batch the steps are the
ones of :mod:`streams.agents.partitioned`, done once for all the partitions in it: apply each
partition's records (a pure function), checkpoint all the partitions in one Redis transaction
together with the messages they produced (each partition's outbox), hand those messages to the
producer, and only once the broker acked them commit the offsets (every ``COMMIT_INTERVAL``
seconds, as soon as a fetch comes back empty, on revocation and at stop): a committed offset
means its records' messages are out. The acks of one batch come in while the next batch is
fetched and applied; that batch is saved (its outboxes replace the last ones) and its messages
are sent (after the last batch's, on every partition) only once they are in, and an expiry, a
revocation and a stop wait for them too (:meth:`JoinService.settle`). Whoever claims a
partition next publishes its outbox again first, so a crash between the save and the acks
yields byte-identical duplicate outcomes, never a second version of an outcome revision (and
observations the monitors see again, byte for byte).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections import defaultdict
from operator import attrgetter
from typing import Any, Awaitable

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from mode import Service

from feedback_loop.kafka_security import aiokafka_kwargs
from feedback_loop.settings import Settings
from streams.agents import partitioned
from streams.checkpoint import CheckpointStore
from streams.observations import pack_by_partition, pack_each_partition
from streams.partition import Emit
from streams.topics import StreamTopics

log = logging.getLogger(__name__)

#: Seconds between offset commits while batches flow (the checkpoints make re-reads no-ops).
COMMIT_INTERVAL = 1.0


_timestamp = attrgetter("timestamp")


def produced_order(runs: list[list[Any]]) -> list[Any]:
    """The messages of ``runs`` (each in offset order) merged by Kafka timestamp, as
    ``heapq.merge(*runs, key=timestamp)`` merges them: a tie goes to the earlier run, and a run's
    own order is kept even where its timestamps go back (a producer's clock may).

    When every run's timestamps are in order, which is the usual case, a stable sort of their
    concatenation gives exactly that order, in C, for a fraction of the cost.

    >>> from collections import namedtuple
    >>> M = namedtuple("M", "name timestamp")
    >>> [m.name for m in produced_order([[M("a", 1), M("b", 3)], [M("c", 1), M("d", 2)]])]
    ['a', 'c', 'd', 'b']
    >>> [m.name for m in produced_order([[M("a", 5), M("b", 1)], [M("c", 3)]])]  # a run out of order
    ['c', 'a', 'b']
    """
    for run in runs:
        times = list(map(_timestamp, run))
        if times != sorted(times):
            return list(heapq.merge(*runs, key=_timestamp))
    return sorted(itertools.chain.from_iterable(runs), key=_timestamp)


def produced_batches(fetched: dict[Any, list[Any]], size: int) -> list[dict[Any, list[Any]]]:
    """The records of one fetch (per topic partition, each in offset order) in
    :func:`produced_order`, cut into batches of at most ``size`` records, each again per topic
    partition (in offset order; a batch's own produced order is its share of the whole one).

    A fetch may bring tens of thousands of records (every partition's prefetched response): they
    are applied, checkpointed and published a bounded batch at a time, so the memory one batch
    takes (its outcomes, observations, checkpoint and outbox) stays bounded, and so does the
    time until its first results are out.

    >>> from collections import namedtuple
    >>> M = namedtuple("M", "name timestamp")
    >>> out = produced_batches({"p": [M("a", 1), M("b", 3)], "l": [M("c", 1), M("d", 2)]}, 3)
    >>> [{tp: [m.name for m in ms] for tp, ms in batch.items()} for batch in out]
    [{'p': ['a'], 'l': ['c', 'd']}, {'p': ['b']}]
    """
    if sum(map(len, fetched.values())) <= size:
        return [fetched] if fetched else []
    owner = {id(m): tp for tp, run in fetched.items() for m in run}
    ordered = produced_order(list(fetched.values()))
    out = []
    for start in range(0, len(ordered), size):
        batch: dict[Any, list[Any]] = {}
        for m in ordered[start:start + size]:
            batch.setdefault(owner[id(m)], []).append(m)
        out.append({tp: batch[tp] for tp in fetched if tp in batch})  # (the fetch's order breaks ties)
    return out


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
        self._stopping = False
        self._loop_done: asyncio.Event | None = None
        #: the loop ended with every batch published (a stop, not an error)
        self._published_all = False
        #: the last batch's acks, then its offsets marked to commit (see settle)
        self._in_flight: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ lifecycle
    async def on_start(self) -> None:
        s = self.settings
        self.producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, acks="all", linger_ms=0,
                                         client_id=f"{s.app_id}-join", **aiokafka_kwargs(s))
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap, group_id=s.join_group_id, client_id=f"{s.app_id}-join",
            enable_auto_commit=False, auto_offset_reset="earliest",
            # partition p of the three inputs holds the same prediction ids: one worker must own
            # it in all three (round robin, aiokafka's default, splits them when the member
            # count does not divide the partition count)
            partition_assignment_strategy=(RangePartitionAssignor,),
            # smaller fetches interleave the partitions finely and keep a batch short
            max_partition_fetch_bytes=256 * 1024,
            fetch_max_wait_ms=s.broker_fetch_max_wait_ms,
            session_timeout_ms=int(s.broker_session_timeout * 1000),
            heartbeat_interval_ms=int(s.broker_heartbeat_interval * 1000),
            rebalance_timeout_ms=int(s.broker_rebalance_timeout * 1000), **aiokafka_kwargs(s))
        self.consumer.subscribe(self.inputs, listener=_Rebalance(self))
        await self.consumer.start()

    async def on_stop(self) -> None:
        bound = self.settings.shutdown_timeout_seconds / 2
        self._stopping = True  # the loop finishes its batch (published and saved), then exits
        if self._loop_done is not None:
            try:
                await asyncio.wait_for(self._loop_done.wait(), bound)
            except asyncio.TimeoutError:
                log.warning("the join's last batch did not finish within %.1f s; the next owner replays it", bound)
        if self._published_all:
            # every batch is published: the next owners have nothing to send again
            try:
                await asyncio.wait_for(asyncio.gather(*(self.states.store.clear_outbox(p)
                                                        for p in self.states.owned())), bound)
            except asyncio.TimeoutError:
                log.info("outboxes left for the next owners (Redis slow); they send them again")
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

    @property
    def stopping(self) -> bool:
        return self._stopping

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
        self._loop_done = asyncio.Event()
        try:
            await self._run_batches(within_ms)
            await self.settle()
            self._published_all = True
        finally:
            self._loop_done.set()

    async def _run_batches(self, within_ms: int) -> None:
        assert self.consumer is not None
        while not self.should_stop and not self._stopping:
            # Everything fetched so far, all three inputs: the fetcher holds at most one response
            # per partition, and a batch that takes a topic's records without the others' would
            # show the monitors hours of predictions before their labels.
            batches = await self.consumer.getmany(timeout_ms=within_ms)
            if batches:
                # a partition left out of one batch (revoked, or lost to another owner) is left
                # out of the rest of this fetch: its records are read again from where it stopped
                skipped: set[int] = set()
                for batch in produced_batches(batches, self.settings.batch_max):
                    batch = {tp: messages for tp, messages in batch.items() if tp.partition not in skipped}
                    if batch:
                        skipped |= await self._process(batch)
                count = sum(len(m) for m in batches.values())
                self.activity["join_events"] = self.activity.get("join_events", 0) + count
                self.activity["last_event_at"] = asyncio.get_running_loop().time()
            # caught up (an empty fetch) or a second since the last commit: commit what is published
            if not batches or time.monotonic() - self._committed_at >= COMMIT_INTERVAL:
                await self._commit()

    async def _process(self, batches: dict[TopicPartition, list[Any]]) -> set[int]:
        """Apply one batch: every partition's records, one Redis transaction for all their
        checkpoints, one round of publishing for all of them, then mark their offsets to commit;
        return the partitions whose records were not applied (revoked, or lost to another owner)."""
        assert self.consumer is not None
        by_partition: dict[int, list[tuple[TopicPartition, list[Any]]]] = defaultdict(list)
        for tp, messages in batches.items():
            by_partition[tp.partition].append((tp, messages))
        async with contextlib.AsyncExitStack() as held:
            for partition in sorted(by_partition):  # always in the same order: no deadlock
                await held.enter_async_context(self.states.locks[partition])
            owned = self.consumer.assignment()
            live = {p: parts for p, parts in by_partition.items()
                    if p not in self._revoked and all(tp in owned for tp, _ in parts)}
            # (a partition revoked while this batch waited is the new owner's to read)
            states = {p: await self.states.get(p) for p in sorted(live)}
            # a new owner first publishes what the last one saved but may not have published
            await self._publish([m for state in states.values() for m in state.leftover])
            for state in states.values():
                state.leftover = []
            # All the fetched records in the order they were produced (Kafka timestamps), across
            # topics and partitions, as one consumer reading them one by one would see them: the
            # monitors then see predictions and outcomes in a realistic order even when a fetch
            # brings a long backlog of each input of each partition.
            now = time.time()
            emitted: list[tuple[int, Emit]] = []
            for m in produced_order([messages for parts in live.values() for _, messages in parts]):
                # (aiokafka's record has the fields of a streams.partition.Record)
                emitted += [(m.partition, e) for e in states[m.partition].apply(m, now)]
            for state in states.values():
                state.expire(now)
            # Saved with the state, published after: a replay by another owner publishes these
            # same outcome bytes again, never a different version of an outcome revision. The
            # published observation messages interleave the partitions' observations as they
            # happened; each partition's outbox holds its own observations, packed apart, so
            # every observation is stored once (a republished one reaches the monitors again
            # in another message, as the same observation bytes).
            ordered = pack_by_partition(emitted)
            outboxes = pack_each_partition(emitted)
            await self.settle()  # the last batch's outboxes are replaced now: its messages must be out
            lost = await self.states.store.save_many(list(states.values()), outboxes) if states else set()
            for partition in lost:
                log.warning("join partition %d is owned by another worker now: dropping its state; "
                            "the new owner replays the batch", partition)
                self.states.drop(partition)
            # a message with any saved partition in it goes out (a lost partition's share of it is
            # sent again by its new owner; that happens only when ownership changes mid-batch)
            pending = await self._send_all([m for partitions, m in ordered if not partitions <= lost])
        offsets = {}
        for partition, parts in live.items():
            for tp, messages in parts:
                if partition not in lost:
                    offsets[tp] = messages[-1].offset + 1
                elif tp in self.consumer.assignment():  # still ours: read the batch again
                    self.consumer.seek(tp, messages[0].offset)
        # the acks come in while the next batch is fetched and applied
        self._in_flight = asyncio.ensure_future(self._acked(pending, offsets))
        return (set(by_partition) - set(live)) | lost

    async def _publish(self, messages: list[Emit]) -> None:
        """Send ``messages`` in order and wait for every ack."""
        await asyncio.gather(*await self._send_all(messages))

    async def _send_all(self, messages: list[Emit]) -> list[Awaitable[Any]]:
        """Hand ``messages`` to the producer in order; return their acks to wait for."""
        name = self.topics.name_of
        return [await self.send(name(m.kind), m.key, m.value) for m in messages]

    async def _acked(self, pending: list[Awaitable[Any]], offsets: dict[TopicPartition, int]) -> None:
        await asyncio.gather(*pending)
        self._uncommitted.update(offsets)  # out: their offsets may be committed

    async def settle(self) -> None:
        """Wait until the last batch's messages are acked (raising the producer's error if one
        failed) and its offsets are marked to commit. Anything that replaces an outbox or sends
        a message of a partition (the next batch, an expiry, a handover) calls it first."""
        in_flight = self._in_flight
        if in_flight is not None:
            await asyncio.shield(in_flight)  # (a waiter cancelled by a bound leaves the acks to the others)
            if self._in_flight is in_flight:
                self._in_flight = None

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        assert self.consumer is not None
        await self.settle()
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
        try:
            await self.settle()
            published = True
        except Exception as exc:  # not published: the outboxes stay for the next owners to send
            log.warning("the last join batch was not published before the handover (%r); "
                        "the next owners send it from the outboxes", exc)
            published = False
        for partition in sorted(partitions):
            async with self.states.locks[partition]:
                if published and self.states.loaded(partition) is not None:
                    await self.states.store.clear_outbox(partition)  # the next owner has nothing to resend
                self.states.drop(partition)
        if published:
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
        if service.producer is None or service.stopping:
            return
        for partition in states.owned():
            async with states.locks[partition]:
                state = states.loaded(partition)
                if state is not None and state.expire(time.time()):
                    await service.settle()  # the save replaces the outbox of the batch in flight
                    await partitioned.publish_and_save(service.send, topics, states, state, [])

    return service
