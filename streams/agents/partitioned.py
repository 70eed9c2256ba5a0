"""The loop every stateful agent shares: batches by partition, apply, publish, checkpoint, ack.

Per batch and partition: apply the records to the partition's state (a pure function), publish
what it emits and wait for the broker's acks, checkpoint the state with its offsets in Redis, and
only then ack the records so Faust commits their offsets. A crash anywhere replays the batch; the
per-topic offsets in the checkpoint make the replay a no-op for the state, and messages published
twice carry the same identity (outcome revision, alert id).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any, Awaitable, Callable, Protocol

import faust

from feedback_loop.errors import OwnershipLostError
from streams.partition import Emit, Record
from streams.topics import StreamTopics

log = logging.getLogger(__name__)


#: Longest the monitors hold the event loop before handing it to the join (at record boundaries).
SLICE_SECONDS = 0.002


class BatchState(Protocol):
    """A partition's state applied a record at a time (:class:`streams.monitor_state.MonitorPartition`)."""

    def apply(self, record: Record) -> list[Emit]: ...
    def finish(self, now: float) -> list[Emit]: ...


async def apply_cooperatively(state: BatchState, records: list[Record], now: float,
                              slice_seconds: float = SLICE_SECONDS) -> list[Emit]:
    """``state.apply_all(records, now)`` on the event loop, handing the loop back (one turn) between
    records once ``slice_seconds`` have passed since it last did.

    The same messages as ``apply_all``: the records are applied in order, and nothing else
    touches the state meanwhile (the caller holds the partition's lock). The join runs on the same
    loop: it applies, checkpoints and publishes its batches between the records of a long
    monitor batch. (A thread would overlap nothing, since both need the interpreter lock, and it
    costs more: every time the loop waits on a socket, the thread takes the lock, and the loop
    waits up to a switch interval to get it back. Measured at 2,000 labels/s: p99
    label-to-applied 267-288 ms in a thread, 140-160 ms on the loop.) A record whose
    observations complete a model version's drift reference holds the loop for the one-off
    calibration of its thresholds (about a second).
    """
    out: list[Emit] = []
    clock = time.perf_counter
    started = clock()
    for record in records:
        out.extend(state.apply(record))
        if clock() - started >= slice_seconds:
            await asyncio.sleep(0)
            started = clock()
    out.extend(state.finish(now))
    return out


class Store(Protocol):
    async def claim(self, partition: int, now: float) -> Any: ...
    def release(self, partition: int) -> None: ...
    async def save(self, state: Any) -> None: ...


class PartitionStates:
    """The partition states this worker owns, loaded from their checkpoint on first use.

    Each partition has a lock: a batch and a timer never interleave on one state between
    computing its changes and marking them stored.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._states: dict[int, Any] = {}
        self.locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def get(self, partition: int) -> Any:
        state = self._states.get(partition)
        if state is None:
            state = self._states[partition] = await self.store.claim(partition, time.time())
        return state

    def loaded(self, partition: int) -> Any | None:
        return self._states.get(partition)

    def drop(self, partition: int) -> None:
        self._states.pop(partition, None)
        self.store.release(partition)

    def owned(self) -> list[int]:
        return sorted(self._states)


#: ``send(topic, key, value)``: hand one message to a producer; awaiting the result waits for its ack.
Send = Callable[[str, "bytes | None", bytes], Awaitable[Awaitable[Any]]]


def faust_send(app: faust.App) -> Send:
    """``send`` through the Faust app's producer."""
    def send(topic: str, key: bytes | None, value: bytes) -> Awaitable[Awaitable[Any]]:
        return app.producer.send(topic, key, value, partition=None, timestamp=None, headers=None)
    return send


async def publish_and_save(send: Send, topics: StreamTopics, states: PartitionStates, state: Any,
                           emits: list[Emit]) -> bool:
    """Publish ``emits`` (waiting for the acks), then checkpoint; False if the partition was lost.

    Messages go straight to the producer (raw bytes, no Faust channel machinery per message).
    """
    prepare = getattr(states.store, "before_publish", None)
    if prepare is not None:
        await prepare(state)
    if emits:
        name = topics.name_of
        pending = [await send(name(m.kind), m.key, m.value) for m in emits]
        await asyncio.gather(*pending)
    try:
        await states.store.save(state)
    except OwnershipLostError as exc:
        log.warning("%s: dropping its state; the new owner replays the batch", exc)
        states.drop(state.partition)
        return False
    return True


def register(app: faust.App, name: str, source: faust.TopicT, inputs: set[str], batch_max: int,
             within: float, topics: StreamTopics, states: PartitionStates,
             activity: dict[str, Any]) -> Any:
    """Add the agent ``name`` over ``source``; ``activity`` receives liveness counters.

    Batches are applied on the event loop a slice at a time (:func:`apply_cooperatively`); the
    state is pure Python and only this agent's task touches it, under the partition's lock.
    """
    send = faust_send(app)

    @app.on_partitions_revoked.connect
    async def _on_revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        for partition in {tp.partition for tp in revoked if tp.topic in inputs}:
            states.drop(partition)

    async def process(partition: int, batch: list[Any]) -> bool:
        records = [Record(e.message.topic, partition, e.message.offset, e.message.key, e.message.value)
                   for e in batch]
        async with states.locks[partition]:
            state = await states.get(partition)
            before = getattr(state, "observed", None)
            emits = await apply_cooperatively(state, records, time.time())
            # liveness counts what the records hold (a packed record holds many observations)
            applied = len(records) if before is None else state.observed - before
            activity[f"{name}_events"] = activity.get(f"{name}_events", 0) + applied
            saved = await publish_and_save(send, topics, states, state, emits)
            activity[f"{name}_done_at"] = time.time()  # (wall clock) its effects are out and saved
            return saved

    @app.agent(source, name=name, concurrency=1)
    async def agent(stream: faust.StreamT) -> None:
        async for events in stream.noack_take(batch_max, within):
            by_partition: dict[int, list[Any]] = defaultdict(list)
            for event in events:
                by_partition[event.message.partition].append(event)
            for partition, batch in by_partition.items():
                if await process(partition, batch):
                    for event in batch:
                        await stream.ack(event)
            activity["last_event_at"] = asyncio.get_running_loop().time()

    return agent
