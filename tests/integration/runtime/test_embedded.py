"""Embedded Tansu + redis-server, and the Kafka admin helpers against the session's broker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from feedback_loop.errors import BrokerUnavailableError, ConfigurationError, RuntimeStartError
from feedback_loop.kafka_admin import ensure_topics, topic_partitions, wait_for_kafka
from feedback_loop.runtime import embedded as embedded_module
from feedback_loop.runtime.embedded import EmbeddedServers
from feedback_loop.runtime.processes import free_port, port_is_free
from feedback_loop.settings import TOPIC_NAMES

from support.procs import pid_gone, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def make_servers(tmp_path: Path) -> Iterator[Callable[..., EmbeddedServers]]:
    """Build EmbeddedServers that are stopped after the test whatever happens."""
    made: list[EmbeddedServers] = []

    def make(**kwargs: object) -> EmbeddedServers:
        kwargs.setdefault("data_dir", tmp_path / "data")
        kwargs.setdefault("startup_timeout", 20.0)
        servers = EmbeddedServers(**kwargs)  # type: ignore[arg-type]
        made.append(servers)
        return servers

    yield make
    for servers in made:
        servers.stop(timeout=2)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port with a listening socket on 127.0.0.1 for the duration of the test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


def test_start_and_stop(make_servers: Callable[..., EmbeddedServers], tmp_path: Path) -> None:
    servers = make_servers(topics=TOPIC_NAMES, partitions=8)
    t0 = time.monotonic()
    servers.start()
    started = time.monotonic() - t0
    assert started < 15
    assert set(servers.timings) == {"kafka", "redis", "topics"}
    pids = servers.pids
    assert set(pids) == {"kafka", "redis"}
    host, port = servers.bootstrap.split(":")
    assert host == "127.0.0.1" and int(port) == servers.kafka_port
    assert servers.redis_url == f"redis://127.0.0.1:{servers.redis_port}/0"
    assert redis.Redis.from_url(servers.redis_url).ping()
    for name in TOPIC_NAMES:
        assert topic_partitions(servers.bootstrap, name) == 8
    assert servers.start() is servers  # idempotent
    kafka_port, redis_port = servers.kafka_port, servers.redis_port

    t0 = time.monotonic()
    servers.stop(timeout=5)
    assert time.monotonic() - t0 < 7
    assert not servers.running
    assert all(pid_gone(pid) for pid in pids.values())
    assert port_is_free("127.0.0.1", kafka_port)
    assert port_is_free("127.0.0.1", redis_port)
    servers.stop()  # idempotent
    # Nothing outside data_dir: Redis's files and the logs are all in it.
    data = tmp_path / "data"
    assert (data / "appendonly.aof").exists()
    assert (data / "logs" / "tansu.log").exists() and (data / "logs" / "redis.log").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    with pytest.raises(RuntimeError):
        servers.bootstrap  # noqa: B018


def test_redis_persists_across_restarts_on_the_same_ports(
    make_servers: Callable[..., EmbeddedServers],
) -> None:
    first = make_servers().start()
    kafka_port, redis_port = first.kafka_port, first.redis_port
    client = redis.Redis.from_url(first.redis_url)
    client.set("fl:test:key", "kept")
    client.close()
    first.stop(timeout=5)

    # Same data_dir, same explicit ports: the ports must be free again.
    second = make_servers(kafka_port=kafka_port, redis_port=redis_port).start()
    assert (second.kafka_port, second.redis_port) == (kafka_port, redis_port)
    client = redis.Redis.from_url(second.redis_url)
    try:
        assert client.get("fl:test:key") == b"kept"
    finally:
        client.close()


def test_redis_killed_during_an_aof_rewrite_loses_nothing(
    make_servers: Callable[..., EmbeddedServers],
) -> None:
    """The embedded Redis skips fsyncs while it rewrites its AOF (they would block its
    replies); what it acknowledged is in the OS's page cache, so a kill -9 loses nothing."""
    first = make_servers().start()
    kafka_port, redis_port = first.kafka_port, first.redis_port
    client = redis.Redis.from_url(first.redis_url)
    assert client.config_get("no-appendfsync-on-rewrite") == {"no-appendfsync-on-rewrite": "yes"}
    assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
    client.mset({f"fl:test:before:{i}": "x" * 100 for i in range(20_000)})
    client.bgrewriteaof()
    client.mset({f"fl:test:during:{i}": str(i) for i in range(1_000)})
    client.close()
    os.kill(first.pids["redis"], signal.SIGKILL)
    first.stop(timeout=5)

    second = make_servers(kafka_port=kafka_port, redis_port=redis_port).start()
    client = redis.Redis.from_url(second.redis_url)
    try:
        assert client.dbsize() == 21_000
        assert client.get("fl:test:during:999") == b"999"
    finally:
        client.close()


def test_redis_rewrites_its_aof_at_the_lowest_cpu_priority(
    make_servers: Callable[..., EmbeddedServers],
) -> None:
    """The child that rewrites the append-only file gets nice 19 (rewrite_priority); the server
    itself keeps its priority."""
    servers = make_servers().start()
    data_dir, server_pid = servers.data_dir, servers.pids["redis"]
    client = redis.Redis.from_url(servers.redis_url)
    try:
        client.mset({f"fl:test:{i}": "x" for i in range(20)})
        client.config_set("rdb-key-save-delay", 100_000)  # 0.1 s per key: the rewrite lasts 2 s
        client.bgrewriteaof()
        child: list[int] = []

        def rewrite_child() -> bool:
            child[:] = [int(p.name.rsplit("-", 1)[1].split(".")[0]) for p in data_dir.glob("temp-rewriteaof-*.aof")]
            return bool(child)

        assert wait_until(rewrite_child, timeout=5.0)
        assert wait_until(lambda: os.getpriority(os.PRIO_PROCESS, child[0]) == 19, timeout=1.0)
        assert os.getpriority(os.PRIO_PROCESS, server_pid) == 0
    finally:
        client.config_set("rdb-key-save-delay", 0)
        client.close()


def test_busy_kafka_port_is_reported(
    make_servers: Callable[..., EmbeddedServers], busy_port: int
) -> None:
    servers = make_servers(kafka_port=busy_port)
    with pytest.raises(RuntimeStartError, match=rf"{busy_port}.*--kafka-port"):
        servers.start()
    assert servers.pids == {} and not servers.running


def test_busy_redis_port_is_reported(
    make_servers: Callable[..., EmbeddedServers], busy_port: int
) -> None:
    servers = make_servers(redis_port=busy_port)
    with pytest.raises(RuntimeStartError, match=rf"{busy_port}.*--redis-port"):
        servers.start()
    assert servers.pids == {} and not servers.running


def test_free_port_taken_meanwhile_is_retried(
    make_servers: Callable[..., EmbeddedServers], busy_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race between choosing a free port and binding it: the server retries."""
    handed_out = iter([busy_port])

    def racy_free_port(host: str = "127.0.0.1") -> int:
        return next(handed_out, None) or free_port(host)

    monkeypatch.setattr(embedded_module, "free_port", racy_free_port)
    servers = make_servers().start()
    assert servers.kafka_port != busy_port
    wait_for_kafka(servers.bootstrap, timeout=5)


def test_child_exiting_during_startup_shows_its_log(
    make_servers: Callable[..., EmbeddedServers], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "appendonly.aof").write_bytes(b"this is not an append-only file\n")
    servers = make_servers()
    with pytest.raises(RuntimeStartError) as info:
        servers.start()
    message = str(info.value)
    assert "Redis exited" in message and "append only file" in message.lower()
    assert servers.pids == {}


def test_data_dir_is_locked_while_running(make_servers: Callable[..., EmbeddedServers]) -> None:
    make_servers().start()
    with pytest.raises(RuntimeStartError, match="--data-dir"):
        make_servers().start()


def test_servers_die_with_their_parent(tmp_path: Path) -> None:
    """kill -9 of the Python process that started them leaves no Tansu or Redis behind."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    pid_file = tmp_path / "pids.json"
    script = textwrap.dedent(
        f"""
        import json, os, time
        from pathlib import Path
        from feedback_loop.runtime.embedded import EmbeddedServers
        servers = EmbeddedServers(data_dir=Path({str(tmp_path / "data")!r}), topics=["t"], partitions=8)
        servers.start()
        tmp = {str(pid_file)!r} + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(servers.pids, fh)
        os.replace(tmp, {str(pid_file)!r})
        time.sleep(60)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    pids: dict[str, int] = {}
    try:
        if not wait_until(lambda: pid_file.exists() or parent.poll() is not None, 20):
            pytest.fail("the child Python did not start the servers within 20 s")
        if not pid_file.exists():
            pytest.fail(f"the child Python failed: {parent.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        pids = json.loads(pid_file.read_text())
        assert set(pids) == {"kafka", "redis"}
        assert not any(pid_gone(pid) for pid in pids.values())
        parent.kill()
        parent.wait(timeout=5)
        assert wait_until(lambda: all(pid_gone(pid) for pid in pids.values()), 5), (
            f"servers outlived their parent: {pids}"
        )
    finally:
        parent.kill()
        parent.wait(timeout=5)
        for pid in pids.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


# -- against the session's servers (env, testcontainers or embedded) ---------------


def unique_topic(prefix: str = "fl-test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def test_round_trip_on_all_partitions(kafka_bootstrap: str) -> None:
    topic = unique_topic()
    ensure_topics(kafka_bootstrap, [topic], partitions=8, timeout=20)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, request_timeout_ms=10_000)
    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=1000,
    )
    try:
        sent = {(p, f"m{p}-{i}".encode()) for p in range(8) for i in range(5)}
        for partition, value in sorted(sent):
            producer.send(topic, value=value, key=b"k", partition=partition)
        producer.flush(timeout=10)
        consumer.assign([TopicPartition(topic, p) for p in range(8)])
        received: set[tuple[int, bytes]] = set()
        deadline = time.monotonic() + 20
        while received != sent and time.monotonic() < deadline:
            for record in consumer:
                received.add((record.partition, record.value))
                if received == sent:
                    break
        assert received == sent
    finally:
        producer.close(timeout=5)
        consumer.close()


def test_ensure_topics_is_idempotent_and_checks_partitions(kafka_bootstrap: str) -> None:
    topics = [unique_topic(), unique_topic()]
    assert topic_partitions(kafka_bootstrap, topics[0]) == 0
    assert ensure_topics(kafka_bootstrap, topics[:1], partitions=3, timeout=20) == topics[:1]
    assert ensure_topics(kafka_bootstrap, topics + topics, partitions=3, timeout=20) == topics[1:]
    assert ensure_topics(kafka_bootstrap, topics, partitions=3, timeout=20) == []
    assert [topic_partitions(kafka_bootstrap, t) for t in topics] == [3, 3]
    with pytest.raises(ConfigurationError, match=rf"{topics[0]}.*3 partitions.*8"):
        ensure_topics(kafka_bootstrap, topics, partitions=8, timeout=20)


def test_wait_for_kafka_on_a_dead_port_fails_in_time() -> None:
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match=rf"127.0.0.1:{port}.*FEEDBACK_LOOP_KAFKA_BOOTSTRAP"):
        wait_for_kafka(f"127.0.0.1:{port}", timeout=1.0)
    assert time.monotonic() - t0 < 5


def test_session_servers_answer(servers: object, redis_url: str) -> None:
    assert getattr(servers, "kind") in ("env", "testcontainers", "embedded")
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping()
    finally:
        client.close()
