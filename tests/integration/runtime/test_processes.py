"""Child processes: start, stop, escalation, process groups, death with the parent, ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from feedback_loop.runtime.processes import (
    ProcessGroup,
    free_port,
    port_is_free,
    spawn,
    stop,
    wait_port_free,
)

from support.procs import pid_gone, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def kill_pids(pids: list[int]) -> None:
    """Last-resort cleanup of processes a test started indirectly."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Children a test started; killed afterwards whatever happened."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        stop(proc, timeout=0)


def test_spawn_and_stop(procs: list[subprocess.Popen[bytes]]) -> None:
    proc = spawn(SLEEPER)
    procs.append(proc)
    assert proc.poll() is None
    t0 = time.monotonic()
    code = stop(proc, timeout=5)
    assert code == -signal.SIGTERM
    assert time.monotonic() - t0 < 2
    assert pid_gone(proc.pid)
    # Idempotent, also when already reaped.
    assert stop(proc, timeout=5) == code


def test_child_has_its_own_process_group(procs: list[subprocess.Popen[bytes]]) -> None:
    proc = spawn(SLEEPER)
    procs.append(proc)
    assert os.getpgid(proc.pid) == proc.pid
    assert os.getsid(proc.pid) == proc.pid
    assert os.getpgid(proc.pid) != os.getpgid(0)


def test_stop_escalates_to_sigkill(tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    log = tmp_path / "child.log"
    script = textwrap.dedent(
        """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    proc = spawn([sys.executable, "-c", script], log_path=log)
    procs.append(proc)
    assert wait_until(lambda: log.exists() and "ready" in log.read_text(), 10)
    t0 = time.monotonic()
    code = stop(proc, timeout=0.5)
    assert code == -signal.SIGKILL
    assert time.monotonic() - t0 < 3


def test_stop_kills_the_whole_group(tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = textwrap.dedent(
        f"""
        import subprocess, sys, time
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pid_file)!r}, "w").write(str(p.pid))
        time.sleep(60)
        """
    )
    proc = spawn([sys.executable, "-c", script])
    procs.append(proc)
    assert wait_until(lambda: pid_file.exists() and pid_file.read_text().strip() != "", 10)
    grandchild = int(pid_file.read_text())
    try:
        stop(proc, timeout=5)
        assert wait_until(lambda: pid_gone(grandchild), 5)
    finally:
        kill_pids([grandchild])


def test_stop_of_exited_child_returns_its_code(procs: list[subprocess.Popen[bytes]]) -> None:
    proc = spawn([sys.executable, "-c", "raise SystemExit(3)"])
    procs.append(proc)
    proc.wait(timeout=10)
    assert stop(proc, timeout=1) == 3
    assert stop(proc, timeout=1) == 3


def test_log_path_is_appended(tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    log = tmp_path / "logs" / "out.log"
    for word in ("first", "second"):
        proc = spawn([sys.executable, "-c", f"import sys; print({word!r}); print('err', file=sys.stderr)"], log_path=log)
        procs.append(proc)
        assert proc.wait(timeout=10) == 0
    assert log.read_text().split() == ["first", "err", "second", "err"]


def test_env_and_cwd(tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    log = tmp_path / "out.log"
    env = {**os.environ, "FL_TEST_VALUE": "42"}
    proc = spawn(
        [sys.executable, "-c", "import os; print(os.environ['FL_TEST_VALUE'], os.getcwd())"],
        env=env, log_path=log, cwd=tmp_path,
    )
    procs.append(proc)
    assert proc.wait(timeout=10) == 0
    assert log.read_text().split() == ["42", str(tmp_path)]


def test_missing_program_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        spawn([str(tmp_path / "no-such-program")])


def test_child_dies_with_its_parent(tmp_path: Path) -> None:
    """kill -9 of the parent takes the child down (PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    pid_file = tmp_path / "child.pid"
    script = textwrap.dedent(
        f"""
        import sys, time
        from feedback_loop.runtime.processes import spawn
        p = spawn([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pid_file)!r}, "w").write(str(p.pid))
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    child: int | None = None
    try:
        assert wait_until(lambda: pid_file.exists() and pid_file.read_text().strip() != "", 15)
        child = int(pid_file.read_text())
        assert not pid_gone(child)
        parent.kill()
        parent.wait(timeout=5)
        assert wait_until(lambda: pid_gone(child), 5), f"child {child} outlived its parent"
    finally:
        parent.kill()
        parent.wait(timeout=5)
        if child is not None:
            kill_pids([child])


def test_process_group_stops_in_reverse_order(tmp_path: Path) -> None:
    order = tmp_path / "order.txt"
    script = textwrap.dedent(
        """
        import signal, sys, time
        name, out, ready = sys.argv[1], sys.argv[2], sys.argv[3]
        def bye(*_):
            with open(out, "a") as fh:
                fh.write(name + "\\n")
            sys.exit(0)
        signal.signal(signal.SIGTERM, bye)
        open(ready, "w").close()
        time.sleep(60)
        """
    )
    names = ["broker", "redis", "worker"]
    group = ProcessGroup(stop_timeout=5)
    try:
        for name in names:
            group.spawn(name, [sys.executable, "-c", script, name, str(order), str(tmp_path / name)])
        assert wait_until(lambda: all((tmp_path / n).exists() for n in names), 15)
        assert group.exited() == {}
        codes = group.stop()
    finally:
        group.stop(timeout=0)
    assert codes == {"broker": 0, "redis": 0, "worker": 0}
    assert order.read_text().split() == list(reversed(names))
    assert group.stop() == codes  # idempotent
    with pytest.raises(RuntimeError):
        group.spawn("late", SLEEPER)


def test_process_group_context_manager_stops_on_error() -> None:
    pids: list[int] = []
    with pytest.raises(ValueError, match="boom"):
        with ProcessGroup(stop_timeout=2) as group:
            pids.append(group.spawn("a", SLEEPER).pid)
            pids.append(group.spawn("b", SLEEPER).pid)
            raise ValueError("boom")
    try:
        assert wait_until(lambda: all(pid_gone(p) for p in pids), 5)
    finally:
        kill_pids(pids)


def test_process_group_reports_exited_children() -> None:
    with ProcessGroup(stop_timeout=2) as group:
        group.spawn("quick", [sys.executable, "-c", "raise SystemExit(7)"])
        group.spawn("slow", SLEEPER)
        assert wait_until(lambda: "quick" in group.exited(), 10)
        assert group.exited() == {"quick": 7}


def test_free_port_and_port_is_free() -> None:
    port = free_port()
    assert port_is_free("127.0.0.1", port)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen(1)
        assert not port_is_free("127.0.0.1", port)
        t0 = time.monotonic()
        assert not wait_port_free("127.0.0.1", port, 0.3)
        assert time.monotonic() - t0 < 2
    assert wait_port_free("127.0.0.1", port, 2)
