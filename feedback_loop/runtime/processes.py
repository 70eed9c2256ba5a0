"""Child processes that die with their parent, and stop in a bounded time.

Every server or worker the runtime starts goes through :func:`spawn`, so that

* on Linux the kernel sends the child ``SIGKILL`` when the parent dies, even when
  the parent is killed with ``kill -9`` and gets no chance to clean up
  (``prctl(PR_SET_PDEATHSIG)``);
* the child runs in its own process group (``start_new_session=True``): a Ctrl-C
  typed in the terminal reaches only the parent, which then stops its children in
  order with :func:`stop` or a :class:`ProcessGroup`;
* its output goes to a log file (appended) or nowhere, never to the terminal.

Module state
------------
``_LIVE`` is the one piece of module-level mutable state: a registry of the
children started by :func:`spawn` that have not been stopped yet. An
:mod:`atexit` hook stops whatever is still in it (``SIGTERM``, ``SIGKILL`` after
five seconds) when the interpreter exits
normally (an uncaught exception in the CLI, ``sys.exit``), so children never
outlive a parent that forgot to stop them. A parent killed by a signal does not
run :mod:`atexit`; ``PR_SET_PDEATHSIG`` covers that case on Linux.

Examples
--------
>>> import sys
>>> proc = spawn([sys.executable, "-c", "import time; time.sleep(60)"])
>>> stop(proc, timeout=5) is not None
True
>>> stop(proc, timeout=5) == proc.returncode  # idempotent
True
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

__all__ = [
    "ProcessGroup",
    "free_port",
    "port_is_free",
    "spawn",
    "stop",
    "wait_port_free",
]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_KILL_WAIT_SECONDS = 5.0

# Children started by spawn() and not yet stopped; see the module docstring.
# Strong references: a child whose Popen was dropped must still be killed at exit.
_LIVE: set[subprocess.Popen[bytes]] = set()
_LIVE_LOCK = threading.Lock()


def _load_prctl() -> Callable[..., int] | None:
    """Resolve libc's ``prctl`` in the parent, so the child only has to call it.

    Loading a library between ``fork`` and ``exec`` can deadlock when the parent
    has threads, so the function pointer is looked up here, before any fork.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        log.warning("libc prctl is unavailable: children will not die with their parent")
        return None
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return prctl


_PRCTL = _load_prctl()


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """Build the ``preexec_fn`` that ties the child's life to ``parent_pid``.

    Runs in the child between ``fork`` and ``exec``: it asks the kernel for
    ``SIGKILL`` when the parent dies, then checks that the parent is still the one
    that forked it; if the parent already died before ``prctl`` took effect, the
    child kills itself instead of running as an orphan.
    """
    prctl = _PRCTL

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def spawn(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child process that dies with its parent.

    Parameters
    ----------
    cmd
        The program and its arguments; no shell is involved.
    env
        The child's complete environment, as for :class:`subprocess.Popen`
        (``None`` inherits the parent's). Merge with ``os.environ`` yourself to add
        variables.
    log_path
        File that receives the child's stdout and stderr, appended; its directory
        is created. ``None`` discards the output.
    cwd
        Working directory of the child.

    Returns
    -------
    subprocess.Popen
        The running child; stop it with :func:`stop`. Its process group id equals
        its pid.

    Raises
    ------
    OSError
        The program could not be executed (for example it does not exist).

    Notes
    -----
    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child exits, not
    only the process. Call :func:`spawn` from a thread that lives as long as the
    child should (the main thread), not from a short-lived worker thread.
    The child gets no terminal: stdin is ``/dev/null``.
    """
    args = [os.fspath(a) for a in cmd]
    if not args:
        raise ValueError("spawn() needs a command; got an empty sequence")
    out: int | object
    log_file = None
    if log_path is not None:
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        out = log_file
    else:
        out = subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            args,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent(os.getpid()),
            close_fds=True,
        )
    finally:
        if log_file is not None:
            log_file.close()
    with _LIVE_LOCK:
        # Forget children that exited on their own (poll() also reaps them).
        _LIVE.difference_update([p for p in _LIVE if p.poll() is not None])
        _LIVE.add(proc)
    log.debug("started pid %d: %s (log: %s)", proc.pid, " ".join(args), log_path or "discarded")
    return proc


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send ``sig`` to the child's process group, falling back to the child alone."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        # The group id can no longer be ours (should not happen with
        # start_new_session); signal the child itself if it is still there.
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass


def stop(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """Stop a child started by :func:`spawn`: ``SIGTERM``, then ``SIGKILL``.

    ``SIGTERM`` goes to the child's whole process group; after ``timeout``
    seconds without exit, ``SIGKILL`` follows, again to the group. Safe to call
    several times and from several threads; never raises for a child that is
    already gone.

    Parameters
    ----------
    proc
        A child returned by :func:`spawn`.
    timeout
        Seconds the child gets to exit after ``SIGTERM``; ``0`` kills at once.

    Returns
    -------
    int or None
        The exit code (negative: killed by that signal, as in
        :attr:`subprocess.Popen.returncode`), or ``None`` when the child still did
        not exit a few seconds after ``SIGKILL`` (stuck in the kernel); an error is
        logged then.
    """
    if proc.returncode is not None:
        # Reaped already: its pid may belong to someone else by now, send nothing.
        _forget(proc)
        return proc.returncode
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM if timeout > 0 else signal.SIGKILL)
        try:
            proc.wait(timeout=max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            log.warning(
                "pid %d did not exit within %.1fs of SIGTERM; killing it", proc.pid, timeout
            )
            _signal_group(proc, signal.SIGKILL)
            try:
                proc.wait(timeout=_KILL_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                log.error(
                    "pid %d survived SIGKILL for %.0fs (stuck in the kernel?); giving up on it",
                    proc.pid,
                    _KILL_WAIT_SECONDS,
                )
                return None
    # The leader is gone; kill whatever it left behind in its group (forked
    # helpers such as a Redis rewrite child). ESRCH when nothing is left.
    _signal_group(proc, signal.SIGKILL)
    _forget(proc)
    return proc.returncode


def stop_all(procs: Sequence[subprocess.Popen[bytes]], timeout: float) -> list[int | None]:
    """:func:`stop` for several children whose grace periods run at once: ``SIGTERM`` goes to
    every group first, then each child gets what is left of one ``timeout`` before ``SIGKILL``.
    The whole stop takes about ``timeout``, not ``timeout`` per child. Returns their exit codes
    (as :func:`stop` does), in order."""
    for proc in procs:
        if proc.returncode is None and proc.poll() is None:
            _signal_group(proc, signal.SIGTERM if timeout > 0 else signal.SIGKILL)
    deadline = time.monotonic() + timeout
    return [stop(proc, max(0.0, deadline - time.monotonic())) for proc in procs]


def _forget(proc: subprocess.Popen[bytes]) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(proc)


@atexit.register
def _kill_leftovers() -> None:
    """Stop children that are still registered when the interpreter exits.

    They all get ``SIGTERM`` at once (so Redis can flush its append-only file)
    and share a grace period of ``_KILL_WAIT_SECONDS`` before ``SIGKILL``.
    """
    with _LIVE_LOCK:
        procs = [p for p in _LIVE if p.poll() is None]
    for proc in procs:
        log.warning("pid %d still running at exit; stopping it", proc.pid)
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + _KILL_WAIT_SECONDS
    for proc in procs:
        stop(proc, timeout=max(deadline - time.monotonic(), 0.0))


class ProcessGroup:
    """Children that start in order and stop in reverse order.

    Used by the CLI to hold the broker, Redis and the workers: what started
    first (the servers) stops last, after everything that depends on it.
    :meth:`stop` is idempotent and may be called from a signal handler's thread
    while another thread is in :meth:`spawn`.

    Parameters
    ----------
    stop_timeout
        Default seconds each child gets between ``SIGTERM`` and ``SIGKILL``.

    Examples
    --------
    >>> import sys
    >>> with ProcessGroup(stop_timeout=5) as group:
    ...     _ = group.spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
    ...     group.exited()
    {}
    >>> sorted(group.stop())  # already stopped by the with block
    ['sleeper']
    """

    def __init__(self, *, stop_timeout: float = 10.0) -> None:
        self.stop_timeout = stop_timeout
        self._children: list[tuple[str, subprocess.Popen[bytes], float]] = []
        self._codes: dict[str, int | None] = {}
        self._lock = threading.RLock()
        self._stop_lock = threading.RLock()
        self._stopped = False

    def spawn(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        cwd: str | os.PathLike[str] | None = None,
        stop_timeout: float | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``cmd`` with :func:`spawn` and hold it under ``name``.

        Raises
        ------
        RuntimeError
            The group was stopped already; start a new one.
        """
        with self._lock:
            if self._stopped:
                raise RuntimeError(f"cannot start {name!r}: this process group is already stopped")
            proc = spawn(cmd, env=env, log_path=log_path, cwd=cwd)
            self._add(name, proc, stop_timeout)
            return proc

    def add(
        self, name: str, proc: subprocess.Popen[bytes], *, stop_timeout: float | None = None
    ) -> None:
        """Hold a child started elsewhere; it is stopped with the others.

        A group that is already stopped stops ``proc`` at once.
        """
        with self._lock:
            if self._stopped:
                self._codes[name] = stop(proc, self.stop_timeout if stop_timeout is None else stop_timeout)
                return
            self._add(name, proc, stop_timeout)

    def _add(self, name: str, proc: subprocess.Popen[bytes], stop_timeout: float | None) -> None:
        if any(n == name for n, _, _ in self._children):
            raise ValueError(f"a child named {name!r} is already in this group; use another name")
        self._children.append((name, proc, self.stop_timeout if stop_timeout is None else stop_timeout))

    @property
    def children(self) -> dict[str, subprocess.Popen[bytes]]:
        """The held children by name, in start order."""
        with self._lock:
            return {name: proc for name, proc, _ in self._children}

    def exited(self) -> dict[str, int]:
        """Children that have exited on their own, with their exit codes."""
        with self._lock:
            children = list(self._children)
        codes = {}
        for name, proc, _ in children:
            code = proc.poll()
            if code is not None:
                codes[name] = code
        return codes

    def stop(self, timeout: float | None = None) -> dict[str, int | None]:
        """Stop every child, last started first.

        Parameters
        ----------
        timeout
            Seconds each child gets after ``SIGTERM``; ``None`` uses each child's own
            ``stop_timeout``.

        Returns
        -------
        dict
            Exit code of each child by name (``None``: it could not be killed).
        """
        # A second caller waits for the first one to finish, then sees the codes.
        with self._stop_lock:
            with self._lock:
                self._stopped = True
                children, self._children = self._children, []
            for name, proc, own_timeout in reversed(children):
                log.debug("stopping %s (pid %d)", name, proc.pid)
                self._codes[name] = stop(proc, own_timeout if timeout is None else timeout)
            return dict(self._codes)

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on right now.

    The port is only free at the time of the call: bind it quickly, and be
    ready to retry with another one if someone else took it meanwhile.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now.

    The probe sets ``SO_REUSEADDR``, as servers do, so connections that linger in
    ``TIME_WAIT`` after a server stopped do not count as busy.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(1)
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def wait_port_free(host: str, port: int, timeout: float) -> bool:
    """Wait until :func:`port_is_free` says yes, for at most ``timeout`` seconds.

    Returns
    -------
    bool
        ``True`` when the port is free, ``False`` when it is still taken at the
        deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        if port_is_free(host, port):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
