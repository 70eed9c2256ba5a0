"""A ``redis-server`` of a test's own, with an fsync-always AOF, restartable on the same port."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import redis as redis_lib

from feedback_loop.runtime.embedded import redis_server_bin
from feedback_loop.runtime.processes import free_port, spawn, stop


class OwnRedis:
    """A ``redis-server`` with an fsync-always AOF in ``data_dir``, restartable on the same port."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir, self.port = data_dir, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: Any = None
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def start(self, timeout: float = 20.0) -> None:
        self.proc = spawn([str(redis_server_bin()), "--port", str(self.port), "--bind", "127.0.0.1",
                           "--dir", str(self.data_dir), "--appendonly", "yes", "--appendfsync", "always",
                           "--save", "", "--daemonize", "no", "--logfile", "", "--unixsocket", ""],
                          log_path=self.data_dir / "redis.log")
        client = redis_lib.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                try:
                    if client.ping():
                        return
                except (redis_lib.ConnectionError, redis_lib.BusyLoadingError):
                    time.sleep(0.05)
            raise AssertionError(f"redis-server did not start: {(self.data_dir / 'redis.log').read_text()}")
        finally:
            client.close()

    def stop(self) -> int | None:
        """SIGTERM: a clean shutdown (the AOF is complete); the exit code (``None``: not running)."""
        code = None
        if self.proc is not None:
            code = stop(self.proc, timeout=10)
            self.proc = None
        return code
