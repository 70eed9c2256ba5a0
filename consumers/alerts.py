"""The alert consumer: drift alerts from Kafka to a sink, each paged once, none lost.

:class:`AlertConsumer` reads ``drift-alerts`` (``settings.topics.drift_alerts``) in a consumer
group with auto commit off. For each message, in partition order:

1. decode it as a :class:`~feedback_loop.events.DriftAlert`; an invalid one is *parked* (below)
   with the reason, and the consumer goes on;
2. skip it if its ``alert_id`` is in the Redis set ``<ns>:alerts:delivered:<sink name>`` (a
   duplicate alert, or a message consumed again after a restart or a rebalance);
3. deliver it; on success SADD the ``alert_id`` to that set; if the sink says it is undeliverable
   (4xx, retries exhausted) park it;
4. commit the message's offset.

*Parked* means LPUSHed as JSON ``{"alert", "sink", "error", "at", "source"}`` to the Redis list
``<ns>:alerts:undeliverable`` (never trimmed) and logged at WARNING: visible, not lost. An invalid
message is parked with ``"alert": null`` and its raw text in ``"payload"``. List them with
:func:`undeliverable`.

When Redis itself is unreachable nothing can be recorded, so the message is neither delivered
again blindly nor committed: the consumer seeks back to it and retries after a bounded pause. The
one window for a second page is a crash between a successful delivery and the SADD; webhooks get
the header ``Idempotency-Key: <alert_id>`` so the receiver can close it.

:func:`run_alerts` is the entry point of ``feedback-loop alerts``.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import kafka.errors as kerrors
import redis as redis_lib
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from consumers.polling import PollingLoop
from consumers.sinks import (
    DeliveryCancelled,
    PrintSink,
    RedisSink,
    Sink,
    UndeliverableError,
    WebhookSink,
    validate_webhook_url,
)
from feedback_loop.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    InvalidEventError,
    StoreUnavailableError,
)
from feedback_loop.events import DriftAlert, decode
from feedback_loop.kafka_security import kafka_python_kwargs, redis_kwargs
from feedback_loop.settings import Settings

__all__ = [
    "DEFAULT_GROUP_ID",
    "SINK_KINDS",
    "AlertConsumer",
    "PollStats",
    "delivered_key",
    "inbox_key",
    "run_alerts",
    "undeliverable",
    "undeliverable_key",
]

log = logging.getLogger(__name__)

DEFAULT_GROUP_ID = "feedback-loop-alerts"
SINK_KINDS = ("print", "webhook", "redis")
_PAYLOAD_TEXT_LIMIT = 64 * 1024
_T = TypeVar("_T")


def delivered_key(settings: Settings, sink_name: str) -> str:
    """Redis set of the ``alert_id`` s delivered to the sink named ``sink_name``.

    >>> delivered_key(Settings(), "webhook")
    'fl:alerts:delivered:webhook'
    """
    return settings.key("alerts", "delivered", sink_name)


def undeliverable_key(settings: Settings) -> str:
    """Redis list of parked alerts, newest first.

    >>> undeliverable_key(Settings(redis_namespace="prod"))
    'prod:alerts:undeliverable'
    """
    return settings.key("alerts", "undeliverable")


def inbox_key(settings: Settings) -> str:
    """Default Redis list of the redis sink (``feedback-loop alerts --sink redis``).

    Not ``<ns>:alerts:recent``: that list belongs to the stream workers (``GET /api/alerts``).

    >>> inbox_key(Settings())
    'fl:alerts:inbox'
    """
    return settings.key("alerts", "inbox")


def _as_text(raw: bytes | str | None) -> str:
    if raw is None:
        return ""
    return raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else str(raw)


def undeliverable(redis: redis_lib.Redis, settings: Settings, limit: int = 100) -> list[dict[str, Any]]:
    """The newest ``limit`` parked alerts, newest first.

    Each entry is ``{"alert": <DriftAlert as JSON object, or None for an invalid message>,
    "sink": <sink name>, "error": <why>, "at": <ISO-8601 UTC>, "source": {"topic", "partition",
    "offset", "key"}}``; invalid messages also have ``"payload"`` (their raw text, cut at 64 KiB).
    An entry that is not JSON (written by something else) comes back as
    ``{"error": "unreadable entry", "raw": <text>}``.
    """
    if limit <= 0:
        return []
    out: list[dict[str, Any]] = []
    for raw in redis.lrange(undeliverable_key(settings), 0, limit - 1):
        try:
            entry = json.loads(raw)
        except (ValueError, TypeError):
            entry = None
        out.append(entry if isinstance(entry, dict) else {"error": "unreadable entry", "raw": _as_text(raw)})
    return out


@dataclass
class PollStats:
    """What one :meth:`AlertConsumer.poll_once` (or a whole :meth:`~AlertConsumer.run`) did."""

    delivered: int = 0
    duplicates: int = 0  # already delivered: skipped
    parked: int = 0  # undeliverable alerts
    invalid: int = 0  # undecodable messages, parked too
    retried: int = 0  # left for a later attempt (Redis outage, stopping): not committed

    @property
    def handled(self) -> int:
        """Messages finished and committed."""
        return self.delivered + self.duplicates + self.parked + self.invalid

    def add(self, other: PollStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class _Retry(Exception):
    """Leave this message uncommitted and consume it again later."""


def safe_url(url: str) -> str:
    """``url`` without its password, for messages."""
    try:
        parts = urlsplit(url)
        if parts.password:
            netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
            return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        pass
    return url


def _redis_client(settings: Settings, timeout: float = 5.0) -> redis_lib.Redis:
    url = settings.redis_url or ""
    try:
        return redis_lib.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                        **redis_kwargs(settings, url))
    except ValueError as exc:
        raise ConfigurationError(f"invalid Redis URL {safe_url(url)!r}: {exc}; fix --redis "
                                 "(FEEDBACK_LOOP_REDIS_URL), e.g. redis://localhost:6379/0") from None


class AlertConsumer(PollingLoop):
    """Consume ``drift-alerts`` and deliver each alert to ``sink`` once.

    Parameters
    ----------
    settings
        Needs ``kafka_bootstrap`` (and ``redis_url`` unless ``redis`` is given). The consumer's
        session and heartbeat come from ``broker_session_timeout`` / ``broker_heartbeat_interval``.
    sink
        Where alerts go. ``sink.name`` names the Redis set of delivered alerts.
    group_id
        Kafka consumer group. Processes of one group share the partitions; different groups each
        get every alert.
    redis
        A Redis client for the delivered set and the undeliverable list; by default one is
        created from ``settings.redis_url`` (and closed by :meth:`close`).
    auto_offset_reset
        Where a group without committed offsets starts: ``"earliest"`` (default: no alert
        published before the first start is missed) or ``"latest"``.
    max_poll_records
        Most messages handled per :meth:`poll_once`.
    sink_failures_before_parking
        An unexpected exception from the sink (a bug) is retried this many times for one message,
        then the alert is parked with the error.
    redis_retry_seconds
        How long one Redis operation is retried before the message is left for later.

    Raises
    ------
    ConfigurationError
        A needed setting is missing.
    BrokerUnavailableError
        Kafka did not answer.
    """

    def __init__(
        self,
        settings: Settings,
        sink: Sink,
        *,
        group_id: str = DEFAULT_GROUP_ID,
        redis: redis_lib.Redis | None = None,
        auto_offset_reset: str = "earliest",
        max_poll_records: int = 5,
        sink_failures_before_parking: int = 5,
        redis_retry_seconds: float = 30.0,
        commit_timeout: float = 10.0,
        max_pause_seconds: float = 30.0,
    ) -> None:
        if not settings.kafka_bootstrap:
            raise ConfigurationError("the alert consumer needs --kafka (FEEDBACK_LOOP_KAFKA_BOOTSTRAP)")
        if redis is None and not settings.redis_url:
            raise ConfigurationError("the alert consumer needs --redis (FEEDBACK_LOOP_REDIS_URL)")
        if not group_id or not group_id.strip():
            raise ConfigurationError("the alert consumer needs a non-empty consumer group (--group-id)")
        if auto_offset_reset not in ("earliest", "latest"):
            raise ConfigurationError(f"auto_offset_reset must be 'earliest' or 'latest', got {auto_offset_reset!r}")
        self.settings = settings
        self.sink = sink
        self.group_id = group_id
        self.topic = settings.topics.drift_alerts
        self.max_poll_records = max(1, int(max_poll_records))
        self.sink_failures_before_parking = max(1, int(sink_failures_before_parking))
        self.redis_retry_seconds = float(redis_retry_seconds)
        self.commit_timeout = float(commit_timeout)
        self.max_pause_seconds = float(max_pause_seconds)
        self.delivered_key = delivered_key(settings, sink.name)
        self.undeliverable_key = undeliverable_key(settings)
        self._own_redis = redis is None
        self._redis = redis if redis is not None else _redis_client(settings)
        self.init_loop()
        self._failures: dict[tuple[str, int, int], int] = {}
        self._closed = False

        session_ms = int(settings.broker_session_timeout * 1000)
        heartbeat_ms = min(int(settings.broker_heartbeat_interval * 1000), max(session_ms // 3, 1))
        worst_batch_s = self.max_poll_records * sink.max_delivery_seconds() + 60
        try:
            self._consumer = KafkaConsumer(
                self.topic,
                bootstrap_servers=settings.kafka_bootstrap,
                group_id=group_id,
                client_id=f"feedback-loop-alerts-{sink.name}",
                enable_auto_commit=False,
                auto_offset_reset=auto_offset_reset,
                session_timeout_ms=session_ms,
                heartbeat_interval_ms=heartbeat_ms,
                max_poll_records=self.max_poll_records,
                max_poll_interval_ms=max(300_000, int(worst_batch_s * 1000)),
                request_timeout_ms=max(30_000, session_ms + 5_000),
                bootstrap_timeout_ms=15_000,
                **kafka_python_kwargs(settings),
            )
        except (kerrors.KafkaError, OSError) as exc:
            if self._own_redis:
                self._redis.close()
            raise BrokerUnavailableError(
                f"Kafka at {settings.kafka_bootstrap} did not answer ({exc}); check --kafka "
                "(FEEDBACK_LOOP_KAFKA_BOOTSTRAP) and that the broker is running") from exc

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> AlertConsumer:  # noqa: PYI034 - Python 3.10 has no typing.Self
        return self

    def close(self) -> None:
        """Leave the group without committing anything more; close the sink and owned clients."""
        if self._closed:
            return
        self._closed = True
        try:
            self._consumer.close(autocommit=False)
        except Exception as exc:  # noqa: BLE001 - closing must not hide the reason we stop
            log.warning("closing the Kafka consumer failed: %s", exc)
        for closer in (self.sink.close, self._redis.close if self._own_redis else None):
            if closer is None:
                continue
            try:
                closer()
            except Exception as exc:  # noqa: BLE001 - same
                log.warning("closing %s failed: %s", closer, exc)

    def run(self, stop: threading.Event | None = None, max_seconds: float | None = None) -> PollStats:
        """Consume until ``stop`` is set, :meth:`stop` is called, or ``max_seconds`` have passed.

        A delivery in progress when the time is up finishes (each is bounded by the sink's own
        timeouts and retries); one waiting for a retry when ``stop`` is set is abandoned and
        consumed again on the next start. Returns the totals.
        """
        return self.run_loop(stop, max_seconds, PollStats(), self.topic)

    # ------------------------------------------------------------------ one poll
    def poll_once(self, timeout: float = 1.0) -> PollStats:
        """Fetch at most ``max_poll_records`` messages (waiting up to ``timeout`` s) and handle them."""
        stats = PollStats()
        batches = self._consumer.poll(timeout_ms=max(int(timeout * 1000), 0), max_records=self.max_poll_records)
        for tp, records in batches.items():
            for record in records:
                if self._cancel.is_set():
                    self._seek(tp, record.offset)
                    stats.retried += 1
                    break
                try:
                    outcome = self._handle(record)
                except _Retry as exc:
                    log.warning("alert at %s[%d]@%d left for a later attempt: %s",
                                tp.topic, tp.partition, record.offset, exc)
                    self._seek(tp, record.offset)
                    stats.retried += 1
                    break
                setattr(stats, outcome, getattr(stats, outcome) + 1)
                self._commit(tp, record.offset + 1)
        if stats.retried and not self._cancel.is_set():
            self._pause()
        elif stats.handled:
            self._consecutive_pauses = 0
        return stats

    def _handle(self, record: Any) -> str:
        """Deliver, skip or park one message; return the :class:`PollStats` field to count it in."""
        where = (record.topic, record.partition, record.offset)
        try:
            alert: DriftAlert = decode(DriftAlert, record.value)
        except InvalidEventError as exc:
            log.warning("invalid alert at %s[%d]@%d parked: %s", *where, exc.reason)
            self._park(None, f"invalid alert: {exc.reason}", record)
            return "invalid"
        key = _as_text(record.key) if record.key is not None else None
        if key is not None and key != alert.model:
            log.warning("alert %s has key %r but model %r (delivered anyway)", alert.alert_id, key, alert.model)

        if self._redis_call(lambda: self._redis.sismember(self.delivered_key, alert.alert_id),
                            f"checking whether alert {alert.alert_id} was delivered"):
            log.info("alert %s already delivered to %s: skipped", alert.alert_id, self.sink.name)
            return "duplicates"
        try:
            self.sink.deliver(alert, cancel=self._cancel)
        except DeliveryCancelled as exc:
            raise _Retry(str(exc)) from None
        except UndeliverableError as exc:
            log.warning("alert %s undeliverable to %s, parked: %s", alert.alert_id, self.sink.name, exc.reason)
            self._park(alert, exc.reason, record)
            self._failures.pop(where, None)
            return "parked"
        except Exception as exc:  # a bug or an outage the sink did not classify
            count = self._failures.get(where, 0) + 1
            self._failures[where] = count
            if count < self.sink_failures_before_parking:
                log.exception("sink %s failed on alert %s (%d of %d tries before parking)",
                              self.sink.name, alert.alert_id, count, self.sink_failures_before_parking)
                raise _Retry(f"{type(exc).__name__}: {exc}") from None
            log.error("sink %s failed %d times on alert %s, parked: %r", self.sink.name, count, alert.alert_id, exc)
            self._park(alert, f"sink failed {count} times: {type(exc).__name__}: {exc}", record)
            self._failures.pop(where, None)
            return "parked"
        self._failures.pop(where, None)
        log.info("alert %s delivered to %s", alert.alert_id, self.sink.name)
        self._redis_call(lambda: self._redis.sadd(self.delivered_key, alert.alert_id),
                         f"recording that alert {alert.alert_id} was delivered")
        return "delivered"

    def _park(self, alert: DriftAlert | None, error: str, record: Any) -> None:
        entry: dict[str, Any] = {
            "alert": None if alert is None else alert.model_dump(mode="json"),
            "sink": self.sink.name,
            "error": error,
            "at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
            "source": {"topic": record.topic, "partition": record.partition, "offset": record.offset,
                       "key": None if record.key is None else _as_text(record.key)},
        }
        if alert is None:
            text = _as_text(record.value)
            entry["payload"] = text[:_PAYLOAD_TEXT_LIMIT]
            if len(text) > _PAYLOAD_TEXT_LIMIT:
                entry["payload_truncated"] = True
        payload = json.dumps(entry, ensure_ascii=False)
        self._redis_call(lambda: self._redis.lpush(self.undeliverable_key, payload),
                         f"parking a message in {self.undeliverable_key}")

    def _redis_call(self, fn: Callable[[], _T], what: str) -> _T:
        """Run a Redis command, retrying failures for ``redis_retry_seconds``; then :class:`_Retry`."""
        deadline = time.monotonic() + self.redis_retry_seconds
        attempt = 0
        while True:
            try:
                return fn()
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

    def _commit(self, tp: TopicPartition, offset: int) -> None:
        try:
            self._consumer.commit({tp: OffsetAndMetadata(offset, "", -1)},
                                  timeout_ms=int(self.commit_timeout * 1000))
        except (kerrors.KafkaError, OSError) as exc:
            # Delivered or parked already: a redelivery is recognised by the delivered set.
            log.warning("committing %s[%d]@%d failed (it may be consumed again): %s",
                        tp.topic, tp.partition, offset, exc)

    def _seek(self, tp: TopicPartition, offset: int) -> None:
        try:
            self._consumer.seek(tp, offset)
        except (kerrors.KafkaError, AssertionError, ValueError) as exc:  # partition revoked meanwhile
            log.info("could not seek %s[%d] back to %d (%s); its new owner consumes it",
                     tp.topic, tp.partition, offset, exc)


# ---------------------------------------------------------------------------- entry point
def say_stderr(message: str) -> None:
    print(f"feedback-loop: {message}", file=sys.stderr, flush=True)


def _require(settings: Settings) -> None:
    missing = [flag for flag, value in (("--kafka HOST:PORT (FEEDBACK_LOOP_KAFKA_BOOTSTRAP)", settings.kafka_bootstrap),
                                        ("--redis URL (FEEDBACK_LOOP_REDIS_URL)", settings.redis_url)) if not value]
    if missing:
        raise ConfigurationError(
            f"`feedback-loop alerts` needs {' and '.join(missing)}: the broker and Redis of the running "
            "deployment (`feedback-loop up` prints both)")


def build_sink(
    settings: Settings, *, sink: str, url: str | None = None, redis_key: str | None = None,
    json_lines: bool = False, redis: redis_lib.Redis | None = None, sink_name: str | None = None,
) -> Sink:
    """The sink ``feedback-loop alerts --sink KIND`` uses; flags that do not apply are refused."""
    if sink not in SINK_KINDS:
        raise ConfigurationError(f"--sink must be one of {', '.join(SINK_KINDS)}, got {sink!r}")
    if url is not None and sink != "webhook":
        raise ConfigurationError(f"--url is only used with --sink webhook (got --sink {sink})")
    if redis_key is not None and sink != "redis":
        raise ConfigurationError(f"--redis-key is only used with --sink redis (got --sink {sink})")
    if json_lines and sink != "print":
        raise ConfigurationError(f"--json is only used with --sink print (got --sink {sink})")
    if sink_name is not None and not sink_name.strip():
        raise ConfigurationError("--sink-name must not be empty")
    name = sink_name or sink
    if sink == "print":
        return PrintSink(json_lines=json_lines, name=name)
    if sink == "webhook":
        return WebhookSink(validate_webhook_url(url), name=name)
    if redis_key is not None and not redis_key.strip():
        raise ConfigurationError("--redis-key must not be empty")
    return RedisSink(settings.redis_url or "", redis_key or inbox_key(settings), name=name, client=redis,
                     security=redis_kwargs(settings))


def _ensure_topic(settings: Settings) -> None:
    from feedback_loop.kafka_admin import ensure_topics, topic_partitions

    assert settings.kafka_bootstrap
    topic = settings.topics.drift_alerts
    security = kafka_python_kwargs(settings)
    if topic_partitions(settings.kafka_bootstrap, topic, timeout=15, security=security) == 0:
        ensure_topics(settings.kafka_bootstrap, [topic], settings.partitions, settings.replication_factor,
                      timeout=30, security=security)


def run_alerts(
    settings: Settings,
    *,
    sink: str,
    url: str | None,
    redis_key: str | None,
    json_lines: bool,
    group_id: str,
    sink_name: str | None = None,
    stop: threading.Event | None = None,
    say: Callable[[str], None] | None = None,
) -> int:
    """Entry point of ``feedback-loop alerts``: consume drift alerts until SIGINT/SIGTERM.

    Parameters
    ----------
    settings
        Must have ``kafka_bootstrap`` and ``redis_url``.
    sink
        ``"print"`` (standard output; ``json_lines`` prints the JSON), ``"webhook"`` (POST to
        ``url``) or ``"redis"`` (LPUSH to ``redis_key``, default ``<ns>:alerts:inbox``).
    group_id
        Kafka consumer group.
    sink_name
        Name of the destination in Redis keys (default: ``sink``); give two consumers that feed
        different webhooks different names.
    stop
        Optional event that stops the consumer too (for embedding); signals always do when this
        runs in the main thread.
    say
        Status lines (default: ``feedback-loop: ...`` on standard error).

    Returns
    -------
    int
        0 after a clean stop.

    Raises
    ------
    ConfigurationError
        A missing server or a wrong flag; the message names the flag.
    BrokerUnavailableError, StoreUnavailableError
        Kafka or Redis did not answer.
    """
    say = say or say_stderr
    _require(settings)
    if not group_id or not group_id.strip():
        raise ConfigurationError("--group-id must not be empty")
    assert settings.redis_url and settings.kafka_bootstrap
    redis = _redis_client(settings)  # connects on first use
    try:
        # Flags first: a wrong flag is reported without waiting for any server.
        the_sink = build_sink(settings, sink=sink, url=url, redis_key=redis_key, json_lines=json_lines,
                              redis=redis, sink_name=sink_name)
        try:
            redis.ping()
        except redis_lib.RedisError as exc:
            raise StoreUnavailableError(
                f"Redis at {safe_url(settings.redis_url)} did not answer ({exc}); check --redis "
                "(FEEDBACK_LOOP_REDIS_URL) and that the server is running") from None
        _ensure_topic(settings)
        stop = stop or threading.Event()
        restore = install_signal_handlers(stop)
        try:
            with AlertConsumer(settings, the_sink, group_id=group_id, redis=redis) as consumer:
                say(f"alerts: consuming {consumer.topic} as group {group_id!r}, delivering to "
                    f"{the_sink.describe()}; parked alerts go to {consumer.undeliverable_key}; Ctrl-C to stop")
                total = consumer.run(stop)
            say(f"alerts: stopped ({total.delivered} delivered, {total.duplicates} duplicates skipped, "
                f"{total.parked + total.invalid} parked)")
        finally:
            restore()
        return 0
    finally:
        redis.close()


def install_signal_handlers(stop: threading.Event) -> Callable[[], None]:
    """SIGINT and SIGTERM set ``stop``; returns a function restoring the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
