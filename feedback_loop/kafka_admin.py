"""Blocking Kafka administration: wait for a broker, create topics, read their size.

Uses kafka-python's :class:`~kafka.admin.KafkaAdminClient` (3.x API), so it can run
before any event loop exists, from the CLI or from a test fixture. Every function
opens its own short-lived client and closes it before returning. ``security`` is the
SASL/TLS keyword arguments of the client, :func:`feedback_loop.kafka_security.kafka_python_kwargs`
of the settings (empty, the default, for PLAINTEXT).

Topics are created explicitly: Tansu, the embedded broker, does not create topics
on a metadata request the way ``auto.create.topics.enable`` does in Apache Kafka,
and production clusters often disable it too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import kafka.errors as kerrors
from kafka import KafkaAdminClient

from feedback_loop.errors import BrokerUnavailableError, ConfigurationError

__all__ = ["ensure_topics", "topic_partitions", "wait_for_kafka"]

log = logging.getLogger(__name__)

_CLIENT_ID = "feedback-loop-admin"
_POLL_SECONDS = 0.1
# Error codes that mean the request or the topic names are wrong, not that the
# broker is busy: retrying cannot help.
_CONFIG_ERRORS = (
    kerrors.InvalidTopicError,
    kerrors.InvalidPartitionsError,
    kerrors.InvalidReplicationFactorError,
    kerrors.InvalidReplicationAssignmentError,
    kerrors.InvalidConfigurationError,
    kerrors.TopicAuthorizationFailedError,
    kerrors.ClusterAuthorizationFailedError,
    kerrors.PolicyViolationError,
)


def _unavailable(bootstrap: str, timeout: float, cause: BaseException | str,
                 security: Mapping[str, Any] | None = None) -> BrokerUnavailableError:
    protocol = (security or {}).get("security_protocol", "PLAINTEXT")
    hint = ("" if protocol == "PLAINTEXT" else
            f" The client uses {protocol}: check that the listener at that address does too, and the "
            "FEEDBACK_LOOP_KAFKA_SASL_* / FEEDBACK_LOOP_KAFKA_SSL_* settings (user, password, CA file).")
    return BrokerUnavailableError(
        f"Kafka at {bootstrap} did not answer within {timeout:g}s ({cause}). "
        "Check that the broker is running and reachable at that address, that it advertises "
        "an address this machine can reach (advertised.listeners), and that --kafka / "
        "FEEDBACK_LOOP_KAFKA_BOOTSTRAP is right; leave it unset to use the embedded broker." + hint
    )


def _check_bootstrap(bootstrap: str) -> None:
    if not bootstrap or not bootstrap.strip():
        raise ConfigurationError(
            "the Kafka bootstrap address is empty; set it to HOST:PORT, for example "
            "FEEDBACK_LOOP_KAFKA_BOOTSTRAP=localhost:9092"
        )


def _open_admin(bootstrap: str, timeout: float, security: Mapping[str, Any] | None = None) -> KafkaAdminClient:
    """Connect an admin client, or raise :class:`BrokerUnavailableError` in time."""
    _check_bootstrap(bootstrap)
    timeout_ms = max(int(timeout * 1000), 100)
    try:
        return KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id=_CLIENT_ID,
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=max(min(timeout_ms, 30_000), 1000),
            **dict(security or {}),
        )
    except (kerrors.KafkaError, OSError) as exc:
        raise _unavailable(bootstrap, timeout, exc, security) from exc


def _describe(admin: KafkaAdminClient, names: list[str]) -> dict[str, dict[str, Any]]:
    """Topic metadata by name; a missing topic has ``error_code`` 3."""
    return {t["name"]: t for t in admin.describe_topics(names)}


def _is_missing(info: dict[str, Any] | None) -> bool:
    return info is None or info.get("error_code") == kerrors.UnknownTopicOrPartitionError.errno


def _not_ready_reason(info: dict[str, Any] | None) -> str | None:
    """Why a topic cannot be used yet, or ``None`` when every partition has a leader."""
    if _is_missing(info):
        return "missing"
    assert info is not None
    code = info.get("error_code", 0)
    if code:
        return kerrors.for_code(code).__name__
    partitions = info.get("partitions") or []
    if not partitions:
        return "no partitions reported"
    bad = [
        f"p{p.get('partition_index')}="
        + (kerrors.for_code(p["error_code"]).__name__ if p.get("error_code") else "no leader")
        for p in partitions
        if p.get("error_code") or p.get("leader_id", -1) < 0
    ]
    return ", ".join(bad) if bad else None


def _check_partition_count(name: str, info: dict[str, Any] | None, partitions: int) -> None:
    if _is_missing(info) or info is None or info.get("error_code"):
        return
    actual = len(info.get("partitions") or [])
    if actual and actual != partitions:
        raise ConfigurationError(
            f"topic {name!r} already exists with {actual} partitions, but {partitions} are "
            f"configured; set FEEDBACK_LOOP_PARTITIONS={actual} (or --partitions {actual}) to "
            "use it as it is, or delete the topic so it is created again"
        )


def wait_for_kafka(bootstrap: str, timeout: float, *, security: Mapping[str, Any] | None = None) -> None:
    """Block until the broker at ``bootstrap`` answers a metadata request.

    Parameters
    ----------
    bootstrap
        ``HOST:PORT`` (comma-separated for several brokers).
    timeout
        Seconds to keep trying.
    security
        SASL/TLS keyword arguments of the admin client (``kafka_python_kwargs(settings)``).

    Raises
    ------
    BrokerUnavailableError
        Nothing answered in time; the message says what to check.
    ConfigurationError
        ``bootstrap`` is empty.
    """
    _check_bootstrap(bootstrap)
    deadline = time.monotonic() + timeout
    last: BaseException | str = "no answer"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _unavailable(bootstrap, timeout, last, security)
        try:
            admin = _open_admin(bootstrap, remaining, security)
        except BrokerUnavailableError as exc:
            raise _unavailable(bootstrap, timeout, exc.__cause__ or exc, security) from exc
        try:
            admin.describe_cluster()
            return
        except (kerrors.KafkaError, OSError) as exc:
            # Bootstrapped, but the advertised broker did not answer (yet).
            last = exc
            log.debug("Kafka at %s not ready yet: %s", bootstrap, exc)
        finally:
            admin.close()
        time.sleep(min(_POLL_SECONDS, max(deadline - time.monotonic(), 0)))


def ensure_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int,
    replication_factor: int = 1,
    timeout: float = 30,
    *,
    security: Mapping[str, Any] | None = None,
) -> list[str]:
    """Create the topics that do not exist yet and wait until all are usable.

    Idempotent: topics that exist with ``partitions`` partitions are left alone.
    Returns once the metadata shows every topic with every partition having a
    leader.

    Parameters
    ----------
    bootstrap
        Kafka bootstrap address ``HOST:PORT``.
    names
        Topic names; duplicates are ignored.
    partitions
        Partitions of each topic.
    replication_factor
        Replicas of each partition of created topics (at most the number of
        brokers).
    timeout
        Seconds for the whole operation, connecting included.
    security
        SASL/TLS keyword arguments of the admin client (``kafka_python_kwargs(settings)``).

    Returns
    -------
    list of str
        The topics this call created, in the order of ``names`` (empty when all
        existed already). A topic that another client created at the same moment
        is not in it.

    Raises
    ------
    ConfigurationError
        A topic exists with another partition count (the message names the topic
        and both counts), or the broker refused the topic settings.
    BrokerUnavailableError
        The broker did not answer, or the topics did not become ready in time.
    """
    wanted = list(dict.fromkeys(names))
    if partitions < 1:
        raise ConfigurationError(
            f"partitions must be at least 1, got {partitions}; fix --partitions (FEEDBACK_LOOP_PARTITIONS)"
        )
    if replication_factor < 1:
        raise ConfigurationError(
            f"replication factor must be at least 1, got {replication_factor}; "
            "fix FEEDBACK_LOOP_REPLICATION_FACTOR"
        )
    if not wanted:
        return []
    started = time.monotonic()
    deadline = started + timeout
    admin = _open_admin(bootstrap, timeout, security)
    try:
        attempted: set[str] = set()
        created_now: set[str] = set()
        while True:
            try:
                info = _describe(admin, wanted)
            except (kerrors.KafkaError, OSError) as exc:
                log.debug("describe_topics failed, retrying: %s", exc)
                info = {}
                pending = {name: str(exc) for name in wanted}
            else:
                for name in wanted:
                    _check_partition_count(name, info.get(name), partitions)
                missing = [n for n in wanted if _is_missing(info.get(n)) and n not in attempted]
                if missing and time.monotonic() < deadline:
                    created, settled = _create(admin, missing, partitions, replication_factor, deadline)
                    created_now.update(created)
                    attempted.update(settled)
                    if settled != set(missing):
                        time.sleep(_POLL_SECONDS)  # transient failure: try again
                    continue
                pending = {}
                for name in wanted:
                    reason = _not_ready_reason(info.get(name))
                    if reason is not None:
                        pending[name] = reason
                if not pending:
                    log.debug(
                        "topics ready after %.3fs (created %d of %d): %s",
                        time.monotonic() - started, len(created_now), len(wanted), ", ".join(wanted),
                    )
                    return [n for n in wanted if n in created_now]
            if time.monotonic() >= deadline:
                detail = "; ".join(f"{n}: {r}" for n, r in sorted(pending.items()))
                raise BrokerUnavailableError(
                    f"topics on {bootstrap} were not ready within {timeout:g}s ({detail}); check "
                    "the broker's logs, or raise the timeout if the cluster is slow to elect leaders"
                )
            time.sleep(_POLL_SECONDS)
    finally:
        admin.close()


def _create(
    admin: KafkaAdminClient, names: list[str], partitions: int, replication_factor: int, deadline: float
) -> tuple[set[str], set[str]]:
    """Ask the controller to create ``names``.

    Returns
    -------
    tuple of set
        The topics it created, and the topics that need no new attempt (created,
        or created by someone else meanwhile). The others failed for a transient
        reason; the caller tries them again.
    """
    timeout_ms = max(int((deadline - time.monotonic()) * 1000), 1000)
    spec = {n: {"num_partitions": partitions, "replication_factor": replication_factor} for n in names}
    try:
        result = admin.create_topics(spec, timeout_ms=timeout_ms, raise_errors=False)
    except (kerrors.KafkaError, OSError) as exc:
        # Retried by the caller's loop: it describes the topics again.
        log.debug("create_topics failed, retrying: %s", exc)
        return set(), set()
    created: set[str] = set()
    settled: set[str] = set()
    for topic in result.get("topics", []):
        code = topic.get("error_code") or 0
        if code == 0:
            created.add(topic["name"])
            settled.add(topic["name"])
            continue
        if code == kerrors.TopicAlreadyExistsError.errno:
            settled.add(topic["name"])
            continue
        err = kerrors.for_code(code)
        message = topic.get("error_message") or err.__name__
        if issubclass(err, _CONFIG_ERRORS):
            raise ConfigurationError(
                f"the broker refused to create topic {topic.get('name')!r} with {partitions} "
                f"partitions and replication factor {replication_factor}: {message}; fix "
                "--partitions, FEEDBACK_LOOP_REPLICATION_FACTOR (it cannot exceed the broker "
                "count) or --topic-prefix"
            )
        log.debug("creating topic %s failed (%s), retrying", topic.get("name"), message)
    if created:
        log.info("created topics %s with %d partitions", ", ".join(sorted(created)), partitions)
    return created, settled


def topic_partitions(bootstrap: str, name: str, timeout: float = 10, *,
                     security: Mapping[str, Any] | None = None) -> int:
    """Return the partition count of topic ``name``, ``0`` when it does not exist.

    ``security`` is the SASL/TLS keyword arguments of the admin client (``kafka_python_kwargs(settings)``).

    Raises
    ------
    BrokerUnavailableError
        The broker did not answer within ``timeout`` seconds.
    """
    admin = _open_admin(bootstrap, timeout, security)
    try:
        try:
            info = _describe(admin, [name]).get(name)
        except (kerrors.KafkaError, OSError) as exc:
            raise _unavailable(bootstrap, timeout, exc, security) from exc
    finally:
        admin.close()
    if _is_missing(info) or info is None:
        return 0
    code = info.get("error_code")
    if code:
        raise BrokerUnavailableError(
            f"Kafka at {bootstrap} could not describe topic {name!r}: "
            f"{kerrors.for_code(code).__name__}; check the broker's logs and retry"
        )
    return len(info.get("partitions") or [])
