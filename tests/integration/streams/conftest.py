"""Fixtures of the stream integration tests: isolated settings, worker processes, the web API.

All of them use the session servers of ``tests/conftest.py`` (``kafka_bootstrap``, ``redis_url``);
each test gets its own topic prefix, consumer group and Redis namespace, so tests never see each
other's data on the shared broker and Redis.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e_worker import WebServer, WorkerProcess, create_topics, unique_settings
from feedback_loop.settings import Settings


@pytest.fixture
def make_settings(kafka_bootstrap: str, redis_url: str, tmp_path: Path) -> Callable[..., Settings]:
    """``make_settings(**overrides)``: settings with a unique topic prefix, app id and namespace."""

    def make(**overrides: Any) -> Settings:
        return unique_settings(kafka_bootstrap, redis_url, tmp_path / "data", **overrides)

    return make


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """``worker_factory(settings, wait=True)``: create the topics, start a worker process and wait
    (90 s at most) for its heartbeat in Redis. Every worker started is stopped at teardown
    (SIGTERM, then SIGKILL after ``shutdown_timeout_seconds``); on failure its log tail is shown.
    """
    started: list[WorkerProcess] = []

    def start(settings: Settings, *, wait: bool = True, timeout: float = 90.0) -> WorkerProcess:
        create_topics(settings)
        worker = WorkerProcess(settings, tmp_path / "logs" / f"worker-{len(started)}.log")
        started.append(worker)
        worker.start()
        if wait:
            worker.wait_ready(timeout)
        return worker

    yield start
    for worker in reversed(started):
        code = worker.stop()
        # Shown by pytest only when the test failed (captured output of the teardown).
        print(f"worker pid {worker.pid} stopped with code {code}\n{worker.log_tail(40)}")


@pytest.fixture
def web_factory() -> Iterator[Callable[[Settings], WebServer]]:
    """``web_factory(settings)``: the HTTP API served in this process on a free port."""
    servers: list[WebServer] = []

    def start(settings: Settings) -> WebServer:
        server = WebServer(settings)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()
