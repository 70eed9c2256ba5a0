"""LocalStack.stop: the review consumer and the workers wait out their grace periods together."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from feedback_loop.runtime import processes
from feedback_loop.settings import Settings
from feedback_loop.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

#: a child that ignores SIGTERM (as a Faust worker busy shutting down may): only SIGKILL stops it
STUBBORN = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\n"
            "time.sleep(120)\n")


def test_stubborn_children_are_killed_after_one_grace_period_not_one_each(tmp_path: Path) -> None:
    grace = 1.5
    settings = Settings(data_dir=tmp_path, shutdown_timeout_seconds=grace)
    stack = LocalStack(settings, env={})
    logs = [tmp_path / f"child{i}.log" for i in range(4)]
    children = [processes.spawn([sys.executable, "-c", STUBBORN], log_path=log) for log in logs]
    deadline = time.monotonic() + 30
    while not all(log.exists() and b"ready" in log.read_bytes() for log in logs):
        assert time.monotonic() < deadline, "the children did not start"
        time.sleep(0.05)
    stack.reviews, stack.procs = children[0], children[1:]

    started = time.monotonic()
    stack.stop()
    took = time.monotonic() - started

    assert all(child.returncode is not None and child.returncode < 0 for child in children)  # killed
    assert stack.reviews is None and stack.procs == []
    assert grace <= took < 2 * grace, f"stop took {took:.1f} s for 4 children with a {grace} s grace period"
