"""Exact end offsets against the session's broker, whatever its ListOffsets answer."""

from __future__ import annotations

import uuid

import pytest
from kafka import KafkaProducer, TopicPartition

from feedback_loop.end_offsets import EndOffsets
from feedback_loop.kafka_admin import ensure_topics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_end_offsets_count_every_record_of_the_last_batch(kafka_bootstrap: str) -> None:
    topic = f"ends-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [topic], 3)
    tps = [TopicPartition(topic, p) for p in range(3)]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=50)
    ends = EndOffsets(kafka_bootstrap)
    try:
        assert ends.read(tps) == {tp: 0 for tp in tps}
        expected = {tp: 0 for tp in tps}
        # partition 2 stays empty; partitions 0 and 1 get batches of several records, then one of one
        for sizes in ((5, 3), (1, 7), (4, 1)):
            futures = [producer.send(topic, value=b"x", partition=p)
                       for p, n in enumerate(sizes) for _ in range(n)]
            producer.flush()
            for future in futures:
                meta = future.get(timeout=10)
                tp = TopicPartition(topic, meta.partition)
                expected[tp] = max(expected[tp], meta.offset + 1)
            assert ends.read(tps) == expected
        assert expected == {tps[0]: 10, tps[1]: 11, tps[2]: 0}
    finally:
        ends.close()
        producer.close(timeout=10)


def test_end_offsets_of_topics_asked_in_turn(kafka_bootstrap: str) -> None:
    """Each read may ask for other topics than the last, some of them still empty (the lockstep does)."""
    topics = [f"ends-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    ensure_topics(kafka_bootstrap, topics, 2)
    tps = {topic: [TopicPartition(topic, p) for p in range(2)] for topic in topics}
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=20)
    ends = EndOffsets(kafka_bootstrap)
    try:
        first, second, third = topics
        for _ in range(3):
            producer.send(first, value=b"x", partition=1)
        producer.flush()
        assert ends.read(tps[first] + tps[second]) == {**dict.fromkeys(tps[first] + tps[second], 0),
                                                       tps[first][1]: 3}
        for topic in (second, third):
            for _ in range(2):
                producer.send(topic, value=b"x", partition=0)
        producer.flush()
        assert ends.read(tps[first] + tps[second]) == {tps[first][0]: 0, tps[first][1]: 3,
                                                       tps[second][0]: 2, tps[second][1]: 0}
        assert ends.read(tps[third]) == {tps[third][0]: 2, tps[third][1]: 0}
        assert ends.read(tps[second]) == {tps[second][0]: 2, tps[second][1]: 0}
    finally:
        ends.close()
        producer.close(timeout=10)
