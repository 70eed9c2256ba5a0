"""The embedded Redis's append-only file rewrites run at the lowest CPU priority.

Redis rewrites its append-only file when the file has doubled since the last rewrite: it forks,
and the child writes the whole dataset. On a small machine that runs the broker, Redis and the
workers side by side, that child takes a core for a second or more, and the kernel's autogroup
scheduler puts it in the Redis server's own group, where it competes with the server's main
thread: every reply (every checkpoint of every worker) then waits. Measured on 2 cores at 2,000
labels/s, p99 label-to-applied in runs with a rewrite: 556 to 937 ms at normal priority (four
runs), 270 to 863 ms at nice 19 (seven runs; the machine's speed varies a lot from run to run).
Runs without a rewrite: 140 to 643 ms, 15 of 18 under 300 ms. The child still takes a core from
the rest of the machine.

:class:`RewriteNicer` watches Redis's working directory for the temporary file a rewrite child
creates as it starts, ``temp-rewriteaof-<pid>.aof`` (or ``temp-rewriteaof-bg-<pid>.aof``), named
after the child, and sets that process's nice value to 19 (a process may always lower its own
children's priority). It reads ``/proc`` to check that the process is the server's child, so it
does nothing where there is no ``/proc``.

Examples
--------
>>> import subprocess, sys, tempfile
>>> child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
>>> with tempfile.TemporaryDirectory() as tmp:
...     _ = open(f"{tmp}/temp-rewriteaof-{child.pid}.aof", "w")
...     RewriteNicer(Path(tmp), os.getpid()).poll_once() == [child.pid]
True
>>> os.getpriority(os.PRIO_PROCESS, child.pid)
19
>>> child.kill(); _ = child.wait()
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path

__all__ = ["RewriteNicer", "parent_of"]

log = logging.getLogger(__name__)

_TEMP_FILE = re.compile(r"temp-rewriteaof-(?:bg-)?(\d+)\.aof$")


def parent_of(pid: int) -> int | None:
    """The parent process id of ``pid`` from ``/proc``; ``None`` if it is gone or there is no ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # "pid (comm) state ppid ...": the command name may hold spaces and parentheses
    fields = stat[stat.rfind(b")") + 2:].split()
    return int(fields[1]) if len(fields) > 1 else None


class RewriteNicer:
    """Lowers the CPU priority of the rewrite children of the Redis server ``server_pid`` that
    works in ``directory`` (see module doc), checking every ``interval`` seconds in a thread.

    Parameters
    ----------
    directory
        The server's working directory (``--dir``).
    server_pid
        The server's process id: only its children are changed.
    interval
        Seconds between looks at ``directory``.
    nice
        The nice value given to a rewrite child.
    """

    def __init__(self, directory: Path, server_pid: int, interval: float = 0.02, nice: int = 19) -> None:
        self.directory = Path(directory)
        self.server_pid = server_pid
        self.interval = interval
        self.nice = nice
        self._done: set[int] = set()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def poll_once(self) -> list[int]:
        """Lower the priority of the rewrite children running now; return the ones changed."""
        try:
            names = [entry.name for entry in os.scandir(self.directory)]
        except OSError:
            return []
        running = {int(m[1]) for m in map(_TEMP_FILE.match, names) if m}
        self._done &= running  # (a finished rewrite's pid may come back as another process)
        changed = []
        for pid in sorted(running - self._done):
            if parent_of(pid) != self.server_pid:
                continue
            try:
                os.setpriority(os.PRIO_PROCESS, pid, self.nice)
            except ProcessLookupError:
                continue  # the rewrite ended between the look and the change
            except PermissionError as exc:
                log.info("could not lower the priority of the Redis rewrite %d: %s", pid, exc)
            self._done.add(pid)
            changed.append(pid)
        return changed

    def start(self) -> RewriteNicer:
        """Start watching (a daemon thread); returns ``self``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="redis-rewrite-nicer", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 1.0) -> None:
        """Stop watching; waits at most ``timeout`` seconds for the thread."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            self.poll_once()
