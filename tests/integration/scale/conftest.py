"""Fixtures of the scale tests: those of the stream integration tests, plus a guard that no
worker process outlives its test.

The helpers of ``tests/integration/streams`` (``e2e_worker``, ``e2e_stream``, ``e2e_reference``,
the checks of ``test_join_end_to_end``) are importable from here: that directory is put on
``sys.path``, and its ``conftest.py`` is loaded under another module name so that its fixtures
(``make_settings``, ``worker_factory``, ``web_factory``) serve these tests too.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

STREAMS_DIR = Path(__file__).resolve().parent.parent / "streams"
for _dir in (STREAMS_DIR, Path(__file__).resolve().parent):
    if str(_dir) not in sys.path:
        sys.path.insert(0, str(_dir))


def _load_stream_fixtures() -> object:
    spec = importlib.util.spec_from_file_location("_stream_e2e_fixtures", STREAMS_DIR / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_stream_fixtures = _load_stream_fixtures()
make_settings = _stream_fixtures.make_settings  # type: ignore[attr-defined]
worker_factory = _stream_fixtures.worker_factory  # type: ignore[attr-defined]
web_factory = _stream_fixtures.web_factory  # type: ignore[attr-defined]


def survivors(pids: list[int]) -> list[str]:
    """The processes among ``pids`` that still run (zombies count as gone), described."""
    alive = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            alive.append(f"{pid} ({' '.join(proc.cmdline())[:120]})")
        except psutil.NoSuchProcess:
            continue
    return alive


@pytest.fixture
def worker_pids() -> Iterator[list[int]]:
    """A list the test appends the pid of every worker it starts to; after the test, and after
    ``worker_factory`` stopped its workers (this fixture is set up before it, so torn down after
    it), none of them may still run."""
    pids: list[int] = []
    yield pids
    deadline = time.monotonic() + 10
    left = survivors(pids)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = survivors(pids)
    assert not left, f"worker processes survived the test: {left}"
