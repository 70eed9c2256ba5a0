"""Online learning through the real pipeline (embedded broker and Redis, worker processes): the
challenger's prequential accuracy equals River's own test-then-train loop on Elec2, exactly with
one partition and within 0.5 points with eight; a worker killed with SIGKILL mid-replay and
restarted learns every outcome exactly once (the learner's counts) and ends where River does."""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta
from typing import Any

import orjson
import pytest
import redis
from kafka import KafkaProducer

from e2e_worker import wait_for
from feedback_loop import elec2
from online_models.specs import BUILTIN, build

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

MODEL = "elec2"
ROWS = 6000


def river_prequential(rows: list[tuple[dict[str, float], str]]) -> tuple[int, int]:
    """(correct, n) of River's loop: predict each example, then learn it."""
    model = build(BUILTIN["logreg"])
    correct = 0
    for x, y in rows:
        correct += model.predict_one(x) == y
        model.learn_one(x, y)
    return correct, len(rows)


def messages(rows: list[tuple[dict[str, float], str]]) -> list[tuple[str, bytes, bytes]]:
    """Each prediction followed at once by its label (no label delay)."""
    out = []
    for i, (x, y) in enumerate(rows):
        pid = f"e-{i:06d}"
        ts = elec2.timestamp(i).isoformat()
        out.append(("predictions", pid.encode(), orjson.dumps({
            "prediction_id": pid, "model": MODEL, "model_version": "frozen", "timestamp": ts,
            "features": x, "prediction": "UP"})))
        out.append(("labels", pid.encode(), orjson.dumps({"prediction_id": pid, "label": y, "timestamp": ts})))
    return out


def produce(settings: Any, msgs: list[tuple[str, bytes, bytes]], rate: float = 0.0) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5, acks="all")
    started = time.monotonic()
    for n, (kind, key, value) in enumerate(msgs):
        producer.send(settings.topic(kind), key=key, value=value)
        if rate and n > rate * (time.monotonic() - started):
            time.sleep(0.01)
    producer.flush()
    producer.close()


def report(settings: Any) -> dict[str, Any] | None:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        raw = client.hget(settings.key("learners"), MODEL)
    finally:
        client.close()
    return None if raw is None else orjson.loads(raw)


def wait_learned(settings: Any, n: int, timeout: float = 240.0) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        r = report(settings)
        return r if r and r["challengers"]["logreg"]["updates"] >= n else None

    return wait_for(f"the learner to learn {n} outcomes", done, timeout, 0.5, lambda: f"last report: {report(settings)}")


def learner_settings(make_settings: Any, partitions: int) -> Any:
    return make_settings(partitions=partitions, online_models={MODEL: ["logreg"]}, batch_within_seconds=0.01,
                         prediction_ttl_seconds=timedelta(days=3650).total_seconds())


@pytest.mark.parametrize("partitions", [1, 8])
def test_prequential_accuracy_equals_rivers_loop(make_settings, worker_factory, partitions):
    rows = list(elec2.rows())[:ROWS]
    settings = learner_settings(make_settings, partitions)
    worker_factory(settings)
    # Paced like live traffic, with short batches: the order of outcomes across partitions is
    # the order of the join's per-partition batches, so a replay at full speed (thousands of rows
    # per partition per batch) reorders in chunks that large; River on Elec2 loses 0.7 points
    # when blocks of 250 rows are regrouped by partition, 0.07 with blocks of 25.
    produce(settings, messages(rows), rate=2000)
    r = wait_learned(settings, ROWS)["challengers"]["logreg"]
    expected_correct, n = river_prequential(rows)
    got_correct = round(r["prequential_accuracy"] * r["prequential_n"])
    print(f"{partitions} partition(s): pipeline {got_correct}/{r['prequential_n']} "
          f"= {r['prequential_accuracy']:.5f}, River {expected_correct}/{n} = {expected_correct / n:.5f}")
    assert r["updates"] == ROWS and r["prequential_n"] == ROWS
    if partitions == 1:
        assert got_correct == expected_correct
    else:
        assert abs(r["prequential_accuracy"] - expected_correct / n) < 0.005


def test_sigkill_mid_replay_learns_each_outcome_once(make_settings, worker_factory):
    rows = list(elec2.rows())[:ROWS]
    settings = learner_settings(make_settings, 1)
    worker = worker_factory(settings)
    msgs = messages(rows)
    half = len(msgs) // 2
    produce(settings, msgs[:half], rate=3000)
    wait_for("the learner to start", lambda: (report(settings) or {}).get("challengers", {}).get(
        "logreg", {}).get("updates", 0) > 500, 120, 0.2)
    os.kill(worker.pid, signal.SIGKILL)
    worker.proc.wait(10)
    before = report(settings)["challengers"]["logreg"]["updates"]
    produce(settings, msgs[half:])
    worker_factory(settings)
    final = wait_learned(settings, ROWS)
    r = final["challengers"]["logreg"]
    expected_correct, n = river_prequential(rows)
    got_correct = round(r["prequential_accuracy"] * r["prequential_n"])
    print(f"killed at {before} updates; after restart {r['updates']} updates, {final['duplicates_ignored']} "
          f"republished outcomes ignored; pipeline {got_correct}/{n}, River {expected_correct}/{n}")
    time.sleep(2.0)  # anything learned twice would show up now
    r = report(settings)["challengers"]["logreg"]
    assert r["updates"] == ROWS and r["prequential_n"] == ROWS
    assert got_correct == expected_correct  # one partition: the same order, so the same accuracy


class _Exploit:
    """Unpickling this runs code: it appends to a marker file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (f"open({self.path!r}, 'a').write('ran')",))


def test_tampered_learner_checkpoint_is_refused_and_the_registry_model_resumes(make_settings, worker_factory,
                                                                              tmp_path):
    from feedback_loop.signing import Signer

    rows = list(elec2.rows())[:4000]
    settings = learner_settings(make_settings, 1).model_copy(update={"registry_checkpoint_updates": 1000})
    worker = worker_factory(settings)
    msgs = messages(rows)
    produce(settings, msgs[:6000])
    wait_learned(settings, 3000)
    assert worker.stop() == 0
    client = redis.Redis.from_url(settings.redis_url)
    try:
        versions = sorted(v.decode() for v in client.hkeys(settings.key("registry", MODEL, "blob")))
        assert "logreg-u3000" in versions, versions
        marker = tmp_path / "pwned"
        forged = Signer(b"not-the-deployment-key-0123456789").dumps(_Exploit(str(marker)))
        client.hset(settings.key("learn", 0), MODEL, forged)
    finally:
        client.close()
    worker = worker_factory(settings)
    produce(settings, msgs[6000:])
    final = wait_learned(settings, 4000)
    log = worker.log_path.read_text("utf-8", "replace")
    print(final["challengers"]["logreg"], [line for line in log.splitlines() if "registry" in line][-3:])
    assert not marker.exists(), "code in the refused checkpoint ran"
    assert "signature does not match" in log and "resumes from registry version logreg-u3000" in log
    assert final["challengers"]["logreg"]["updates"] == 4000  # 3,000 from the registry + 1,000 new
