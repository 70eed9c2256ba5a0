"""A whole local deployment in one object: servers (embedded unless configured), topics and
worker processes. Used by ``feedback-loop up`` and ``feedback-loop demo``.

Every child dies with this process (see :func:`feedback_loop.runtime.processes.spawn`), and
:meth:`LocalStack.stop` is bounded: graceful first, then killed.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping

import orjson
import redis
from pydantic import SecretStr

from feedback_loop.errors import RuntimeStartError
from feedback_loop.kafka_admin import ensure_topics, wait_for_kafka
from feedback_loop.kafka_security import kafka_python_kwargs, redis_kwargs
from feedback_loop.runtime import processes
from feedback_loop.runtime.embedded import EmbeddedServers
from feedback_loop.settings import Settings
from streams.checkpoint import reset_join_state

Say = Callable[[str], None]


class LocalStack:
    """Servers + topics + ``workers`` worker processes for ``settings``.

    Parameters
    ----------
    settings
        Unset ``kafka_bootstrap`` / ``redis_url`` start the embedded servers.
    env
        Base environment of the worker processes (the CLI passes its own).
    kafka_port, redis_port
        Ports of the embedded servers (0: free ports).
    """

    def __init__(self, settings: Settings, *, env: Mapping[str, str], workers: int = 1,
                 kafka_port: int = 0, redis_port: int = 0, say: Say = lambda _: None,
                 worker_start_timeout: float = 90.0) -> None:
        self.settings = settings
        self.env = dict(env)
        self.workers = workers
        self.kafka_port, self.redis_port = kafka_port, redis_port
        self.say = say
        self.worker_start_timeout = worker_start_timeout
        self.servers: EmbeddedServers | None = None
        self.procs: list[subprocess.Popen[bytes]] = []
        self.reviews: subprocess.Popen[bytes] | None = None
        self.resolved: Settings = settings
        self.log_dir = Path(settings.data_dir) / "logs"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Settings:
        """Start everything; return the settings with the servers' addresses filled in."""
        s = self.settings
        topics = list(s.topics)
        if not s.kafka_bootstrap or not s.redis_url:
            self.say("starting embedded Kafka-protocol broker and Redis ...")
            self.servers = EmbeddedServers(
                data_dir=Path(s.data_dir), topics=topics, partitions=s.partitions,
                kafka_port=self.kafka_port, redis_port=self.redis_port, log_dir=self.log_dir)
            self.servers.start()
            self.resolved = s.model_copy(update={
                "kafka_bootstrap": s.kafka_bootstrap or self.servers.bootstrap,
                "redis_url": s.redis_url or self.servers.redis_url})
        if self.resolved.signing_key is None:
            # A key for this run only: the embedded broker's topics do not outlive it either.
            self.resolved = self.resolved.model_copy(update={"signing_key": SecretStr(secrets.token_hex(32))})
        r = self.resolved
        assert r.kafka_bootstrap and r.redis_url
        security = kafka_python_kwargs(r)
        wait_for_kafka(r.kafka_bootstrap, 30, security=security)
        created = ensure_topics(r.kafka_bootstrap, topics, r.partitions, r.replication_factor,
                                security=security) or []
        fresh_broker = self.servers is not None and not s.kafka_bootstrap
        if fresh_broker or set(created) & set(topics[:3]):
            # Fresh input topics restart their offsets: checkpoints of older topics no longer apply.
            reset_join_state(redis.Redis.from_url(r.redis_url, **redis_kwargs(r)), r)
        for i in range(self.workers):
            self.start_worker(i)
        self.start_reviews()
        self.wait_workers(self.workers)
        return r

    def start_reviews(self) -> subprocess.Popen[bytes]:
        """The consumer feeding the Redis review queue (``feedback-loop reviews``)."""
        env = {**self.env, **self.resolved.to_env()}
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.reviews = processes.spawn([sys.executable, "-m", "feedback_loop", "reviews"], env=env,
                                       log_path=self.log_dir / "reviews.log")
        return self.reviews

    def start_worker(self, index: int) -> subprocess.Popen[bytes]:
        env = {**self.env, **self.resolved.to_env()}
        self.log_dir.mkdir(parents=True, exist_ok=True)
        proc = processes.spawn([sys.executable, "-m", "feedback_loop", "worker"], env=env,
                               log_path=self.log_dir / f"worker-{index}.log")
        self.procs.append(proc)
        return proc

    def wait_workers(self, n: int) -> None:
        """Wait until ``n`` workers beat in Redis and own every partition between them."""
        deadline = time.monotonic() + self.worker_start_timeout
        client = redis.Redis.from_url(self.resolved.redis_url or "", **redis_kwargs(self.resolved))
        self.say(f"waiting for {n} worker(s) to join the consumer group ...")
        try:
            while time.monotonic() < deadline:
                self.check_workers()
                beats = [orjson.loads(v) for v in client.mget(
                    list(client.scan_iter(match=self.resolved.key("workers", "*")))) or [] if v]
                live = [b for b in beats if b["pid"] in {p.pid for p in self.procs}]
                if len(live) >= n:
                    return
                time.sleep(0.2)
        finally:
            client.close()
        raise RuntimeStartError(
            f"the worker did not start within {self.worker_start_timeout:.0f} s; "
            f"see {self.log_dir}/worker-0.log")

    def check_workers(self) -> None:
        """Raise if a worker or the review-queue consumer exited."""
        for i, proc in enumerate(self.procs):
            code = proc.poll()
            if code is not None:
                raise RuntimeStartError(
                    f"worker {i} exited with code {code}; its log: {self.log_dir}/worker-{i}.log")
        code = None if self.reviews is None else self.reviews.poll()
        if code is not None:
            raise RuntimeStartError(
                f"the review-queue consumer exited with code {code}; its log: {self.log_dir}/reviews.log")

    def stop(self) -> None:
        """Stop the review consumer and the workers together, then the servers; each step is
        bounded by ``shutdown_timeout_seconds`` (graceful, then killed), so the whole stop takes
        at most about twice that, however many workers there are."""
        timeout = self.settings.shutdown_timeout_seconds
        processes.stop_all(([] if self.reviews is None else [self.reviews]) + self.procs[::-1], timeout)
        self.reviews = None
        self.procs.clear()
        if self.servers is not None:
            self.servers.stop(timeout)
            self.servers = None

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
