"""The demo and the replay command, end to end through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FEEDBACK_LOOP_")}
    return subprocess.run([sys.executable, "-m", "feedback_loop", *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=timeout)


def test_demo_runs_and_live_metrics_match_the_offline_numbers(tmp_path: Path) -> None:
    done = run_cli("demo", "--limit", "6000", "--data-dir", str(tmp_path),
                   env={"FEEDBACK_LOOP_BROKER_REBALANCE_TIMEOUT": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "elec2-logreg" in done.stdout and "cumulative" in done.stdout
    report = orjson.loads((tmp_path / "demo-report.json").read_bytes())
    live = {(row["model"], row["window"]): row for row in report["live"]}
    for model, expected in report["expected"].items():
        assert expected["count"] == 1000
        assert live[(model, "cumulative")]["count"] == expected["count"]
        assert live[(model, "cumulative")]["accuracy"] == expected["accuracy"]
    # Day by day in lockstep: every routed item was answered before its label was published.
    queue = report["review_queue"]
    reviewed = sum(report["reviews"][m]["reviewed"] for m in report["expected"])
    assert reviewed > 0 and queue.get("labeled", 0) == 0 and queue.get("removed_labeled", 0) == 0, queue
    assert report["reviews"]["failures"] == {}
    champion = report["champion"]
    assert champion["total"]["champion"] is not None and len(champion["periods"]) == 8
    assert "champion" in done.stdout and "no-change" in done.stdout


def test_replay_rejects_a_bad_file_with_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("prediction,label,score_yes\nyes,no,0.4\nno,yes,1.7\n")
    done = run_cli("replay", str(bad), "--kafka", "127.0.0.1:1")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines == ["feedback-loop: error: row 2: scores.yes: Input should be less than or equal to 1"]


def test_replay_publishes_a_jsonl_file(tmp_path: Path, kafka_bootstrap: str) -> None:
    from kafka import KafkaConsumer

    from feedback_loop.kafka_admin import ensure_topics
    from feedback_loop.settings import Settings

    settings = Settings(topic_prefix=f"replay-{os.getpid()}.")
    ensure_topics(kafka_bootstrap, [settings.topics.predictions, settings.topics.labels], 2)
    path = tmp_path / "preds.jsonl"
    path.write_text("\n".join(json.dumps({"prediction": p, "label": l, "features": {"x": i}})
                              for i, (p, l) in enumerate([("a", "a"), ("b", None), ("a", "b")])))
    done = run_cli("replay", str(path), "--kafka", kafka_bootstrap, "--topic-prefix", settings.topic_prefix,
                   "--model", "m", "--label-delay", "1")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"predictions": 3, "labels": 2, "seconds": json.loads(done.stdout)["seconds"]}
    consumer = KafkaConsumer(settings.topics.labels, bootstrap_servers=kafka_bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    labels = sorted(json.loads(m.value)["prediction_id"] for m in consumer)
    consumer.close()
    assert labels == ["preds-0000000", "preds-0000002"]


def test_schema_prints_every_topic() -> None:
    done = run_cli("schema")
    assert done.returncode == 0
    schemas = json.loads(done.stdout)
    assert set(schemas) == {"predictions", "labels", "review-flags", "outcomes", "metrics", "drift-alerts",
                            "review-queue", "model-updates", "dead-letters"}
    assert "prediction_id" in schemas["predictions"]["required"]
