"""The join's batches overlap only where it is safe: the acks of one batch come in while the next
is applied, never after the next one's save (its outboxes replace the last ones) or sends, and an
offset is marked to commit only once its batch is acked."""

from __future__ import annotations

import asyncio
from collections import namedtuple
from typing import Any

import orjson
from aiokafka import TopicPartition

from feedback_loop.settings import Settings
from streams.agents import partitioned
from streams.agents.join import JoinService
from streams.checkpoint import CheckpointStore

SETTINGS = Settings(signing_key="k" * 64)
TOPICS = SETTINGS.topics
Message = namedtuple("Message", "topic partition offset key value timestamp")


class Store:
    """Fresh states; every save is recorded in ``events``."""

    def __init__(self, events: list[Any]) -> None:
        self.events = events
        self.checkpoints = CheckpointStore(None, SETTINGS)  # type: ignore[arg-type]

    async def claim(self, partition: int, now: float) -> Any:
        return self.checkpoints.new_state(partition)

    def release(self, partition: int) -> None:
        pass

    async def save_many(self, states: list[Any], outboxes: dict[int, list[Any]] | None = None) -> set[int]:
        self.events.append(("save", sorted(s.partition for s in states)))
        for state in states:
            state.mark_clean()
        return set()


class Consumer:
    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = assigned

    def assignment(self) -> set[TopicPartition]:
        return self.assigned


class Names:
    @staticmethod
    def name_of(kind: str) -> str:
        return kind


def prediction(offset: int, pid: str) -> Message:
    value = orjson.dumps({"prediction_id": pid, "model": "m", "model_version": "1",
                          "timestamp": f"2026-12-01T00:00:{offset:02d}Z", "features": {"x": 1.0},
                          "prediction": "a", "scores": {"a": 0.9, "b": 0.1}})
    return Message(TOPICS.predictions, 0, offset, pid.encode(), value, 1_000 + offset)


def label(offset: int, pid: str) -> Message:
    value = orjson.dumps({"prediction_id": pid, "label": "a", "timestamp": f"2026-12-01T00:01:{offset:02d}Z"})
    return Message(TOPICS.labels, 0, offset, pid.encode(), value, 2_000 + offset)


def test_a_batch_is_saved_and_sent_only_after_the_last_batch_is_acked() -> None:
    async def main() -> tuple[list[Any], int, int]:
        events: list[Any] = []
        acks: list[asyncio.Future[None]] = []
        states = partitioned.PartitionStates(Store(events))
        service = JoinService(SETTINGS, Names(), states, {})  # type: ignore[arg-type]
        preds, labels = TopicPartition(TOPICS.predictions, 0), TopicPartition(TOPICS.labels, 0)
        service.consumer = Consumer({preds, labels})  # type: ignore[assignment]

        async def send(topic: str, key: bytes | None, value: bytes) -> asyncio.Future[None]:
            events.append(("send", topic, key))
            acks.append(asyncio.get_running_loop().create_future())
            return acks[-1]

        service.send = send  # type: ignore[method-assign]
        # (the sends' acks are not in: the batch returns without waiting for them)
        await asyncio.wait_for(service._process({preds: [prediction(0, "p-0")], labels: [label(0, "p-0")]}), 5)
        first_sends = len(acks)
        assert first_sends and service._uncommitted == {}  # sent, not acked: nothing to commit
        second = asyncio.ensure_future(service._process({preds: [prediction(1, "p-1")], labels: [label(1, "p-1")]}))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not second.done() and [e[0] for e in events].count("save") == 1  # it waits for the acks
        assert len(acks) == first_sends
        for ack in acks:
            ack.set_result(None)
        await second
        assert service._uncommitted == {preds: 1, labels: 1}  # the first batch's, acked
        for ack in acks[first_sends:]:
            ack.set_result(None)
        await service.settle()
        assert service._uncommitted == {preds: 2, labels: 2}
        return events, first_sends, len(acks) - first_sends

    events, first, second = asyncio.run(main())
    # a save, its sends; then the second save and its sends, never interleaved
    assert [e[0] for e in events] == ["save"] + ["send"] * first + ["save"] + ["send"] * second
    assert {e[1] for e in events if e[0] == "send"} == {"outcomes", "monitor-input"}
