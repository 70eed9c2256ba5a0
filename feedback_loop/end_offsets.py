"""Where each partition ends, read from a fetch's high watermark.

The usual way to ask (a ListOffsets request for the latest offset, kafka-python's
``end_offsets``) is not exact on Tansu, the embedded broker: it answers the base offset of the
partition's last record batch plus one, short of the end by the rest of that batch. Five records
produced in one batch at offsets 0 to 4: ListOffsets answers 1, the end is 5. A fetch response's
high watermark is exact on Tansu and on Apache Kafka, so :class:`EndOffsets` takes the
ListOffsets answer as a lower bound, fetches the last batch from there, and reads the high
watermark of that fetch. Code that waits for "everything up to the end has been processed" must
use it: a short end declares the work done while the last batch's records are still on their way.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from feedback_loop.errors import BrokerUnavailableError

__all__ = ["EndOffsets"]


class EndOffsets:
    """Reads exact end offsets (see module doc) with two consumers outside any group.

    Parameters
    ----------
    bootstrap
        Kafka bootstrap address ``HOST:PORT``.
    security
        kafka-python SASL/TLS keyword arguments (:func:`feedback_loop.kafka_security.kafka_python_kwargs`).
    timeout
        Seconds one :meth:`read` may take before it raises :class:`BrokerUnavailableError`.
    """

    def __init__(self, bootstrap: str, security: Mapping[str, Any] | None = None, timeout: float = 30.0) -> None:
        self.timeout = timeout
        # ListOffsets from a consumer without assignments: an assigned one narrows its metadata to
        # the assigned topics and then leaves the others out of its answer
        self.lister = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                    **(security or {}))
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                      fetch_max_wait_ms=10, **(security or {}))

    def read(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The offset the next record of each partition will get, as of this call or later."""
        tps = list(partitions)
        listed = self.lister.end_offsets(tps)
        # an empty partition has no batch, and ListOffsets answers 0 for it on both brokers
        probe = [tp for tp in tps if listed[tp] > 0]
        self.consumer.assign(probe)
        for tp in probe:
            self.consumer.seek(tp, listed[tp] - 1)  # the last batch's base offset on Tansu
        deadline = time.monotonic() + self.timeout
        waiting = set(probe)
        while waiting:
            if time.monotonic() > deadline:
                raise BrokerUnavailableError(
                    f"Kafka did not answer a fetch of {sorted(str(tp) for tp in waiting)} within "
                    f"{self.timeout:g}s; check that the broker is running")
            self.consumer.poll(timeout_ms=50)
            # the high watermark counts once a fetch from the seek position has returned records
            waiting = {tp for tp in waiting
                       if self.consumer.position(tp) < listed[tp] or self.consumer.highwater(tp) is None}
        ends = dict.fromkeys(tps, 0)
        for tp in probe:
            ends[tp] = self.consumer.highwater(tp)  # set for every probed partition (loop above)
        return ends

    def close(self) -> None:
        self.lister.close()
        self.consumer.close()
