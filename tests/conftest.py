"""Test harness: one Kafka-protocol broker and one Redis for the whole session.

Where the servers come from, first match wins:

1. ``env``: ``FEEDBACK_LOOP_KAFKA_BOOTSTRAP`` and ``FEEDBACK_LOOP_REDIS_URL``
   (each one that is set is used as it is; a missing one comes from 2 or 3).
2. ``testcontainers``: an ``apache/kafka`` container (KRaft, topic auto-creation
   off, like Tansu) and a ``redis`` container, when a Docker engine answers a
   ping within two seconds.
3. ``embedded``: one :class:`~feedback_loop.runtime.embedded.EmbeddedServers`
   (Tansu + ``redis-server``) in a temporary directory.

``FEEDBACK_LOOP_TEST_SERVERS=embedded`` (or ``testcontainers``) skips the
detection. ``FEEDBACK_LOOP_TEST_KAFKA_IMAGE`` and ``FEEDBACK_LOOP_TEST_REDIS_IMAGE``
change the container images.

Nothing starts until a test asks for ``servers``, ``kafka_bootstrap`` or
``redis_url``, so unit tests never pay for it. Tests under ``tests/integration``
are marked ``integration`` automatically (``-m "not integration"`` skips them);
mark integration tests elsewhere with ``@pytest.mark.integration``.
"""

from __future__ import annotations

import atexit
import functools
import io
import os
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

KAFKA_ENV = "FEEDBACK_LOOP_KAFKA_BOOTSTRAP"
REDIS_ENV = "FEEDBACK_LOOP_REDIS_URL"
KIND_ENV = "FEEDBACK_LOOP_TEST_SERVERS"
DEFAULT_KAFKA_IMAGE = "apache/kafka:3.9.0"
DEFAULT_REDIS_IMAGE = "redis:7"
_INTEGRATION_DIR = Path(__file__).parent / "integration"


@pytest.fixture(autouse=True)
def _event_loop_policy() -> Iterator[None]:
    """A test that runs a command in this process (``cli.main(["worker"])`` chooses the worker's
    event loop) leaves the next tests the event loop policy it found."""
    import asyncio

    before = asyncio.get_event_loop_policy()
    yield
    asyncio.set_event_loop_policy(before)


@dataclass(frozen=True)
class Servers:
    """Addresses of the session's servers.

    Attributes
    ----------
    bootstrap : str
        Kafka bootstrap address ``HOST:PORT``.
    redis_url : str
        ``redis://HOST:PORT/DB``.
    kind : str
        ``"env"``, ``"testcontainers"`` or ``"embedded"``: where the servers came
        from (when only one address came from the environment, the kind of the
        other one).
    """

    bootstrap: str
    redis_url: str
    kind: str


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


@functools.lru_cache(maxsize=1)
def _docker_answers() -> bool:
    """Whether a Docker engine answers a ping within two seconds; never hangs."""
    if not _env("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    try:
        import docker

        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _fallback_kind() -> str:
    forced = _env(KIND_ENV)
    if forced in ("embedded", "testcontainers"):
        return forced
    return "testcontainers" if _docker_answers() else "embedded"


def _planned_kind() -> str:
    if _env(KAFKA_ENV) and _env(REDIS_ENV):
        return "env"
    return _fallback_kind()


def pytest_report_header(config: pytest.Config) -> str:
    """Say which servers integration tests will use (started only if requested)."""
    kind = _planned_kind()
    detail = {
        "env": f"{KAFKA_ENV}={_env(KAFKA_ENV)}, {REDIS_ENV}={_env(REDIS_ENV)}",
        "testcontainers": f"Docker: {os.environ.get('FEEDBACK_LOOP_TEST_KAFKA_IMAGE', DEFAULT_KAFKA_IMAGE)}"
        f" + {os.environ.get('FEEDBACK_LOOP_TEST_REDIS_IMAGE', DEFAULT_REDIS_IMAGE)}",
        "embedded": "Tansu + redis-server as child processes",
    }[kind]
    from_env = [name for name in (KAFKA_ENV, REDIS_ENV) if _env(name)]
    if kind != "env" and from_env:
        detail += "; from the environment: " + ", ".join(f"{n}={_env(n)}" for n in from_env)
    return f"feedback-loop integration servers: {kind} ({detail})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under ``tests/integration`` as ``integration``."""
    for item in items:
        if _INTEGRATION_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)


# -- testcontainers ---------------------------------------------------------------


def _start_kafka_container() -> tuple[str, Callable[[], None]]:
    """An apache/kafka single-node KRaft broker; returns (bootstrap, stop).

    The advertised listener must name the host port Docker mapped, which is known
    only after the container starts: the container waits for a start script that
    is copied in once the port is known (what testcontainers' own KafkaContainer
    does for Confluent images).
    """
    from testcontainers.core.container import DockerContainer

    from feedback_loop.kafka_admin import wait_for_kafka

    script = "/tc-start.sh"
    container = (
        DockerContainer(os.environ.get("FEEDBACK_LOOP_TEST_KAFKA_IMAGE", DEFAULT_KAFKA_IMAGE))
        .with_exposed_ports(9092)
        .with_env("CLUSTER_ID", "4L6g3nShT-eMCtK--X86sw")
        .with_env("KAFKA_NODE_ID", "1")
        .with_env("KAFKA_PROCESS_ROLES", "broker,controller")
        .with_env(
            "KAFKA_LISTENERS",
            "PLAINTEXT://0.0.0.0:9092,BROKER://0.0.0.0:9093,CONTROLLER://0.0.0.0:9094",
        )
        .with_env(
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
            "PLAINTEXT:PLAINTEXT,BROKER:PLAINTEXT,CONTROLLER:PLAINTEXT",
        )
        .with_env("KAFKA_INTER_BROKER_LISTENER_NAME", "BROKER")
        .with_env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
        .with_env("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9094")
        .with_env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
        .with_command(f'sh -c "while [ ! -f {script} ]; do sleep 0.1; done; exec sh {script}"')
    )
    container.start()
    try:
        host = container.get_container_host_ip()
        port = int(container.get_exposed_port(9092))
        body = (
            f"export KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://{host}:{port},BROKER://localhost:9093\n"
            "exec /etc/kafka/docker/run\n"
        ).encode()
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            info = tarfile.TarInfo(script.lstrip("/"))
            info.size = len(body)
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(body))
        container.get_wrapped_container().put_archive("/", archive.getvalue())
        bootstrap = f"{host}:{port}"
        wait_for_kafka(bootstrap, timeout=120)
    except BaseException:
        container.stop()
        raise
    return bootstrap, container.stop


def _start_redis_container() -> tuple[str, Callable[[], None]]:
    try:
        from testcontainers.community.redis import RedisContainer
    except ImportError:  # testcontainers < 4.14
        from testcontainers.redis import RedisContainer

    container = RedisContainer(os.environ.get("FEEDBACK_LOOP_TEST_REDIS_IMAGE", DEFAULT_REDIS_IMAGE))
    container.start()
    try:
        url = f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/0"
    except BaseException:
        container.stop()
        raise
    return url, container.stop


# -- fixtures ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """The session's Kafka and Redis, started on first use and stopped at the end."""
    kafka, redis_url = _env(KAFKA_ENV), _env(REDIS_ENV)
    stoppers: list[Callable[[], Any]] = []

    def stop_all() -> None:
        while stoppers:
            try:
                stoppers.pop()()
            except Exception:  # keep stopping the others
                pass

    # Finalizers do not run when the session is interrupted hard; atexit does.
    atexit.register(stop_all)
    kind = "env"
    try:
        if kafka is None or redis_url is None:
            kind = _fallback_kind()
            if kind == "testcontainers" and not _docker_answers():
                pytest.skip(f"{KIND_ENV}=testcontainers but no Docker engine answers (DOCKER_HOST or "
                            "/var/run/docker.sock): start Docker, or unset it to use the embedded servers")
            if kind == "testcontainers":
                if kafka is None:
                    kafka, stop = _start_kafka_container()
                    stoppers.append(stop)
                if redis_url is None:
                    redis_url, stop = _start_redis_container()
                    stoppers.append(stop)
            else:
                from feedback_loop.runtime.embedded import EmbeddedServers

                embedded = EmbeddedServers(data_dir=tmp_path_factory.mktemp("embedded-servers"))
                stoppers.append(embedded.stop)
                embedded.start()
                kafka = kafka or embedded.bootstrap
                redis_url = redis_url or embedded.redis_url
        yield Servers(bootstrap=kafka, redis_url=redis_url, kind=kind)
    finally:
        stop_all()
        atexit.unregister(stop_all)


@pytest.fixture(scope="session")
def kafka_bootstrap(servers: Servers) -> str:
    """Kafka bootstrap address ``HOST:PORT`` of the session's broker."""
    return servers.bootstrap


@pytest.fixture(scope="session")
def redis_url(servers: Servers) -> str:
    """URL of the session's Redis."""
    return servers.redis_url
