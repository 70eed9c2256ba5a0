"""The review consumer: ``review-queue`` and ``outcomes`` from Kafka into the Redis review queue.

:class:`ReviewConsumer` reads both topics in the consumer group ``<app_id>-reviews`` with auto
commit off. Each :class:`~feedback_loop.events.ReviewRequest` is offered to the
:class:`~consumers.review_queue.ReviewQueue` (which dedups, budgets, evicts); each
:class:`~feedback_loop.events.Outcome` with ``label_source == "label"`` marks its prediction
labeled (its queue item leaves, unless it is about a suspected label error); review outcomes
need nothing.

Bad input is diverted, never crashes the consumer: a message that is too large, not JSON, or
not valid against its schema goes to ``dead-letters`` with the reason (and is then committed).
An offset is committed only after Redis (or the dead-letters topic) has the result, so delivery
is at least once; the queue's rules make a replay change nothing. While Redis is unreachable
the message is retried with capped exponential backoff, then left uncommitted and consumed again
once Redis answers.

:func:`run_reviews` is the entry point of ``feedback-loop reviews``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import kafka.errors as kerrors
import redis as redis_lib
import redis.asyncio as aredis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from consumers.alerts import install_signal_handlers, safe_url, say_stderr
from consumers.polling import PollingLoop
from consumers.review_queue import ReviewQueue
from feedback_loop.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    InvalidEventError,
    StoreUnavailableError,
)
from feedback_loop.events import Outcome, ReviewRequest, dead_letter, decode
from feedback_loop.kafka_security import kafka_python_kwargs, redis_kwargs
from feedback_loop.settings import Settings

__all__ = ["ReviewConsumer", "ReviewStats", "default_group_id", "run_reviews"]

log = logging.getLogger(__name__)

_DEAD_LETTER_PAYLOAD_BYTES = 256 * 1024  # base64 of it stays well under Kafka's 1 MB message limit
_T = TypeVar("_T")
#: Longest wait, in seconds, for the Redis client to close when the consumer closes.
CLOSE_TIMEOUT = 10.0


@dataclass
class ReviewStats:
    """What one :meth:`ReviewConsumer.poll_once` (or a whole run) did, message by message."""

    queued: int = 0
    queued_evicted: int = 0
    duplicate: int = 0
    labeled: int = 0  # requests refused: ground truth known already
    over_budget: int = 0
    full: int = 0
    labels: int = 0  # ground-truth outcomes applied
    removed: int = 0  # of which removed an item from the queue (counted in labels too)
    skipped: int = 0  # review outcomes: nothing to do
    dead_lettered: int = 0
    retried: int = 0  # left uncommitted for a later attempt (Redis or Kafka outage, stopping)

    @property
    def handled(self) -> int:
        """Messages finished and committed."""
        return sum(getattr(self, f.name) for f in fields(self) if f.name not in ("removed", "retried"))

    def add(self, other: ReviewStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class _Retry(Exception):
    """Leave this message uncommitted and consume it again later."""


def default_group_id(settings: Settings) -> str:
    """The consumer group of the review consumer.

    >>> default_group_id(Settings(app_id="shop"))
    'shop-reviews'
    """
    return f"{settings.app_id}-reviews"


class ReviewConsumer(PollingLoop):
    """Feed the review queue from ``review-queue`` and ``outcomes``; see the module docstring.

    Parameters
    ----------
    settings
        Needs ``kafka_bootstrap`` and ``redis_url``; the queue rules come from ``review_*``.
    group_id
        Kafka consumer group (default ``<app_id>-reviews``).
    auto_offset_reset
        Where a group without committed offsets starts: ``"earliest"`` (default) or ``"latest"``.
    max_poll_records
        Most messages handled per :meth:`poll_once`.
    redis_retry_seconds
        How long one Redis operation is retried before its message is left for later.
    clock
        Wall clock in epoch seconds (the queue's ``now``).

    Raises
    ------
    ConfigurationError
        A needed setting is missing or wrong.
    BrokerUnavailableError
        Kafka did not answer.
    """

    def __init__(self, settings: Settings, *, group_id: str | None = None, auto_offset_reset: str = "earliest",
                 max_poll_records: int = 200, redis_retry_seconds: float = 30.0, commit_timeout: float = 10.0,
                 max_pause_seconds: float = 30.0, clock: Callable[[], float] = time.time) -> None:
        if not settings.kafka_bootstrap or not settings.redis_url:
            raise ConfigurationError("the review consumer needs --kafka (FEEDBACK_LOOP_KAFKA_BOOTSTRAP) "
                                     "and --redis (FEEDBACK_LOOP_REDIS_URL)")
        if auto_offset_reset not in ("earliest", "latest"):
            raise ConfigurationError(f"auto_offset_reset must be 'earliest' or 'latest', got {auto_offset_reset!r}")
        self.settings = settings
        self.group_id = group_id or default_group_id(settings)
        self.auto_offset_reset = auto_offset_reset
        self.requests_topic = settings.topic("review-queue")
        self.outcomes_topic = settings.topic("outcomes")
        self.dead_letters_topic = settings.topic("dead-letters")
        self.max_poll_records = max(1, int(max_poll_records))
        self.redis_retry_seconds = float(redis_retry_seconds)
        self.commit_timeout = float(commit_timeout)
        self.max_pause_seconds = float(max_pause_seconds)
        self._clock = clock
        self.init_loop()
        self._closed = False
        try:
            # The client's own retry hides a dropped connection (a Redis restart); outages are
            # handled by _redis_call.
            self._redis = aredis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5,
                                                retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
                                                **redis_kwargs(settings))
        except ValueError as exc:
            raise ConfigurationError(f"invalid Redis URL {safe_url(settings.redis_url)!r}: {exc}; fix --redis "
                                     "(FEEDBACK_LOOP_REDIS_URL), e.g. redis://localhost:6379/0") from None
        self.queue = ReviewQueue(self._redis, settings)
        self._loop = asyncio.new_event_loop()
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        try:
            self._consumer, self._producer = self._kafka_clients()
        except (kerrors.KafkaError, OSError) as exc:
            self.close()
            raise BrokerUnavailableError(
                f"Kafka at {settings.kafka_bootstrap} did not answer ({exc}); check --kafka "
                "(FEEDBACK_LOOP_KAFKA_BOOTSTRAP) and that the broker is running") from exc

    def _kafka_clients(self) -> tuple[KafkaConsumer, KafkaProducer]:
        s = self.settings
        session_ms = int(s.broker_session_timeout * 1000)
        heartbeat_ms = min(int(s.broker_heartbeat_interval * 1000), max(session_ms // 3, 1))
        consumer = KafkaConsumer(
            self.requests_topic, self.outcomes_topic, bootstrap_servers=s.kafka_bootstrap,
            group_id=self.group_id, client_id="feedback-loop-reviews", enable_auto_commit=False,
            auto_offset_reset=self.auto_offset_reset, fetch_max_wait_ms=s.broker_fetch_max_wait_ms,
            session_timeout_ms=session_ms, heartbeat_interval_ms=heartbeat_ms,
            max_poll_records=self.max_poll_records, max_poll_interval_ms=max(300_000, int(
                (self.redis_retry_seconds + 60) * 1000)),
            request_timeout_ms=max(30_000, session_ms + 5_000), bootstrap_timeout_ms=15_000,
            **kafka_python_kwargs(s))
        try:
            producer = KafkaProducer(bootstrap_servers=s.kafka_bootstrap, acks="all", linger_ms=0,
                                     client_id="feedback-loop-reviews-dead-letters", request_timeout_ms=10_000,
                                     **kafka_python_kwargs(s))
        except BaseException:
            consumer.close(autocommit=False)
            raise
        return consumer, producer

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> ReviewConsumer:  # noqa: PYI034 - Python 3.10 has no typing.Self
        return self

    def close(self) -> None:
        """Leave the group without committing anything more; close the clients and the event loop."""
        if self._closed:
            return
        self._closed = True
        closers = (("Kafka consumer", lambda: self._consumer and self._consumer.close(autocommit=False)),
                   ("Kafka producer", lambda: self._producer and self._producer.close(timeout=5)),
                   ("Redis client", lambda: self._complete(self._close_redis)))
        for name, closer in closers:
            try:
                closer()
            except Exception as exc:  # noqa: BLE001 - closing must not hide the reason we stop
                log.warning("closing the %s failed: %s", name, exc)
        self._loop.close()

    def _complete(self, make: Callable[[], Awaitable[_T]]) -> _T:
        """Run the awaitable ``make()`` returns on this consumer's event loop; return its result.

        A thread that runs a loop of its own (an application or a test calling in from a
        coroutine, :meth:`close` above all) cannot run another one: there it runs on a helper
        thread, which this waits for. ``make`` is called only where it runs, so nothing is
        created that is never awaited."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop runs in this thread: the usual case
            return self._loop.run_until_complete(make())
        helper = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="reviews-loop")
        try:
            return helper.submit(lambda: self._loop.run_until_complete(make())).result()
        finally:
            helper.shutdown(wait=False)

    def _close_redis(self) -> Awaitable[None]:
        """The Redis client's closing, bounded by :data:`CLOSE_TIMEOUT`."""
        return asyncio.wait_for(self._redis.aclose(), CLOSE_TIMEOUT)

    def ping(self) -> None:
        """Check that Redis answers, or raise :class:`StoreUnavailableError` naming the URL."""
        try:
            self._complete(self._redis.ping)
        except redis_lib.RedisError as exc:
            raise StoreUnavailableError(
                f"Redis at {safe_url(self.settings.redis_url or '')} did not answer ({exc}); check --redis "
                "(FEEDBACK_LOOP_REDIS_URL) and that the server is running") from None

    def run(self, stop: threading.Event | None = None, max_seconds: float | None = None) -> ReviewStats:
        """Consume until ``stop`` is set, :meth:`stop` is called, or ``max_seconds`` have passed.

        The message being handled when asked to stop finishes (a Redis retry is cut short and
        left uncommitted); returns the totals.
        """
        return self.run_loop(stop, max_seconds, ReviewStats(), f"{self.requests_topic} and {self.outcomes_topic}")

    # ------------------------------------------------------------------ one poll
    def poll_once(self, timeout: float = 1.0) -> ReviewStats:
        """Fetch at most ``max_poll_records`` messages (waiting up to ``timeout`` s) and handle them.

        After a failure the failed message and everything fetched after it are sought back and
        consumed again later; what succeeded before it is committed.
        """
        assert self._consumer is not None
        stats = ReviewStats()
        commits: dict[TopicPartition, OffsetAndMetadata] = {}
        batches = self._consumer.poll(timeout_ms=max(int(timeout * 1000), 0), max_records=self.max_poll_records)
        failed = False
        for tp, records in batches.items():
            for record in records:
                if failed or self._cancel.is_set():
                    self._seek(tp, record.offset)
                    stats.retried += 1
                    failed = True
                    break
                try:
                    counted = self._handle(record)
                except _Retry as exc:
                    log.warning("message at %s[%d]@%d left for a later attempt: %s",
                                tp.topic, tp.partition, record.offset, exc)
                    self._seek(tp, record.offset)
                    stats.retried += 1
                    failed = True
                    break
                for name in counted:
                    setattr(stats, name, getattr(stats, name) + 1)
                commits[tp] = OffsetAndMetadata(record.offset + 1, "", -1)
        self._commit(commits)
        if stats.retried and not self._cancel.is_set():
            self._pause()
        elif stats.handled:
            self._consecutive_pauses = 0
        return stats

    def _handle(self, record: Any) -> tuple[str, ...]:
        """Offer, mark or divert one message; return the :class:`ReviewStats` fields to count it in."""
        size = len(record.value or b"")
        if size > self.settings.max_event_bytes:
            return self._dead_letter(record, f"message: {size} bytes, more than max_event_bytes "
                                             f"({self.settings.max_event_bytes})")
        if record.topic == self.requests_topic:
            try:
                request: ReviewRequest = decode(ReviewRequest, record.value)
            except InvalidEventError as exc:
                return self._dead_letter(record, f"invalid ReviewRequest: {exc.reason}")
            result = self._redis_call(lambda: self.queue.offer(request, self._clock()),
                                      f"offering {request.prediction_id}")
            log.debug("review request %s: %s", request.prediction_id, result)
            return (result,)
        try:
            outcome: Outcome = decode(Outcome, record.value)
        except InvalidEventError as exc:
            return self._dead_letter(record, f"invalid Outcome: {exc.reason}")
        if outcome.label_source != "label":
            return ("skipped",)
        removed = self._redis_call(lambda: self.queue.mark_labeled(outcome.prediction_id, self._clock()),
                                   f"marking {outcome.prediction_id} labeled")
        return ("labels", "removed") if removed else ("labels",)

    def _dead_letter(self, record: Any, reason: str) -> tuple[str, ...]:
        assert self._producer is not None
        letter = dead_letter(source_topic=record.topic, partition=record.partition, offset=record.offset,
                             key=record.key, payload=record.value, reason=reason,
                             max_payload_bytes=_DEAD_LETTER_PAYLOAD_BYTES)
        try:
            self._producer.send(self.dead_letters_topic, key=record.key, value=letter.to_json()).get(timeout=10)
        except (kerrors.KafkaError, OSError) as exc:
            raise _Retry(f"publishing a dead letter to {self.dead_letters_topic} failed: {exc}") from None
        log.warning("message at %s[%d]@%d dead-lettered: %s", record.topic, record.partition, record.offset, reason)
        return ("dead_lettered",)

    def _redis_call(self, fn: Callable[[], Awaitable[_T]], what: str) -> _T:
        """Run a queue operation, retrying Redis failures for ``redis_retry_seconds``; then :class:`_Retry`."""
        deadline = time.monotonic() + self.redis_retry_seconds
        attempt = 0
        while True:
            try:
                return self._complete(fn)
            except redis_lib.RedisError as exc:
                attempt += 1
                left = deadline - time.monotonic()
                if left <= 0 or self._cancel.is_set():
                    log.error("Redis failed while %s: %s; giving up for now", what, exc)
                    raise _Retry(f"Redis failed while {what}: {exc}") from None
                delay = min(left, 0.1 * 2 ** min(attempt, 6))
                log.warning("Redis failed while %s: %s; retrying in %.1fs", what, exc, delay)
                if self._cancel.wait(delay):
                    raise _Retry(f"stopping while Redis failed ({what}): {exc}") from None

    def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        if not offsets:
            return
        assert self._consumer is not None
        try:
            self._consumer.commit(offsets, timeout_ms=int(self.commit_timeout * 1000))
        except (kerrors.KafkaError, OSError) as exc:
            # Already in Redis: a redelivery is recognised as a duplicate.
            log.warning("committing %s failed (those messages may be consumed again): %s", offsets, exc)

    def _seek(self, tp: TopicPartition, offset: int) -> None:
        assert self._consumer is not None
        try:
            self._consumer.seek(tp, offset)
        except (kerrors.KafkaError, AssertionError, ValueError) as exc:  # partition revoked meanwhile
            log.info("could not seek %s[%d] back to %d (%s); its new owner consumes it",
                     tp.topic, tp.partition, offset, exc)


# ---------------------------------------------------------------------------- entry point
def _ensure_topics(settings: Settings) -> None:
    from feedback_loop.kafka_admin import ensure_topics, topic_partitions

    assert settings.kafka_bootstrap
    security = kafka_python_kwargs(settings)
    missing = [t for t in (settings.topic("review-queue"), settings.topic("outcomes"), settings.topic("dead-letters"))
               if topic_partitions(settings.kafka_bootstrap, t, timeout=15, security=security) == 0]
    if missing:
        ensure_topics(settings.kafka_bootstrap, missing, settings.partitions, settings.replication_factor, timeout=30,
                      security=security)


def run_reviews(settings: Settings, stop: threading.Event | None = None, max_seconds: float | None = None, *,
                group_id: str | None = None, say: Callable[[str], None] | None = None) -> ReviewStats:
    """Entry point of ``feedback-loop reviews``: feed the review queue until SIGINT/SIGTERM.

    Parameters
    ----------
    settings
        Must have ``kafka_bootstrap`` and ``redis_url``.
    stop
        Optional event that stops the consumer too (for embedding in a thread); signals always
        do when this runs in the main thread.
    max_seconds
        Stop after this long (default: run until stopped).
    group_id
        Kafka consumer group (default ``<app_id>-reviews``).
    say
        Status lines (default: ``feedback-loop: ...`` on standard error).

    Returns
    -------
    ReviewStats
        The totals of the run.

    Raises
    ------
    ConfigurationError
        A missing server or a wrong setting.
    BrokerUnavailableError, StoreUnavailableError
        Kafka or Redis did not answer at the start.
    """
    say = say or say_stderr
    if not settings.kafka_bootstrap or not settings.redis_url:
        raise ConfigurationError("`feedback-loop reviews` needs --kafka HOST:PORT and --redis URL: the broker and "
                                 "Redis of the running deployment (`feedback-loop up` prints both)")
    _ensure_topics(settings)
    stop = stop or threading.Event()
    restore = install_signal_handlers(stop)
    try:
        with ReviewConsumer(settings, group_id=group_id) as consumer:
            consumer.ping()
            say(f"reviews: consuming {consumer.requests_topic} and {consumer.outcomes_topic} as group "
                f"{consumer.group_id!r} into the Redis review queue ({consumer.queue.keys[0]}); Ctrl-C to stop")
            total = consumer.run(stop, max_seconds)
        say(f"reviews: stopped ({total.queued + total.queued_evicted} queued, {total.duplicate} duplicates, "
            f"{total.labeled} already labeled, {total.over_budget} over budget, {total.full} dropped (full), "
            f"{total.labels} labels, {total.dead_lettered} dead-lettered)")
        return total
    finally:
        restore()
