"""Publishing a replay day by day, in step with the loop: the demo's clock.

A replay compresses two years into minutes, so a label "one day late" would otherwise arrive
milliseconds after its prediction, before any reviewer could look. :class:`Lockstep` publishes one
chunk of rows (a day: the label delay), each prediction followed by the label of the row one
chunk earlier, then waits until the loop has caught up: the join has published what it made of
everything sent (its consumer group's committed offsets reach the topics' ends: the join commits
only after the acks, and at once when it is idle), the monitors have applied all of it (their
checkpointed offsets in Redis reach the topic's ends; they publish before they checkpoint), the review-queue
consumer has taken every request, and the reviewers have emptied the queue. Only then does the
next day, and with it the labels of this one, go out: reviewed items get their label at once,
the others one day late.

The topics' ends come from :class:`~feedback_loop.end_offsets.EndOffsets`: the embedded broker's
ListOffsets answer falls short by the rest of the last batch, and a short end would let the
next day's labels go out before this day's last review requests have reached the queue.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import orjson
import redis
from kafka import KafkaAdminClient, KafkaProducer, TopicPartition

from feedback_loop.end_offsets import EndOffsets
from feedback_loop.errors import FeedbackLoopError
from feedback_loop.kafka_security import kafka_python_kwargs, redis_kwargs
from feedback_loop.settings import Settings


class Lockstep:
    """Publish chunks and wait for the loop (see module doc)."""

    def __init__(self, settings: Settings, timeout: float = 60.0) -> None:
        self.settings = settings
        self.timeout = timeout
        self.producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=2,
                                      **kafka_python_kwargs(settings))
        self.ends = EndOffsets(settings.kafka_bootstrap, kafka_python_kwargs(settings))
        self.admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, **kafka_python_kwargs(settings))
        self.redis = redis.Redis.from_url(settings.redis_url or "", **redis_kwargs(settings))
        self.tps = {kind: [TopicPartition(settings.topic(kind), p) for p in range(settings.partitions)]
                    for kind in ("predictions", "labels", "monitor-input", "review-queue")}
        self.flush_seconds = 0.0
        #: seconds spent waiting for the join, the monitors, and the review queue
        self.step_seconds = [0.0, 0.0, 0.0]

    def send(self, kind: str, key: bytes, value: bytes) -> None:
        self.producer.send(self.settings.topic(kind), key=key, value=value)

    def _ends(self, kind: str) -> dict[int, int]:
        return {tp.partition: end for tp, end in self.ends.read(self.tps[kind]).items()}

    def _applied(self, meta_kind: str, partitions: int) -> list[dict[str, int]]:
        """The last applied offset per topic of each partition's checkpoint."""
        pipe = self.redis.pipeline(transaction=False)
        for p in range(partitions):
            pipe.hget(self.settings.key(meta_kind, p), "offsets")
        return [orjson.loads(raw) if raw else {} for raw in pipe.execute()]

    def _join_published(self) -> bool:
        tps = self.tps["predictions"] + self.tps["labels"]
        ends = self.ends.read(tps)
        group = self.settings.join_group_id
        committed = self.admin.list_group_offsets({group: tps}).get(group, {})
        return all(not end or (tp in committed and committed[tp].offset >= end) for tp, end in ends.items())

    def _caught_up(self, kinds: tuple[str, ...], meta_kind: str) -> bool:
        applied = self._applied(meta_kind, self.settings.partitions)
        for kind in kinds:
            topic = self.settings.topic(kind)
            for p, end in self._ends(kind).items():
                if end and applied[p].get(topic, -1) < end - 1:
                    return False
        return True

    def _queue_done(self) -> bool:
        review_end = sum(self._ends("review-queue").values())
        stats_key = self.settings.key("review", "stats")
        offered = int(self.redis.hget(stats_key, "offered") or 0)
        pending = self.redis.zcard(self.settings.key("review", "pending"))
        leased = self.redis.zcard(self.settings.key("review", "leases"))
        return offered >= review_end and pending == 0 and leased == 0

    def settle(self, check: Callable[[], None] = lambda: None) -> None:
        """Flush, then wait until the loop has applied everything and the queue is answered."""
        started = time.monotonic()
        self.producer.flush()
        self.flush_seconds += time.monotonic() - started
        steps = [self._join_published,
                 lambda: self._caught_up(("monitor-input",), "monmeta"),
                 self._queue_done]
        for n, step in enumerate(steps):
            step_started = time.monotonic()
            while not step():
                check()
                if time.monotonic() - started > self.timeout:
                    raise FeedbackLoopError(
                        f"the loop did not catch up with the replay within {self.timeout:.0f} s; see the "
                        f"logs in {self.settings.data_dir}/logs")
                time.sleep(0.01)
            self.step_seconds[n] += time.monotonic() - step_started

    def close(self) -> None:
        self.producer.close(timeout=10)
        self.ends.close()
        self.admin.close()
        self.redis.close()


def publish_days(lockstep: Lockstep, rows: list[Any], chunk: int, progress: Callable[[int], None],
                 check: Callable[[], None] = lambda: None) -> None:
    """``rows``: per row, ``[(kind, key, value), ...]`` predictions and the labels that go with it."""
    for start in range(0, len(rows), chunk):
        for row in rows[start:start + chunk]:
            for kind, key, value in row:
                lockstep.send(kind, key, value)
        lockstep.settle(check)
        progress(min(start + chunk, len(rows)))
