"""Redis stops for a few seconds while two workers replay a stream: nothing is lost or doubled.

The session's Redis is shared by every test, so this one starts its own ``redis-server`` (AOF with
fsync always, in a temporary directory, the binary the embedded servers use) and points the
workers and the web API at it. Two workers share the partitions; half of a seeded stream
(``e2e_stream`` without its order-sensitive cases) is produced, and once the workers are busy
(a few hundred outcomes out) Redis is stopped with SIGTERM, the second half is produced while it
is down, and after about 3 s it starts again on the same port and directory.

The workers must ride this out: no worker process may exit (no supervisor restarts workers:
neither ``feedback-loop up`` nor docker-compose does, so a worker that dies on a Redis outage is a
bug, reported here with its log, and never restarted by the test). Then every output must be
exact, as in the chaos test: per prediction id the distinct revisions 1..k ending on the
reference's outcome, republished outcomes byte-identical, one dead letter per malformed message,
and ``GET /api/models`` equal to the reference metrics.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import e2e_reference as reference
import pytest
from chaos_run import CHAOS_SETTINGS, ChaosResult, drain_and_check
from e2e_stream import generate
from e2e_worker import TopicReader, unique_settings, wait_for
from test_join_end_to_end import produce

from support.own_redis import OwnRedis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

DOWN_SECONDS = 3.0


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path / "own-redis")
    server.start()
    yield server
    server.stop()


REDIS_ERROR = re.compile(r"redis|ConnectionError|Connection refused|Error \d+ connecting", re.IGNORECASE)


def redis_complaints(log_text: str, limit: int = 12) -> list[str]:
    """The worker log's lines that mention Redis or a connection error."""
    return [line[:300] for line in log_text.splitlines() if REDIS_ERROR.search(line)][:limit]


def test_workers_ride_out_a_redis_restart(worker_pids, own_redis, kafka_bootstrap, tmp_path, worker_factory,
                                          web_factory) -> None:
    t0 = time.monotonic()
    # make_settings would use the session's Redis: the same isolated settings on our own Redis.
    settings = unique_settings(kafka_bootstrap, own_redis.url, tmp_path / "data", **CHAOS_SETTINGS)
    stream = generate(seed=20261123, n_predictions=4_000, max_event_bytes=settings.max_event_bytes,
                      order_sensitive=False)
    ref = reference.build(stream.messages)
    messages = stream.messages
    half = len(messages) // 2

    workers = []
    for _ in range(2):  # one after the other: each joins a group that has settled
        workers.append(worker_factory(settings))
        worker_pids.append(workers[-1].pid)

    def shared() -> bool:
        parts = [sorted((w.heartbeat() or {}).get("partitions") or []) for w in workers]
        return all(parts) and sorted(p for ps in parts for p in ps) == list(range(settings.partitions))

    wait_for("the two workers to share the partitions", shared, timeout=90, interval=0.5)
    web = web_factory(settings)

    metas = produce(settings, messages[:half])
    outcomes = TopicReader(settings, "outcomes")
    try:
        wait_for("the workers' first outcomes", lambda: outcomes.catch_up() >= 300, timeout=60, interval=0.05)
        before = outcomes.catch_up()
    finally:
        outcomes.close()

    down_at = time.monotonic()
    code = own_redis.stop()
    assert code == 0, f"redis-server did not stop cleanly on SIGTERM: exit code {code}"
    metas += produce(settings, messages[half:])  # the replay goes on while Redis is down
    time.sleep(max(0.0, DOWN_SECONDS - (time.monotonic() - down_at)))
    up_at = time.monotonic()
    own_redis.start()
    down_s = time.monotonic() - down_at
    print(f"redis stopped after {before} outcomes, down {down_s:.1f} s "
          f"(restarted on port {own_redis.port}, same directory)")

    # Give a worker that is going to die of the outage the time to do so, then say it clearly.
    time.sleep(5)
    dead = [w for w in workers if not w.alive()]
    report = []
    for w in workers:
        text = w.log_path.read_text("utf-8", "replace") if w.log_path.exists() else ""
        state = "alive" if w.alive() else f"EXITED with code {w.proc.returncode}"
        report.append(f"worker pid {w.pid}: {state}; log lines about Redis:\n  "
                      + "\n  ".join(redis_complaints(text) or ["(none)"]))
    print("\n".join(report))
    assert not dead, (
        f"{len(dead)} of {len(workers)} workers exited after Redis was down {down_s:.1f} s "
        f"(no supervisor restarts them):\n" + "\n".join(report) + "\n" + "\n".join(w.log_tail(40) for w in dead))

    res = ChaosResult(predictions=len(ref.predictions), labeled=len(ref.outcomes), messages=len(messages))
    drain_and_check(settings, workers, web, messages, metas, ref, res, consume_timeout=180)
    elapsed = time.monotonic() - t0
    print(f"redis restart: predictions={res.predictions} labeled={res.labeled} outcomes={res.outcome_messages} "
          f"distinct={res.outcomes_distinct} duplicates={res.duplicates} "
          f"(not identical: {res.duplicates_not_identical}) dead_letters={res.dead_letters} "
          f"down_s={down_s:.1f} recovered_after_s={time.monotonic() - up_at:.1f} elapsed_s={elapsed:.0f}; "
          f"timings { {k: round(v, 1) for k, v in res.timings.items()} }")
    assert not res.problems, res.problems + "\n" + "\n".join(w.log_tail(30) for w in workers)
    assert res.outcomes_exact and res.metrics_exact and res.duplicates_not_identical == 0
    for w in workers:
        w.check_alive()
