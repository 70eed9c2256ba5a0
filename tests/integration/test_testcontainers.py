"""The end-to-end suites on real Apache Kafka and Redis images (testcontainers), when Docker answers.

Skipped, saying why, on a machine without a Docker engine: the rest of the suite then runs on the
embedded servers. With Docker, the join, drift and chaos suites run again in a child pytest forced
to ``FEEDBACK_LOOP_TEST_SERVERS=testcontainers``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

KIND_ENV = "FEEDBACK_LOOP_TEST_SERVERS"  # as in tests/conftest.py
ROOT = Path(__file__).resolve().parents[2]
SUITES = ["tests/integration/streams/test_join_end_to_end.py",
          "tests/integration/streams/test_drift_end_to_end.py",
          "tests/integration/scale/test_workers_chaos.py"]


def _docker_answers() -> bool:
    import importlib.util

    spec = importlib.util.spec_from_file_location("_session_conftest", ROOT / "tests" / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("_session_conftest", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return bool(module._docker_answers())


@pytest.mark.skipif(os.environ.get(KIND_ENV) == "testcontainers", reason="already running on containers")
def test_end_to_end_suites_on_apache_kafka_and_redis_images() -> None:
    if not _docker_answers():  # the session's own check (tests/conftest.py)
        pytest.skip("no Docker engine answers (DOCKER_HOST or /var/run/docker.sock): the end-to-end "
                    "suites ran on the embedded servers instead; with Docker they run again on the "
                    "apache/kafka and redis images")
    env = {k: v for k, v in os.environ.items() if k not in ("FEEDBACK_LOOP_KAFKA_BOOTSTRAP", "FEEDBACK_LOOP_REDIS_URL")}
    env[KIND_ENV] = "testcontainers"
    for suite in SUITES:  # one child each: the chaos suite's conftest must not meet the streams one
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", suite],
                              cwd=ROOT, env=env, timeout=1800)
        assert done.returncode == 0, f"{suite} failed on the containers (exit {done.returncode})"
