"""`feedback-loop up` stopped by SIGINT and SIGTERM, five times each: nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from feedback_loop.runtime.processes import port_is_free
from support.procs import descendants, pid_gone

START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
#: runs ``python -m feedback_loop ARGS`` after a change to the signals it inherits
LAUNCH = ("import os, signal, sys; {}; "
          "os.execv(sys.executable, [sys.executable, '-m', 'feedback_loop', *sys.argv[1:]])")


def start_up(tmp: Path, inherit: str = "") -> tuple[subprocess.Popen[str], dict[str, str]]:
    """``up`` in ``tmp``; ``inherit`` ``"blocked"`` or ``"ignored"`` starts it with SIGINT so."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEEDBACK_LOOP_")}
    env["FEEDBACK_LOOP_BROKER_REBALANCE_TIMEOUT"] = "1"
    # each graceful step of the stop (web server, workers and review consumer, servers) gets 5 s
    # before a kill: the whole stop is bounded well inside STOP_TIMEOUT
    env["FEEDBACK_LOOP_SHUTDOWN_TIMEOUT_SECONDS"] = "5"
    tmp.mkdir(parents=True, exist_ok=True)
    launcher = {
        "": ["-m", "feedback_loop"],
        "blocked": ["-c", LAUNCH.format("signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})")],
        "ignored": ["-c", LAUNCH.format("signal.signal(signal.SIGINT, signal.SIG_IGN)")],
    }[inherit]
    proc = subprocess.Popen(
        [sys.executable, *launcher, "up", "--web-port", "0", "--partitions", "2",
         "--data-dir", str(tmp)],
        stdout=subprocess.PIPE, stderr=(tmp / "up-stderr.txt").open("w"), text=True, env=env,
        start_new_session=True)
    lines: dict[str, str] = {}
    deadline = time.monotonic() + START_TIMEOUT
    assert proc.stdout is not None
    while "web" not in lines:
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"up did not print its addresses (exit {proc.poll()}); got {lines}; "
                        f"logs in {tmp / 'logs'}")
        line = proc.stdout.readline()
        if ": " in line:
            name, value = line.strip().split(": ", 1)
            lines[name] = value
    return proc, lines


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_up_stops_cleanly_five_times(tmp_path: Path, signum: int) -> None:
    for round_ in range(5):
        data_dir = tmp_path / f"run{round_}"
        proc, lines = start_up(data_dir)
        try:
            kafka_port = int(lines["kafka"].rsplit(":", 1)[1])
            redis_port = int(lines["redis"].rsplit(":", 1)[1].split("/")[0])
            web_port = int(lines["web"].rsplit(":", 1)[1])
            with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/healthz", timeout=10) as resp:
                assert resp.status == 200
            family = descendants(proc.pid)
            assert len(family) >= 3, f"expected broker, redis and worker below up, got {family}"
            proc.send_signal(signum)
            try:
                code = proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pytest.fail(f"up did not stop within {STOP_TIMEOUT:.0f} s of {signum!r} (round {round_}); "
                            f"its stderr ends with:\n{(data_dir / 'up-stderr.txt').read_text()[-3000:]}\n"
                            f"logs in {data_dir / 'logs'}")
            assert code == 0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        deadline = time.monotonic() + 5
        while not all(pid_gone(p) for p in family) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in family if not pid_gone(p)], "processes outlived `up`"
        for port in (kafka_port, redis_port, web_port):
            assert port_is_free("127.0.0.1", port), f"port {port} still taken after round {round_}"


@pytest.mark.parametrize("inherit", ["blocked", "ignored"])
def test_up_stops_on_sigint_that_it_inherited_blocked_or_ignored(tmp_path: Path, inherit: str) -> None:
    """A parent that blocks or ignores SIGINT (test runners, supervisors, background jobs do)
    must not leave ``up`` deaf to it."""
    proc, lines = start_up(tmp_path / "run", inherit)
    try:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"up ignored SIGINT that it inherited {inherit}")
        assert code == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
